"""Weight gradients written (or added) by the native backward kernels straight into the caller's
arrays: conv2d dw/db, linear dweight/dbias and the norms' affine gradients take out arrays (a
parameter's slot in the store's flat gradient buffer) and accumulate=True, which adds into them
at each kernel's final store. So `model.backward(dy, accumulate=True)` needs no pass of its own.

Exactness: with out and accumulate=False the slot must hold the fresh result bit for bit (the
same kernels, only the destination differs); with accumulate=True it must hold old + fresh as one
float32 addition, which is what NumPy's float32 `+` computes. Every CPU path of each family is hit
by a shape picked for it (see conv2d.cpp's dispatch), and the GPU variant runs the same checks.
"""

import numpy as np
import pytest
from conftest import BACKENDS, fetch, put
from ml_dtypes import bfloat16

import fastopt
import fastopt.functional as F
from fastopt import nn

# (backend, marks) for hand-built parameter lists: the cuda variant carries the gpu marker.
DEVICES = [("cpu", ()), ("cuda", (pytest.mark.gpu,))]


def assert_bits(got, want, what):
    got, want = np.ascontiguousarray(fetch(got)), np.ascontiguousarray(want)
    assert got.dtype == want.dtype and got.shape == want.shape, (what, got.dtype, want.dtype, got.shape, want.shape)
    np.testing.assert_array_equal(got.view(np.uint8), want.view(np.uint8), err_msg=what)


def check_out_and_accumulate(rng, backend, fn, outs):
    """fn(**kw) runs one backward and returns its tuple; outs maps each out keyword to the index of
    its gradient in that tuple. Checks out= against the fresh result, accumulate=True against
    old + fresh, and that the other results (dx) do not change."""
    fresh = [None if v is None else fetch(v) for v in fn()]
    # NaN slots: an overwriting store must not read them.
    slots = {k: put(np.full(fresh[i].shape, np.nan, np.float32), backend) for k, i in outs.items()}
    got = fn(**slots)
    for k, i in outs.items():
        assert got[i] is slots[k], k
        assert_bits(slots[k], fresh[i], k)
    for i, v in enumerate(got):
        if i not in outs.values():
            assert (v is None) == (fresh[i] is None)
            if v is not None:
                assert_bits(v, fresh[i], f"result {i}")
    old = {k: rng.standard_normal(fresh[i].shape).astype(np.float32) for k, i in outs.items()}
    slots = {k: put(v, backend) for k, v in old.items()}
    got = fn(accumulate=True, **slots)
    for k, i in outs.items():
        assert got[i] is slots[k], k
        assert_bits(slots[k], old[k] + fresh[i], f"{k} accumulated")


def _inputs(rng, backend, dtype, *shapes):
    arrays = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    if dtype == "bf16":
        return [a.astype(bfloat16) for a in arrays]
    return [put(a, backend) for a in arrays]


# (id, x shape, w shape, conv kwargs): each meant for one CPU path of the weight-grad.
CONV_CASES = [
    ("gemm", (2, 8, 7, 7), (16, 8, 3, 3), dict(padding=1)),
    ("gemm-partials", (8, 16, 16, 16), (24, 16, 3, 3), dict(padding=1)),
    ("gemm-strided-groups", (3, 8, 11, 11), (12, 4, 3, 3), dict(stride=2, groups=2, dilation=(1, 2))),
    ("winograd", (2, 128, 6, 6), (128, 128, 3, 3), dict(padding=1)),
    ("channelwise", (3, 8, 10, 10), (8, 1, 3, 3), dict(padding=1, groups=8)),
    ("channelwise-generic", (2, 6, 9, 9), (12, 1, 3, 3), dict(stride=2, groups=6)),
    ("narrow", (2, 3, 12, 12), (8, 3, 3, 3), dict(padding=1)),
    ("empty-batch", (0, 4, 5, 5), (6, 4, 3, 3), dict()),
]
CONV_BF16 = ["gemm", "gemm-partials", "channelwise", "narrow"]


