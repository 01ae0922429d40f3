"""bfloat16 on the CPU: relu / leaky relu, max and global average pool, dropout, batch norm and
softmax cross-entropy against the float64 reference on bf16 inputs, every ISA copy, the dtype
plumbing (ml_dtypes arrays, torch tensors, DLPack, DeviceArrays) and the errors.

How a bf16 kernel is judged. Its inputs are bf16 values; the reference widens them exactly to
float64 and computes there. The kernel runs the fp32 kernel's arithmetic on the same values and
rounds each output once to bf16 (nearest even, unit roundoff u = 2^-8), so with E32 the error
bound of that fp32 arithmetic:

    |got - ref| <= u |ref| + (1 + u) E32                                           (1)

E32 per kernel (u32 = 2^-24):
- relu forward and backward, max pool forward: 0. A selection (an input, dy, or 0) is exact in
  bf16, so got == ref exactly.
- leaky relu: one fp32 product by the slope rounded to fp32 (torch's float32(slope)): 2 u32 |ref|.
- dropout: one fp32 product by the fp32 scale (the reference uses the same scale): u32 |ref|;
  dropped elements exactly 0.
- max pool backward: a sum of at most m = ceil(kh/sh) ceil(kw/sw) dy terms in fp32:
  (m - 1) u32 S, S the reference run on |dy| (Higham's gamma(m - 1) to first order).
- batch norm: statistics in double over M = N*H*W values (relative error ~ M 2^-53: nothing at
  these sizes), then a few fp32 roundings per element; tests/test_normalization.py bounds the fp32
  kernel by 1e-5 * max(1, max |ref|) (dx: also >= the size of the cancelling terms, dx_scale), and
  that is E32. The per-channel outputs (mean, rstd, running stats, dgamma, dbeta) stay fp32.
- softmax cross-entropy: row sums in double and exp in fp32 over K classes; test_loss.py's fp32
  bounds (loss rtol 1e-5 + 1e-6, dlogits rtol 1e-5 + 4e-7 / N) are E32. The loss stays fp32.
(1) is a worst case. The accumulated fp32 error is far below half a bf16 ulp, so where outputs
are many, at least 99% must be exactly the bf16 nearest the reference (a kernel that truncated
or rounded twice fails that). And each bf16 kernel is the fp32 kernel templated on its storage
type: its output must be the fp32 kernel's output on the upcast inputs rounded once, bit for
bit, and its fp32 outputs (loss, statistics, indices) equal the fp32 kernel's exactly.
"""

import numpy as np
import pytest
from bf16_checks import ISAS, assert_isa_copy_agrees
from ml_dtypes import bfloat16

import fastopt
import fastopt.functional as F
from fastopt import reference as R
from fastopt._arrays import dtype_of, to_numpy

U, U32 = R.bf16.U, 2.0**-24
bf = R.bf16.round_nearest


def f64(a):
    return np.asarray(a, np.float64)


def check(got, ref, e32, name):
    """(1) elementwise (NaN only where the reference is NaN), then the nearest-bf16 share."""
    assert got.dtype == bfloat16, f"{name}: dtype {got.dtype}"
    assert got.shape == np.shape(ref), f"{name}: shape {got.shape} != {np.shape(ref)}"
    g, r = f64(got), f64(ref)
    bound = U * np.abs(r) + (1 + U) * e32
    with np.errstate(invalid="ignore"):
        ok = (np.abs(g - r) <= bound) | (np.isnan(g) & np.isnan(r))
    if not ok.all():
        i = np.unravel_index(np.argmin(ok), ok.shape)
        b = np.broadcast_to(bound, r.shape)[i]
        raise AssertionError(f"{name}: at {i} got {g[i]!r}, want {r[i]!r}, bound {b:.3g}")
    if r.size >= 100:
        nearest = np.mean(got.view(np.uint16) == bf(r).view(np.uint16))
        assert nearest >= 0.99, f"{name}: only {nearest:.4f} of the outputs are the bf16 nearest the reference"


