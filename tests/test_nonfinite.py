"""Non-finite input through every reduction-based op: a NaN or an Inf must reach every output it
touches, as in torch, and never be turned into a number (issue 15, item 1).

One test per kind of non-finite input (NaN, +Inf, -Inf, +Inf and -Inf in one statistic) walks a
table of every op that reduces (normalization forward/backward with saved and running
statistics, pooling, global norms and clipping, linear), on every backend, against torch and the
float64 reference. Softmax cross-entropy and conv2d have their own tables below, since where the
bad value sits (target class or not; Winograd tile or not) decides the answer.

Comparison: NaN and Inf (with its sign) at exactly the positions torch / the reference have them;
finite values within TOL relative to max(1, |want|): float32 sums of <= 360 values against
torch's float32 and the float64 reference differ by a few ulps times sqrt(count) ~ 1e-6, so
1e-4 only accepts rounding, never a wrong value. The values in this file are O(1).
"""

import math

import numpy as np
import pytest
from conftest import fetch, put

import fastopt.functional as F
from fastopt.reference import (
    linear as ref_linear,
    loss as ref_loss,
    normalization as ref_norm,
    norms as ref_norms,
    pooling as ref_pool,
)

torch = pytest.importorskip("torch")
TF = torch.nn.functional

TOL = 1e-4
NAN, INF = math.nan, math.inf

# The bad values of each kind at three places of x (N, C, H, W) = (3, 4, 5, 6): P0 is the first
# element of channel 0 and of sample 0 (the shift of one-pass statistics), P1 and P2 share a
# sample, a channel and a group, so "+-inf" puts both signs into one statistic (its mean: NaN).
SHAPE = (3, 4, 5, 6)
P0, P1, P2 = (0, 0, 0, 0), (1, 2, 3, 4), (1, 2, 0, 1)
KINDS = {"nan": (NAN, NAN, None), "+inf": (INF, INF, INF), "-inf": (-INF, -INF, None), "+-inf": (INF, INF, -INF)}


def bad_input(kind, rng, shape=SHAPE, places=(P0, P1, P2)):
    x = rng.standard_normal(shape).astype(np.float32)
    for where, value in zip(places, KINDS[kind]):
        if value is not None:
            x[where] = value
    return x


def assert_matches(got, want, what):
    """NaN and +-Inf at the same places, finite values within TOL (see the module docstring)."""
    got = fetch(got).astype(np.float64)
    want = want.detach().double().numpy() if isinstance(want, torch.Tensor) else np.asarray(want, np.float64)
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    for name, test in (("NaN", np.isnan), ("+Inf", np.isposinf), ("-Inf", np.isneginf)):
        mismatch = test(got) != test(want)
        assert not mismatch.any(), (
            f"{what}: {name} at {np.argwhere(mismatch)[:4].tolist()}: "
            f"got {got[mismatch][:4]}, want {want[mismatch][:4]}"
        )
    finite = np.isfinite(want)
    err = np.abs(got[finite] - want[finite]) / np.maximum(1.0, np.abs(want[finite]))
    assert err.size == 0 or err.max() <= TOL, f"{what}: max relative error {err.max():.3g} > {TOL}"


def t(a, grad=False):
    return torch.tensor(np.asarray(a), dtype=torch.float32, requires_grad=grad)


# ------------------------------------------------------------------------------ the op table
# Each op: (x, params, backend) -> {output: ours}, and (x, params) -> {output: want} for torch and
# the reference. params holds the finite inputs (weights, dy), drawn once per test.


def params_for(x, rng):
    C = x.shape[1]
    return {
        "w": rng.uniform(0.5, 2.0, C).astype(np.float32),
        "b": rng.standard_normal(C).astype(np.float32),
        "dy": rng.standard_normal(x.shape).astype(np.float32),
        "rm": rng.standard_normal(C).astype(np.float32),
        "rv": rng.uniform(0.5, 2.0, C).astype(np.float32),
    }


