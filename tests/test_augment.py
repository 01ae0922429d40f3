"""Seeded batch augmentation and mixup on every backend, against the NumPy reference.

Tolerances: shift, flip and cutout move or zero pixels, so outputs equal the reference bit for
bit. Jitter is c * v + b with c and b float32 parameters drawn exactly as the reference draws
them and the product and sum each rounded to float32: the output equals that float32 formula bit
for bit and is within 2^-23 (|c v| + |b|) of the float64 reference. Mixup likewise equals
float32(lam x) + float32((1 - lam) x') bitwise; soft targets are exact.
"""

import math
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import fetch, put

import fastopt
from fastopt import _C, functional as F
from fastopt.reference import augment as R

SHAPES = [(1, 1, 1, 1), (3, 3, 8, 9), (5, 2, 32, 32), (2, 1, 1, 7), (4, 3, 5, 1), (0, 3, 4, 4), (2, 0, 4, 4)]
GEOMETRY = [
    dict(),
    dict(max_shift=3),
    dict(flip=True),
    dict(max_shift=2, flip=True, cutout=5),
    dict(max_shift=40, cutout=1),
    dict(cutout=100),
    dict(max_shift=2, cutout=3, fill=-0.75),
]
SEEDS = [(0, 0), (123, 7), (2**64 - 1, 2**40 + 5)]


def test_counter_layout():
    # Draw d of sample n is word d % 4 of the block with counter (d // 4, n, step lo, step hi).
    seed, step, n = 0x0123456789ABCDEF, 2**33 + 5, 77
    words = R.sample_words(seed, step, n)
    for d in range(8):
        block = _C.philox4x32_10([d // 4, n, step & 0xFFFFFFFF, step >> 32], [seed & 0xFFFFFFFF, seed >> 32])
        assert int(words[d]) == block[d % 4]
    assert R.uniform_int(2**32 - 1, 5) == 4 and R.uniform_int(0, 5) == 0
    assert R.uniform_pm1(0) == -1.0 and R.uniform_pm1(2**32 - 1) == np.float32(1 - 2**-23)


def _augment(x, backend, seed, step, **kw):
    return fetch(F.augment_batch(put(x, backend), seed, step, **kw))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kw", GEOMETRY)
@pytest.mark.parametrize("seed,step", SEEDS)
def test_geometry_matches_reference_bitwise(backend, rng, shape, kw, seed, step):
    x = rng.standard_normal(shape).astype(np.float32)
    y = _augment(x, backend, seed, step, **kw)
    assert y.dtype == np.float32 and y.shape == shape
    np.testing.assert_array_equal(y, R.augment_batch(x, seed, step, **kw).astype(np.float32))


def test_no_options_is_a_copy(backend, rng):
    x = rng.standard_normal((3, 2, 6, 6)).astype(np.float32)
    x[0, 0, 0, :3] = [-0.0, np.inf, np.nan]
    y = _augment(x, backend, 5, 6)
    np.testing.assert_array_equal(y.view(np.uint32), x.view(np.uint32))


@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (6, 3, 8, 9), (3, 2, 32, 31)])
@pytest.mark.parametrize(
    "kw",
    [dict(brightness=0.3), dict(contrast=0.4), dict(max_shift=2, flip=True, cutout=4, brightness=0.5, contrast=1.0)],
)
def test_jitter_matches_float32_formula_and_reference(backend, rng, shape, kw):
    seed, step = int(rng.integers(0, 2**63)), int(rng.integers(0, 2**40))
    x = (rng.standard_normal(shape) * 2).astype(np.float32)
    y = _augment(x, backend, seed, step, **kw)
    geometry = {k: v for k, v in kw.items() if k in ("max_shift", "flip")}
    v = R.augment_batch(x, seed, step, **geometry).astype(np.float32)  # moved pixels, 0 where padded
    expect, bound = np.empty_like(v), np.empty(shape)
    for n in range(shape[0]):
        p = R.sample_params(seed, step, n, shape[2], shape[3], **kw)
        expect[n] = p["scale"] * v[n] + p["bias"]  # float32 product, then float32 sum
        bound[n] = 2.0**-23 * (np.abs(np.float64(p["scale"]) * v[n]) + abs(float(p["bias"])))
    cut = kw.get("cutout", 0)
    if cut:
        expect[R.augment_batch(np.ones(shape, np.float32), seed, step, cutout=cut) == 0] = 0  # same draws
    np.testing.assert_array_equal(y, expect)
    assert np.all(np.abs(y - R.augment_batch(x, seed, step, **kw)) <= bound)


