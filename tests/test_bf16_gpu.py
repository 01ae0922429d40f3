"""bfloat16 on the GPU (issue 21, the memory-bound half): every CUDA bf16 kernel on bf16 device
arrays against the float64 reference and against the CPU's bf16 kernel.

The judge is test_bf16.py's: a bf16 kernel runs its fp32 kernel's arithmetic on the bf16 inputs
and rounds each output once (u = 2^-8), so |got - ref| <= u |ref| + (1 + u) E32 with E32 the bound
of that fp32 arithmetic, the same E32 as the CPU tests (test_bf16.py, test_bf16_layers.py) state
and derive; at least 99% of many outputs must be the bf16 nearest the reference. Two more checks:
- each GPU bf16 output is the GPU fp32 kernel's output on the upcast inputs rounded once, bit for
  bit (same_bits: the kernels are the fp32 ones templated on their storage type);
- where the fp32 kernels already agree bit for bit between CPU and GPU (relu, leaky relu, dropout,
  max pooling forward and backward, global average pooling backward: tests/test_activation.py,
  test_dropout.py, test_pooling.py), the GPU bf16 result equals the CPU bf16 kernel's bit for bit.
  Elsewhere (libm vs CUDA transcendentals, reduction orders, FMA contraction on a real GPU) the
  two backends meet only through the bound above.
fp32 outputs (the loss, indices, normalization statistics and parameter gradients) equal the GPU
fp32 kernel's exactly. The optimizers with bf16 parameters: the fp32 master's trajectory is the GPU
fp32 optimizer's fed the upcast gradients, bit for bit, and the CPU's (test_optim_bf16.py's
contract). These tests run on the CUDA emulation (tests/test_build_variants.py) and on a GPU when
one is present.
"""

import numpy as np
import pytest
from ml_dtypes import bfloat16
from test_bf16 import U32, bf, check, f64, same_bits, up
from test_bf16_layers import EPS32, _affine, _check_cancelling, _ulp, group_norm_case, layer_norm_case
from test_optim_bf16 import RULES as OPT_RULES, SHAPES as OPT_SHAPES, bits

import fastopt
import fastopt.functional as F
from fastopt import optim, reference as R

pytestmark = pytest.mark.gpu

SHAPES = [(1,), (7,), (33, 65), (3, 5, 7, 11), (70001,)]


def dev(a):
    return fastopt.to_device(np.ascontiguousarray(a)) if isinstance(a, np.ndarray) else a


def host(a):
    return a if a is None or isinstance(a, (np.ndarray, float)) else a.numpy()


def gpu(f, *args, **kw):
    """f on device copies of the array arguments, its outputs copied back."""
    out = f(*(dev(a) for a in args), **{k: dev(v) for k, v in kw.items()})
    return tuple(host(o) for o in out) if isinstance(out, tuple) else host(out)


def equal_bits(a, b, name):
    assert a.dtype == b.dtype and a.shape == b.shape, name
    assert np.array_equal(np.asarray(a).view(np.uint8), np.asarray(b).view(np.uint8)), f"{name}: GPU != CPU bits"


# ------------------------------------------------------------ relu, leaky relu, smooth ones
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_relu_and_leaky_relu(rng, shape):
    x, dy = bf(rng.standard_normal(shape)), bf(rng.standard_normal(shape))
    for name, fwd, bwd, args in (
        ("relu", F.relu_forward, F.relu_backward, ()),
        ("leaky", F.leaky_relu_forward, F.leaky_relu_backward, (0.2,)),
    ):
        y, dx = gpu(fwd, x, *args), gpu(bwd, dy, x, *args)
        equal_bits(y, fwd(x, *args), name)
        equal_bits(dx, bwd(dy, x, *args), name + " dx")
        same_bits(y, gpu(fwd, up(x), *args), name)
        same_bits(dx, gpu(bwd, up(dy), up(x), *args), name + " dx")
    ref_y, ref_dx = R.activation.leaky_relu_forward(x, 0.2), R.activation.leaky_relu_backward(dy, x, 0.2)
    check(y, ref_y, 2 * U32 * np.abs(ref_y), "leaky y")  # one fp32 product by the slope
    check(dx, ref_dx, 2 * U32 * np.abs(ref_dx), "leaky dx")