def bn_train_ours(x, p, backend):
    rm, rv = put(p["rm"], backend), put(p["rv"], backend)
    args = [put(a, backend) for a in (x, p["w"], p["b"])]
    y, mean, invstd = F.batch_norm_forward(*args, rm, rv, True)
    dx, dw, db = F.batch_norm_backward(put(p["dy"], backend), args[0], args[1], mean, invstd, True, has_bias=True)
    return {"y": y, "mean": mean, "invstd": invstd, "running_mean": rm, "running_var": rv, "dx": dx, "dw": dw, "db": db}


def bn_train_torch(x, p):
    rm, rv, xt, w, b = t(p["rm"]), t(p["rv"]), t(x, True), t(p["w"], True), t(p["b"], True)
    y, mean, invstd = torch.native_batch_norm(xt, w, b, rm, rv, True, 0.1, 1e-5)
    y.backward(t(p["dy"]))
    return {
        "y": y,
        "mean": mean,
        "invstd": invstd,
        "running_mean": rm,
        "running_var": rv,
        "dx": xt.grad,
        "dw": w.grad,
        "db": b.grad,
    }


def bn_train_ref(x, p):
    rm, rv = p["rm"].astype(np.float64), p["rv"].astype(np.float64)
    with np.errstate(invalid="ignore"):
        y, mean, invstd = ref_norm.batch_norm_forward(x, p["w"], p["b"], rm, rv, True)
        dx, dw, db = ref_norm.batch_norm_backward(p["dy"], x, p["w"], mean, invstd, True)
    return {"y": y, "mean": mean, "invstd": invstd, "running_mean": rm, "running_var": rv, "dx": dx, "dw": dw, "db": db}


def bn_eval_ours(x, p, backend):
    args = [put(a, backend) for a in (x, p["w"], p["b"], p["rm"], p["rv"])]
    y, _, invstd = F.batch_norm_forward(*args, False)
    dx, dw, db = F.batch_norm_backward(put(p["dy"], backend), args[0], args[1], args[3], invstd, False, has_bias=True)
    return {"y": y, "dx": dx, "dw": dw, "db": db}


def bn_eval_torch(x, p):
    xt, w, b = t(x, True), t(p["w"], True), t(p["b"], True)
    y = TF.batch_norm(xt, t(p["rm"]), t(p["rv"]), w, b, training=False)
    y.backward(t(p["dy"]))
    return {"y": y, "dx": xt.grad, "dw": w.grad, "db": b.grad}


def bn_eval_ref(x, p):
    with np.errstate(invalid="ignore"):
        y, mean, invstd = ref_norm.batch_norm_forward(x, p["w"], p["b"], p["rm"], p["rv"], False)
        dx, dw, db = ref_norm.batch_norm_backward(p["dy"], x, p["w"], mean, invstd, False)
    return {"y": y, "dx": dx, "dw": dw, "db": db}


def ln_ours(x, p, backend):
    D = x.shape[1:]
    w, b = np.broadcast_to(p["w"][:, None, None], D).copy(), np.broadcast_to(p["b"][:, None, None], D).copy()
    xs, ws = put(x, backend), put(w, backend)
    y, mean, rstd = F.layer_norm_forward(xs, D, ws, put(b, backend))
    dx, dw, db = F.layer_norm_backward(put(p["dy"], backend), xs, D, mean, rstd, ws, has_bias=True)
    return {"y": y, "mean": mean, "rstd": rstd, "dx": dx, "dw": dw, "db": db}


def ln_torch(x, p):
    D = x.shape[1:]
    xt = t(x, True)
    w = t(np.broadcast_to(p["w"][:, None, None], D), True)
    b = t(np.broadcast_to(p["b"][:, None, None], D), True)
    y, _, rstd = torch.native_layer_norm(xt, D, w, b, 1e-5)
    y.backward(t(p["dy"]))
    # torch's saved mean is a Welford mean, NaN for a row holding +Inf (Inf - Inf inside the
    # update); the mean of such a row is +Inf, as torch.mean and torch's batch norm say.
    return {
        "y": y,
        "mean": xt.detach().reshape(x.shape[0], -1).mean(1),
        "rstd": rstd.reshape(-1),
        "dx": xt.grad,
        "dw": w.grad,
        "db": b.grad,
    }


