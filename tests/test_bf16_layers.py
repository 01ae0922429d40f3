"""bfloat16 on the CPU, the rest of the layer set: the smooth activations (tanh, sigmoid, ELU,
GELU), the residual add with drop path, average pooling, layer and group norm, against the
float64 reference on bf16 inputs, every ISA copy; then whole bf16 networks built from them (a
ResNet, a LayerNorm/GELU MLP) against their fp32 twins.

The judge is test_bf16.py's: each output is the fp32 kernel's arithmetic on the bf16 inputs,
rounded once to bf16 (u = 2^-8), so |got - ref| <= u |ref| + (1 + u) E32, where E32 bounds the fp32
kernel (u32 = 2^-24); at least 99% of many outputs must be the bf16 nearest the reference, and
each output must equal the fp32 kernel's output on the upcast inputs rounded once, bit for bit
(same_bits), which pins down the arithmetic exactly. E32 per kernel:
- smooth activations: libm's float functions are within 2 ulps and each further op rounds once:
  8 ulp(ref), plus eps32 (|x| + 1) (times |dy| for dx) for the cancellation in GELU and the
  derivatives (1 + erf, 1 - t^2, s (1 - s); test_activation_more.py's bound).
- residual add: the product b * f and the sum, each rounded once in fp32: 2 u32 (|s| + |b f|).
- average pooling: a window's fp32 sum of k terms errs by <= k u32 sum|x| (the division by the
  count only shrinks it, and rounds once more); the backward gathers m quotients, each rounded,
  then summed: (m + 1) u32 times the gather of |dy|.
- layer and group norm: statistics in double, then a few fp32 roundings per element;
  test_normalization.py's 1e-5 * max(1, max |ref|) (dx: also >= the cancelling terms' size) is E32.
"""

import numpy as np
import pytest
from bf16_checks import ISAS, assert_isa_copy_agrees
from ml_dtypes import bfloat16
from test_bf16 import U32, U, bf, check, f64, same_bits, up

import fastopt.functional as F
from fastopt import reference as R

EPS32 = float(np.finfo(np.float32).eps)
SHAPES = [(0,), (1,), (7, 5), (3, 4, 9, 11), (70001,)]  # the last spans three 32K-element chunks
SMOOTH = {"tanh": (), "sigmoid": (), "elu": (0.7,), "gelu": ()}


def _ulp(v):
    return np.spacing(np.abs(np.asarray(v, np.float64)).astype(np.float32)).astype(np.float64)


# ------------------------------------------------------------------- smooth activations
def _check_cancelling(got, ref, rounding, cancel, name):
    """check() where the fp32 kernel's cancellation error `cancel` is below 2^-14 |ref| (1/32 of
    a bf16 half-ulp, so the rounded output must nearly always be the nearest bf16); elsewhere, in
    the tails where 1 + erf(x) or 1 - tanh^2(x) cancel, only the absolute bound (1)."""
    g, r = got.reshape(-1), np.asarray(ref, np.float64).reshape(-1)
    e32 = (rounding + cancel).reshape(-1)
    clean = cancel.reshape(-1) <= 2.0**-14 * np.abs(r)
    check(g[clean], r[clean], e32[clean], name)
    tail = ~clean
    err = np.abs(f64(g[tail]) - r[tail])
    assert np.all(err <= U * np.abs(r[tail]) + (1 + U) * e32[tail]), f"{name}: a cancelling tail value off its bound"


@pytest.mark.parametrize("name", sorted(SMOOTH))
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_smooth_activation(rng, name, shape):
    args = SMOOTH[name]
    fwd, bwd = getattr(F, f"{name}_forward"), getattr(F, f"{name}_backward")
    rfwd, rbwd = getattr(R.activation, f"{name}_forward"), getattr(R.activation, f"{name}_backward")
    x, dy = bf(rng.standard_normal(shape) * 3), bf(rng.standard_normal(shape))
    y, dx = fwd(x, *args), bwd(dy, x, *args)
    ref_y, ref_dx = rfwd(f64(x), *args), rbwd(f64(dy), f64(x), *args)
    cancel = EPS32 * (np.abs(f64(x)) + 1)
    _check_cancelling(y, ref_y, 8 * _ulp(ref_y), cancel, "y")
    _check_cancelling(dx, ref_dx, 8 * _ulp(ref_dx), cancel * np.abs(f64(dy)), "dx")
    same_bits(y, fwd(up(x), *args), "y")
    same_bits(dx, bwd(up(dy), up(x), *args), "dx")