def test_same_step_reproduces_other_steps_and_seeds_differ(backend, rng):
    x = rng.standard_normal((64, 3, 16, 16)).astype(np.float32)
    kw = dict(max_shift=4, flip=True, cutout=6, brightness=0.2, contrast=0.2)
    a = _augment(x, backend, 11, 3, **kw)
    np.testing.assert_array_equal(a, _augment(x, backend, 11, 3, **kw))
    for seed, step in [(11, 4), (12, 3), (11 + 2**32, 3), (11, 3 + 2**32)]:
        b = _augment(x, backend, seed, step, **kw)
        assert (a != b).any(axis=(1, 2, 3)).mean() > 0.9


def test_channels_share_parameters(backend):
    x = np.broadcast_to(np.arange(100, dtype=np.float32).reshape(1, 1, 10, 10) + 1, (8, 3, 10, 10)).copy()
    y = _augment(x, backend, 3, 9, max_shift=3, flip=True, cutout=4, brightness=0.1, contrast=0.1)
    np.testing.assert_array_equal(y[:, 1], y[:, 0])
    np.testing.assert_array_equal(y[:, 2], y[:, 0])


def test_draw_statistics(backend):
    # The center pixel of a 9 x 9 plane lands at (4 - dy, 4 - dx): recover every sample's shift.
    n, s = 4000, 2
    x = np.zeros((n, 1, 9, 9), np.float32)
    x[:, 0, 4, 4] = 1.0
    y = _augment(x, backend, 77, 1, max_shift=s)
    where = np.nonzero(y.reshape(n, -1) == 1.0)[1]
    assert where.shape == (n,)
    h, w = where // 9, where % 9
    for d in (4 - h, 4 - w):
        counts = np.bincount(d + s, minlength=2 * s + 1)
        assert len(counts) == 2 * s + 1  # nothing outside [-s, s]
        p = 1 / (2 * s + 1)
        assert np.all(np.abs(counts / n - p) < 6 * math.sqrt(p * (1 - p) / n))

    x = np.arange(6, dtype=np.float32).reshape(1, 1, 1, 6).repeat(n, axis=0)
    y = _augment(x, backend, 77, 2, flip=True)
    mirrored = (y == x[..., ::-1]).all(axis=(1, 2, 3))
    assert ((y == x).all(axis=(1, 2, 3)) | mirrored).all()
    assert abs(mirrored.mean() - 0.5) < 6 * math.sqrt(0.25 / n)

    b = _augment(np.zeros((n, 1, 1, 1), np.float32), backend, 77, 3, brightness=0.5).reshape(-1)
    c = _augment(np.ones((n, 1, 1, 1), np.float32), backend, 77, 3, contrast=0.4).reshape(-1)
    for v, lo, hi in [(b, -0.5, 0.5), (c, 0.6, 1.4)]:
        assert lo <= v.min() < lo + 0.01 and hi - 0.01 < v.max() < hi  # uniform over [lo, hi)
        assert abs(v.mean() - (lo + hi) / 2) < 6 * (hi - lo) / math.sqrt(12 * n)

    zeros = (_augment(np.ones((n, 1, 8, 8), np.float32), backend, 77, 4, cutout=4) == 0).sum(axis=(1, 2, 3))
    assert zeros.max() == 16 and zeros.min() == 4  # whole square inside, or clipped at a corner
    assert np.all((_augment(np.ones((n, 1, 8, 8), np.float32), backend, 77, 4, cutout=3) == 0).sum(axis=(1, 2, 3)) >= 4)


def test_independent_of_thread_count():
    code = (
        "import sys, numpy as np; from fastopt import functional as F; "
        "x = np.arange(40 * 3 * 20 * 20, dtype=np.float32).reshape(40, 3, 20, 20); "
        "sys.stdout.write(F.augment_batch(x, 9, 8, 3, True, 5, 0.2, 0.3).tobytes().hex())"
    )
    one = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    x = np.arange(40 * 3 * 20 * 20, dtype=np.float32).reshape(40, 3, 20, 20)
    assert one == F.augment_batch(x, 9, 8, 3, True, 5, 0.2, 0.3).tobytes().hex()


