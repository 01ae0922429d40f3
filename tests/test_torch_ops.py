"""fastopt.torch.nn.functional (the fastopt:: custom ops) against torch: every op and its gradients
against torch's own op in float64 on the same float32 inputs, torch.library.opcheck on every op,
autocast, channels_last, the fallbacks and the argument checks.

Tolerance: a float32 sum of n products whose absolute values add up to S is off by at most
gamma_n * S, gamma_n = n u / (1 - n u), u = 2^-24 (one rounding per term, plus the product's).
Each check below is max |got - want| <= 4 (n + 2) u S with n the reduction length of that output
and S the largest such sum over the output (computed in float64 on |inputs|): the 4 leaves room
for Winograd's transforms and the few elementwise roundings around the sums. Normalization
outputs use the same rule with n = the statistics' reduction length and S bounded by their
terms' sizes (see norm_scales). Max, relu and dropout are exact up to one rounding."""

import math

import numpy as np
import pytest
from conftest import torch_with_cuda

torch = pytest.importorskip("torch")
import torch.nn.functional as TF  # noqa: E402

from fastopt.torch import ops  # noqa: E402
from fastopt.torch.nn import functional as F  # noqa: E402

U = 2.0**-24


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def device(request):
    if request.param == "cuda":
        torch_with_cuda()
    return request.param


def randn(rng, *shape, device="cpu"):
    return torch.from_numpy(rng.standard_normal(shape).astype(np.float32)).to(device)


def assert_close(got, want, terms, scale, what):
    err = (got.detach().cpu().double() - want.detach().cpu().double()).abs().max().item() if want.numel() else 0.0
    bound = 4 * (terms + 2) * U * scale
    assert err <= bound, f"{what}: max error {err:.3g} > {bound:.3g} ({terms} terms, scale {scale:.3g})"


def run_both(fast, peer, inputs, dy, peer_inputs=None):
    """(out, grads) of fast on float32 inputs and of peer on the same values in float64 (or on
    peer_inputs, e.g. absolute values); None inputs stay None and get no gradient."""

    def go(fn, tensors, dtype, device):
        leaves = [None if t is None else t.detach().to(device, dtype).requires_grad_() for t in tensors]
        out = fn(*leaves)
        out.backward(dy.to(device, dtype))
        return out.detach(), [None if t is None else t.grad for t in leaves]

    device = next(t for t in inputs if t is not None).device
    return go(fast, inputs, torch.float32, device), go(peer, peer_inputs or inputs, torch.float64, "cpu")


def absolute(ts):
    return [None if t is None else t.abs() for t in ts]