# ------------------------------------------------------------------------- residual add
@pytest.mark.parametrize("shape", [(1, 1), (5, 7), (4, 3, 9, 11), (3, 70001)], ids=str)
@pytest.mark.parametrize("p", [0.0, 0.4])
@pytest.mark.parametrize("identity_grad", [False, True])
def test_residual_add(rng, shape, p, identity_grad):
    b = bf(rng.standard_normal(shape))
    s = None if identity_grad else bf(rng.standard_normal(shape))
    y = F.residual_add(b, s, p, seed=11, offset=3)
    ref = R.activation.residual_add(f64(b), None if s is None else f64(s), p, seed=11, offset=3)
    scale = R.activation.residual_add(np.abs(f64(b)), None if s is None else np.abs(f64(s)), p, seed=11, offset=3)
    check(y, ref, 2 * U32 * scale, "y")
    same_bits(y, F.residual_add(up(b), None if s is None else up(s), p, seed=11, offset=3), "y")


def test_residual_add_refuses_mixed_dtypes(rng):
    b = bf(rng.standard_normal((2, 3)))
    with pytest.raises(TypeError, match="shortcut"):
        F.residual_add(b, up(b))


# ---------------------------------------------------------------------- average pooling
POOLS = [
    ((3, 5, 7, 9), 2, None, 0),
    ((3, 5, 7, 9), 3, 2, 1),
    ((2, 3, 13, 11), 3, 1, 1),
    ((2, 3, 13, 11), (3, 2), (2, 3), (1, 0)),
    ((1, 1, 1, 1), 1, None, 0),
    ((0, 3, 5, 5), 2, None, 0),
]


