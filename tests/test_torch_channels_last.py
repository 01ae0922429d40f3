"""channels_last tensors through fastopt's torch front as they lie: relu, dropout, batch norm and
max pool (CPU) run on the channels_last storage, so outputs and input gradients come back
channels_last, with the values of the NCHW call; float32 and bfloat16, torch.library.opcheck on
the channels_last cases (the fake kernels give the real strides), and a converted model under
bf16 autocast whose activations all stay channels_last.

Tolerances: relu and max pool select or zero their inputs, so the two layouts agree exactly
(max pool's dx bit for bit: both kernels add the same terms in the same order, see
test_pooling_nhwc.py). Dropout's mask is indexed by storage position, so a channels_last input
gets another mask than its NCHW copy: each output is checked to be x * float32(1 / (1 - p))
(rounded once for bf16) or 0, the backward to use the forward's mask, and the drop fraction to
lie within 5 binomial sigmas of p. Batch norm runs channels_last through the kernel's 2-d
(N*H*W, C) path, which sums in another order than the NCHW path (both in double): the fp32
statistics, rounded once from double sums that differ by ~count * 2^-53 relative, are within one
ulp, and every output is a few fp32 operations on them, so the layouts agree within 2^-21 (8
fp32 ulps) of the largest magnitude in the output's channel (parameter gradients: in the
vector); bf16 outputs can round to neighbouring bf16 values, adding 2^-7 |y| (one bf16 ulp).
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import fastopt.torch as ft  # noqa: E402
from fastopt.torch import ops  # noqa: E402
from fastopt.torch.nn import functional as F  # noqa: E402

CL = torch.channels_last
DTYPES = [torch.float32, torch.bfloat16]
DT_IDS = ["fp32", "bf16"]


def is_cl(t):
    return t.is_contiguous(memory_format=CL) and not t.is_contiguous()


def draw(rng, shape, dtype, cl=True):
    t = torch.from_numpy(rng.standard_normal(shape).astype(np.float32)).to(dtype)
    return t.contiguous(memory_format=CL) if cl else t


def run(fn, x, grad):
    """fn(x) and x's gradient for the upstream gradient `grad`."""
    x = x.detach().clone().requires_grad_()
    y = fn(x)
    y.backward(grad)
    return y.detach(), x.grad


def both_layouts(fn, rng, shape, dtype, grad_cl=True):
    """(y, dx) of fn on a channels_last x and on its NCHW copy, the same upstream gradient, which
    arrives channels_last (grad_cl) or NCHW; asserts the channels_last run's y and dx are."""
    x = draw(rng, shape, dtype)
    g = draw(rng, fn(x).shape, dtype, cl=grad_cl)
    y_cl, dx_cl = run(fn, x, g)
    y_ref, dx_ref = run(fn, x.contiguous(), g.contiguous())
    assert y_cl.dtype == y_ref.dtype == dx_cl.dtype == dtype
    assert is_cl(y_cl), y_cl.stride()
    assert is_cl(dx_cl), dx_cl.stride()
    return (y_cl, dx_cl), (y_ref, dx_ref)


