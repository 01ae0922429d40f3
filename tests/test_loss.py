"""Softmax cross-entropy: loss, dlogits and stats against the float64 reference and torch, on every
backend; hard (int32/int64) and soft targets, label smoothing, large logits, edge shapes, errors.

Tolerances: the loss to rel 1e-5 (abs 1e-6 for losses near 0), dlogits = (Q p - q) / N to rel
1e-5 or abs 4e-7 / N (p is exp in float32 scaled by a float32 1 / s, s summed in double on the
CPU and in float32 on the GPU: a few ulp of max(p, q) <= 1 before the subtraction, which may
cancel); the stats' hit counts exactly (the rank test compares the same float32 logits as the
reference), their loss sum like the loss.
"""

import numpy as np
import pytest
from conftest import fetch, put

import fastopt
from fastopt import functional as F
from fastopt.reference import loss as R

SHAPES = [(1, 1), (1, 3), (5, 1), (7, 10), (64, 37), (33, 1000), (3, 4099)]


def _targets(rng, kind, n, k):
    if kind == "soft":
        y = rng.random((n, k)).astype(np.float32) ** 4  # peaked rows, so the argmax is meaningful
        return (y / y.sum(axis=1, keepdims=True)).astype(np.float32)
    return rng.integers(0, k, n).astype(np.int32 if kind == "int32" else np.int64)