@pytest.mark.parametrize("shape,k,s,p", POOLS)
@pytest.mark.parametrize("include_pad", [True, False])
def test_avg_pool2d(rng, shape, k, s, p, include_pad):
    x = bf(rng.standard_normal(shape))
    kw = dict(kernel_size=k, stride=s, padding=p, count_include_pad=include_pad)
    y = F.avg_pool2d_forward(x, **kw)
    (kh, kwd), (sh, sw) = R.conv.pair(k, "k"), R.conv.pair(k if s is None else s, "s")
    ref_y = R.pooling.avg_pool2d_forward(f64(x), **kw)
    scale_y = R.pooling.avg_pool2d_forward(np.abs(f64(x)), **kw)
    check(y, ref_y, (kh * kwd + 1) * U32 * scale_y, "y")
    same_bits(y, F.avg_pool2d_forward(up(x), **kw), "y")
    dy = bf(rng.standard_normal(y.shape))
    dx = F.avg_pool2d_backward(dy, shape, **kw)
    m = -(-kh // sh) * -(-kwd // sw)
    ref_dx = R.pooling.avg_pool2d_backward(f64(dy), shape, **kw)
    scale_dx = R.pooling.avg_pool2d_backward(np.abs(f64(dy)), shape, **kw)
    check(dx, ref_dx, (m + 1) * U32 * scale_dx, "dx")
    same_bits(dx, F.avg_pool2d_backward(up(dy), shape, **kw), "dx")


# ------------------------------------------------------------------ layer and group norm
def _affine(rng, n, affine):
    if not affine:
        return None, None
    return (
        (rng.uniform(0.5, 2.0, n) * rng.choice([-1, 1], n)).astype(np.float32),
        rng.standard_normal(n).astype(np.float32),
    )


def layer_norm_case(rng, shape, normalized, affine):
    """bf16 inputs (x, dy), fp32 (w, b) and the four functions _check_row_norm takes (kernel
    forward/backward, reference forward/backward) for a layer norm over `normalized`."""
    x, dy = bf(rng.standard_normal(shape) * 3 + 2), bf(rng.standard_normal(shape))
    w, b = _affine(rng, int(np.prod(normalized)), affine)
    w, b = (None, None) if w is None else (w.reshape(normalized), b.reshape(normalized))
    fns = (
        lambda x, w, b: F.layer_norm_forward(x, normalized, w, b),
        lambda dy, x, m, r, w: F.layer_norm_backward(dy, x, normalized, m, r, w, has_bias=w is not None),
        lambda x, w, b: R.normalization.layer_norm_forward(x, normalized, w, b),
        lambda dy, x, m, r, w: R.normalization.layer_norm_backward(dy, x, normalized, m, r, w),
    )
    return fns, x, dy, w, b


def group_norm_case(rng, shape, groups, affine):
    """As layer_norm_case, for a group norm of `groups` groups."""
    x, dy = bf(rng.standard_normal(shape) * 3 + 2), bf(rng.standard_normal(shape))
    w, b = _affine(rng, shape[1], affine)
    fns = (
        lambda x, w, b: F.group_norm_forward(x, groups, w, b),
        lambda dy, x, m, r, w: F.group_norm_backward(dy, x, groups, m, r, w, has_bias=w is not None),
        lambda x, w, b: R.normalization.group_norm_forward(x, groups, w, b),
        lambda dy, x, m, r, w: R.normalization.group_norm_backward(dy, x, groups, m, r, w),
    )
    return fns, x, dy, w, b


def _check_row_norm(fns, x, dy, w, b):
    """fns: the kernels (x, w, b) -> (y, mean, rstd) and (dy, x, mean, rstd, w) -> grads, then the
    reference's two."""
    fwd, bwd, rfwd, rbwd = fns
    y, mean, rstd = fwd(x, w, b)
    ref_y, ref_mean, ref_rstd = rfwd(f64(x), w, b)
    check(y, ref_y, 1e-5 * max(1.0, np.abs(ref_y).max(initial=0.0)), "y")
    np.testing.assert_allclose(mean, ref_mean, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(rstd, ref_rstd, rtol=1e-6)
    y32, mean32, rstd32 = fwd(up(x), w, b)
    same_bits(y, y32, "y")
    assert mean.dtype == rstd.dtype == np.float32
    assert np.array_equal(mean, mean32) and np.array_equal(rstd, rstd32)  # fp32 statistics, the fp32 bits
    dx, dw, db = bwd(dy, x, mean, rstd, w)
    ref_dx, ref_dw, ref_db = rbwd(f64(dy), f64(x), mean, rstd, w)
    dx_scale = np.abs(f64(dy)).max(initial=0.0) * (1.0 if w is None else np.abs(w).max()) * rstd.max(initial=0.0)
    check(dx, ref_dx, 1e-5 * max(1.0, np.abs(ref_dx).max(initial=0.0), dx_scale), "dx")
    dx32, dw32, db32 = bwd(up(dy), up(x), mean, rstd, w)
    same_bits(dx, dx32, "dx")
    if w is not None:
        assert dw.dtype == db.dtype == np.float32 and np.array_equal(dw, dw32) and np.array_equal(db, db32)
        np.testing.assert_allclose(dw, ref_dw, rtol=1e-5, atol=1e-5 * max(1.0, np.abs(ref_dw).max()))
        np.testing.assert_allclose(db, ref_db, rtol=1e-5, atol=1e-5 * max(1.0, np.abs(ref_db).max()))


@pytest.mark.parametrize(
    "shape,normalized",
    [((3, 7), (7,)), ((4, 5, 33), (33,)), ((2, 3, 5, 7), (5, 7)), ((2, 1031), (1031,)), ((1, 1), (1,))],
    ids=str,
)
@pytest.mark.parametrize("affine", [True, False])
def test_layer_norm(rng, shape, normalized, affine):
    _check_row_norm(*layer_norm_case(rng, shape, normalized, affine))


@pytest.mark.parametrize(
    "shape,groups",
    [((2, 6, 5, 7), 3), ((3, 4, 9, 11), 1), ((2, 8, 3, 3), 8), ((5, 6), 2), ((1, 32, 31, 29), 4)],
    ids=str,
)
@pytest.mark.parametrize("affine", [True, False])
def test_group_norm(rng, shape, groups, affine):
    _check_row_norm(*group_norm_case(rng, shape, groups, affine))


# ---------------------------------------------------------------------- every ISA copy
def all_outputs(seed=5):
    """Every kernel of this file on fixed inputs, as uint16 / float32 arrays."""
    rng = np.random.default_rng(seed)
    x = bf(rng.standard_normal((4, 6, 9, 37)) * 2)
    dy = bf(rng.standard_normal(x.shape))
    w, b = rng.standard_normal(6).astype(np.float32), rng.standard_normal(6).astype(np.float32)
    out = []
    for name, args in SMOOTH.items():
        out += [getattr(F, f"{name}_forward")(x, *args), getattr(F, f"{name}_backward")(dy, x, *args)]
    out += [F.residual_add(x, dy), F.residual_add(x, dy, 0.3, 7, 0), F.residual_add(dy, None, 0.3, 7, 0)]
    pooled = F.avg_pool2d_forward(x, 3, 2, 1)
    out += [pooled, F.avg_pool2d_backward(bf(rng.standard_normal(pooled.shape)), x.shape, 3, 2, 1)]
    y, m, r = F.group_norm_forward(x, 3, w, b)
    out += [y, m, r, *F.group_norm_backward(dy, x, 3, m, r, w)]
    y, m, r = F.layer_norm_forward(x, 37)
    out += [y, m, r, F.layer_norm_backward(dy, x, 37, m, r)[0]]
    return [a.view(np.uint16) if a.dtype == bfloat16 else np.asarray(a) for a in out]


@pytest.mark.parametrize("isa", ISAS)
def test_every_isa_copy_gives_the_same_bits(tmp_path, isa):
    assert_isa_copy_agrees(tmp_path, isa, "test_bf16_layers", "all_outputs")


# --------------------------------------------------------------------- whole networks
def _twins(make, shape, seed=0):
    """The same network built in fp32 and in bf16 from one seed, and a batch for it."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(np.float32)
    nets = {}
    for precision in ("fp32", "bf16"):
        model = make()
        model.build(seed=seed, precision=precision)
        nets[precision] = model
    return nets, x


@pytest.mark.parametrize(
    "make,shape",
    [
        (
            lambda: __import__("fastopt").nn.models.resnet(depth=8, num_classes=5, in_channels=3, width=8),
            (6, 3, 16, 16),
        ),
        (
            lambda: (
                lambda nn: nn.Sequential(
                    nn.Linear(12, 24),
                    nn.LayerNorm(24),
                    nn.GELU(),
                    nn.Linear(24, 24),
                    nn.Tanh(),
                    nn.Linear(24, 16),
                    nn.Sigmoid(),
                    nn.Linear(16, 16),
                    nn.ELU(0.5),
                    nn.Linear(16, 5),
                )
            )(__import__("fastopt").nn),
            (9, 12),
        ),
        (
            lambda: (
                lambda nn: nn.Sequential(
                    nn.Conv2d(3, 8, 3, padding=1),
                    nn.GroupNorm(2, 8),
                    nn.GELU(),
                    nn.AvgPool2d(2),
                    nn.Residual(nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.GroupNorm(4, 8)), drop_path=0.2),
                    nn.GlobalAvgPool2d(),
                    nn.Linear(8, 5),
                )
            )(__import__("fastopt").nn),
            (4, 3, 10, 10),
        ),
    ],
    ids=["resnet8", "layernorm-mlp", "groupnorm-cnn"],
)
def test_bf16_network_tracks_its_fp32_twin(make, shape):
    """Forward and backward of a bf16 network against the same network in fp32. Every layer
    rounds its activations (and conv/linear their weight copies) to bf16, u = 2^-8, and batch
    norm's backward cancels (dy - mean dy - xhat mean(dy xhat)), which amplifies those roundings
    in the gradients: torch's bf16 autocast on the same networks differs from torch fp32 by
    5-8% (relative L2) in the gradients, and fastopt's by the same (next test). The bounds
    (logits 5% of the largest, loss 2%, gradients 30% relative L2 and cosine >= 0.95, measured
    1.6%, 0.3%, 13-25%, 0.97-0.99) pass that and fail a layer that dropped its bf16 path,
    scaled or transposed anything (O(1) errors)."""
    nets, x = _twins(make, shape)
    out = {}
    for precision, model in nets.items():
        logits, loss, grad = _forward_backward(model, x)
        assert logits.dtype == (bfloat16 if precision == "bf16" else np.float32)
        out[precision] = (f64(logits), loss, grad)
    (l32, loss32, g32), (l16, loss16, g16) = out["fp32"], out["bf16"]
    assert np.abs(l16 - l32).max() <= 0.05 * np.abs(l32).max()
    assert abs(loss16 - loss32) <= 0.02 * abs(loss32)
    assert np.all(np.isfinite(g16))
    assert _rel(g16, g32) <= 0.3 and g16 @ g32 >= 0.95 * np.linalg.norm(g16) * np.linalg.norm(g32)


def _forward_backward(model, x):
    from fastopt.nn import SoftmaxCrossEntropy

    logits = model.forward(x, training=True)
    loss_fn = SoftmaxCrossEntropy()
    loss = float(loss_fn.forward(logits, np.arange(x.shape[0]) % 5))
    model.backward(loss_fn.backward())
    # named_parameters' order is torch's parameters() order for the same structure
    return logits, loss, np.concatenate([f64(p.grad).ravel() for _, p in model.named_parameters()])


def _rel(a, b):
    return np.linalg.norm(a - b) / np.linalg.norm(b)


def test_bf16_resnet_deviates_from_fp32_as_torch_autocast_does():
    """fastopt's ResNet-8 in bf16 against its fp32 self, and the same network in torch (same
    weights, through the state_dict names) under bf16 autocast against torch fp32: bf16 mixed
    precision is expected to move the gradients by some percent; fastopt's move must be of
    torch's size (within 1.5x), not larger."""
    torch = pytest.importorskip("torch")
    tnn = torch.nn
    from fastopt import nn

    class Residual(tnn.Module):
        def __init__(self, body, shortcut):
            super().__init__()
            self.body, self.shortcut = body, shortcut

        def forward(self, x):
            return self.body(x) + (x if self.shortcut is None else self.shortcut(x))

    def to_torch(m):
        if isinstance(m, nn.Sequential):
            return tnn.Sequential(*[to_torch(c) for _, c in m.children()])
        if isinstance(m, nn.Residual):
            return Residual(to_torch(m.body), None if m.shortcut is None else to_torch(m.shortcut))
        if isinstance(m, nn.Conv2d):
            w = m.params["weight"].shape
            return tnn.Conv2d(w[1], w[0], w[2], stride=m.conv["stride"], padding=m.conv["padding"], bias=False)
        if isinstance(m, nn.BatchNorm2d):
            return tnn.BatchNorm2d(m.params["weight"].shape[0])
        if isinstance(m, nn.Linear):
            w = m.params["weight"].shape
            return tnn.Linear(w[1], w[0])
        return {nn.ReLU: tnn.ReLU, nn.GlobalAvgPool2d: lambda: tnn.Sequential(tnn.AdaptiveAvgPool2d(1), tnn.Flatten())}[
            type(m)
        ]()

    make = lambda: nn.models.resnet(depth=8, num_classes=5, in_channels=3, width=8)  # noqa: E731
    nets, x = _twins(make, (16, 3, 16, 16))
    tmodel = to_torch(make())
    tmodel.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in nets["fp32"].state_dict().items()})
    xt, yt = torch.from_numpy(x), torch.from_numpy(np.arange(16) % 5)

    def torch_grads(bf16):
        tmodel.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = tmodel(xt)
        torch.nn.functional.cross_entropy(out.float(), yt).backward()
        return torch.cat([p.grad.flatten() for p in tmodel.parameters()]).double().numpy()

    t32, t16 = torch_grads(False), torch_grads(True)
    f32, f16 = (_forward_backward(nets[p], x)[2] for p in ("fp32", "bf16"))
    assert _rel(f32, t32) < 1e-4  # the same network: fp32 gradients agree to fp32 rounding
    assert _rel(f16, f32) <= 1.5 * _rel(t16, t32), (_rel(f16, f32), _rel(t16, t32))


def test_bf16_resnet_trains():
    """A bf16 ResNet-8 learns a separable task as its fp32 twin does: loss falls by half within 40
    SGD steps in both (same data, same seed)."""
    from fastopt import nn, optim

    rng = np.random.default_rng(1)
    x = rng.standard_normal((32, 3, 8, 8)).astype(np.float32)
    labels = (x[:, 0].mean(axis=(1, 2)) > 0).astype(np.int64)
    final = {}
    for precision in ("fp32", "bf16"):
        model = nn.models.resnet(depth=8, num_classes=2, in_channels=3, width=8)
        store = model.build(seed=0, precision=precision)
        opt = optim.SGD(store.param_groups(0.0), lr=0.1, momentum=0.9)
        loss_fn, losses = nn.SoftmaxCrossEntropy(), []
        for _ in range(40):
            loss = loss_fn.forward(model.forward(x, training=True), labels)
            model.backward(loss_fn.backward())
            opt.step(store.grads)
            losses.append(float(loss))
        final[precision] = losses
        assert losses[-1] < 0.5 * losses[0], (precision, losses[0], losses[-1])
    assert abs(final["bf16"][-1] - final["fp32"][-1]) < 0.3, final