@pytest.mark.parametrize("grad_cl", [True, False], ids=["grad-cl", "grad-nchw"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
def test_relu(rng, dtype, grad_cl):
    (y, dx), (y_ref, dx_ref) = both_layouts(F.relu, rng, (3, 5, 7, 9), dtype, grad_cl)
    assert torch.equal(y, y_ref) and torch.equal(dx, dx_ref)


# (kernel_size, stride, padding) as the ops take them, NCHW shape
POOLS = [(([3, 3], [2, 2], [1, 1]), (3, 5, 7, 9)), (([2, 2], [2, 2], [0, 0]), (2, 70, 9, 11))]
POOLS += [(([3, 2], [2, 1], [1, 0]), (2, 3, 13, 11))]


@pytest.mark.parametrize("hyper,shape", POOLS, ids=["k3s2p1", "k2s2", "k32s21p10"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
def test_max_pool2d(rng, dtype, hyper, shape):
    fn = lambda x: F.max_pool2d(x, *hyper)  # noqa: E731
    (y, dx), (y_ref, dx_ref) = both_layouts(fn, rng, shape, dtype)
    assert torch.equal(y, y_ref) and torch.equal(dx, dx_ref)
    x = draw(rng, shape, dtype).round()  # ties: the first max in window order, in both layouts
    y, idx = ops.max_pool2d(x, *hyper)
    y_ref, idx_ref = ops.max_pool2d(x.contiguous(), *hyper)
    assert is_cl(idx) and torch.equal(y, y_ref) and torch.equal(idx, idx_ref)


@pytest.mark.parametrize("grad_cl", [True, False], ids=["grad-cl", "grad-nchw"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
def test_dropout(rng, dtype, grad_cl):
    p, shape = 0.3, (4, 6, 9, 11)
    x = draw(rng, shape, dtype).detach().requires_grad_()
    torch.manual_seed(7)
    y = F.dropout(x, p)
    assert is_cl(y) and y.dtype == dtype
    factor = torch.tensor(1 / (1 - p), dtype=torch.float32)
    kept = y != 0
    assert torch.equal(y[kept], (x.detach().float() * factor).to(dtype)[kept])
    n = x.numel()
    assert abs((n - kept.sum().item()) / n - p) < 5 * (p * (1 - p) / n) ** 0.5
    g = draw(rng, shape, dtype, cl=grad_cl)
    y.backward(g)
    assert is_cl(x.grad)
    assert torch.equal(x.grad, torch.where(kept, (g.float() * factor).to(dtype), torch.zeros((), dtype=dtype)))
    # the mask follows storage order: the channels_last call is the NHWC-ordered NCHW call
    seed = torch.tensor(99)
    nhwc = x.detach().permute(0, 2, 3, 1)
    assert torch.equal(ops.dropout(x.detach(), p, seed), ops.dropout(nhwc, p, seed).permute(0, 3, 1, 2))


def assert_layouts_agree(got, want, channel_dim, bf16):
    got, want = got.detach().double(), want.detach().double()
    dims = [d for d in range(want.dim()) if d != channel_dim]
    scale = want.abs().amax(dim=dims, keepdim=True) if dims else want.abs().max()
    bound = 2.0**-21 * scale + (2.0**-7 * want.abs() if bf16 else 0.0)
    assert torch.all((got - want).abs() <= bound), (got - want).abs().max()


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("shape", [(4, 6, 5, 7), (3, 70, 9, 9), (2, 5, 31, 17)])
@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
def test_batch_norm(rng, dtype, shape, training):
    c = shape[1]
    x = (draw(rng, shape, dtype).float() * 3 + 5).to(dtype).contiguous(memory_format=CL)  # offset mean
    g = draw(rng, shape, dtype)
    runs = {}
    for name, xin, gin in (("cl", x, g), ("nchw", x.contiguous(), g.contiguous())):
        layer = ft.convert(torch.nn.BatchNorm2d(c))
        torch.manual_seed(1)
        with torch.no_grad():
            layer.weight.normal_()
            layer.bias.normal_()
            layer.running_mean.normal_()
            layer.running_var.uniform_(0.5, 2.0)
        layer.train(training)
        xin = xin.detach().clone().requires_grad_()
        y = layer(xin)
        y.backward(gin)
        runs[name] = (y, xin.grad, layer.weight.grad, layer.bias.grad, layer.running_mean, layer.running_var)
    y, dx = runs["cl"][:2]
    assert is_cl(y) and is_cl(dx) and y.dtype == dx.dtype == dtype
    bf16 = dtype == torch.bfloat16
    for i, (got, want) in enumerate(zip(runs["cl"], runs["nchw"])):
        assert_layouts_agree(got, want, 1 if i < 2 else 0, bf16 and i < 2)


def _opcheck_cases(rng, dtype):
    r = lambda *s: draw(rng, s, dtype).requires_grad_()  # noqa: E731
    p = lambda *s: torch.from_numpy(rng.standard_normal(s).astype(np.float32)).requires_grad_()  # noqa: E731
    x = r(2, 6, 7, 9)
    y, idx = ops.max_pool2d(x.detach(), [3, 3], [2, 2], [1, 1])
    mean, invstd = torch.randn(6), torch.rand(6) + 0.5
    return {
        "relu": (ops.relu, (x,)),
        "relu_backward": (ops.relu_backward, (draw(rng, x.shape, dtype), x.detach())),
        "dropout": (ops.dropout, (x, 0.3, torch.tensor(1234))),
        "dropout_backward": (ops.dropout_backward, (draw(rng, x.shape, dtype), 0.3, torch.tensor(1234))),
        "batch_norm-train": (ops.batch_norm, (x, p(6), p(6), None, None, True, 1e-5)),
        "batch_norm-eval": (ops.batch_norm, (x, p(6), None, torch.randn(6), torch.ones(6), False, 1e-5)),
        "batch_norm_backward": (
            ops.batch_norm_backward,
            (draw(rng, x.shape, dtype), x.detach(), torch.randn(6), mean, invstd, True, True),
        ),
        "max_pool2d": (ops.max_pool2d, (x, [3, 3], [2, 2], [1, 1])),
        "max_pool2d_backward": (
            ops.max_pool2d_backward,
            (draw(rng, y.shape, dtype), idx, list(x.shape), [3, 3], [2, 2], [1, 1], True),
        ),
    }


OPCHECKS = [
    "relu",
    "relu_backward",
    "dropout",
    "dropout_backward",
    "batch_norm-train",
    "batch_norm-eval",
    "batch_norm_backward",
    "max_pool2d",
    "max_pool2d_backward",
]


@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize("name", OPCHECKS)
def test_opcheck_channels_last(rng, dtype, name):
    op, args = _opcheck_cases(rng, dtype)[name]
    assert is_cl(args[0])
    torch.library.opcheck(op, args)


class TorchConv(torch.nn.Conv2d):
    """A subclass convert() leaves alone: torch's conv keeps channels_last under bf16 autocast."""


def small_model(conv):
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.BatchNorm2d(3),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(3, 2, 1),
        torch.nn.Dropout(0.2),
        conv(3, 8, 3, padding=1),
        torch.nn.BatchNorm2d(8),
        torch.nn.ReLU(inplace=True),  # stays torch's: in place on the batch norm's output
        torch.nn.MaxPool2d(2),
        torch.nn.Dropout(0.1),
        conv(8, 4, 3),
        torch.nn.ReLU(),
    )


@pytest.mark.parametrize("conv", [TorchConv, torch.nn.Conv2d], ids=["torch-conv", "converted-conv"])
def test_converted_model_keeps_channels_last_under_bf16_autocast(conv):
    """Every converted layer that receives a channels_last activation hands one on, forward and
    backward; with torch's conv (channels_last out under autocast) that is every activation.
    fastopt's conv keeps whatever layout conv2d's op gives at the time."""
    model = ft.convert(small_model(conv)).train()
    mine = (ft.nn.BatchNorm2d, ft.nn.ReLU, ft.nn.MaxPool2d, ft.nn.Dropout)
    seen = []

    def hook(module, inputs, output):
        seen.append((type(module), is_cl(inputs[0]), is_cl(output), output.dtype))

    for m in model:
        m.register_forward_hook(hook)
    x = torch.randn(4, 3, 17, 15).contiguous(memory_format=CL).requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = model(x)
    y.float().square().sum().backward()
    assert len(seen) == len(model)
    for kind, cl_in, cl_out, _ in seen:
        if issubclass(kind, mine):
            assert not cl_in or cl_out, kind
    assert all(cl_in for kind, cl_in, _, _ in seen[:4])  # the first block sees the channels_last input
    if conv is TorchConv or ops._vnni_bf16():  # fastopt's conv keeps channels_last in bf16 there
        assert all(cl_in and cl_out for _, cl_in, cl_out, _ in seen), seen
        assert is_cl(y)
    assert seen[-1][3] == torch.bfloat16
    assert is_cl(x.grad) and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    for name, prm in model.named_parameters():
        assert prm.grad is not None and torch.isfinite(prm.grad).all(), name


# ---------------------------------------------------------------------------------- conv2d
# bf16 conv2d on channels_last inputs runs fastopt's NHWC kernels where the CPU has VDPBF16PS
# (ops._conv_nhwc); elsewhere, and for fp32 or groups > 1, the input is copied to NCHW. Either
# way the values are checked against float64 on the same bf16 values with the bound of
# bf16_checks.py: m exact products summed in fp32 (gamma(m) S) plus one bf16 rounding of y and dx
# (2^-8 |y|); dw comes back in the weight's dtype (bf16: autograd wants the weight's), so it gets
# that rounding too.
CONV_CASES = [  # N, C, H, W, K, R, stride, padding, bias
    (2, 16, 9, 9, 24, 3, 1, 1, True),
    (3, 5, 11, 7, 13, 3, 2, 1, False),
    (2, 3, 12, 10, 32, 3, 1, 1, False),  # the stem: folded window rows
    (2, 20, 9, 8, 36, 1, 2, 0, True),  # 1x1 stride 2: half the dx pixels receive nothing
]


def _bound_close(got, want, scale, terms):
    from bf16_checks import U16, gamma

    got = got.double().numpy()
    bound = U16 * np.abs(want) + (1 + U16) * gamma(terms) * scale + 2.0**-126
    assert np.all(np.abs(got - want) <= bound), np.max(np.abs(got - want) - bound)


def _conv_ref(x, w, b, stride, pad):
    f = torch.nn.functional.conv2d
    return (
        f(x.double(), w.double(), None if b is None else b.double(), stride, pad).numpy(),
        f(x.double().abs(), w.double().abs(), None if b is None else b.double().abs(), stride, pad).numpy(),
    )


@pytest.mark.parametrize("case", CONV_CASES, ids=[str(c) for c in CONV_CASES])
@pytest.mark.parametrize("weight_cl", [False, True], ids=["w-nchw", "w-cl"])
def test_conv2d_bf16_channels_last(rng, case, weight_cl):
    n, c, h, w_, k, r, stride, pad, has_bias = case
    x = draw(rng, (n, c, h, w_), torch.bfloat16).requires_grad_()
    w = draw(rng, (k, c, r, r), torch.bfloat16, cl=weight_cl).requires_grad_()
    b = draw(rng, (k,), torch.bfloat16, cl=False).requires_grad_() if has_bias else None
    y = torch.ops.fastopt.conv2d(x, w, b, [stride] * 2, [pad] * 2, [1, 1], 1)
    assert y.dtype == torch.bfloat16 and is_cl(y) == ops._vnni_bf16()
    want, scale = _conv_ref(x.detach(), w.detach(), None if b is None else b.detach(), stride, pad)
    _bound_close(y.detach(), want, scale, c * r * r + 1)
    g = draw(rng, tuple(y.shape), torch.bfloat16)  # the upstream gradient arrives channels_last
    y.backward(g)
    assert x.grad.dtype == torch.bfloat16  # (a leaf's .grad takes the leaf's strides: see the op's below)
    dx = torch.ops.fastopt.conv2d_backward(
        g, x.detach(), w.detach(), [stride] * 2, [pad] * 2, [1, 1], 1, True, False, False
    )[0]
    assert is_cl(dx) == ops._vnni_bf16() and torch.equal(dx, x.grad)
    xd, wd, gd = (t.detach().double().requires_grad_() for t in (x, w, g))
    torch.nn.functional.conv2d(xd, wd, None, stride, pad).backward(gd)
    xa, wa = x.detach().double().abs().requires_grad_(), w.detach().double().abs().requires_grad_()
    torch.nn.functional.conv2d(xa, wa, None, stride, pad).backward(gd.detach().abs())
    _bound_close(x.grad, xd.grad.numpy(), xa.grad.numpy(), k * r * r)
    _bound_close(w.grad, wd.grad.numpy(), wa.grad.numpy(), n * y.shape[2] * y.shape[3])
    if has_bias:
        gs = gd.detach()
        _bound_close(b.grad, gs.sum((0, 2, 3)).numpy(), gs.abs().sum((0, 2, 3)).numpy(), n * y.shape[2] * y.shape[3])


def test_conv2d_channels_last_fallbacks(rng):
    """fp32 (fastopt's NCHW path has Winograd) and grouped convs copy a channels_last input to
    NCHW and return NCHW outputs, with the NCHW call's values exactly."""
    x32 = draw(rng, (2, 8, 7, 7), torch.float32)
    w32 = draw(rng, (6, 8, 3, 3), torch.float32, cl=False)
    y = torch.ops.fastopt.conv2d(x32, w32, None, [1, 1], [1, 1], [1, 1], 1)
    assert y.is_contiguous()
    assert torch.equal(y, torch.ops.fastopt.conv2d(x32.contiguous(), w32, None, [1, 1], [1, 1], [1, 1], 1))
    xb, wb = x32.to(torch.bfloat16), draw(rng, (6, 4, 3, 3), torch.bfloat16, cl=False)
    y = torch.ops.fastopt.conv2d(xb, wb, None, [1, 1], [1, 1], [1, 1], 2)
    assert y.is_contiguous()
    assert torch.equal(y, torch.ops.fastopt.conv2d(xb.contiguous(), wb, None, [1, 1], [1, 1], [1, 1], 2))


@pytest.mark.parametrize("backward", [False, True], ids=["conv2d", "conv2d_backward"])
def test_opcheck_conv2d_channels_last(rng, backward):
    x = draw(rng, (2, 6, 7, 5), torch.bfloat16)
    w = draw(rng, (10, 6, 3, 3), torch.bfloat16, cl=False)
    hyper = ([1, 1], [1, 1], [1, 1], 1)
    if not backward:
        torch.library.opcheck(torch.ops.fastopt.conv2d.default, (x, w, None, *hyper))
        return
    g = draw(rng, (2, 10, 7, 5), torch.bfloat16)
    torch.library.opcheck(torch.ops.fastopt.conv2d_backward.default, (g, x, w, *hyper, True, True, False))