@pytest.mark.gpu
def test_gpu_equals_cpu_bit_for_bit(rng):
    x = rng.standard_normal((33, 3, 24, 40)).astype(np.float32)
    kw = dict(max_shift=5, flip=True, cutout=7, brightness=0.4, contrast=0.3)
    np.testing.assert_array_equal(
        fetch(F.augment_batch(fastopt.to_device(x), 2**50 + 1, 17, **kw)), F.augment_batch(x, 2**50 + 1, 17, **kw)
    )


# ----------------------------------------------------------------------------------- mixup


@pytest.mark.parametrize("shape", [(1,), (1, 3), (2, 5), (7, 3, 4, 5), (64, 10), (0, 3)])
@pytest.mark.parametrize("lam", [0.0, 0.3, 0.5, 1.0])
@pytest.mark.parametrize("dtype", [np.int32, np.int64])
def test_mixup_matches_reference(backend, rng, shape, lam, dtype):
    k = 10
    x = rng.standard_normal(shape).astype(np.float32)
    labels = rng.integers(0, k, shape[0]).astype(dtype)
    xm, soft = (fetch(v) for v in F.mixup(put(x, backend), put(labels, backend), lam, k))
    assert xm.dtype == np.float32 and xm.shape == shape
    assert soft.dtype == np.float32 and soft.shape == (shape[0], k)
    a, b = np.float32(lam), np.float32(1.0 - lam)
    np.testing.assert_array_equal(xm, a * x + b * x[::-1])
    ref_x, ref_soft = R.mixup(x, labels, lam, k)
    np.testing.assert_allclose(xm, ref_x, rtol=0, atol=2**-23 * (np.abs(x) + np.abs(x[::-1])).max(initial=0))
    np.testing.assert_allclose(soft, ref_soft, rtol=0, atol=1e-7)
    same = labels == labels[::-1]
    np.testing.assert_array_equal(soft[same, labels[same]], 1.0)  # one-hot, not lam + (1 - lam) rounded
    np.testing.assert_array_equal(soft[~same, labels[~same]], a)


def test_mixup_feeds_the_loss(rng):
    x = rng.standard_normal((8, 4)).astype(np.float32)
    labels = rng.integers(0, 5, 8)
    _, soft = F.mixup(x, labels, 0.7, 5)
    z = rng.standard_normal((8, 5)).astype(np.float32)
    mixed, _ = F.softmax_cross_entropy(z, soft)
    own, _ = F.softmax_cross_entropy(z, labels)
    partner, _ = F.softmax_cross_entropy(z, labels[::-1].copy())
    np.testing.assert_allclose(mixed, 0.7 * own + 0.3 * partner, rtol=1e-5)


def test_cpu_mixup_rejects_out_of_range_labels():
    with pytest.raises(ValueError, match=r"^labels: class index 3 at row 2 is outside \[0, 3\)"):
        F.mixup(np.zeros((4, 2), np.float32), np.array([0, 1, 3, 2]), 0.5, 3)


@pytest.mark.gpu
def test_gpu_mixup_out_of_range_label_gives_nan_rows():
    _, soft = F.mixup(
        fastopt.to_device(np.zeros((4, 2), np.float32)), fastopt.to_device(np.array([0, 1, 3, 2])), 0.5, 3
    )
    soft = fetch(soft)
    assert np.isnan(soft[[1, 2]]).all()
    # Rows 0 and 3 (labels 0 and 2) are each other's partners: half of each class.
    np.testing.assert_array_equal(soft[[0, 3]], [[0.5, 0.0, 0.5], [0.5, 0.0, 0.5]])


X = np.zeros((2, 3, 4, 4), np.float32)
L = np.array([0, 1])