def test_unaligned_views_take_the_scalar_path(rng):
    # Rows of a DeviceArray one element into its buffer are not 16-byte aligned: the per-element
    # loop, the same bits.
    x = bf(rng.standard_normal(1001))
    view = dev(np.concatenate([bf([0.0]), x]))[1:]
    equal_bits(host(F.leaky_relu_forward(view, 0.1)), F.leaky_relu_forward(x, 0.1), "unaligned")
    equal_bits(host(F.dropout_forward(view, 0.5, 3)), F.dropout_forward(x, 0.5, 3), "unaligned dropout")


@pytest.mark.parametrize("name,args", [("tanh", ()), ("sigmoid", ()), ("elu", (0.7,)), ("gelu", ())])
@pytest.mark.parametrize("shape", [(7,), (3, 4, 9, 11), (70001,)], ids=str)
def test_smooth_activation(rng, name, args, shape):
    # E32: test_bf16_layers.py's (CUDA's float functions are within 2 ulps too).
    fwd, bwd = getattr(F, f"{name}_forward"), getattr(F, f"{name}_backward")
    x, dy = bf(rng.standard_normal(shape) * 3), bf(rng.standard_normal(shape))
    y, dx = gpu(fwd, x, *args), gpu(bwd, dy, x, *args)
    ref_y = getattr(R.activation, f"{name}_forward")(f64(x), *args)
    ref_dx = getattr(R.activation, f"{name}_backward")(f64(dy), f64(x), *args)
    cancel = EPS32 * (np.abs(f64(x)) + 1)
    _check_cancelling(y, ref_y, 8 * _ulp(ref_y), cancel, "y")
    _check_cancelling(dx, ref_dx, 8 * _ulp(ref_dx), cancel * np.abs(f64(dy)), "dx")
    same_bits(y, gpu(fwd, up(x), *args), "y")
    same_bits(dx, gpu(bwd, up(dy), up(x), *args), "dx")


@pytest.mark.parametrize("shape", [(1, 1), (4, 3, 9, 11), (3, 70001)], ids=str)
@pytest.mark.parametrize("p", [0.0, 0.4])
@pytest.mark.parametrize("identity", [False, True])
def test_residual_add(rng, shape, p, identity):
    b = bf(rng.standard_normal(shape))
    s = None if identity else bf(rng.standard_normal(shape))
    y = gpu(F.residual_add, b, s, p, seed=11, offset=3)
    ref = R.activation.residual_add(f64(b), None if s is None else f64(s), p, seed=11, offset=3)
    scale = R.activation.residual_add(np.abs(f64(b)), None if s is None else np.abs(f64(s)), p, seed=11, offset=3)
    check(y, ref, 2 * U32 * scale, "y")  # a product and a sum, each rounded once in fp32
    same_bits(y, gpu(F.residual_add, up(b), None if s is None else up(s), p, seed=11, offset=3), "y")