def _conv_params():
    for case in CONV_CASES:
        for backend, marks in DEVICES:
            yield pytest.param(case, backend, "fp32", id=f"{case[0]}-{backend}", marks=marks)
        if case[0] in CONV_BF16:
            yield pytest.param(case, "cpu", "bf16", id=f"{case[0]}-cpu-bf16")


def _conv_out(x_shape, w_shape, kw):
    s, p, d, _ = F.conv._hyper(kw.get("stride", 1), kw.get("padding", 0), kw.get("dilation", 1), 1)
    return tuple((x_shape[2 + i] + 2 * p[i] - d[i] * (w_shape[2 + i] - 1) - 1) // s[i] + 1 for i in range(2))


@pytest.mark.parametrize("case,backend,dtype", list(_conv_params()))
def test_conv2d_weight_grads_into_out(rng, case, backend, dtype):
    _, x_shape, w_shape, kw = case
    P, Q = _conv_out(x_shape, w_shape, kw)
    x, w, dy = _inputs(rng, backend, dtype, x_shape, w_shape, (x_shape[0], w_shape[0], P, Q))
    check_out_and_accumulate(
        rng, backend, lambda **o: F.conv2d_backward(dy, x, w, **kw, **o), {"dw_out": 1, "db_out": 2}
    )
    # dw alone (no bias): the other out stays unasked for.
    dw_only = (False, True, False)
    check_out_and_accumulate(
        rng, backend, lambda **o: F.conv2d_backward(dy, x, w, need=dw_only, **kw, **o), {"dw_out": 1}
    )


def _backend_dtype_params():
    for backend, marks in DEVICES:
        yield pytest.param(backend, "fp32", id=backend, marks=marks)
    yield pytest.param("cpu", "bf16", id="cpu-bf16")


# (N, in, out): serial and parallel GEMMs, the transposed store (4 x 3 -> 60), row-blocked bias
# sums, N = 0; the last two split the GPU's reductions (split-K weight-grad, row-ranged bias sum).
LINEAR_SHAPES = [
    (5, 7, 3),
    (3, 20, 10),
    (4, 3, 60),
    (300, 256, 200),
    (600, 16, 8),
    (0, 5, 4),
    (1024, 32, 16),
    (2048, 8, 16),
]


@pytest.mark.parametrize("backend,dtype", list(_backend_dtype_params()))
@pytest.mark.parametrize("shape", LINEAR_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_linear_weight_grads_into_out(rng, backend, dtype, shape):
    n, i, o = shape
    x, w, dy = _inputs(rng, backend, dtype, (n, i), (o, i), (n, o))
    check_out_and_accumulate(
        rng, backend, lambda **kw: F.linear_backward(dy, x, w, **kw), {"dweight_out": 1, "dbias_out": 2}
    )


# (id, x shape, function, its grouping argument or None for batch norm, training).
NORM_CASES = [
    ("bn2d-train", (4, 6, 5, 5), "batch", None, True),
    ("bn2d-eval", (4, 6, 5, 5), "batch", None, False),
    ("bn1d-train", (9, 7), "batch", None, True),
    ("layer-1d", (6, 10), "layer", (10,), None),
    ("layer-2d", (3, 4, 5), "layer", (4, 5), None),
    ("group-4d", (4, 6, 3, 3), "group", 3, None),
    ("group-2d", (5, 6), "group", 2, None),
]


def _norm_call(kind, x, dy, arg, training, weight, has_bias):
    """The backward of `kind` as fn(**kw) with layer/group norm's out names (batch norm's renamed)."""
    if kind == "batch":
        y, mean, rstd = F.batch_norm_forward(x, weight, None, None, None, True)
        return lambda **kw: F.batch_norm_backward(
            dy,
            x,
            weight,
            mean,
            rstd,
            training,
            has_bias=has_bias,
            **{k.replace("dweight", "dgamma").replace("dbias", "dbeta"): v for k, v in kw.items()},
        )
    fwd, bwd = (
        (F.layer_norm_forward, F.layer_norm_backward)
        if kind == "layer"
        else (F.group_norm_forward, F.group_norm_backward)
    )
    y, mean, rstd = fwd(x, arg, weight, None)
    return lambda **kw: bwd(dy, x, arg, mean, rstd, weight, has_bias=has_bias, **kw)


@pytest.mark.parametrize("backend,dtype", list(_backend_dtype_params()))
@pytest.mark.parametrize("case", NORM_CASES, ids=lambda c: c[0])
def test_norm_affine_grads_into_out(rng, backend, dtype, case):
    _, shape, kind, arg, training = case
    x, dy = _inputs(rng, backend, dtype, shape, shape)
    wshape = tuple(arg) if kind == "layer" else (shape[1],)
    weight = put(rng.standard_normal(wshape).astype(np.float32) + 1.0, backend)
    call = _norm_call(kind, x, dy, arg, training, weight, True)
    check_out_and_accumulate(rng, backend, call, {"dweight_out": 1, "dbias_out": 2})
    # A bias-only affine computes dbias alone.
    call = _norm_call(kind, x, dy, arg, training, None, True)
    check_out_and_accumulate(rng, backend, call, {"dbias_out": 2})


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", NORM_CASES, ids=lambda c: c[0])
def test_norm_without_affine_grads(rng, backend, case):
    """affine_grads=False (a frozen layer): the same dx, no affine gradients (nor outs for them)."""
    _, shape, kind, arg, training = case
    x, dy = _inputs(rng, backend, "fp32", shape, shape)
    wshape = tuple(arg) if kind == "layer" else (shape[1],)
    weight = put(rng.standard_normal(wshape).astype(np.float32) + 1.0, backend)
    call = _norm_call(kind, x, dy, arg, training, weight, True)
    dx, dw, db = call()
    frozen = call(affine_grads=False)
    assert frozen[1] is None and frozen[2] is None and dw is not None and db is not None
    assert_bits(frozen[0], fetch(dx), "dx")
    with pytest.raises(ValueError, match="^d(weight|gamma)_out: given, but d(weight|gamma) is not computed"):
        call(affine_grads=False, dweight_out=put(fetch(dw), backend))


def test_bad_out_arguments_raise_naming_them():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 6, 6)).astype(np.float32)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    dy = rng.standard_normal((2, 4, 4, 4)).astype(np.float32)
    good = np.zeros(w.shape, np.float32)
    conv = lambda **kw: F.conv2d_backward(dy, x, w, **kw)  # noqa: E731
    with pytest.raises(TypeError, match="^dw_out: .*float64"):
        conv(dw_out=np.zeros(w.shape))
    with pytest.raises(ValueError, match=r"^dw_out: expected shape \(4, 3, 3, 3\)"):
        conv(dw_out=np.zeros((4, 27), np.float32))
    with pytest.raises(ValueError, match="^db_out: expected shape"):
        conv(db_out=np.zeros(5, np.float32))
    with pytest.raises((TypeError, ValueError), match="^dw_out: .*contiguous"):
        conv(dw_out=np.zeros((3, 3, 3, 4), np.float32).transpose(3, 2, 1, 0))
    readonly = good.copy()
    readonly.flags.writeable = False
    with pytest.raises((TypeError, ValueError), match="^dw_out: .*(read-only|writ)"):
        conv(dw_out=readonly)
    with pytest.raises(ValueError, match="^dw_out: accumulate=True adds dw into this array, got None"):
        conv(db_out=np.zeros(4, np.float32), accumulate=True)
    with pytest.raises(ValueError, match="^dw_out: given, but dw is not computed"):
        conv(dw_out=good, need=(True, False, True))
    with pytest.raises(TypeError, match="^accumulate: expected a bool"):
        conv(dw_out=good, db_out=np.zeros(4, np.float32), accumulate=1)
    # Sharing memory with an input or with the other output.
    flat = np.zeros(dy.size + 8, np.float32)
    dy_view = flat[: dy.size].reshape(dy.shape)
    dy_view[...] = dy
    with pytest.raises(ValueError, match="^dw_out and dy share memory"):
        F.conv2d_backward(dy_view, x, w, dw_out=flat[dy.size - w.size + 4 : dy.size + 4].reshape(w.shape))
    with pytest.raises(ValueError, match="^db_out and dw_out share memory"):
        conv(dw_out=good, db_out=good.reshape(-1)[:4])
    with pytest.raises(ValueError, match="^dweight_out and x share memory"):
        xs = rng.standard_normal((4, 6)).astype(np.float32)
        F.linear_backward(np.ones((4, 4), np.float32), xs, np.ones((4, 6), np.float32), dweight_out=xs)
    with pytest.raises(ValueError, match=r"^dgamma_out: expected shape \(3,\)"):
        _, m, r = F.batch_norm_forward(x, None, None, None, None, True)
        F.batch_norm_backward(x, x, np.ones(3, np.float32), m, r, dgamma_out=np.zeros(4, np.float32))
    with pytest.raises(ValueError, match="^dweight_out: given, but dweight is not computed"):
        _, m, r = F.layer_norm_forward(x, (6,))
        F.layer_norm_backward(x, x, (6,), m, r, None, dweight_out=np.zeros(6, np.float32))