# ----------------------------------------------------------------------------- conv2d, linear
CONV = [  # n, c, h, w, k, (r, s), stride, padding, dilation, groups, bias
    (2, 3, 9, 7, 5, (3, 3), 1, 1, 1, 1, True),
    (3, 8, 10, 10, 8, (3, 3), 1, 1, 1, 1, False),  # >= 8 channels, 3x3/1: the Winograd path
    (2, 6, 11, 8, 4, (3, 2), (2, 1), (1, 0), (1, 2), 2, True),
    (1, 4, 7, 7, 4, (3, 3), 1, "same", 2, 4, True),  # depthwise, 'same' with dilation
    (2, 4, 8, 9, 6, (2, 2), 1, "same", 1, 1, True),  # 'same' with an even kernel: asymmetric
    (2, 5, 8, 9, 3, (1, 1), 2, "valid", 1, 1, False),
]


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")  # torch's own copy, not ours
@pytest.mark.parametrize("n, c, h, w, k, rs, stride, padding, dilation, groups, bias", CONV)
def test_conv2d_matches_torch_float64(device, rng, n, c, h, w, k, rs, stride, padding, dilation, groups, bias):
    x, wt = randn(rng, n, c, h, w, device=device), randn(rng, k, c // groups, *rs, device=device)
    b = randn(rng, k, device=device) if bias else None

    def fast(x, w, b):
        return F.conv2d(x, w, b, stride, padding, dilation, groups)

    def peer(x, w, b):
        return TF.conv2d(x, w, b, stride, padding, dilation, groups)

    dy = randn(rng, *peer(x.cpu(), wt.cpu(), None if b is None else b.cpu()).shape)
    (y, grads), (want, wants) = run_both(fast, peer, [x, wt, b], dy)
    # The same computation on |x|, |w|, |b|, |dy| gives each output's sum of absolute terms.
    (_, _), (abs_y, abs_grads) = run_both(fast, peer, [x, wt, b], dy.abs(), absolute([x, wt, b]))
    r, s = rs
    pq = want.shape[0] * want.shape[2] * want.shape[3]
    terms = {"y": c // groups * r * s + 1, "dx": k // groups * r * s, "dw": pq, "db": pq}
    assert y.dtype == torch.float32 and y.is_contiguous() and y.device.type == device
    assert_close(y, want, terms["y"], abs_y.abs().max().item(), "y")
    for name, g, gw, ga in zip(("dx", "dw", "db"), grads, wants, abs_grads):
        if gw is not None:
            assert_close(g, gw, terms[name], ga.max().item(), name)


def test_conv2d_unbatched_and_channels_last(rng):
    x, w, b = randn(rng, 2, 3, 9, 9), randn(rng, 5, 3, 3, 3), randn(rng, 5)
    y = F.conv2d(x[0], w, b, padding=1)
    assert y.shape == (5, 9, 9) and torch.equal(y, F.conv2d(x, w, b, padding=1)[0])
    cl = x.to(memory_format=torch.channels_last)
    assert not cl.is_contiguous()
    assert torch.equal(F.conv2d(cl, w, b, padding=1), F.conv2d(x, w, b, padding=1))


@pytest.mark.parametrize("shape, out, bias", [((3, 5, 7), 4, True), ((10, 33), 17, False), ((6,), 3, True)])
def test_linear_matches_torch_float64(device, rng, shape, out, bias):
    x, w = randn(rng, *shape, device=device), randn(rng, out, shape[-1], device=device)
    b = randn(rng, out, device=device) if bias else None
    dy = randn(rng, *shape[:-1], out)
    (y, grads), (want, wants) = run_both(F.linear, TF.linear, [x, w, b], dy)
    (_, _), (abs_y, abs_grads) = run_both(F.linear, TF.linear, [x, w, b], dy.abs(), absolute([x, w, b]))
    rows = x.numel() // shape[-1]
    assert_close(y, want, shape[-1] + 1, abs_y.max().item(), "y")
    for name, g, gw, ga, terms in zip(("dx", "dw", "db"), grads, wants, abs_grads, (out, rows, rows)):
        if gw is not None:
            assert_close(g, gw, terms, ga.max().item(), name)


# ---------------------------------------------------------------------------- normalization
def norm_scales(xhat, rstd, weight, bias, dy, m):
    """Bounds on each output's sum of absolute terms: y = xhat w + b; dx = rstd w (dy - mean(dy)
    - xhat mean(dy xhat)); dw = sum dy xhat; db = sum dy, sums over the m values of a group."""
    wmax = 1.0 if weight is None else weight.abs().max().item()
    bmax = 0.0 if bias is None else bias.abs().max().item()
    xmax, dmax = xhat.abs().max().item(), dy.abs().max().item()
    return {"y": xmax * wmax + bmax, "dx": rstd * wmax * dmax * (2 + xmax**2), "dw": m * dmax * xmax, "db": m * dmax}


def check_norm(fast, peer, x, weight, bias, dy, xhat, rstd, m):
    (y, grads), (want, wants) = run_both(fast, peer, [x, weight, bias], dy)
    scales = norm_scales(xhat, rstd, weight, bias, dy, m)
    assert y.dtype == torch.float32 and y.shape == x.shape
    assert_close(y, want, m, scales["y"], "y")
    for name, g, gw in zip(("dx", "dw", "db"), grads, wants):
        assert (g is None) == (gw is None), name
        if gw is not None:
            assert_close(g, gw, m, scales[name], name)


AFFINE = {"affine": (True, True), "none": (False, False), "weight-only": (True, False), "bias-only": (False, True)}


@pytest.mark.parametrize("affine", list(AFFINE))
@pytest.mark.parametrize("shape", [(16, 5), (4, 3, 5, 7), (3, 2, 9)])
@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_matches_torch_float64(device, rng, shape, training, affine):
    c, eps, momentum = shape[1], 1e-5, 0.3
    x = randn(rng, *shape, device=device) * 3 + 1
    weight, bias = (randn(rng, c, device=device) if on else None for on in AFFINE[affine])
    rm, rv = randn(rng, c, device=device), torch.from_numpy(rng.uniform(0.5, 2, c).astype(np.float32)).to(device)
    stats = {}

    def fast(x, w, b):
        stats["mean"], stats["var"] = rm.clone(), rv.clone()
        return F.batch_norm(x, stats["mean"], stats["var"], w, b, training, momentum, eps)

    def peer(x, w, b):
        stats["mean64"], stats["var64"] = rm.cpu().double(), rv.cpu().double()
        return TF.batch_norm(x, stats["mean64"], stats["var64"], w, b, training, momentum, eps)

    dims = [0] + list(range(2, len(shape)))
    x64 = x.cpu().double()
    m = x.numel() // c
    if training:
        xhat = TF.batch_norm(x64, None, None, training=True, eps=eps)
        rstd = (x64.var(dims, unbiased=False) + eps).rsqrt().max().item()
    else:
        rstd = (rv.cpu().double() + eps).rsqrt().max().item()
        xhat = TF.batch_norm(x64, rm.cpu().double(), rv.cpu().double(), training=False, eps=eps)
    check_norm(fast, peer, x, weight, bias, randn(rng, *shape), xhat, rstd, m)
    # torch's running-stat rule, unbiased variance: a few roundings of values of size |running| + |batch|.
    for key in ("mean", "var"):
        scale = stats[key + "64"].abs().max().item() + x64.abs().max().item() ** 2
        assert_close(stats[key], stats[key + "64"], m, scale, f"running_{key}")


@pytest.mark.parametrize(
    "shape, normalized, affine",
    [
        ((4, 3, 5, 6), (5, 6), "affine"),
        ((7, 10), 10, "none"),
        ((2, 3, 17), (17,), "weight-only"),
        ((5, 8), (8,), "bias-only"),
    ],
)
def test_layer_norm_matches_torch_float64(device, rng, shape, normalized, affine):
    norm = (normalized,) if isinstance(normalized, int) else normalized
    x = randn(rng, *shape, device=device) * 2 - 1
    weight, bias = (randn(rng, *norm, device=device) if on else None for on in AFFINE[affine])
    x64 = x.cpu().double()
    dims = list(range(len(shape) - len(norm), len(shape)))
    rstd = (x64.var(dims, unbiased=False) + 1e-5).rsqrt().max().item()
    check_norm(
        lambda x, w, b: F.layer_norm(x, normalized, w, b),
        lambda x, w, b: TF.layer_norm(x, norm, w, b),
        x,
        weight,
        bias,
        randn(rng, *shape),
        TF.layer_norm(x64, norm),
        rstd,
        math.prod(norm),
    )


@pytest.mark.parametrize(
    "shape, groups, affine",
    [((4, 6, 5, 5), 3, "affine"), ((3, 4, 7), 4, "affine"), ((2, 8, 3, 3), 1, "none"), ((2, 6, 4, 3), 2, "bias-only")],
)
def test_group_norm_matches_torch_float64(device, rng, shape, groups, affine):
    x = randn(rng, *shape, device=device) + 0.5
    c = shape[1]
    weight, bias = (randn(rng, c, device=device) if on else None for on in AFFINE[affine])
    x64 = x.cpu().double()
    rstd = (x64.reshape(shape[0], groups, -1).var(-1, unbiased=False) + 1e-5).rsqrt().max().item()

    def peer(x, w, b):  # torch's group_norm fails backward with a bias but no weight: add the bias apart
        y = TF.group_norm(x, groups, w)
        return y if b is None else y + b.view(-1, *[1] * (x.dim() - 2))

    check_norm(
        lambda x, w, b: F.group_norm(x, groups, w, b),
        peer,
        x,
        weight,
        bias,
        randn(rng, *shape),
        TF.group_norm(x64, groups),
        rstd,
        x[0].numel() // groups,
    )


def test_batch_norm_training_needs_more_than_one_value():
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        F.batch_norm(torch.ones(1, 3), None, None, training=True)


# ----------------------------------------------------------------------- dropout, relu, pooling
@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_dropout(device, rng, p):
    x = randn(rng, 64, 257, device=device)
    x.requires_grad_()
    torch.manual_seed(1)
    y = F.dropout(x, p)
    torch.manual_seed(1)
    assert torch.equal(F.dropout(x, p), y), "torch.manual_seed must make the mask reproducible"
    assert not torch.equal(F.dropout(x, p), y)
    keep = y != 0
    scaled = x.detach().double() / (1 - p)
    # kept: x * float32(1 / (1 - p)), two roundings of a value of size |x| / (1 - p)
    assert_close(y[keep], scaled[keep], 0, scaled.abs().max().item(), "kept values")
    n = x.numel()
    assert abs(keep.sum().item() - n * (1 - p)) < 5 * math.sqrt(n * p * (1 - p)), "keep rate off by > 5 sigma"
    dy = randn(rng, *x.shape, device=device)
    y.backward(dy)
    # backward regenerates the forward's mask from the saved seed
    assert torch.equal(x.grad != 0, keep)
    assert_close(x.grad[keep], dy[keep].double() / (1 - p), 0, dy.abs().max().item() / (1 - p), "dx")


def test_dropout_edges(rng):
    x = randn(rng, 5, 7)
    assert F.dropout(x, 0.5, training=False) is x
    assert torch.equal(F.dropout(x, 0.0), x)
    assert torch.equal(F.dropout(x, 1.0), torch.zeros_like(x))
    y = x.clone()
    torch.manual_seed(3)
    out = F.dropout(y, 0.5, inplace=True)  # documented fallback: torch's in-place dropout
    assert out is y and not torch.equal(y, x)
    with pytest.raises(ValueError, match="p: dropout probability"):
        F.dropout(x, 1.5)


def test_relu_is_exact(device, rng):
    x = randn(rng, 3, 5, 7, 2, device=device)
    x.view(-1)[:3] = torch.tensor([0.0, -0.0, float("nan")])
    fast, ref = x.clone().requires_grad_(), x.clone().requires_grad_()
    y, want = F.relu(fast), TF.relu(ref)
    assert torch.equal(y.isnan(), want.isnan()) and torch.equal(y.nan_to_num(), want.nan_to_num())
    dy = randn(rng, *x.shape, device=device)
    y.backward(dy)
    want.backward(dy)
    assert torch.equal(fast.grad.nan_to_num(), ref.grad.nan_to_num())


@pytest.mark.parametrize(
    "shape, kernel, stride, padding",
    [((2, 3, 9, 8), 3, 2, 1), ((2, 4, 8, 8), 2, None, 0), ((1, 2, 7, 7), (3, 2), (1, 2), (1, 0)), ((3, 6, 5), 2, 1, 1)],
)
def test_max_pool2d_matches_torch(device, rng, shape, kernel, stride, padding):
    x = randn(rng, *shape, device=device)
    want = TF.max_pool2d(x.cpu().double(), kernel, stride, padding)
    dy = randn(rng, *want.shape)
    (y, (dx,)), (want, (dx_want,)) = run_both(
        lambda x: F.max_pool2d(x, kernel, stride, padding), lambda x: TF.max_pool2d(x, kernel, stride, padding), [x], dy
    )
    assert torch.equal(y.cpu().double(), want)
    k, s = F._pair(kernel, "k"), F._pair(stride if stride is not None else kernel, "s")
    overlap = math.ceil(k[0] / s[0]) * math.ceil(k[1] / s[1])  # windows that can pick one input
    assert_close(dx, dx_want, overlap, overlap * dy.abs().max().item(), "dx")


def test_max_pool2d_fallbacks_to_torch(rng):
    x = randn(rng, 2, 3, 9, 8)
    assert torch.equal(F.max_pool2d(x, 2, ceil_mode=True), TF.max_pool2d(x, 2, ceil_mode=True))
    assert torch.equal(F.max_pool2d(x, 3, 1, dilation=2), TF.max_pool2d(x, 3, 1, dilation=2))
    y, idx = F.max_pool2d(x, 2, return_indices=True)
    assert idx.dtype == torch.int64 and torch.equal(y, TF.max_pool2d(x, 2))
    assert "ceil_mode=True" in F.max_pool2d_fallback(ceil_mode=True)
    assert F.max_pool2d_fallback() is None


# ------------------------------------------------------------------------- autocast, opcheck
def test_autocast_bf16_runs_the_bf16_kernels(rng):
    """Under torch.autocast("cpu", bfloat16) conv2d and linear cast to bf16 as torch's own do and
    the others follow their input (bf16 activations stay bf16, parameters float32): each result
    is then the op on those bf16 tensors outside autocast, bit for bit (test_torch_bf16.py holds
    the bf16 ops to the reference)."""
    x, w, b = randn(rng, 2, 4, 6, 6), randn(rng, 5, 4, 3, 3), randn(rng, 5)
    g, gb = randn(rng, 5), randn(rng, 5)
    xb = x.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = F.conv2d(xb, w, b, padding=1)
        z = F.group_norm(F.relu(y), 5, g, gb)
        zf = F.group_norm(x, 2)  # float32 in: stays float32, as torch's group_norm does under CPU autocast
    assert y.dtype == z.dtype == torch.bfloat16 and zf.dtype == torch.float32
    y_want = F.conv2d(x.bfloat16(), w.bfloat16(), b.bfloat16(), padding=1)
    assert torch.equal(y, y_want)
    assert torch.equal(z, F.group_norm(F.relu(y_want), 5, g, gb))
    assert torch.equal(zf, F.group_norm(x, 2))
    z.float().sum().backward()
    assert xb.grad.dtype == torch.float32 and xb.grad.abs().sum() > 0
    w2, b2 = w.clone().requires_grad_(), b.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        F.linear(x.reshape(2, -1)[:, :36], w2.reshape(5, 36), b2).float().sum().backward()
    assert w2.grad.dtype == b2.grad.dtype == torch.float32 and w2.grad.abs().sum() > 0


def test_autocast_float16_and_cuda_run_float32(rng):
    x, w = randn(rng, 2, 4, 6, 6), randn(rng, 5, 4, 3, 3)
    with torch.autocast("cpu", dtype=torch.float16):  # no fp16 kernels: float32, never a silent bf16
        y = F.conv2d(x.half(), w, padding=1)
    assert y.dtype == torch.float32 and torch.equal(y, F.conv2d(x.half().float(), w, padding=1))


def _opcheck_cases(rng):
    r = lambda *s: randn(rng, *s).requires_grad_()  # noqa: E731
    x4 = r(2, 4, 7, 9)
    return {
        "conv2d": (ops.conv2d, (x4, r(6, 2, 3, 3), r(6), [1, 2], [1, 0], [1, 1], 2)),
        "conv2d_backward": (
            ops.conv2d_backward,
            (randn(rng, 2, 6, 7, 4), x4.detach(), randn(rng, 6, 2, 3, 3), [1, 2], [1, 0], [1, 1], 2, True, False, True),
        ),
        "linear": (ops.linear, (r(3, 5, 7), r(4, 7), r(4))),
        "batch_norm-train": (ops.batch_norm, (r(4, 3, 5, 5), r(3), r(3), None, None, True, 1e-5)),
        "batch_norm-eval": (ops.batch_norm, (r(4, 3, 5, 5), r(3), None, randn(rng, 3), torch.ones(3), False, 1e-5)),
        "layer_norm": (ops.layer_norm, (r(4, 3, 5, 6), [5, 6], r(5, 6), r(5, 6), 1e-5)),
        "group_norm": (ops.group_norm, (r(4, 6, 5, 5), 3, None, r(6), 1e-5)),
        "dropout": (ops.dropout, (r(4, 6, 5, 5), 0.3, torch.tensor(1234))),
        "relu": (ops.relu, (r(4, 6, 5, 5),)),
        "max_pool2d": (ops.max_pool2d, (r(2, 3, 9, 8), [3, 3], [2, 2], [1, 1])),
    }


@pytest.mark.parametrize(
    "name",
    [
        "conv2d",
        "conv2d_backward",
        "linear",
        "batch_norm-train",
        "batch_norm-eval",
        "layer_norm",
        "group_norm",
        "dropout",
        "relu",
        "max_pool2d",
    ],
)
def test_opcheck(rng, name):
    op, args = _opcheck_cases(rng)[name]
    torch.library.opcheck(op, args)


# ------------------------------------------------------------------------------- bad input
def test_bad_input_names_the_argument(rng):
    x, w = randn(rng, 2, 3, 5, 5), randn(rng, 4, 3, 3, 3)
    with pytest.raises(TypeError, match=r"input: expected a float32 or bfloat16 tensor, got torch.float64"):
        F.conv2d(x.double(), w)
    with pytest.raises(
        TypeError, match=r"weight: expected a torch.float32 tensor \(input's dtype\), got torch.float16"
    ):
        F.conv2d(x, w.half())
    with pytest.raises(
        TypeError, match=r"weight: expected a torch.bfloat16 tensor \(input's dtype\), got torch.float32"
    ):
        F.conv2d(x.bfloat16(), w)
    with pytest.raises(
        TypeError,
        match=r"weight: expected a torch.float32 tensor \(parameters stay float32\), got "
        r"torch.bfloat16",
    ):
        F.batch_norm(x.bfloat16(), None, None, w[0, 0, 0].bfloat16(), None, training=True)
    with pytest.raises(ValueError, match="weight: on meta, but input is on cpu"):
        F.conv2d(x, w.to("meta"))
    with pytest.raises(ValueError, match="weight: expected \\(out_channels, 3 / groups=1"):
        F.conv2d(x, randn(rng, 4, 2, 3, 3))
    with pytest.raises(ValueError, match="padding: expected 'valid', 'same'"):
        F.conv2d(x, w, padding="full")
    with pytest.raises(ValueError, match="padding='same' is not supported for strided"):
        F.conv2d(x, w, padding="same", stride=2)
    with pytest.raises(TypeError, match="stride: expected an integer, got bool"):
        F.conv2d(x, w, stride=True)
    with pytest.raises(ValueError, match="bias: expected shape \\(3,\\)"):
        F.batch_norm(x, None, None, None, torch.ones(4), training=True)
    with pytest.raises(ValueError, match="running_mean: normalizing with running statistics"):
        F.batch_norm(x, None, None)
    with pytest.raises(ValueError, match="normalized_shape: \\[4\\] must be the trailing dims"):
        F.layer_norm(x, 4)
    with pytest.raises(ValueError, match="num_groups: must divide the 3 channels"):
        F.group_norm(x, 2)
    with pytest.raises(ValueError, match="padding: must be at most half of kernel_size"):
        F.max_pool2d(x, 2, padding=2)
    with pytest.raises(TypeError, match=r"input: expected a float32 or bfloat16 tensor, got torch.int64"):
        F.relu(torch.arange(4))
    with pytest.raises(ValueError, match="weight: expected \\(out_features, 3\\)"):
        F.linear(randn(rng, 2, 3), randn(rng, 4, 5))
    with pytest.raises(ValueError, match="seed: expected a one-element int64 CPU tensor"):
        ops.dropout(x, 0.5, torch.tensor(1.0))