def same_bits(got, fp32_out, name):
    """got is the fp32 kernel's output rounded once to bf16, bit for bit."""
    want = bf(fp32_out)
    assert got.dtype == bfloat16 and got.shape == want.shape, name
    assert np.array_equal(got.view(np.uint16), want.view(np.uint16)), f"{name}: differs from the rounded fp32 kernel"


def up(a):
    return a.astype(np.float32)


# ------------------------------------------------------------------------ relu, leaky relu
SHAPES = [(0,), (1,), (7,), (33, 65), (3, 5, 7, 11), (70001,)]  # the last spans three 32K-element chunks


@pytest.mark.parametrize("shape", SHAPES)
def test_relu_is_exact(rng, shape):
    x, dy = R.bf16.inputs(rng.standard_normal(shape), rng.standard_normal(shape))
    y, dx = F.relu_forward(x), F.relu_backward(dy, x)
    assert y.dtype == dx.dtype == bfloat16
    assert np.array_equal(f64(y), R.activation.relu_forward(x))
    assert np.array_equal(f64(dx), R.activation.relu_backward(dy, x))
    same_bits(y, F.relu_forward(up(x)), "y")
    same_bits(dx, F.relu_backward(up(dy), up(x)), "dx")


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("slope", [0.01, 0.2])
def test_leaky_relu(rng, shape, slope):
    x, dy = R.bf16.inputs(rng.standard_normal(shape), rng.standard_normal(shape))
    y, dx = F.leaky_relu_forward(x, slope), F.leaky_relu_backward(dy, x, slope)
    ref_y, ref_dx = R.activation.leaky_relu_forward(x, slope), R.activation.leaky_relu_backward(dy, x, slope)
    check(y, ref_y, 2 * U32 * np.abs(ref_y), "y")
    check(dx, ref_dx, 2 * U32 * np.abs(ref_dx), "dx")
    same_bits(y, F.leaky_relu_forward(up(x), slope), "y")
    same_bits(dx, F.leaky_relu_backward(up(dy), up(x), slope), "dx")


# ---------------------------------------------------------------------------- max pool
POOLS = [
    ((3, 5, 7, 9), 2, None, 0),
    ((3, 5, 7, 9), 3, 2, 1),
    ((2, 3, 13, 11), 3, 1, 1),
    ((2, 3, 13, 11), 3, 3, 1),
    ((2, 3, 13, 11), (3, 2), (2, 3), (1, 0)),
    ((2, 3, 16, 38), 2, 2, 0),
    ((1, 1, 1, 1), 1, None, 0),
    ((0, 3, 5, 5), 2, None, 0),
]