@pytest.mark.gpu
def test_an_out_on_another_device_is_refused():
    x = fastopt.to_device(np.ones((3, 4), np.float32))
    w = fastopt.to_device(np.ones((2, 4), np.float32))
    dy = fastopt.to_device(np.ones((3, 2), np.float32))
    with pytest.raises(ValueError, match="dweight_out"):
        F.linear_backward(dy, x, w, dweight_out=np.zeros((2, 4), np.float32))


def _no_bn_net(backend, seed=3):
    # Per-sample layers only (GroupNorm and LayerNorm too), so micro-batches add up to the batch.
    model = nn.Sequential(
        nn.Conv2d(2, 8, 3, padding=1),
        nn.GroupNorm(2, 8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, groups=8),
        nn.Flatten(),
        nn.Linear(8 * 6 * 6, 10),
        nn.LayerNorm(10),
        nn.Linear(10, 5),
    )
    model.build(backend, seed=seed)
    return model


@pytest.mark.parametrize("backend", BACKENDS)
def test_micro_batches_accumulate_to_the_large_batch(rng, backend):
    x = rng.standard_normal((12, 2, 6, 6)).astype(np.float32)
    dy = rng.standard_normal((12, 5)).astype(np.float32)
    big = _no_bn_net(backend)
    big.forward(put(x, backend))
    big.backward(put(dy, backend))
    small = _no_bn_net(backend)
    for part in range(3):
        s = slice(4 * part, 4 * part + 4)
        small.forward(put(x[s], backend))
        small.backward(put(dy[s], backend), accumulate=part > 0)
    want, got = fetch(big.store.grad), fetch(small.store.grad)
    # Float32 sums over 12 samples regrouped 3 x 4: relative differences of a few ulps of the
    # larger partial sums (2^-24 each), far below 1e-5 of the gradient's norm.
    assert np.linalg.norm(got - want) <= 1e-5 * np.linalg.norm(want)
    assert np.abs(want).max() > 0


def test_layers_do_not_copy_gradients(monkeypatch, rng):
    """The layers hand their parameters' slots to the kernels: no axpby_ in any backward."""
    model = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.Conv2d(6, 6, 3, groups=6),
        nn.Flatten(),
        nn.Linear(6 * 4 * 4, 8),
        nn.LayerNorm(8),
        nn.Linear(8, 4),
    )
    model.build("cpu", seed=1)
    model.zero_grad()
    x = rng.standard_normal((5, 3, 6, 6)).astype(np.float32)
    dy = rng.standard_normal((5, 4)).astype(np.float32)

    def boom(*args, **kwargs):
        raise AssertionError("axpby_ called in a backward")

    monkeypatch.setattr(F, "axpby_", boom)
    model.forward(x)
    model.backward(dy)
    once = model.store.grad.copy()
    model.forward(x)
    model.backward(dy, accumulate=True)
    # The same batch twice: every gradient doubles exactly (BN uses the batch statistics again).
    assert_bits(model.store.grad, once + once, "accumulated")
    assert np.abs(once).max() > 0