# ------------------------------------------------------------------------------- dropout
@pytest.mark.parametrize("shape", [(1,), (1001,), (3, 70001)], ids=str)
@pytest.mark.parametrize("p", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("offset", [0, 5])
def test_dropout(rng, shape, p, offset):
    x = bf(rng.standard_normal(shape))
    y = gpu(F.dropout_forward, x, p, seed=11, offset=offset)
    ref = R.dropout.dropout_forward(x, p, 11, offset)
    check(y, ref, U32 * np.abs(ref), "y")  # one fp32 product by the scale
    equal_bits(y, F.dropout_forward(x, p, seed=11, offset=offset), "y")
    equal_bits(gpu(F.dropout_backward, x, p, seed=11, offset=offset), y, "dx")  # the mask regenerated
    same_bits(y, gpu(F.dropout_forward, up(x), p, seed=11, offset=offset), "y")


# ------------------------------------------------------------------------------- pooling
POOLS = [
    ((3, 5, 7, 9), 2, None, 0),
    ((3, 5, 7, 9), 3, 2, 1),
    ((2, 3, 13, 11), 3, 1, 1),
    ((2, 3, 13, 11), (3, 2), (2, 3), (1, 0)),
    ((1, 1, 1, 1), 1, None, 0),
]


@pytest.mark.parametrize("shape,k,s,p", POOLS)
def test_max_pool2d(rng, shape, k, s, p):
    x = bf(rng.standard_normal(shape))
    x.reshape(-1)[::13] = np.nan
    y, idx = gpu(F.max_pool2d_forward, x, k, s, p)
    cy, cidx = F.max_pool2d_forward(x, k, s, p)
    equal_bits(y, cy, "y")
    equal_bits(idx, cidx, "indices")
    ref_y, ref_idx = R.pooling.max_pool2d_forward(x, k, s, p)
    assert np.array_equal(f64(y), ref_y, equal_nan=True) and np.array_equal(idx, ref_idx)
    dy = bf(rng.standard_normal(y.shape))
    dx = gpu(F.max_pool2d_backward, dy, idx, shape, k, s, p)
    equal_bits(dx, F.max_pool2d_backward(dy, idx, shape, k, s, p), "dx")
    (kh, kw), (sh, sw) = R.conv.pair(k, "k"), R.conv.pair(k if s is None else s, "s")
    m = -(-kh // sh) * -(-kw // sw)  # a sum of at most m dy terms in fp32
    scale = R.pooling.max_pool2d_backward(np.abs(f64(dy)), idx, shape)
    check(dx, R.pooling.max_pool2d_backward(dy, idx, shape), (m - 1) * U32 * scale, "dx")
    same_bits(dx, gpu(F.max_pool2d_backward, up(dy), idx, shape, k, s, p), "dx")


@pytest.mark.parametrize("shape,k,s,p", POOLS)
@pytest.mark.parametrize("include_pad", [True, False])
def test_avg_pool2d(rng, shape, k, s, p, include_pad):
    # E32: test_bf16_layers.py's (a k-term fp32 window sum; m rounded quotients summed).
    x = bf(rng.standard_normal(shape))
    kw = dict(kernel_size=k, stride=s, padding=p, count_include_pad=include_pad)
    y = gpu(F.avg_pool2d_forward, x, **kw)
    (kh, kwd), (sh, sw) = R.conv.pair(k, "k"), R.conv.pair(k if s is None else s, "s")
    ref_y = R.pooling.avg_pool2d_forward(f64(x), **kw)
    check(y, ref_y, (kh * kwd + 1) * U32 * R.pooling.avg_pool2d_forward(np.abs(f64(x)), **kw), "y")
    same_bits(y, gpu(F.avg_pool2d_forward, up(x), **kw), "y")
    dy = bf(rng.standard_normal(y.shape))
    dx = gpu(F.avg_pool2d_backward, dy, shape, **kw)
    m = -(-kh // sh) * -(-kwd // sw)
    ref_dx = R.pooling.avg_pool2d_backward(f64(dy), shape, **kw)
    check(dx, ref_dx, (m + 1) * U32 * R.pooling.avg_pool2d_backward(np.abs(f64(dy)), shape, **kw), "dx")
    same_bits(dx, gpu(F.avg_pool2d_backward, up(dy), shape, **kw), "dx")


@pytest.mark.parametrize("shape", [(2, 3, 1, 1), (3, 5, 7, 9), (2, 4, 61, 67)], ids=str)
def test_global_avg_pool(rng, shape):
    # Forward: a double sum rounded to fp32, then to bf16: E32 = u32 |ref|. Backward: one division.
    x = bf(rng.standard_normal(shape) + 1)
    y = gpu(F.global_avg_pool_forward, x)
    ref = R.pooling.global_avg_pool_forward(x)
    check(y, ref, U32 * np.abs(ref), "y")
    same_bits(y, gpu(F.global_avg_pool_forward, up(x)), "y")
    dy = bf(rng.standard_normal(shape[:2]))
    dx = gpu(F.global_avg_pool_backward, dy, shape)
    ref_dx = R.pooling.global_avg_pool_backward(dy, shape)
    check(dx, ref_dx, U32 * np.abs(ref_dx), "dx")
    equal_bits(dx, F.global_avg_pool_backward(dy, shape), "dx")


# ---------------------------------------------------------------- softmax cross-entropy
@pytest.mark.parametrize("shape", [(1, 1), (37, 11), (64, 1000), (3, 7001)], ids=str)
@pytest.mark.parametrize("kind", ["int32", "int64", "soft"])
@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_softmax_cross_entropy(rng, shape, kind, eps):
    # E32: test_loss.py's fp32 bounds (loss rtol 1e-5 + 1e-6, dlogits rtol 1e-5 + 4e-7 / N).
    n, k = shape
    z = bf(rng.standard_normal(shape) * 4)
    t = bf(rng.dirichlet(np.ones(k), n)) if kind == "soft" else rng.integers(0, k, n).astype(kind)
    stats = np.zeros(3, np.float32)
    loss, dz = gpu(lambda z, t, s: F.softmax_cross_entropy(z, t, eps, stats=s) + (s,), z, t, stats)[:2]
    ref_loss, ref_dz, _ = R.loss.softmax_cross_entropy(z, t, eps)
    assert loss.dtype == np.float32 and dz.dtype == bfloat16
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5, atol=1e-6)
    check(dz, ref_dz, 1e-5 * np.abs(ref_dz) + 4e-7 / n, "dlogits")
    loss32, dz32 = gpu(F.softmax_cross_entropy, up(z), up(t) if kind == "soft" else t, eps)
    assert loss == loss32  # fp32 math on the same values
    same_bits(dz, dz32, "dlogits")
    g_stats = dev(np.zeros(3, np.float32))
    F.softmax_cross_entropy(dev(z), dev(t), eps, stats=g_stats)
    c_stats = np.zeros(3, np.float32)
    F.softmax_cross_entropy(z, t, eps, stats=c_stats)
    assert np.array_equal(host(g_stats)[1:], c_stats[1:])  # the hit counts
    np.testing.assert_allclose(host(g_stats)[0], c_stats[0], rtol=1e-5)


# ---------------------------------------------------------------------- normalization
BN_SHAPES = [(2, 3), (7, 13), (5, 3, 7, 11), (8, 4, 31, 29), (2, 1031, 3, 1), (3, 8, 4, 4)]


# The GPU's normalization statistics are fp32 (shifted Welford, fp32 merges) where the CPU's are
# double: E32 is test_normalization.py's CUDA bound, 5e-5 * max(1, max |ref|) (dx: also >= the
# cancelling terms' size), and its rstd bound 1e-5 relative.
TOL, RSTD_TOL = 5e-5, 1e-5


def _close_stats(mean, ref_mean, rstd, ref_rstd):
    np.testing.assert_allclose(mean, ref_mean, rtol=0, atol=TOL * max(1.0, np.abs(ref_mean).max(initial=0.0)))
    np.testing.assert_allclose(rstd, ref_rstd, rtol=RSTD_TOL)


def _same_f32(got, want, name):
    assert got.dtype == np.float32 and np.array_equal(got, want), f"{name}: not the fp32 kernel's bits"


@pytest.mark.parametrize("shape", BN_SHAPES, ids=str)
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("affine", [True, False])
def test_batch_norm(rng, shape, training, affine):
    C = shape[1]
    x, dy = bf(rng.standard_normal(shape) * 3 + 2), bf(rng.standard_normal(shape))
    g, b = _affine(rng, C, affine)
    rm0, rv0 = rng.standard_normal(C).astype(np.float32), rng.uniform(0.5, 2, C).astype(np.float32)
    rm, rv, rm32, rv32 = dev(rm0), dev(rv0), dev(rm0), dev(rv0)
    y, mean, rstd = (host(o) for o in F.batch_norm_forward(dev(x), dev(g), dev(b), rm, rv, training))
    ref_y, ref_mean, ref_rstd = R.normalization.batch_norm_forward(x, g, b, f64(rm0), f64(rv0), training)
    check(y, ref_y, TOL * max(1.0, np.abs(ref_y).max()), "y")
    _close_stats(mean, ref_mean, rstd, ref_rstd)
    y32, mean32, rstd32 = (host(o) for o in F.batch_norm_forward(dev(up(x)), dev(g), dev(b), rm32, rv32, training))
    same_bits(y, y32, "y")
    for got, want, name in (
        (mean, mean32, "mean"),
        (rstd, rstd32, "rstd"),
        (host(rm), host(rm32), "running_mean"),
        (host(rv), host(rv32), "running_var"),
    ):
        _same_f32(got, want, name)
    dx, dg, db = gpu(F.batch_norm_backward, dy, x, g, mean, rstd, training)
    ref_dx, ref_dg, ref_db = R.normalization.batch_norm_backward(dy, x, g, mean, rstd, training)
    dx_scale = np.abs(f64(dy)).max() * (1.0 if g is None else np.abs(g).max()) * rstd.max()
    check(dx, ref_dx, TOL * max(1.0, np.abs(ref_dx).max(), dx_scale), "dx")
    dx32, dg32, db32 = gpu(F.batch_norm_backward, up(dy), up(x), g, mean, rstd, training)
    same_bits(dx, dx32, "dx")
    if affine:
        _same_f32(dg, dg32, "dgamma")
        _same_f32(db, db32, "dbeta")
        np.testing.assert_allclose(dg, ref_dg, rtol=0, atol=TOL * max(1.0, np.abs(ref_dg).max()))
        np.testing.assert_allclose(db, ref_db, rtol=0, atol=TOL * max(1.0, np.abs(ref_db).max()))


def _check_row_norm(fns, x, dy, w, b):
    """test_bf16_layers.py's row-norm judge on the GPU: fns as layer_norm_case gives them, the
    kernels given device arrays."""
    fwd, bwd, rfwd, rbwd = fns
    y, mean, rstd = gpu(fwd, x, w, b)
    ref_y, ref_mean, ref_rstd = rfwd(f64(x), w, b)
    check(y, ref_y, TOL * max(1.0, np.abs(ref_y).max(initial=0.0)), "y")
    _close_stats(mean, ref_mean, rstd, ref_rstd)
    y32, mean32, rstd32 = gpu(fwd, up(x), w, b)
    same_bits(y, y32, "y")
    _same_f32(mean, mean32, "mean")
    _same_f32(rstd, rstd32, "rstd")
    dx, dw, db = gpu(bwd, dy, x, mean, rstd, w)
    ref_dx, ref_dw, ref_db = rbwd(f64(dy), f64(x), mean, rstd, w)
    dx_scale = np.abs(f64(dy)).max(initial=0.0) * (1.0 if w is None else np.abs(w).max()) * rstd.max(initial=0.0)
    check(dx, ref_dx, TOL * max(1.0, np.abs(ref_dx).max(initial=0.0), dx_scale), "dx")
    dx32, dw32, db32 = gpu(bwd, up(dy), up(x), mean, rstd, w)
    same_bits(dx, dx32, "dx")
    if w is not None:
        _same_f32(dw, dw32, "dweight")
        _same_f32(db, db32, "dbias")
        np.testing.assert_allclose(dw, ref_dw, rtol=0, atol=TOL * max(1.0, np.abs(ref_dw).max()))
        np.testing.assert_allclose(db, ref_db, rtol=0, atol=TOL * max(1.0, np.abs(ref_db).max()))


@pytest.mark.parametrize(
    "shape,normalized",
    [((3, 7), (7,)), ((4, 5, 33), (33,)), ((2, 3, 5, 8), (5, 8)), ((2, 1031), (1031,)), ((1, 1), (1,))],
    ids=str,
)
@pytest.mark.parametrize("affine", [True, False])
def test_layer_norm(rng, shape, normalized, affine):
    _check_row_norm(*layer_norm_case(rng, shape, normalized, affine))


@pytest.mark.parametrize(
    "shape,groups",
    [((2, 6, 5, 7), 3), ((3, 4, 9, 11), 1), ((2, 8, 4, 4), 8), ((5, 6), 2), ((1, 32, 31, 29), 4)],
    ids=str,
)
@pytest.mark.parametrize("affine", [True, False])
def test_group_norm(rng, shape, groups, affine):
    _check_row_norm(*group_norm_case(rng, shape, groups, affine))


# ------------------------------------------------------------------ device arrays
def test_device_array_round_trip():
    x = bf(np.arange(-3, 9).reshape(3, 4) / 4)
    d = fastopt.to_device(x)
    assert d.dtype == bfloat16 and np.array_equal(d.numpy().view(np.uint16), x.view(np.uint16))
    z = fastopt.zeros((2, 3), bfloat16)
    assert z.dtype == bfloat16 and not f64(z.numpy()).any()


# ---------------------------------------------------------------------------- optimizers
def _fetch_state(opt, i, name):
    return host(opt.state[i][name])


@pytest.mark.parametrize("clip", [None, 0.5])
@pytest.mark.parametrize("rule,kw", OPT_RULES, ids=[f"{r.__name__}-{'-'.join(k)}" for r, k in OPT_RULES])
def test_master_trajectory_is_the_fp32_one_and_the_cpus(rng, clip, rule, kw):
    # Bound 0 throughout: the master is the GPU fp32 optimizer's parameter fed the upcast
    # gradients (the bf16 norm pass sums in the fp32 pass's order, so clipping agrees too), the
    # bf16 parameter its rounding to nearest even; and, without clipping, the CPU's master
    # (the CPU's clip coefficient comes from a double norm). The GPU-CPU equality holds where the
    # fp32 update rounds alike on both: on the emulation (no FMA contraction), not necessarily
    # on a GPU, where nvcc may fuse p - lr * d; there the tolerance is the fp32 rule's few ulps.
    low = [rng.standard_normal(s).astype(bfloat16) for s in OPT_SHAPES]
    cpu_low = [p.copy() for p in low]
    on_gpu, twins = [dev(p) for p in low], [dev(up(p)) for p in low]
    opt, ref = rule(on_gpu, master_weights=True, **kw), rule(twins, **kw)
    cpu_opt = rule(cpu_low, master_weights=True, **kw)
    for _ in range(3):
        grads = [rng.standard_normal(s).astype(bfloat16) for s in OPT_SHAPES]
        got = opt.step([dev(g) for g in grads], max_grad_norm=clip)
        want = ref.step([dev(up(g)) for g in grads], max_grad_norm=clip)
        cpu_opt.step(grads, max_grad_norm=clip)
        if clip is not None:
            assert host(got.norm) == host(want.norm)
    for i, (p, q) in enumerate(zip(on_gpu, twins)):
        master, q = _fetch_state(opt, i, "master"), host(q)
        assert master.dtype == np.float32 and np.array_equal(bits(master), bits(q)), i
        assert np.array_equal(bits(host(p)), bits(q.astype(bfloat16))), i
        for name in ref.state[i]:
            assert np.array_equal(bits(_fetch_state(opt, i, name)), bits(_fetch_state(ref, i, name))), (i, name)
        if clip is None:
            cpu_master = cpu_opt.state[i]["master"]
            if fastopt.cuda.is_emulated():
                assert np.array_equal(bits(master), bits(cpu_master)), i
                assert np.array_equal(bits(host(p)), bits(cpu_low[i])), i
            else:
                np.testing.assert_allclose(master, cpu_master, rtol=1e-5, atol=1e-6)


def test_fp32_and_bf16_params_in_one_optimizer(rng):
    # The norm pass covers both kinds (fp32 slots first, then bf16: the twin's order), clipping alike.
    p32, p16 = rng.standard_normal(9).astype(np.float32), rng.standard_normal(70001).astype(bfloat16)
    g_p32, g_p16, t32, t16 = dev(p32), dev(p16), dev(p32), dev(up(p16))
    opt = optim.Adam([{"params": [g_p32]}, {"params": [g_p16], "lr": 0.05}], lr=0.01, master_weights=True)
    ref = optim.Adam([{"params": [t32]}, {"params": [t16], "lr": 0.05}], lr=0.01)
    for _ in range(3):
        g32, g16 = rng.standard_normal(9).astype(np.float32), rng.standard_normal(70001).astype(bfloat16)
        opt.step([dev(g32), dev(g16)], max_grad_norm=1.0)
        ref.step([dev(g32), dev(up(g16))], max_grad_norm=1.0)
    assert np.array_equal(host(g_p32), host(t32)) and "master" not in opt.state[0]
    assert np.array_equal(bits(_fetch_state(opt, 1, "master")), bits(host(t16)))


@pytest.mark.parametrize("stochastic", [False, True])
def test_rounding_without_master_is_the_cpus(rng, stochastic):
    # Stochastic rounding draws each element's word from (seed, tensor, step, i / 4) alone, so
    # the GPU's stored values are the CPU's bit for bit (on the emulation; see above for a GPU).
    shapes, seed = [(3,), (70001,)], 2**40 + 17
    ps = [rng.standard_normal(s).astype(bfloat16) for s in shapes]
    cpu_ps, gpu_ps = [p.copy() for p in ps], [dev(p) for p in ps]
    kw = dict(lr=0.01, momentum=0.9, stochastic_rounding=stochastic, seed=seed)
    other_ps = [dev(p) for p in ps]
    cpu_opt, gpu_opt = optim.SGD(cpu_ps, **kw), optim.SGD(gpu_ps, **kw)
    other = optim.SGD(other_ps, **{**kw, "seed": seed + 1})
    for _ in range(3):
        grads = [rng.standard_normal(s).astype(bfloat16) for s in shapes]
        cpu_opt.step(grads)
        gpu_opt.step([dev(g) for g in grads])
        other.step([dev(g) for g in grads])
    for i, (c, g) in enumerate(zip(cpu_ps, gpu_ps)):
        if fastopt.cuda.is_emulated():
            assert np.array_equal(bits(host(g)), bits(c)), i
        else:  # an FMA may move w across a rounding boundary: a few bf16 steps (2^-8 each) at most
            np.testing.assert_allclose(f64(host(g)), f64(c), rtol=2.0**-6, atol=2.0**-120)
    # another seed draws other words (nearest rounding ignores the seed)
    assert np.array_equal(bits(host(other_ps[1])), bits(host(gpu_ps[1]))) != stochastic


def test_float16_parameters_refuse_on_the_gpu():
    with pytest.raises(TypeError, match=r"params\[0\]: float16 on the GPU: not yet \(issue 21\)"):
        optim.SGD([dev(np.ones(3, np.float16))], lr=0.1)


def test_checkpoint_carries_the_gpu_master_and_resumes_bit_identically(rng):
    p = dev(rng.standard_normal(1001).astype(bfloat16))
    opt = optim.AdamW([p], lr=0.01, master_weights=True)
    grads = [dev(rng.standard_normal(1001).astype(bfloat16)) for _ in range(4)]
    opt.step([grads[0]])
    saved, p_saved = opt.state_dict(), host(p).copy()
    assert isinstance(saved["state"][0]["master"], np.ndarray)  # NumPy copies, as on the CPU
    for g in grads[1:]:
        opt.step([g])
    q = dev(p_saved)
    again = optim.AdamW([q], lr=0.01, master_weights=True)
    again.load_state_dict(saved)
    for g in grads[1:]:
        again.step([g])
    assert np.array_equal(bits(host(q)), bits(host(p)))
    assert np.array_equal(bits(_fetch_state(again, 0, "master")), bits(_fetch_state(opt, 0, "master")))