@pytest.mark.parametrize(
    "call,exc,match",
    [
        (lambda: F.augment_batch(X.astype(np.float64), 1, 0), TypeError, r"^x: expected a float32 array"),
        (lambda: F.augment_batch(X[..., ::2], 1, 0), ValueError, r"^x: array must be C-contiguous"),
        (lambda: F.augment_batch(X[0], 1, 0), ValueError, r"^x: expected shape \(N, C, H, W\)"),
        (lambda: F.augment_batch(X.tolist(), 1, 0), TypeError, r"^x: "),
        (lambda: F.augment_batch(X, -1, 0), ValueError, r"^seed: must be an integer in \[0, 2\^64\)"),
        (lambda: F.augment_batch(X, 2**64, 0), ValueError, r"^seed: "),
        (lambda: F.augment_batch(X, 1.0, 0), TypeError, r"^seed: expected an integer, got float"),
        (lambda: F.augment_batch(X, True, 0), TypeError, r"^seed: expected an integer, got bool"),
        (lambda: F.augment_batch(X, 1, -2), ValueError, r"^step: "),
        (lambda: F.augment_batch(X, 1, "3"), TypeError, r"^step: "),
        (lambda: F.augment_batch(X, 1, 0, max_shift=-1), ValueError, r"^max_shift: must be an integer in \[0, 2\^30\]"),
        (lambda: F.augment_batch(X, 1, 0, max_shift=1.5), TypeError, r"^max_shift: expected an integer"),
        (lambda: F.augment_batch(X, 1, 0, cutout=-3), ValueError, r"^cutout: "),
        (lambda: F.augment_batch(X, 1, 0, cutout=2**31), ValueError, r"^cutout: "),
        (lambda: F.augment_batch(X, 1, 0, brightness=-0.1), ValueError, r"^brightness: must be a finite"),
        (lambda: F.augment_batch(X, 1, 0, brightness=float("nan")), ValueError, r"^brightness: "),
        (lambda: F.augment_batch(X, 1, 0, brightness=float("inf")), ValueError, r"^brightness: "),
        (lambda: F.augment_batch(X, 1, 0, brightness="a"), TypeError, r"^brightness: expected a real number"),
        (lambda: F.augment_batch(X, 1, 0, contrast=1.01), ValueError, r"^contrast: must lie in \[0, 1\]"),
        (lambda: F.augment_batch(X, 1, 0, contrast=-0.5), ValueError, r"^contrast: "),
        (lambda: F.augment_batch(X, 1, 0, fill=float("nan")), ValueError, r"^fill: must be a finite"),
        (lambda: F.augment_batch(X, 1, 0, fill=1e39), ValueError, r"^fill: "),
        (lambda: F.augment_batch(X, 1, 0, fill="a"), TypeError, r"^fill: expected a real number"),
        (lambda: F.mixup(X.astype(np.float64), L, 0.5, 2), TypeError, r"^x: expected a float32 array"),
        (lambda: F.mixup(np.ones((), np.float32), L, 0.5, 2), ValueError, r"^x: expected shape \(N, "),
        (lambda: F.mixup(X, L.astype(np.float32), 0.5, 2), TypeError, r"^labels: expected an int32 or int64 array"),
        (lambda: F.mixup(X, np.array([0, 1, 1]), 0.5, 2), ValueError, r"^labels: expected shape \(2,\)"),
        (lambda: F.mixup(X, np.array([[0, 1]]), 0.5, 2), ValueError, r"^labels: expected shape"),
        (lambda: F.mixup(X, L, 1.5, 2), ValueError, r"^lam: must lie in \[0, 1\]"),
        (lambda: F.mixup(X, L, -0.1, 2), ValueError, r"^lam: "),
        (lambda: F.mixup(X, L, float("nan"), 2), ValueError, r"^lam: "),
        (lambda: F.mixup(X, L, None, 2), TypeError, r"^lam: expected a real number"),
        (lambda: F.mixup(X, L, 0.5, 0), ValueError, r"^num_classes: must be >= 1"),
        (lambda: F.mixup(X, L, 0.5, 2.0), TypeError, r"^num_classes: expected an integer"),
    ],
)
def test_bad_arguments(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


@pytest.mark.gpu
def test_mixed_devices_are_an_error():
    with pytest.raises(ValueError, match=r"^labels is on cpu but x is on cuda:0"):
        F.mixup(fastopt.to_device(X), L, 0.5, 2)
