"""Batch, layer and group normalization against the float64 NumPy reference (and torch when
installed), forward and backward, on fresh random inputs, plus the numerics that bite and the
argument checks.

Tolerances: max |got - want| <= TOL * max(1, max |want|) per output (for dx the scale is also at
least max |dy * w * rstd|, the size of the terms that cancel in dx), TOL = 1e-5 on the CPU
(statistics in double, so what is left is float32 rounding of the elementwise math) and 5e-5 on
the GPU (float32 Welford/Chan statistics). rstd / invstd: relative 1e-6 (CPU) / 1e-5 (GPU)."""

import numpy as np
import pytest
from conftest import fetch, put

import fastopt.functional as F
from fastopt.reference import normalization as ref

TOL = {"cpu": 1e-5, "cuda": 5e-5}
RSTD_TOL = {"cpu": 1e-6, "cuda": 1e-5}


def assert_close(got, want, tol, what, scale=1.0):
    got, want = fetch(got).astype(np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    scale = max(scale, float(np.max(np.abs(want)))) if want.size else scale
    err = float(np.max(np.abs(got - want))) if want.size else 0.0
    assert err <= tol * scale, f"{what}: max error {err:.3g} > {tol * scale:.3g}"


def dx_scale(dy, w, rstd):
    """max |dy| * max |w| * max rstd: the size of dx's terms before they cancel."""
    if dy.size == 0:
        return 1.0
    w = 1.0 if w is None else float(np.max(np.abs(w)))
    return max(1.0, float(np.max(np.abs(dy))) * w * float(np.max(fetch(rstd))))


def f32(a):
    return np.ascontiguousarray(a, dtype=np.float32)


def maybe(a, backend):
    return None if a is None else put(a, backend)


def affine_params(rng, shape, affine):
    if not affine:
        return None, None
    return f32(rng.uniform(0.5, 2.0, shape) * rng.choice([-1, 1], shape)), f32(rng.standard_normal(shape))


# ------------------------------------------------------------------------------ batch norm

BN_SHAPES = [
    (2, 3),
    (7, 13),
    (3, 1),
    (2, 4099),
    (256, 1024 + 3),
    (1, 5, 2, 2),
    (5, 3, 7, 11),
    (4, 17, 1, 1),
    (3, 1, 13, 1),
    (2, 1031, 3, 1),
    (8, 4, 31, 29),
    (1, 2, 1, 3),
]


@pytest.mark.parametrize("shape", BN_SHAPES)
@pytest.mark.parametrize("affine", [True, False])
def test_batch_norm_training_matches_reference(shape, affine, backend, rng):
    C = shape[1]
    x = f32(rng.standard_normal(shape) * rng.uniform(0.1, 10.0) + rng.uniform(-5, 5))
    dy = f32(rng.standard_normal(shape))
    gamma, beta = affine_params(rng, C, affine)
    rm, rv = f32(rng.standard_normal(C)), f32(rng.uniform(0.5, 2.0, C))
    rm_d, rv_d = put(rm, backend), put(rv, backend)
    y, mean, invstd = F.batch_norm_forward(
        put(x, backend), maybe(gamma, backend), maybe(beta, backend), rm_d, rv_d, True, momentum=0.3, eps=1e-4
    )
    rm_ref, rv_ref = rm.astype(np.float64), rv.astype(np.float64)
    y_ref, mean_ref, invstd_ref = ref.batch_norm_forward(x, gamma, beta, rm_ref, rv_ref, True, 0.3, 1e-4)
    tol = TOL[backend]
    assert_close(y, y_ref, tol, "y")
    assert_close(mean, mean_ref, tol, "save_mean")
    np.testing.assert_allclose(fetch(invstd), invstd_ref, rtol=RSTD_TOL[backend])
    assert_close(rm_d, rm_ref, tol, "running_mean")
    assert_close(rv_d, rv_ref, tol, "running_var")

    dx, dgamma, dbeta = F.batch_norm_backward(put(dy, backend), put(x, backend), maybe(gamma, backend), mean, invstd)
    dx_ref, dgamma_ref, dbeta_ref = ref.batch_norm_backward(dy, x, gamma, fetch(mean), fetch(invstd))
    assert_close(dx, dx_ref, tol, "dx", dx_scale(dy, gamma, invstd))
    if affine:
        assert_close(dgamma, dgamma_ref, tol, "dgamma")
        assert_close(dbeta, dbeta_ref, tol, "dbeta")
    else:
        assert dgamma is None and dbeta is None


@pytest.mark.parametrize("shape", [(1, 3), (5, 7), (2, 1031, 3, 1), (4, 6, 5, 9)])
def test_batch_norm_eval_matches_reference(shape, backend, rng):
    C = shape[1]
    x, dy = f32(rng.standard_normal(shape) * 3 + 1), f32(rng.standard_normal(shape))
    gamma, beta = affine_params(rng, C, True)
    rm, rv = f32(rng.standard_normal(C)), f32(rng.uniform(0.5, 2.0, C))
    rm_d, rv_d = put(rm, backend), put(rv, backend)
    y, mean, invstd = F.batch_norm_forward(put(x, backend), put(gamma, backend), put(beta, backend), rm_d, rv_d, False)
    y_ref, _, invstd_ref = ref.batch_norm_forward(x, gamma, beta, rm, rv, False)
    assert_close(y, y_ref, TOL[backend], "y")
    np.testing.assert_array_equal(fetch(mean), rm)
    np.testing.assert_allclose(fetch(invstd), invstd_ref, rtol=RSTD_TOL[backend])
    np.testing.assert_array_equal(fetch(rm_d), rm)  # eval never touches the running stats
    np.testing.assert_array_equal(fetch(rv_d), rv)
    dx, dgamma, dbeta = F.batch_norm_backward(
        put(dy, backend), put(x, backend), put(gamma, backend), mean, invstd, training=False
    )
    want = ref.batch_norm_backward(dy, x, gamma, rm, fetch(invstd), training=False)
    scales = (dx_scale(dy, gamma, invstd), 1.0, 1.0)
    for got, w, name, sc in zip((dx, dgamma, dbeta), want, ("dx", "dgamma", "dbeta"), scales):
        assert_close(got, w, TOL[backend], name, sc)


def test_batch_norm_cumulative_average(backend, rng):
    """momentum=None: factor 1 / num_batches_tracked, so the running stats average all batches."""
    C = 6
    rm, rv = put(np.zeros(C, np.float32), backend), put(np.ones(C, np.float32), backend)
    rm_ref, rv_ref = np.zeros(C), np.ones(C)
    for t in range(1, 4):
        x = f32(rng.standard_normal((9, C, 2, 3)) * t + t)
        F.batch_norm_forward(put(x, backend), None, None, rm, rv, True, momentum=None, num_batches_tracked=t)
        ref.batch_norm_forward(x, None, None, rm_ref, rv_ref, True, momentum=None, num_batches_tracked=t)
    assert_close(rm, rm_ref, TOL[backend], "running_mean")
    assert_close(rv, rv_ref, TOL[backend], "running_var")


def test_batch_norm_large_mean_tiny_std(backend, rng):
    """Channels with mean 1e5 and std 1e-2: E[x^2] - E[x]^2 would lose every digit."""
    shape = (16, 3, 9, 7)
    x = f32(1e5 + 1e-2 * rng.standard_normal(shape))
    dy = f32(rng.standard_normal(shape))
    gamma, beta = affine_params(rng, 3, True)
    y, mean, invstd = F.batch_norm_forward(put(x, backend), put(gamma, backend), put(beta, backend), None, None, True)
    y_ref, mean_ref, invstd_ref = ref.batch_norm_forward(x, gamma, beta, None, None, True)
    assert_close(y, y_ref, TOL[backend], "y")
    np.testing.assert_allclose(fetch(mean), mean_ref, rtol=1e-7)
    np.testing.assert_allclose(fetch(invstd), invstd_ref, rtol=RSTD_TOL[backend] * 10)
    dx, dgamma, dbeta = F.batch_norm_backward(put(dy, backend), put(x, backend), put(gamma, backend), mean, invstd)
    # The contract: gradients of the normalization defined by the saved statistics.
    want = ref.batch_norm_backward(dy, x, gamma, fetch(mean), fetch(invstd))
    scales = (dx_scale(dy, gamma, invstd), 1.0, 1.0)
    for got, w, name, sc in zip((dx, dgamma, dbeta), want, ("dx", "dgamma", "dbeta"), scales):
        assert_close(got, w, TOL[backend], name, sc)


def test_batch_norm_constant_channels(backend, rng):
    shape = (4, 5, 3, 3)
    x = np.broadcast_to(f32(rng.standard_normal((1, 5, 1, 1)) * 100), shape).copy()
    dy = f32(rng.standard_normal(shape))
    gamma, beta = affine_params(rng, 5, True)
    y, mean, invstd = F.batch_norm_forward(put(x, backend), put(gamma, backend), put(beta, backend), None, None, True)
    np.testing.assert_array_equal(fetch(y), np.broadcast_to(beta[None, :, None, None], shape))
    np.testing.assert_array_equal(fetch(mean), x[0, :, 0, 0])
    np.testing.assert_allclose(fetch(invstd), 1 / np.sqrt(1e-5), rtol=1e-6)
    dx, dgamma, dbeta = F.batch_norm_backward(put(dy, backend), put(x, backend), put(gamma, backend), mean, invstd)
    want = ref.batch_norm_backward(dy, x, gamma, fetch(mean), fetch(invstd))
    scales = (dx_scale(dy, gamma, invstd), 1.0, 1.0)
    for got, w, name, sc in zip((dx, dgamma, dbeta), want, ("dx", "dgamma", "dbeta"), scales):
        assert_close(got, w, TOL[backend], name, sc)
    np.testing.assert_array_equal(fetch(dgamma), 0.0)


@pytest.mark.parametrize("shape", [(1, 4), (1, 3, 1, 1), (0, 4)])
def test_batch_norm_one_value_per_channel_in_training(shape, backend):
    x = put(np.ones(shape, np.float32), backend)
    with pytest.raises(ValueError, match=r"x: expected more than 1 value per channel when training"):
        F.batch_norm_forward(x, None, None, None, None, True)
    C = shape[1]
    stats = put(np.zeros(C, np.float32), backend)
    with pytest.raises(ValueError, match=r"x: expected more than 1 value per channel when training"):
        F.batch_norm_backward(x, x, None, stats, stats, training=True)


def test_batch_norm_eval_single_sample(backend, rng):
    x = f32(rng.standard_normal((1, 3)))
    rm, rv = f32(rng.standard_normal(3)), f32(rng.uniform(1, 2, 3))
    y, _, _ = F.batch_norm_forward(put(x, backend), None, None, put(rm, backend), put(rv, backend), False)
    assert_close(y, ref.batch_norm_forward(x, None, None, rm, rv, False)[0], TOL[backend], "y")


def test_bias_only_gradient(backend, rng):
    x, dy = f32(rng.standard_normal((6, 4))), f32(rng.standard_normal((6, 4)))
    _, mean, invstd = F.batch_norm_forward(put(x, backend), None, None, None, None, True)
    dx, dgamma, dbeta = F.batch_norm_backward(put(dy, backend), put(x, backend), None, mean, invstd, has_bias=True)
    assert dgamma is None
    assert_close(dbeta, dy.astype(np.float64).sum(axis=0), TOL[backend], "dbeta")
    _, m, r = F.layer_norm_forward(put(x, backend), 4)
    _, dw, db = F.layer_norm_backward(put(dy, backend), put(x, backend), 4, m, r, has_bias=True)
    assert dw is None
    assert_close(db, dy.astype(np.float64).sum(axis=0), TOL[backend], "dbias")


# -------------------------------------------------------------------------- layer norm

LN_CASES = [
    ((1, 1), (1,)),
    ((3, 7), (7,)),
    ((5, 4, 33), (33,)),
    ((5, 4, 33), (4, 33)),
    ((2, 1031), 1031),
    ((64, 1024), (1024,)),
    ((0, 8), (8,)),
    ((3, 2, 2, 5), (2, 2, 5)),
]


def check_row_norm(backend, dy, w, affine, forward, forward_ref, backward, backward_ref):
    """Layer/group norm: forward outputs, then the backward from the saved statistics, against the
    reference (whose backward takes the same saved statistics)."""
    (y, mean, rstd), (y_ref, mean_ref, rstd_ref) = forward, forward_ref
    assert_close(y, y_ref, TOL[backend], "y")
    assert_close(mean, mean_ref, TOL[backend], "mean")
    np.testing.assert_allclose(fetch(rstd), rstd_ref, rtol=RSTD_TOL[backend])
    dx, dw, db = backward(mean, rstd)
    dx_ref, dw_ref, db_ref = backward_ref(fetch(mean), fetch(rstd))
    assert_close(dx, dx_ref, TOL[backend], "dx", dx_scale(dy, w, rstd))
    if affine:
        assert_close(dw, dw_ref, TOL[backend], "dweight")
        assert_close(db, db_ref, TOL[backend], "dbias")
    else:
        assert dw is None and db is None


@pytest.mark.parametrize("shape,normalized", LN_CASES)
@pytest.mark.parametrize("affine", [True, False])
def test_layer_norm_matches_reference(shape, normalized, affine, backend, rng):
    nshape = (normalized,) if isinstance(normalized, int) else normalized
    x = f32(rng.standard_normal(shape) * rng.uniform(0.1, 10.0) + rng.uniform(-5, 5))
    dy = f32(rng.standard_normal(shape))
    w, b = affine_params(rng, nshape, affine)
    check_row_norm(
        backend,
        dy,
        w,
        affine,
        F.layer_norm_forward(put(x, backend), normalized, maybe(w, backend), maybe(b, backend), eps=1e-3),
        ref.layer_norm_forward(x, nshape, w, b, eps=1e-3),
        lambda mean, rstd: F.layer_norm_backward(
            put(dy, backend), put(x, backend), normalized, mean, rstd, maybe(w, backend)
        ),
        lambda mean, rstd: ref.layer_norm_backward(dy, x, nshape, mean, rstd, w),
    )


def test_layer_norm_large_mean_tiny_std(backend, rng):
    x = f32(-1e5 + 1e-2 * rng.standard_normal((6, 257)))
    y, mean, rstd = F.layer_norm_forward(put(x, backend), 257)
    assert_close(y, ref.layer_norm_forward(x, (257,))[0], TOL[backend], "y")


# -------------------------------------------------------------------------- group norm

GN_CASES = [
    ((2, 6, 5, 3), 3),
    ((2, 6, 5, 3), 1),
    ((2, 6, 5, 3), 6),
    ((3, 8), 4),
    ((1, 1, 1, 1), 1),
    ((4, 1031, 2, 1), 1031),
    ((5, 12, 7, 7), 4),
    ((2, 4, 3), 2),
    ((0, 4, 3, 3), 2),
    ((3, 64, 17, 13), 32),
]


@pytest.mark.parametrize("shape,groups", GN_CASES)
@pytest.mark.parametrize("affine", [True, False])
def test_group_norm_matches_reference(shape, groups, affine, backend, rng):
    C = shape[1]
    x = f32(rng.standard_normal(shape) * rng.uniform(0.1, 10.0) + rng.uniform(-5, 5))
    dy = f32(rng.standard_normal(shape))
    w, b = affine_params(rng, C, affine)
    forward = F.group_norm_forward(put(x, backend), groups, maybe(w, backend), maybe(b, backend))
    assert fetch(forward[1]).shape == (shape[0], groups)
    check_row_norm(
        backend,
        dy,
        w,
        affine,
        forward,
        ref.group_norm_forward(x, groups, w, b),
        lambda mean, rstd: F.group_norm_backward(
            put(dy, backend), put(x, backend), groups, mean, rstd, maybe(w, backend)
        ),
        lambda mean, rstd: ref.group_norm_backward(dy, x, groups, mean, rstd, w),
    )


def test_group_norm_constant_groups(backend, rng):
    x = np.repeat(f32(rng.standard_normal((3, 2, 1, 1)) * 50), 3, axis=1).reshape(3, 6, 1, 1)
    x = np.ascontiguousarray(np.broadcast_to(x, (3, 6, 4, 4)))
    y, mean, rstd = F.group_norm_forward(put(x, backend), 2)
    np.testing.assert_array_equal(fetch(y), 0.0)
    np.testing.assert_allclose(fetch(rstd), 1 / np.sqrt(1e-5), rtol=1e-6)


# ------------------------------------------------------------------- reproducibility, torch


def test_bitwise_deterministic(backend, rng):
    x, dy = f32(rng.standard_normal((16, 24, 9, 9))), f32(rng.standard_normal((16, 24, 9, 9)))
    g = f32(rng.standard_normal(24))
    runs = []
    for _ in range(2):
        y, m, s = F.batch_norm_forward(put(x, backend), put(g, backend), put(g, backend), None, None, True)
        grads = F.batch_norm_backward(put(dy, backend), put(x, backend), put(g, backend), m, s)
        yg, mg, sg = F.group_norm_forward(put(x, backend), 6, put(g, backend), None)
        ggrads = F.group_norm_backward(put(dy, backend), put(x, backend), 6, mg, sg, put(g, backend))
        runs.append([fetch(a) for a in (y, m, s, *grads, yg, mg, sg, *ggrads)])
    for a, b in zip(*runs):
        np.testing.assert_array_equal(a, b)


def test_matches_torch(rng):
    torch = pytest.importorskip("torch")
    tf = torch.nn.functional
    shape = (6, 5, 7, 3)
    x, dy = f32(rng.standard_normal(shape) * 2 + 3), f32(rng.standard_normal(shape))
    w, b = affine_params(rng, 5, True)

    def torch_run(fn, *params):
        xt = torch.tensor(x, requires_grad=True)
        pt = [torch.tensor(p, requires_grad=True) for p in params]
        out = fn(xt, *pt)
        grads = torch.autograd.grad(out, [xt, *pt], torch.tensor(dy))
        return [out.detach().numpy()] + [g.numpy() for g in grads]

    rm, rv = np.zeros(5, np.float32), np.ones(5, np.float32)
    rmt, rvt = torch.zeros(5), torch.ones(5)
    want = torch_run(lambda xt, wt, bt: tf.batch_norm(xt, rmt, rvt, wt, bt, True, 0.1, 1e-5), w, b)
    y, m, s = F.batch_norm_forward(x, w, b, rm, rv, True)
    got = [y, *F.batch_norm_backward(dy, x, w, m, s)]
    for g, t, name in zip(got, want, ("y", "dx", "dgamma", "dbeta")):
        assert_close(g, t, 1e-5, f"batch_norm {name}")
    assert_close(rm, rmt.numpy(), 1e-6, "running_mean")
    assert_close(rv, rvt.numpy(), 1e-6, "running_var")

    # Eval mode, forward and backward through the running statistics.
    want = torch_run(lambda xt, wt, bt: tf.batch_norm(xt, rmt, rvt, wt, bt, False, 0.1, 1e-5), w, b)
    y, m, s = F.batch_norm_forward(x, w, b, rm, rv, False)
    got = [y, *F.batch_norm_backward(dy, x, w, m, s, training=False)]
    for g, t, name in zip(got, want, ("y", "dx", "dgamma", "dbeta")):
        assert_close(g, t, 1e-5, f"eval batch_norm {name}")

    want = torch_run(
        lambda xt, wt, bt: tf.layer_norm(xt, (7, 3), wt, bt),
        w[0] * np.ones((7, 3), np.float32),
        np.ones((7, 3), np.float32),
    )
    y, m, s = F.layer_norm_forward(x, (7, 3), w[0] * np.ones((7, 3), np.float32), np.ones((7, 3), np.float32))
    got = [y, *F.layer_norm_backward(dy, x, (7, 3), m, s, w[0] * np.ones((7, 3), np.float32))]
    for g, t, name in zip(got, want, ("y", "dx", "dweight", "dbias")):
        assert_close(g, t, 1e-5, f"layer_norm {name}")

    want = torch_run(lambda xt, wt, bt: tf.group_norm(xt, 5, wt, bt), w, b)
    y, m, s = F.group_norm_forward(x, 5, w, b)
    got = [y, *F.group_norm_backward(dy, x, 5, m, s, w)]
    for g, t, name in zip(got, want, ("y", "dx", "dweight", "dbias")):
        assert_close(g, t, 1e-5, f"group_norm {name}")


# ----------------------------------------------------------------------------- bad input


def _bn_args():
    return dict(
        x=np.ones((4, 3, 2, 2), np.float32),
        gamma=np.ones(3, np.float32),
        beta=np.zeros(3, np.float32),
        running_mean=np.zeros(3, np.float32),
        running_var=np.ones(3, np.float32),
        training=True,
    )


@pytest.mark.parametrize(
    "change,exc,match",
    [
        (dict(x=np.ones((4, 3), np.float64)), TypeError, r"x: expected a float32 array, got float64"),
        (dict(x=np.ones((4, 6), np.float32)[:, ::2]), ValueError, r"x: array must be C-contiguous"),
        (dict(x=np.ones(5, np.float32)), ValueError, r"x: batch norm expects \(N, C, ...\)"),
        (dict(x=[[1.0, 2.0]]), TypeError, r"x: expected a numpy.ndarray"),
        (dict(gamma=np.ones(4, np.float32)), ValueError, r"gamma: expected shape \(3,\), got \(4,\)"),
        (dict(beta=np.ones(3, np.int32)), TypeError, r"beta: expected a float32 array"),
        (dict(running_mean=np.zeros(2, np.float32)), ValueError, r"running_mean: expected shape \(3,\)"),
        (dict(running_var=None), ValueError, r"running_mean, running_var: pass both or neither"),
        (dict(running_mean=None, running_var=None, training=False), ValueError, r"required when training=False"),
        (dict(momentum=1.5), ValueError, r"momentum: must lie in \[0, 1\]"),
        (dict(momentum=None), ValueError, r"num_batches_tracked"),
        (dict(eps=-1.0), ValueError, r"eps: must be a finite number >= 0"),
    ],
)
def test_batch_norm_bad_arguments(change, exc, match):
    args = _bn_args()
    args.update(change)
    before_m, before_v = [None if a is None else np.copy(a) for a in (args["running_mean"], args["running_var"])]
    with pytest.raises(exc, match=match):
        F.batch_norm_forward(**args)
    if args["running_mean"] is not None and before_m is not None and args["running_mean"].shape == before_m.shape:
        np.testing.assert_array_equal(args["running_mean"], before_m)


def test_batch_norm_read_only_running_stats():
    args = _bn_args()
    args["running_var"].flags.writeable = False
    with pytest.raises(ValueError, match=r"running_var: array is read-only"):
        F.batch_norm_forward(**args)
    args["training"] = False  # eval only reads them
    F.batch_norm_forward(**args)


def test_batch_norm_running_stats_sharing_memory():
    args = _bn_args()
    buf = np.zeros(5, np.float32)
    args["running_mean"], args["running_var"] = buf[:3], buf[2:]
    with pytest.raises(ValueError, match=r"share memory"):
        F.batch_norm_forward(**args)


def test_backward_bad_arguments():
    x = np.ones((4, 3, 2, 2), np.float32)
    s = np.ones(3, np.float32)
    with pytest.raises(ValueError, match=r"dy: shape \(4, 3, 2\) does not match x shape"):
        F.batch_norm_backward(np.ones((4, 3, 2), np.float32), x, None, s, s)
    with pytest.raises(ValueError, match=r"save_invstd: expected shape \(3,\), got \(2,\)"):
        F.batch_norm_backward(x, x, None, s, s[:2])
    with pytest.raises(TypeError, match=r"save_mean: expected an array, got None"):
        F.batch_norm_backward(x, x, None, None, s)
    with pytest.raises(ValueError, match=r"rstd: expected shape \(4, 3\)"):
        F.layer_norm_backward(x, x, (2, 2), np.ones((4, 3), np.float32), s)
    with pytest.raises(ValueError, match=r"weight: expected shape \(3,\)"):
        F.group_norm_backward(x, x, 3, np.ones((4, 3), np.float32), np.ones((4, 3), np.float32), np.ones(4, np.float32))


@pytest.mark.parametrize(
    "call,exc,match",
    [
        (
            lambda x: F.layer_norm_forward(x, (3, 3)),
            ValueError,
            r"normalized_shape: \(3, 3\) is not the trailing shape",
        ),
        (lambda x: F.layer_norm_forward(x, ()), ValueError, r"normalized_shape: must name at least one"),
        (lambda x: F.layer_norm_forward(x, 2, np.ones(3, np.float32)), ValueError, r"weight: expected shape \(2,\)"),
        (lambda x: F.layer_norm_forward(x, 2, eps=float("nan")), ValueError, r"eps: must be a finite number"),
        (lambda x: F.group_norm_forward(x, 2), ValueError, r"num_groups: 2 does not divide the 3 channels"),
        (lambda x: F.group_norm_forward(x, 0), ValueError, r"num_groups: must be >= 1"),
        (lambda x: F.group_norm_forward(x[0, 0, 0], 1), ValueError, r"x: group norm expects \(N, C, ...\)"),
        (lambda x: F.group_norm_forward(x, 3, None, np.ones((3, 1), np.float32)), ValueError, r"bias: expected shape"),
    ],
)
def test_row_norm_bad_arguments(call, exc, match):
    with pytest.raises(exc, match=match):
        call(np.ones((4, 3, 2, 2), np.float32))