def ln_ref(x, p):
    D = x.shape[1:]
    w = np.broadcast_to(p["w"][:, None, None], D)
    with np.errstate(invalid="ignore"):
        y, mean, rstd = ref_norm.layer_norm_forward(x, D, w, np.broadcast_to(p["b"][:, None, None], D))
        dx, dw, db = ref_norm.layer_norm_backward(p["dy"], x, D, mean, rstd, w)
    return {"y": y, "mean": mean, "rstd": rstd, "dx": dx, "dw": dw, "db": db}


GROUPS = 2


def gn_ours(x, p, backend):
    xs, ws = put(x, backend), put(p["w"], backend)
    y, mean, rstd = F.group_norm_forward(xs, GROUPS, ws, put(p["b"], backend))
    dx, dw, db = F.group_norm_backward(put(p["dy"], backend), xs, GROUPS, mean, rstd, ws, has_bias=True)
    return {"y": y, "mean": mean, "rstd": rstd, "dx": dx, "dw": dw, "db": db}


def gn_torch(x, p):
    N, C = x.shape[:2]
    xt, w, b = t(x, True), t(p["w"], True), t(p["b"], True)
    y, _, rstd = torch.native_group_norm(xt, w, b, N, C, int(np.prod(x.shape[2:])), GROUPS, 1e-5)
    y.backward(t(p["dy"]))
    # torch's saved mean: Welford, as for layer norm above.
    return {
        "y": y,
        "mean": xt.detach().reshape(N, GROUPS, -1).mean(2),
        "rstd": rstd,
        "dx": xt.grad,
        "dw": w.grad,
        "db": b.grad,
    }


def gn_ref(x, p):
    with np.errstate(invalid="ignore"):
        y, mean, rstd = ref_norm.group_norm_forward(x, GROUPS, p["w"], p["b"])
        dx, dw, db = ref_norm.group_norm_backward(p["dy"], x, GROUPS, mean, rstd, p["w"])
    return {"y": y, "mean": mean, "rstd": rstd, "dx": dx, "dw": dw, "db": db}


POOL = (3, 2, 1)  # kernel, stride, padding: overlapping windows with padding


def pool_ours(x, p, backend):
    xs = put(x, backend)
    y, idx = F.max_pool2d_forward(xs, *POOL)
    dx = F.max_pool2d_backward(put(p["dy"][:, :, : y.shape[2], : y.shape[3]], backend), idx, x.shape, *POOL)
    g = F.global_avg_pool_forward(xs)
    return {
        "max": y,
        "argmax": idx,
        "max_dx": dx,
        "avg": g,
        "avg_dx": F.global_avg_pool_backward(put(fetch(g), backend), x.shape),
    }


def pool_torch(x, p):
    xt = t(x, True)
    y, idx = TF.max_pool2d(xt, *POOL, return_indices=True)
    y.backward(t(p["dy"][:, :, : y.shape[2], : y.shape[3]]))
    g = xt.detach().mean((2, 3))
    gx = t(x, True)
    gx.mean((2, 3)).backward(g)
    return {"max": y, "argmax": idx.double(), "max_dx": xt.grad, "avg": g, "avg_dx": gx.grad}


def pool_ref(x, p):
    y, idx = ref_pool.max_pool2d_forward(x, *POOL)
    with np.errstate(invalid="ignore"):
        g = ref_pool.global_avg_pool_forward(x)
    return {
        "max": y,
        "argmax": idx,
        "max_dx": ref_pool.max_pool2d_backward(p["dy"][:, :, : y.shape[2], : y.shape[3]], idx, x.shape),
        "avg": g,
        "avg_dx": ref_pool.global_avg_pool_backward(g.astype(np.float32), x.shape),
    }


NORM_TYPES = [0.5, 1.0, 2.0, 3.0, INF]


def grads_of(x):
    """Three gradient tensors cut from x: the bad values land in the first two."""
    flat = x.reshape(-1)
    return [flat[:100].copy(), flat[100:300].reshape(10, 20).copy(), flat[300:].copy()]