def _check(backend, z, t, eps, topk=5, stats0=None):
    stats = None if stats0 is None else put(stats0, backend)
    loss, dz = F.softmax_cross_entropy(put(z, backend), put(t, backend), eps, stats=stats, topk=topk)
    loss, dz = fetch(loss), fetch(dz)
    ref_loss, ref_dz, ref_stats = R.softmax_cross_entropy(z, t, eps, topk)
    n = z.shape[0]
    assert loss.shape == () and loss.dtype == np.float32
    assert dz.shape == z.shape and dz.dtype == np.float32
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(dz, ref_dz, rtol=1e-5, atol=4e-7 / max(n, 1))
    if stats is not None:
        got = fetch(stats)
        np.testing.assert_allclose(got[0], stats0[0] + ref_stats[0], rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(got[1:], stats0[1:] + ref_stats[1:])
    return loss, dz


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kind", ["int32", "int64", "soft"])
@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_matches_reference(backend, rng, shape, kind, eps):
    n, k = shape
    z = (rng.standard_normal(shape) * 3).astype(np.float32)
    _check(backend, z, _targets(rng, kind, n, k), eps, topk=3, stats0=np.array([1.5, 2.0, 3.0], np.float32))


@pytest.mark.parametrize("kind", ["int64", "soft"])
@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_large_logits_are_stable(backend, rng, kind, eps):
    n, k = 40, 37
    z = rng.uniform(-1e4, 1e4, (n, k)).astype(np.float32)
    t = _targets(rng, kind, n, k)
    if kind == "int64":
        t[:10] = z[:10].argmax(axis=1)  # confident and right: row loss 0 (no smoothing)
    loss, dz = _check(backend, z, t, eps, stats0=np.zeros(3, np.float32))
    assert np.isfinite(loss) and np.isfinite(dz).all()


def test_matches_torch_and_autograd(rng):
    torch = pytest.importorskip("torch")
    for n, k in [(1, 1), (16, 10), (9, 1000)]:
        for eps in [0.0, 0.1]:
            z = (rng.standard_normal((n, k)) * 4).astype(np.float32)
            for t in [rng.integers(0, k, n), _targets(rng, "soft", n, k)]:
                zt = torch.from_numpy(z).requires_grad_()
                ref = torch.nn.functional.cross_entropy(zt, torch.from_numpy(t), label_smoothing=eps)
                ref.backward()
                loss, dz = F.softmax_cross_entropy(z, t, eps)
                np.testing.assert_allclose(loss, ref.item(), rtol=1e-5, atol=1e-6)
                np.testing.assert_allclose(dz, zt.grad.numpy(), rtol=1e-5, atol=1e-6 / n)  # torch rounds too


def test_unnormalized_soft_rows_get_the_exact_gradient(rng):
    # dlogits = (sum_k q_k) softmax - q, the gradient torch's autograd takes when rows do not sum to 1.
    torch = pytest.importorskip("torch")
    z = rng.standard_normal((6, 5)).astype(np.float32)
    y = rng.random((6, 5)).astype(np.float32)
    zt = torch.from_numpy(z).requires_grad_()
    torch.nn.functional.cross_entropy(zt, torch.from_numpy(y), label_smoothing=0.1).backward()
    _, dz = F.softmax_cross_entropy(z, y, 0.1)
    np.testing.assert_allclose(dz, zt.grad.numpy(), rtol=1e-5, atol=1e-7)


def test_stats_accumulate_exact_counts(backend, rng):
    n, k = 50, 10
    z = rng.standard_normal((n, k)).astype(np.float32)
    t = rng.integers(0, k, n).astype(np.int64)
    t[:7] = z[:7].argmax(axis=1)
    stats = put(np.zeros(3, np.float32), backend)
    F.softmax_cross_entropy(put(z, backend), put(t, backend), stats=stats, topk=3)
    F.softmax_cross_entropy(put(z, backend), put(t, backend), stats=stats, topk=3, need_grad=False)
    top1, top3 = R.hits(z, t, 3)
    got = fetch(stats)
    assert top1 >= 7
    np.testing.assert_array_equal(got[1:], [2 * top1, 2 * top3])
    np.testing.assert_allclose(got[0], 2 * R.row_losses(z, t).sum(), rtol=1e-5)


def test_ties_count_for_the_target(backend):
    # All logits equal: no class is strictly larger, so every row is a top-1 hit.
    z = np.zeros((4, 6), np.float32)
    stats = put(np.zeros(3, np.float32), backend)
    loss, _ = F.softmax_cross_entropy(put(z, backend), put(np.array([0, 1, 2, 5], np.int32), backend), stats=stats)
    np.testing.assert_array_equal(fetch(stats)[1:], [4, 4])
    np.testing.assert_allclose(fetch(loss), np.log(6), rtol=1e-6)


def test_soft_target_class_is_first_argmax(backend):
    z = np.array([[0.0, 1.0, 5.0], [3.0, 1.0, 0.0]], np.float32)
    y = np.array([[0.0, 0.5, 0.5], [0.25, 0.5, 0.25]], np.float32)  # classes 1 and 1
    stats = put(np.zeros(3, np.float32), backend)
    F.softmax_cross_entropy(put(z, backend), put(y, backend), stats=stats, topk=2)
    np.testing.assert_array_equal(fetch(stats)[1:], [0, 2])


def test_topk_is_capped_at_k(backend, rng):
    z = rng.standard_normal((9, 3)).astype(np.float32)
    stats = put(np.zeros(3, np.float32), backend)
    F.softmax_cross_entropy(put(z, backend), put(rng.integers(0, 3, 9), backend), stats=stats, topk=100)
    assert fetch(stats)[2] == 9


def test_no_grad_and_empty_batch(backend, rng):
    z = rng.standard_normal((4, 5)).astype(np.float32)
    loss, dz = F.softmax_cross_entropy(put(z, backend), put(np.arange(4), backend), need_grad=False)
    assert dz is None
    np.testing.assert_allclose(fetch(loss), R.row_losses(z, np.arange(4)).mean(), rtol=1e-5)
    stats = put(np.array([1, 2, 3], np.float32), backend)
    loss, dz = F.softmax_cross_entropy(
        put(np.zeros((0, 5), np.float32), backend), put(np.zeros(0, np.int64), backend), stats=stats
    )
    assert np.isnan(fetch(loss)) and fetch(dz).shape == (0, 5)  # torch: mean of nothing is NaN
    np.testing.assert_array_equal(fetch(stats), [1, 2, 3])


def test_deterministic(backend, rng):
    z = rng.standard_normal((300, 1000)).astype(np.float32)
    y = _targets(rng, "soft", 300, 1000)
    a = [fetch(v) for v in F.softmax_cross_entropy(put(z, backend), put(y, backend), 0.1)]
    b = [fetch(v) for v in F.softmax_cross_entropy(put(z, backend), put(y, backend), 0.1)]
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


def test_cpu_rejects_out_of_range_classes():
    z = np.zeros((3, 4), np.float32)
    for bad in [4, -1]:
        with pytest.raises(ValueError, match=rf"^target: class index {bad} at row 1 is outside \[0, 4\)"):
            F.softmax_cross_entropy(z, np.array([0, bad, 1], np.int32))


@pytest.mark.gpu
def test_gpu_out_of_range_class_gives_nan_row(rng):
    z = rng.standard_normal((3, 4)).astype(np.float32)
    stats = fastopt.to_device(np.zeros(3, np.float32))
    loss, dz = F.softmax_cross_entropy(fastopt.to_device(z), fastopt.to_device(np.array([0, 7, 1])), stats=stats)
    dz = fetch(dz)
    assert np.isnan(fetch(loss)) and np.isnan(dz[1]).all() and np.isfinite(dz[[0, 2]]).all()
    assert np.isnan(fetch(stats)[0])


@pytest.mark.gpu
def test_gpu_matches_cpu(rng):
    z = (rng.standard_normal((1000, 37)) * 5).astype(np.float32)
    for t in [rng.integers(0, 37, 1000), _targets(rng, "soft", 1000, 37)]:
        sc, sg = np.zeros(3, np.float32), fastopt.to_device(np.zeros(3, np.float32))
        lc, dc = F.softmax_cross_entropy(z, t, 0.1, stats=sc)
        lg, dg = F.softmax_cross_entropy(fastopt.to_device(z), fastopt.to_device(t), 0.1, stats=sg)
        np.testing.assert_allclose(fetch(lg), lc, rtol=1e-5)
        np.testing.assert_allclose(fetch(dg), dc, rtol=1e-5, atol=1e-9)
        np.testing.assert_array_equal(fetch(sg)[1:], sc[1:])


Z = np.zeros((4, 5), np.float32)
T = np.array([0, 1, 2, 3], np.int64)
READ_ONLY = np.zeros(3, np.float32)
READ_ONLY.flags.writeable = False


@pytest.mark.parametrize(
    "call,exc,match",
    [
        (lambda: F.softmax_cross_entropy(Z.astype(np.float64), T), TypeError, r"^logits: expected a float32 array"),
        (lambda: F.softmax_cross_entropy(Z[:, ::2], T), ValueError, r"^logits: array must be C-contiguous"),
        (lambda: F.softmax_cross_entropy(Z.reshape(-1), T), ValueError, r"^logits: expected shape \(N, K\)"),
        (lambda: F.softmax_cross_entropy(np.zeros((4, 0), np.float32), T), ValueError, r"^logits: needs at least one"),
        (lambda: F.softmax_cross_entropy([[1.0]], T), TypeError, r"^logits: "),
        (lambda: F.softmax_cross_entropy(Z, T[:3]), ValueError, r"^target: class indices must have shape \(4,\)"),
        (lambda: F.softmax_cross_entropy(Z, T.astype(np.uint8)), TypeError, r"^target: expected int32/int64"),
        (lambda: F.softmax_cross_entropy(Z, T.astype(np.float64)), TypeError, r"^target: expected int32/int64"),
        (lambda: F.softmax_cross_entropy(Z, np.zeros((4, 4), np.float32)), ValueError, r"^target: soft targets must"),
        (lambda: F.softmax_cross_entropy(Z, T[::2].repeat(2)[::-1]), ValueError, r"^target: array must be C-contig"),
        (lambda: F.softmax_cross_entropy(Z, T, label_smoothing=-0.1), ValueError, r"^label_smoothing: must lie in"),
        (lambda: F.softmax_cross_entropy(Z, T, label_smoothing=1.5), ValueError, r"^label_smoothing: "),
        (lambda: F.softmax_cross_entropy(Z, T, label_smoothing=float("nan")), ValueError, r"^label_smoothing: "),
        (
            lambda: F.softmax_cross_entropy(Z, T, label_smoothing="x"),
            TypeError,
            r"^label_smoothing: expected a real number",
        ),
        (lambda: F.softmax_cross_entropy(Z, T, topk=0), ValueError, r"^topk: must be >= 1"),
        (lambda: F.softmax_cross_entropy(Z, T, topk=2.0), TypeError, r"^topk: expected an integer"),
        (lambda: F.softmax_cross_entropy(Z, T, stats=np.zeros(4, np.float32)), ValueError, r"^stats: expected shape"),
        (lambda: F.softmax_cross_entropy(Z, T, stats=np.zeros(3)), TypeError, r"^stats: expected a float32"),
        (lambda: F.softmax_cross_entropy(Z, T, stats=READ_ONLY), ValueError, r"^stats: array is read-only"),
        (lambda: F.softmax_cross_entropy(Z, T, stats=Z.reshape(-1)[:3]), ValueError, r"stats.*share memory"),
    ],
)
def test_bad_arguments(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


@pytest.mark.gpu
def test_mixed_devices_are_an_error():
    with pytest.raises(ValueError, match=r"^target is on cuda:0 but logits is on cpu"):
        F.softmax_cross_entropy(Z, fastopt.to_device(T))