@pytest.mark.parametrize("shape,k,s,p", POOLS)
def test_max_pool2d(rng, shape, k, s, p):
    x = bf(rng.standard_normal(shape))
    y, idx = F.max_pool2d_forward(x, k, s, p)
    ref_y, ref_idx = R.pooling.max_pool2d_forward(x, k, s, p)
    assert y.dtype == bfloat16 and np.array_equal(f64(y), ref_y) and np.array_equal(idx, ref_idx)
    y32, idx32 = F.max_pool2d_forward(up(x), k, s, p)
    same_bits(y, y32, "y")
    assert np.array_equal(idx, idx32)
    dy = bf(rng.standard_normal(y.shape))
    dx = F.max_pool2d_backward(dy, idx, shape, k, s, p)
    (kh, kw), (sh, sw) = R.conv.pair(k, "k"), R.conv.pair(k if s is None else s, "s")
    m = -(-kh // sh) * -(-kw // sw)
    scale = R.pooling.max_pool2d_backward(np.abs(f64(dy)), idx, shape)
    check(dx, R.pooling.max_pool2d_backward(dy, idx, shape), (m - 1) * U32 * scale, "dx")
    same_bits(dx, F.max_pool2d_backward(up(dy), idx, shape, k, s, p), "dx")


@pytest.mark.parametrize("shape", [(2, 3, 1, 1), (3, 5, 7, 9), (2, 4, 61, 67), (0, 3, 2, 2)])
def test_global_avg_pool(rng, shape):
    # The mean is summed in double (error ~hw 2^-53: nothing) and rounded to fp32 before bf16:
    # E32 = u32 |ref|. Backward: dy / float(H*W), one fp32 division: E32 = u32 |ref|.
    x = bf(rng.standard_normal(shape) + 1)
    y = F.global_avg_pool_forward(x)
    ref = R.pooling.global_avg_pool_forward(x)
    check(y, ref, U32 * np.abs(ref), "y")
    same_bits(y, F.global_avg_pool_forward(up(x)), "y")
    dy = bf(rng.standard_normal(shape[:2]))
    dx = F.global_avg_pool_backward(dy, shape)
    ref_dx = R.pooling.global_avg_pool_backward(dy, shape)
    check(dx, ref_dx, U32 * np.abs(ref_dx), "dx")
    same_bits(dx, F.global_avg_pool_backward(up(dy), shape), "dx")


# ----------------------------------------------------------------------------- dropout
@pytest.mark.parametrize("shape", [(1,), (1000,), (3, 70001)])
@pytest.mark.parametrize("p", [0.0, 0.3, 1.0])
def test_dropout(rng, shape, p):
    x = bf(rng.standard_normal(shape))
    y, dx = F.dropout_forward(x, p, seed=11, offset=5), F.dropout_backward(x, p, seed=11, offset=5)
    ref = R.dropout.dropout_forward(x, p, 11, 5)
    check(y, ref, U32 * np.abs(ref), "y")
    assert np.array_equal(f64(y) == 0, ref == 0)  # the same mask
    assert np.array_equal(y.view(np.uint16), dx.view(np.uint16))  # backward regenerates it
    same_bits(y, F.dropout_forward(up(x), p, seed=11, offset=5), "y")
    assert F.dropout_forward(x, p, seed=11, training=False) is x


# -------------------------------------------------------------------------- batch norm
BN_SHAPES = [(2, 3), (7, 13), (5, 3, 7, 11), (8, 4, 31, 29), (2, 1031, 3, 1), (1, 2, 1, 3)]


def _bn_case(rng, shape, affine):
    C = shape[1]
    x = bf(rng.standard_normal(shape) * 3 + 2)
    g = (rng.uniform(0.5, 2.0, C) * rng.choice([-1, 1], C)).astype(np.float32) if affine else None
    b = rng.standard_normal(C).astype(np.float32) if affine else None
    return x, g, b


@pytest.mark.parametrize("shape", BN_SHAPES)
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("affine", [True, False])
def test_batch_norm(rng, shape, training, affine):
    C = shape[1]
    x, g, b = _bn_case(rng, shape, affine)
    rm, rv = rng.standard_normal(C).astype(np.float32), rng.uniform(0.5, 2, C).astype(np.float32)
    rm32, rv32, ref_rm, ref_rv = rm.copy(), rv.copy(), f64(rm), f64(rv)
    y, mean, rstd = F.batch_norm_forward(x, g, b, rm, rv, training)
    ref_y, ref_mean, ref_rstd = R.normalization.batch_norm_forward(x, g, b, ref_rm, ref_rv, training)
    check(y, ref_y, 1e-5 * max(1.0, np.abs(ref_y).max()), "y")
    np.testing.assert_allclose(mean, ref_mean, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(rstd, ref_rstd, rtol=1e-6)
    y32, mean32, rstd32 = F.batch_norm_forward(up(x), g, b, rm32, rv32, training)
    same_bits(y, y32, "y")
    assert mean.dtype == rstd.dtype == np.float32
    for got, want in ((mean, mean32), (rstd, rstd32), (rm, rm32), (rv, rv32)):
        assert np.array_equal(got, want)  # fp32 per-channel outputs, the fp32 kernel's bits
    np.testing.assert_allclose(rm, ref_rm, rtol=1e-6, atol=1e-6)

    dy = bf(rng.standard_normal(shape))
    dx, dg, db = F.batch_norm_backward(dy, x, g, mean, rstd, training)
    ref_dx, ref_dg, ref_db = R.normalization.batch_norm_backward(dy, x, g, mean, rstd, training)
    dx_scale = np.abs(f64(dy)).max() * (1.0 if g is None else np.abs(g).max()) * rstd.max()
    check(dx, ref_dx, 1e-5 * max(1.0, np.abs(ref_dx).max(), dx_scale), "dx")
    dx32, dg32, db32 = F.batch_norm_backward(up(dy), up(x), g, mean, rstd, training)
    same_bits(dx, dx32, "dx")
    if affine:
        assert dg.dtype == db.dtype == np.float32 and np.array_equal(dg, dg32) and np.array_equal(db, db32)
        np.testing.assert_allclose(dg, ref_dg, rtol=1e-5, atol=1e-5 * max(1.0, np.abs(ref_dg).max()))
        np.testing.assert_allclose(db, ref_db, rtol=1e-5, atol=1e-5 * max(1.0, np.abs(ref_db).max()))


# ---------------------------------------------------------------- softmax cross-entropy
@pytest.mark.parametrize("shape", [(1, 1), (5, 3), (37, 11), (64, 1000), (3, 70001)])
@pytest.mark.parametrize("kind", ["int32", "int64", "soft"])
@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_softmax_cross_entropy(rng, shape, kind, eps):
    n, k = shape
    z = bf(rng.standard_normal(shape) * 4)
    if kind == "soft":
        t = bf(rng.dirichlet(np.ones(k), n))
    else:
        t = rng.integers(0, k, n).astype(kind)
    stats = np.zeros(3, np.float32)
    loss, dz = F.softmax_cross_entropy(z, t, eps, stats=stats)
    ref_loss, ref_dz, ref_stats = R.loss.softmax_cross_entropy(z, t, eps)
    assert loss.dtype == np.float32 and dz.dtype == bfloat16
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5, atol=1e-6)
    check(dz, ref_dz, 1e-5 * np.abs(ref_dz) + 4e-7 / n, "dlogits")
    np.testing.assert_allclose(stats, ref_stats, rtol=1e-5, atol=1e-5)
    loss32, dz32 = F.softmax_cross_entropy(up(z), up(t) if kind == "soft" else t, eps)
    assert loss == loss32
    same_bits(dz, dz32, "dlogits")


def test_non_finite_values_propagate():
    x = bf(np.array([[[[1.0, np.nan], [-2.0, 0.5]]]]))
    assert np.isnan(f64(F.relu_forward(x))[0, 0, 0, 1])
    y, idx = F.max_pool2d_forward(x, 2)
    assert np.isnan(f64(y)).all() and idx.item() == 1  # a NaN always wins, as in torch
    ybn = f64(F.batch_norm_forward(x, None, None, None, None, True)[0])
    assert np.isnan(ybn).all()  # a NaN makes its channel's statistics NaN
    z = bf(np.array([[0.0, np.inf, 1.0], [1.0, 2.0, 3.0]]))
    loss, dz = F.softmax_cross_entropy(z, np.array([0, 1]))
    assert np.isnan(loss) and np.isnan(f64(dz)[0]).all() and np.isfinite(f64(dz)[1]).all()


# ---------------------------------------------------------------------- every ISA copy
def all_outputs(seed=3):
    """Every bf16 kernel on fixed inputs, as uint16 / float32 arrays."""
    rng = np.random.default_rng(seed)
    x = bf(rng.standard_normal((4, 3, 9, 37)) * 2)
    dy = bf(rng.standard_normal(x.shape))
    g, b = rng.standard_normal(3).astype(np.float32), rng.standard_normal(3).astype(np.float32)
    y, mean, rstd = F.batch_norm_forward(x, g, b, None, None, True)
    pooled, idx = F.max_pool2d_forward(x, 3, 2, 1)
    z = bf(rng.standard_normal((33, 70)))
    loss, dz = F.softmax_cross_entropy(z, rng.integers(0, 70, 33))
    out = [
        F.relu_forward(x),
        F.relu_backward(dy, x),
        F.leaky_relu_forward(x, 0.1),
        F.leaky_relu_backward(dy, x, 0.1),
        F.dropout_forward(x, 0.4, 9),
        y,
        *F.batch_norm_backward(dy, x, g, mean, rstd, True),
        mean,
        rstd,
        pooled,
        F.max_pool2d_backward(bf(rng.standard_normal(pooled.shape)), idx, x.shape, 3, 2, 1),
        dz,
        loss,
        F.global_avg_pool_forward(x),
        F.global_avg_pool_backward(bf(rng.standard_normal(x.shape[:2])), x.shape),
    ]
    return [a.view(np.uint16) if a.dtype == bfloat16 else np.asarray(a) for a in out]


@pytest.mark.parametrize("isa", ISAS)
def test_every_isa_copy_gives_the_same_bits(tmp_path, isa):
    assert_isa_copy_agrees(tmp_path, isa, "test_bf16", "all_outputs")


# ------------------------------------------------------------------------------ plumbing
def test_bfloat16_is_ml_dtypes():
    import ml_dtypes

    assert fastopt.bfloat16 is ml_dtypes.bfloat16
    assert dtype_of(np.zeros(2, bfloat16)) == np.dtype(bfloat16)


def test_torch_bfloat16_tensors():
    torch = pytest.importorskip("torch")
    t = torch.randn(5, 7).to(torch.bfloat16)
    assert dtype_of(t) == np.dtype(bfloat16)
    a = to_numpy(t)
    assert a.dtype == bfloat16 and np.array_equal(a.view(np.uint16), t.view(torch.int16).numpy().view(np.uint16))
    y = F.relu_forward(t)  # read in place through the tensor's pointer; the output is NumPy
    assert y.dtype == bfloat16 and np.array_equal(y.view(np.uint16), F.relu_forward(a).view(np.uint16))
    back = torch.from_dlpack(fastopt._C._host_dlpack(y))  # DLPack carries bf16 (kDLBfloat)
    assert back.dtype == torch.bfloat16 and torch.equal(back, torch.relu(t))


@pytest.mark.gpu
def test_bf16_device_arrays_copy_and_gpu_kernels_take_them():
    x = bf(np.arange(-3, 9).reshape(3, 4) / 4)
    d = fastopt.to_device(x)
    assert d.dtype == bfloat16 and np.array_equal(d.numpy().view(np.uint16), x.view(np.uint16))
    z = fastopt.zeros((2, 3), bfloat16)
    assert z.dtype == bfloat16 and not f64(z.numpy()).any()
    # The memory-bound ops (tests/test_bf16_gpu.py) and conv2d and linear (tensor cores:
    # tests/test_gemm_bf16_gpu.py) run bf16 on the GPU.
    assert F.relu_forward(d).dtype == bfloat16
    assert F.conv2d_forward(d.reshape((1, 1, 3, 4)), fastopt.to_device(bf(np.ones((2, 1, 1, 1))))).dtype == bfloat16
    assert F.linear_forward(d, fastopt.to_device(bf(np.ones((2, 4))))).dtype == bfloat16
    with pytest.raises(TypeError, match=r"x: unsupported dtype bfloat16.*not yet"):
        F.augment_batch(d, 1, 0)  # an op without a bf16 path, CPU or GPU
    with pytest.raises(TypeError, match=r"params\[0\]: float16 on the GPU: not yet \(issue 21\)"):
        fastopt.optim.SGD([fastopt.to_device(x.astype(np.float16))])  # bf16 parameters step on the GPU


# ---------------------------------------------------------------------------- bad input
X = bf(np.ones((2, 3, 4, 4)))
X32 = np.ones((2, 3, 4, 4), np.float32)
C3 = np.ones(3, np.float32)
BAD = [
    # one op, one dtype: never mixed, never converted
    (lambda: F.relu_backward(X, X32), r"dy: expected a float32 array, got bfloat16"),
    (lambda: F.leaky_relu_backward(X32, X), r"dy: expected a bfloat16 array, got float32"),
    (lambda: F.batch_norm_backward(X32, X, C3, C3, C3), r"dy: expected a bfloat16 array, got float32"),
    (
        lambda: F.softmax_cross_entropy(bf(np.ones((2, 3))), np.ones((2, 3), np.float32)),
        r"target: expected a bfloat16 array, got float32",
    ),
    # per-channel arrays of batch norm are float32 with bf16 activations too
    (lambda: F.batch_norm_forward(X, bf(C3), None, None, None, True), r"gamma: unsupported dtype bfloat16"),
    (lambda: F.batch_norm_forward(X, None, None, bf(C3), bf(C3), False), r"running_mean: unsupported dtype bfloat16"),
    # ops without a bf16 path say so
    (lambda: F.augment_batch(X, 1, 0), r"x: unsupported dtype bfloat16: this op takes float32 only .*not yet"),
    (lambda: F.axpby_([X], [X], 1.0, 1.0), r"ys\[0\]: unsupported dtype bfloat16.*not yet"),
    (lambda: F.clip_grad_norm_([X], 1.0), r"grads\[0\]: unsupported dtype bfloat16.*not yet"),
    # float16 has no kernel path (the optimizers take it: test_optim_bf16.py)
    (lambda: F.relu_forward(X.astype(np.float16)), r"x: unsupported dtype float16"),
    (lambda: F.max_pool2d_forward(X.astype(np.float16), 2), r"x: unsupported dtype float16"),
    (lambda: F.dropout_forward(np.ones(3, np.float64), 0.5, 1), r"x: expected a float32 array, got float64"),
]


@pytest.mark.parametrize("call,message", BAD, ids=[m for _, m in BAD])
def test_bad_input_is_named(call, message):
    with pytest.raises(TypeError, match=message):
        call()


# --------------------------------------------------------------- mixed-precision training
def test_bf16_network_trains_digits_as_well_as_fp32():
    from fastopt import data, nn
    from fastopt.train import TrainConfig, Trainer

    digits = data.load_digits()
    acc = {}
    for precision in ("fp32", "bf16"):
        model = nn.models.small_cnn(digits.shape[0], digits.num_classes)
        trainer = Trainer(
            model, digits, TrainConfig(device="cpu", epochs=6, progress=False, precision=precision, mixup=0.2)
        )  # mixup: float32 soft targets meet bf16 logits
        trainer.fit()
        acc[precision] = trainer.evaluate(digits.test)["acc"]
        assert all(t.dtype == np.float32 for t in trainer.store.tensors)  # fp32 master parameters
        logits = model.forward(digits.test.x[:4], training=False)
        assert logits.dtype == (bfloat16 if precision == "bf16" else np.float32)
    # The runs differ only by bf16 roundings of activations and weight copies; this model's
    # accuracy varies by about a point from seed to seed, so 2 points (7 of 360 digits) is the bar.
    assert acc["bf16"] >= 0.95 and acc["bf16"] >= acc["fp32"] - 0.02, acc


def test_bf16_build_refuses_what_has_no_bf16_path():
    from fastopt import nn

    class Square(nn.Module):  # a user's module that has not declared a bfloat16 path
        def forward(self, x, training=True):
            return x * x

    with pytest.raises(
        ValueError,
        match=r"precision: bf16 needs a bfloat16 path in every module; not yet in "
        r"1 \(Square\), 3 \(Square\)",
    ):
        nn.Sequential(nn.Linear(4, 4), Square(), nn.LayerNorm(4), Square()).build(precision="bf16")


def test_train_cli_precision_bf16(tmp_path):
    import json

    from fastopt.train_cli import main

    out = tmp_path / "run"
    assert main(["--precision", "bf16", "--epochs", "2", "--quiet", "--out", str(out)]) in (0, None)
    report = json.loads((out / "metrics.json").read_text())
    assert report["config"]["precision"] == "bf16" and report["test"]["acc"] > 0.5