def norms_ours(x, p, backend):
    out = {}
    for q in NORM_TYPES:
        out[f"global_norm p={q}"] = F.global_norm([put(g, backend) for g in grads_of(x)], q)
        grads = [put(g, backend) for g in grads_of(x)]
        out[f"clip p={q} norm"] = F.clip_grad_norm_(grads, 1.0, q)
        for i, g in enumerate(grads):
            out[f"clip p={q} grads[{i}]"] = g
    return out


def norms_torch(x, p):
    out = {}
    for q in NORM_TYPES:
        out[f"global_norm p={q}"] = torch.nn.utils.get_total_norm([t(g) for g in grads_of(x)], q)
        params = [t(g, True) for g in grads_of(x)]
        for prm in params:
            prm.grad = prm.detach().clone()
        out[f"clip p={q} norm"] = torch.nn.utils.clip_grad_norm_(params, 1.0, q)
        for i, prm in enumerate(params):
            out[f"clip p={q} grads[{i}]"] = prm.grad
    return out


def norms_ref(x, p):
    out = {}
    with np.errstate(invalid="ignore"):
        for q in NORM_TYPES:
            out[f"global_norm p={q}"] = ref_norms.global_norm(grads_of(x), q)
            clipped, total = ref_norms.clip_grad_norm(grads_of(x), 1.0, q)
            out[f"clip p={q} norm"] = total
            for i, g in enumerate(clipped):
                out[f"clip p={q} grads[{i}]"] = g
    return out


def linear_ours(x, p, backend):
    x2, w = x.reshape(-1, 30), p["lin_w"]
    xs, ws = put(x2, backend), put(w, backend)
    dx, dw, db = F.linear_backward(put(p["lin_dy"], backend), xs, ws)
    return {"y": F.linear_forward(xs, ws, put(p["b"][:3], backend)), "dx": dx, "dw": dw, "db": db}


def linear_torch(x, p):
    xt, w, b = t(x.reshape(-1, 30), True), t(p["lin_w"], True), t(p["b"][:3], True)
    y = TF.linear(xt, w, b)
    y.backward(t(p["lin_dy"]))
    return {"y": y, "dx": xt.grad, "dw": w.grad, "db": b.grad}


def linear_ref(x, p):
    x2 = x.reshape(-1, 30)
    with np.errstate(invalid="ignore"):
        dx, dw, db = ref_linear.linear_backward(p["lin_dy"], x2, p["lin_w"])
        return {"y": ref_linear.linear_forward(x2, p["lin_w"], p["b"][:3]), "dx": dx, "dw": dw, "db": db}


OPS = {
    "batch_norm_train": (bn_train_ours, bn_train_torch, bn_train_ref),
    "batch_norm_train_2d": (bn_train_ours, bn_train_torch, bn_train_ref),
    "batch_norm_eval": (bn_eval_ours, bn_eval_torch, bn_eval_ref),
    "layer_norm": (ln_ours, ln_torch, ln_ref),
    "group_norm": (gn_ours, gn_torch, gn_ref),
    "pooling": (pool_ours, pool_torch, pool_ref),
    "global_norm_and_clip": (norms_ours, norms_torch, norms_ref),
    "linear": (linear_ours, linear_torch, linear_ref),
}


def op_input(op, kind, rng):
    if op == "batch_norm_train_2d":  # (N, C): P1, P2 in channel 2, P0 the first of channel 0
        return bad_input(kind, rng, (6, 4), ((0, 0), (2, 2), (4, 2)))
    return bad_input(kind, rng)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("kind", KINDS)
def test_nonfinite_input_reaches_every_output(kind, op, backend, rng):
    x = op_input(op, kind, rng)
    p = params_for(x, rng)
    p["lin_w"], p["lin_dy"] = (
        rng.standard_normal((3, 30)).astype(np.float32),
        rng.standard_normal((x.size // 30, 3)).astype(np.float32),
    )
    ours, run_torch, run_ref = OPS[op]
    got = ours(x, p, backend)
    for source, want in (("torch", run_torch(x, p)), ("reference", run_ref(x, p))):
        assert got.keys() == want.keys()
        for name in got:
            assert_matches(got[name], want[name], f"{op} {name} vs {source}")
    # The kind reached the statistics of its own channel/row and stayed out of the others'.
    if op.startswith("batch_norm_train"):
        invstd = fetch(got["invstd"])
        assert np.isnan(invstd[[0, 2]]).all() and np.isfinite(invstd[[1, 3]]).all()
        assert np.isnan(fetch(got["running_var"])[[0, 2]]).all()


def test_batch_norm_eval_nonfinite_running_statistics(backend, rng):
    """NaN/Inf/negative running statistics reach y as in torch: a negative running_var gives NaN
    (sqrt of a negative), never 1 / sqrt(eps)."""
    x = rng.standard_normal((5, 4, 3, 3)).astype(np.float32)
    rm = np.array([0.0, NAN, INF, 0.5], np.float32)
    rv = np.array([NAN, 1.0, 1.0, -2.0], np.float32)
    y, mean, invstd = F.batch_norm_forward(put(x, backend), None, None, put(rm, backend), put(rv, backend), False)
    want = TF.batch_norm(t(x), t(rm), t(rv), training=False)
    assert_matches(y, want, "y")
    with np.errstate(invalid="ignore"):
        assert_matches(invstd, 1.0 / np.sqrt(rv.astype(np.float64) + 1e-5), "invstd")


# ------------------------------------------------------------------------------ cross-entropy
# (logits row, target class, label smoothing) -> torch.nn.functional.cross_entropy's loss and grad.
XENT_CASES = [
    ("-inf off target", [1.0, -INF, 2.0, 0.5], 0, 0.0),  # finite: exp(-inf) = 0
    ("-inf off target, smoothed", [1.0, -INF, 2.0, 0.5], 0, 0.1),  # +inf: eps/K log 0
    ("-inf at target", [1.0, -INF, 2.0, 0.5], 1, 0.0),  # +inf
    ("two -inf off target", [-INF, 3.0, -INF, 0.5], 1, 0.0),
    ("+inf", [1.0, INF, 2.0, 0.5], 0, 0.0),  # NaN (inf - inf)
    ("nan", [1.0, NAN, 2.0, 0.5], 0, 0.0),
    ("all -inf", [-INF, -INF, -INF, -INF], 2, 0.0),  # NaN: no finite maximum
    ("overflowing spread", [3e38, -3e38, 2.0, 0.0], 0, 0.0),  # z - max = -inf in float32
]


@pytest.mark.parametrize("case", XENT_CASES, ids=[c[0] for c in XENT_CASES])
def test_softmax_cross_entropy_nonfinite_logits(case, backend, rng):
    _, bad_row, target, smoothing = case
    z = rng.standard_normal((3, 4)).astype(np.float32)
    z[1] = bad_row
    tgt = np.array([2, target, 3], np.int64)
    loss, dz = F.softmax_cross_entropy(put(z, backend), put(tgt, backend), smoothing)
    zt = t(z, True)
    want = TF.cross_entropy(zt, torch.from_numpy(tgt), label_smoothing=smoothing)
    want.backward()
    assert_matches(loss, want, "loss vs torch")
    assert_matches(dz, zt.grad, "dlogits vs torch")
    with np.errstate(invalid="ignore", over="ignore"):
        ref, ref_dz, _ = ref_loss.softmax_cross_entropy(z, tgt, smoothing)
    assert_matches(loss, ref, "loss vs reference")
    assert_matches(dz, ref_dz, "dlogits vs reference")
    # A one-hot soft target is the same distribution as the class index: the same answer.
    onehot = np.eye(4, dtype=np.float32)[tgt]
    loss_soft, dz_soft = F.softmax_cross_entropy(put(z, backend), put(onehot, backend), smoothing)
    assert_matches(loss_soft, want, "loss of one-hot soft targets vs torch")
    assert_matches(dz_soft, zt.grad, "dlogits of one-hot soft targets vs torch")


def test_softmax_cross_entropy_soft_target_mass_decides(backend):
    """With soft targets a -inf logit is harmless where the target has no mass (0 log 0 = 0, the
    limit; torch's soft-target formula gives NaN there, 0 * -inf, while its class-index formula
    gives the finite loss, as here) and makes the loss +inf where it has some."""
    z = np.array([[1.0, -INF, 2.0], [1.0, -INF, 2.0]], np.float32)
    y = np.array([[0.5, 0.0, 0.5], [0.5, 0.1, 0.4]], np.float32)
    loss, dz = F.softmax_cross_entropy(put(z[:1], backend), put(y[:1], backend))
    with np.errstate(invalid="ignore"):
        ref, ref_dz, _ = ref_loss.softmax_cross_entropy(z[:1], y[:1])
    assert math.isfinite(float(fetch(loss)))
    assert_matches(loss, ref, "loss, no mass on the -inf class")
    assert_matches(dz, ref_dz, "dlogits, no mass on the -inf class")
    loss, dz = F.softmax_cross_entropy(put(z, backend), put(y, backend))
    assert float(fetch(loss)) == INF
    zt = t(z, True)
    TF.cross_entropy(zt, t(y)).backward()  # torch's gradient is finite in both rows
    assert_matches(dz, zt.grad, "dlogits vs torch")


# ------------------------------------------------------------------------------ conv2d
# Convolutions are sums of products: a non-finite input reaches exactly the outputs whose window
# (forward), or whose taps (gradients), hold it, as in torch. The Winograd kernels (3x3, unit
# stride, >= 8 channels on the CPU) add and subtract inputs in their transforms, so an Inf there
# can come out as NaN (Inf - Inf): which outputs are non-finite still matches, and every NaN of
# torch's is a NaN here.
CONV_CASES = [  # N, C, H, W, K, R, stride, padding, groups
    (2, 3, 9, 9, 4, 3, 1, 1, 1),  # few channels: im2col GEMM
    (2, 16, 10, 10, 16, 3, 1, 1, 1),  # Winograd on the CPU
    (2, 16, 10, 10, 16, 1, 1, 0, 1),  # 1x1
    (2, 8, 12, 12, 8, 3, 1, 1, 8),  # depthwise
    (2, 3, 15, 15, 8, 7, 2, 3, 1),  # the 7x7 / 2 stem
    (2, 16, 10, 10, 16, 3, 2, 1, 1),  # strided
]


@pytest.mark.parametrize("case", CONV_CASES, ids=[str(c) for c in CONV_CASES])
@pytest.mark.parametrize("kind", ["nan", "+inf", "-inf"])
def test_conv2d_nonfinite_input_reaches_the_outputs_it_touches(kind, case, backend, rng):
    N, C, H, W, K, R, stride, padding, groups = case
    x = bad_input(kind, rng, (N, C, H, W), ((0, 0, 0, 0), (1, C - 1, H // 2, W // 3)))
    w = rng.standard_normal((K, C // groups, R, R)).astype(np.float32)
    xt, wt = t(x, True), t(w, True)
    want = TF.conv2d(xt, wt, None, stride, padding, 1, groups)
    dy = rng.standard_normal(tuple(want.shape)).astype(np.float32)
    want.backward(t(dy))
    xs, ws = put(x, backend), put(w, backend)
    y = F.conv2d_forward(xs, ws, None, stride, padding, 1, groups)
    dx, dw, _ = F.conv2d_backward(put(dy, backend), xs, ws, stride, padding, 1, groups, need=(True, True, False))
    for name, got, ref in (("y", y, want), ("dx", dx, xt.grad), ("dw", dw, wt.grad)):
        got, ref = fetch(got).astype(np.float64), ref.detach().double().numpy()
        assert (np.isfinite(got) == np.isfinite(ref)).all(), f"{name}: non-finite at other places than torch"
        assert np.isnan(got[np.isnan(ref)]).all(), f"{name}: a NaN of torch's is a number here"
        both = np.isinf(got) & np.isinf(ref)
        assert (np.sign(got[both]) == np.sign(ref[both])).all(), f"{name}: Inf of the other sign"
        finite = np.isfinite(ref)
        scale = max(1.0, float(np.abs(ref[finite]).max()) if finite.any() else 1.0)
        # float32 sums of <= 7*7*16 products of O(1) terms: a few 1e-6 relative to the largest.
        assert np.abs(got[finite] - ref[finite]).max(initial=0.0) <= 1e-4 * scale, name
    assert not np.isfinite(fetch(y)).all(), "the bad input reached no output"
