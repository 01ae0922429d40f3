"""max_pool2d (values + int32 indices) and global average pooling, forward and backward, on every
backend, against the float64 reference and torch.

Tolerances: max pool values and indices are exact (a max is a selection). Its backward is exact
where windows do not overlap (stride >= kernel: at most one term per input); with overlaps an
input sums up to m = ceil(kh/sh) * ceil(kw/sw) float32 terms, so |dx - ref| <= (m - 1) 2^-24 *
sum of |terms| (the reference applied to |dy|); the order of the sum is also checked bit for bit.
Global average pool sums in double and rounds once: within 2^-23 relative of the reference (the
rounding, plus the double sum's ~1e-16 relative error). Its backward dy / float(H*W) is one
float32 rounding of the exact quotient: equal to the reference rounded to float32.
"""

import math

import numpy as np
import pytest
from conftest import fetch, put

import fastopt
from fastopt import functional as F
from fastopt.reference import pooling as R

# (shape, kernel_size, stride, padding)
CASES = [
    ((3, 5, 7, 9), 2, None, 0),  # non-overlapping, odd sizes leave a ragged edge
    ((3, 5, 7, 9), 3, 2, 1),  # overlapping, padded
    ((2, 3, 13, 11), 2, 1, 0),  # overlapping
    ((2, 3, 13, 11), 3, 1, 1),  # overlapping, same-size output
    ((2, 3, 13, 11), 3, 3, 1),  # non-overlapping, padded
    ((2, 3, 13, 11), 3, 2, 0),
    ((2, 2, 5, 5), 2, 3, 0),  # stride > kernel: inputs no window covers
    ((2, 3, 13, 11), (3, 2), (2, 3), (1, 0)),
    ((1, 2, 2, 17), (1, 3), (1, 2), (0, 1)),
    ((1, 2, 4, 4), 4, None, 2),  # padding = kernel / 2
    ((1, 1, 1, 1), 1, None, 0),
    ((1, 1, 1, 1), 2, 1, 1),  # every window mostly padding
    ((0, 3, 5, 5), 2, None, 0),  # empty batch
    ((2, 0, 5, 5), 3, 2, 1),  # no channels
    ((2, 4, 32, 32), 3, 2, 1),  # ResNet stem shape (smaller)
    ((2, 3, 16, 38), 2, 2, 0),  # 2x2 / 2, even sizes, rows past a vector (19 outputs)
]
IDS = [f"{s}-k{k}-s{st}-p{p}" for s, k, st, p in CASES]


def _max_terms(kernel_size, stride):
    """The most outputs whose windows cover one input: ceil(kh / sh) * ceil(kw / sw)."""
    k = (kernel_size, kernel_size) if isinstance(kernel_size, int) else tuple(kernel_size)
    s = k if stride is None else ((stride, stride) if isinstance(stride, int) else tuple(stride))
    return math.ceil(k[0] / s[0]) * math.ceil(k[1] / s[1])


def _sum_bound(dy, indices, shape, kernel_size, stride):
    """Elementwise bound on the float32 error of dx: a sum of m terms is within (m - 1) 2^-24 of the
    sum of their magnitudes (zero when m = 1: one term is exact)."""
    return (_max_terms(kernel_size, stride) - 1) * 2.0**-24 * R.max_pool2d_backward(np.abs(dy), indices, shape)


def _max_pool_backward_check(dx, dy, indices, shape, kernel_size, stride):
    ref = R.max_pool2d_backward(dy, indices, shape)
    assert dx.dtype == np.float32 and dx.shape == shape
    assert np.all(np.abs(dx - ref) <= _sum_bound(dy, indices, shape, kernel_size, stride))


@pytest.mark.parametrize("shape,kernel_size,stride,padding", CASES, ids=IDS)
def test_max_pool2d_forward_backward(backend, rng, shape, kernel_size, stride, padding):
    x = rng.standard_normal(shape).astype(np.float32)
    y, idx = (fetch(a) for a in F.max_pool2d_forward(put(x, backend), kernel_size, stride, padding))
    ry, ridx = R.max_pool2d_forward(x, kernel_size, stride, padding)
    assert y.dtype == np.float32 and idx.dtype == np.int32 and y.shape == idx.shape == ry.shape
    np.testing.assert_array_equal(y, ry)
    np.testing.assert_array_equal(idx, ridx)

    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx = fetch(F.max_pool2d_backward(put(dy, backend), put(idx, backend), shape, kernel_size, stride, padding))
    _max_pool_backward_check(dx, dy, idx, shape, kernel_size, stride)


@pytest.mark.parametrize("shape,kernel_size,stride,padding", CASES, ids=IDS)
def test_max_pool2d_ties_first_max_wins(backend, rng, shape, kernel_size, stride, padding):
    # Values from {-1, 0, 1}: most windows hold several equal maxima.
    x = rng.integers(-1, 2, size=shape).astype(np.float32)
    y, idx = (fetch(a) for a in F.max_pool2d_forward(put(x, backend), kernel_size, stride, padding))
    ry, ridx = R.max_pool2d_forward(x, kernel_size, stride, padding)
    np.testing.assert_array_equal(y, ry)
    np.testing.assert_array_equal(idx, ridx)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx = fetch(F.max_pool2d_backward(put(dy, backend), put(idx, backend), shape, kernel_size, stride, padding))
    _max_pool_backward_check(dx, dy, idx, shape, kernel_size, stride)


def test_max_pool2d_constant_and_minus_inf_planes(backend):
    # All-equal windows pick their first in-plane element; padding (never a candidate) does not
    # win even against -inf.
    for value in [0.0, -np.inf]:
        x = np.full((1, 1, 5, 5), value, np.float32)
        y, idx = (fetch(a) for a in F.max_pool2d_forward(put(x, backend), 3, 2, 1))
        np.testing.assert_array_equal(y, x[:, :, :3, :3])
        np.testing.assert_array_equal(idx[0, 0], [[0, 1, 3], [5, 6, 8], [15, 16, 18]])


def test_max_pool2d_nan_is_selected(backend, rng):
    x = rng.standard_normal((2, 3, 9, 10)).astype(np.float32)
    x[0, 0, 1, 1] = np.nan
    x[0, 0, 1, 2] = np.nan  # two NaNs in one window: the later one is taken, as in torch
    x[1, 2, 8, 9] = np.nan  # in the last row and column
    x[1, 1, 0, 0] = np.nan
    x[1, 1, 0, 1] = np.inf
    for k, s, p in [(2, None, 0), (3, 1, 1), (3, 2, 1)]:
        y, idx = (fetch(a) for a in F.max_pool2d_forward(put(x, backend), k, s, p))
        ry, ridx = R.max_pool2d_forward(x, k, s, p)
        np.testing.assert_array_equal(y, ry)  # NaN positions compared as equal
        np.testing.assert_array_equal(idx, ridx)
        assert np.isnan(y).sum() == np.isnan(ry).sum() > 0
    y, idx = F.max_pool2d_forward(x, 2)
    assert np.isnan(y[0, 0, 0, 0]) and idx[0, 0, 0, 0] == 1 * 10 + 1
    assert np.isnan(y[0, 0, 0, 1]) and idx[0, 0, 0, 1] == 1 * 10 + 2


@pytest.mark.parametrize("shape,kernel_size,stride,padding", CASES[:12], ids=IDS[:12])
def test_max_pool2d_matches_torch(rng, shape, kernel_size, stride, padding):
    torch = pytest.importorskip("torch")
    x = rng.standard_normal(shape).astype(np.float32)
    x.reshape(-1)[::7] = 0.5  # ties across windows too
    tx = torch.from_numpy(x).requires_grad_()
    ty, tidx = torch.nn.functional.max_pool2d(tx, kernel_size, stride, padding, return_indices=True)
    y, idx = F.max_pool2d_forward(x, kernel_size, stride, padding)
    np.testing.assert_array_equal(y, ty.detach().numpy())
    np.testing.assert_array_equal(idx, tidx.numpy())
    dy = rng.standard_normal(y.shape).astype(np.float32)
    ty.backward(torch.from_numpy(dy))
    dx = F.max_pool2d_backward(dy, idx, shape, kernel_size, stride, padding)
    # torch sums in some order of its own: both are within the bound of the exact sum.
    assert np.all(np.abs(dx - tx.grad.numpy()) <= 2 * _sum_bound(dy, idx, shape, kernel_size, stride))


def test_max_pool2d_nan_matches_torch(rng):
    torch = pytest.importorskip("torch")
    x = rng.standard_normal((2, 2, 8, 8)).astype(np.float32)
    x.reshape(-1)[rng.choice(x.size, 12, replace=False)] = np.nan
    for k, s, p in [(2, None, 0), (3, 1, 1)]:
        ty, tidx = torch.nn.functional.max_pool2d(torch.from_numpy(x), k, s, p, return_indices=True)
        y, idx = F.max_pool2d_forward(x, k, s, p)
        np.testing.assert_array_equal(y, ty.numpy())
        np.testing.assert_array_equal(idx, tidx.numpy())


def test_max_pool2d_backward_is_deterministic(backend, rng):
    # Heavy overlap (k = 5, s = 1): up to 25 terms per input, always summed in the same order.
    x = rng.integers(0, 3, size=(2, 3, 17, 19)).astype(np.float32)
    _, idx = F.max_pool2d_forward(x, 5, 1, 2)
    dy = rng.standard_normal(idx.shape).astype(np.float32)
    first = fetch(F.max_pool2d_backward(put(dy, backend), put(idx, backend), x.shape, 5, 1, 2))
    for _ in range(3):
        again = fetch(F.max_pool2d_backward(put(dy, backend), put(idx, backend), x.shape, 5, 1, 2))
        np.testing.assert_array_equal(again.view(np.int32), first.view(np.int32))
    # The sum runs over the outputs in row-major order, starting from 0: a float32 scatter-add in
    # that order gives the same bits.
    expect = np.zeros((2, 3, 17 * 19), np.float32)
    for n in range(2):
        for c in range(3):
            for i, g in zip(idx[n, c].reshape(-1), dy[n, c].reshape(-1)):
                expect[n, c, i] = np.float32(expect[n, c, i] + g)
    np.testing.assert_array_equal(first.reshape(expect.shape).view(np.int32), expect.view(np.int32))


def test_max_pool2d_backward_ignores_indices_outside_their_window(backend):
    # Never produced by the forward pass; such entries must neither crash nor write anywhere.
    dy = np.ones((1, 1, 2, 2), np.float32)
    idx = np.array([[[[0, -7], [2**31 - 1, 15]]]], np.int32)  # 15 = (3, 3) lies in window (1, 1)
    dx = fetch(F.max_pool2d_backward(put(dy, backend), put(idx, backend), (1, 1, 4, 4), 2))
    expect = np.zeros((1, 1, 4, 4), np.float32)
    expect[0, 0, 0, 0] = expect[0, 0, 3, 3] = 1
    np.testing.assert_array_equal(dx, expect)


@pytest.mark.parametrize("kernel_size,stride,padding", [(2, 2, 0), (3, 3, 1), (3, 2, 1)])
def test_max_pool2d_backward_sums_from_plus_zero(backend, rng, kernel_size, stride, padding):
    # dx starts from +0 and adds its terms (the reference's order): dy = -0 gives +0 everywhere,
    # on the paths that write each input once as on the gathers.
    x = rng.standard_normal((2, 3, 11, 12)).astype(np.float32)
    _, idx = F.max_pool2d_forward(x, kernel_size, stride, padding)
    dy = np.full(idx.shape, -0.0, np.float32)
    dx = fetch(F.max_pool2d_backward(put(dy, backend), put(idx, backend), x.shape, kernel_size, stride, padding))
    np.testing.assert_array_equal(dx.view(np.int32), np.zeros(x.shape, np.int32))


def test_max_pool2d_stride_defaults_to_kernel(rng):
    x = rng.standard_normal((2, 3, 8, 9)).astype(np.float32)
    for a, b in zip(F.max_pool2d_forward(x, (2, 3)), F.max_pool2d_forward(x, (2, 3), (2, 3), 0)):
        np.testing.assert_array_equal(a, b)


SHAPES_AVG = [
    (0, 3, 4, 4),
    (2, 0, 3, 3),
    (1, 1, 1, 1),
    (3, 5, 7, 9),
    (2, 3, 13, 11),
    (4, 6, 7, 7),
    (2, 2, 61, 67),
    (1, 3, 1, 300),
]


@pytest.mark.parametrize("shape", SHAPES_AVG)
def test_global_avg_pool_forward_backward(backend, rng, shape):
    x = (rng.standard_normal(shape) + 0.5).astype(np.float32)
    y = fetch(F.global_avg_pool_forward(put(x, backend)))
    ref = R.global_avg_pool_forward(x)
    assert y.dtype == np.float32 and y.shape == shape[:2]
    scale = np.abs(x).mean(axis=(2, 3)) if x.size else 0.0
    assert np.all(np.abs(y - ref) <= 2.0**-23 * np.abs(ref) + 1e-12 * scale)

    dy = rng.standard_normal(shape[:2]).astype(np.float32)
    dx = fetch(F.global_avg_pool_backward(put(dy, backend), shape))
    assert dx.dtype == np.float32 and dx.shape == shape
    np.testing.assert_array_equal(dx, R.global_avg_pool_backward(dy, shape).astype(np.float32))


def test_global_avg_pool_is_accurate_on_a_large_plane(backend, rng):
    # 2^20 elements of one sign near 1: a plain float32 running sum would be off by ~1e-3.
    x = (1 + rng.random((1, 2, 1024, 1024)) * 2**-10).astype(np.float32)
    y = fetch(F.global_avg_pool_forward(put(x, backend)))
    np.testing.assert_allclose(y, R.global_avg_pool_forward(x), rtol=2**-23, atol=0)


def test_global_avg_pool_nan_and_inf(backend):
    x = np.zeros((1, 3, 2, 2), np.float32)
    x[0, 0, 1, 1] = np.nan
    x[0, 1, 0, 0] = np.inf
    y = fetch(F.global_avg_pool_forward(put(x, backend)))
    assert np.isnan(y[0, 0]) and y[0, 1] == np.inf and y[0, 2] == 0


def test_global_avg_pool_matches_torch(rng):
    torch = pytest.importorskip("torch")
    x = rng.standard_normal((4, 6, 7, 9)).astype(np.float32)
    tx = torch.from_numpy(x).requires_grad_()
    ty = torch.nn.functional.adaptive_avg_pool2d(tx, 1).flatten(1)
    np.testing.assert_allclose(F.global_avg_pool_forward(x), ty.detach().numpy(), rtol=1e-6, atol=1e-7)
    dy = rng.standard_normal((4, 6)).astype(np.float32)
    ty.backward(torch.from_numpy(dy))
    np.testing.assert_allclose(F.global_avg_pool_backward(dy, x.shape), tx.grad.numpy(), rtol=1e-6, atol=0)


X4 = np.ones((2, 3, 6, 6), np.float32)
Y4 = np.ones((2, 3, 3, 3), np.float32)
I4 = np.zeros((2, 3, 3, 3), np.int32)


@pytest.mark.parametrize(
    "call,exc,match",
    [
        (
            lambda: F.max_pool2d_forward(X4.astype(np.float64), 2),
            TypeError,
            r"x: expected a float32 array, got float64",
        ),
        (lambda: F.max_pool2d_forward(X4[:, :, :, ::2], 2), ValueError, r"x: array must be C-contiguous"),
        (
            lambda: F.max_pool2d_forward(X4[0], 2),
            ValueError,
            r"x: expected 4 dimensions \(N, C, H, W\), got shape \(3, 6, 6\)",
        ),
        (lambda: F.max_pool2d_forward(np.ones((1, 1, 0, 4), np.float32), 1), ValueError, r"x: H and W must be >= 1"),
        (lambda: F.max_pool2d_forward(X4, 0), ValueError, r"kernel_size: must be >= 1"),
        (lambda: F.max_pool2d_forward(X4, (2, 2, 2)), ValueError, r"kernel_size: expected an int or a pair"),
        (lambda: F.max_pool2d_forward(X4, 2.0), TypeError, r"^kernel_size: expected an integer, got float"),
        (lambda: F.max_pool2d_forward(X4, 2, 0), ValueError, r"stride: must be in \[1, 2\^31\)"),
        (lambda: F.max_pool2d_forward(X4, 2, (1, -1)), ValueError, r"^stride: "),
        (lambda: F.max_pool2d_forward(X4, 2, "2"), TypeError, r"^stride: expected an integer, got str"),
        (lambda: F.max_pool2d_forward(X4, 2, 2, -1), ValueError, r"padding: must be >= 0"),
        (lambda: F.max_pool2d_forward(X4, 3, 1, 2), ValueError, r"padding: should be at most half of kernel_size"),
        (lambda: F.max_pool2d_forward(X4, (4, 2), 1, (1, 2)), ValueError, r"^padding: should be at most half"),
        (lambda: F.max_pool2d_forward(X4, 7), ValueError, r"x: output size would be \(0, 0\), below 1"),
        (lambda: F.max_pool2d_forward(X4, (2, 9), 1, (0, 1)), ValueError, r"^x: output size would be"),
        (
            lambda: F.max_pool2d_backward(
                np.ones((0, 1, 1, 1), np.float32), np.zeros((0, 1, 1, 1), np.int32), (0, 1, 2**16, 2**16), 2**16
            ),
            ValueError,
            r"input_shape: plane \(65536, 65536\) too large",
        ),
        (
            lambda: F.max_pool2d_backward(
                np.ones((0, 1, 1, 1), np.float32), np.zeros((0, 1, 1, 1), np.int32), (0, 1, 2**30, 1), 2**31, 1, 2**30
            ),
            ValueError,
            r"padding: \(1073741824, 1073741824\) too large",
        ),
        (
            lambda: F.max_pool2d_backward(Y4, I4, X4.shape, 3),
            ValueError,
            r"dy: expected the output shape \(2, 3, 2, 2\) of this pooling, got \(2, 3, 3, 3\)",
        ),
        (lambda: F.max_pool2d_backward(Y4, I4[:1], X4.shape, 2), ValueError, r"indices: expected the output shape"),
        (
            lambda: F.max_pool2d_backward(Y4, I4.astype(np.int64), X4.shape, 2),
            TypeError,
            r"indices: expected a int32 array, got int64",
        ),
        (
            lambda: F.max_pool2d_backward(Y4, I4.astype(np.float32), X4.shape, 2),
            TypeError,
            r"^indices: expected a int32",
        ),
        (lambda: F.max_pool2d_backward(Y4, I4.T, X4.shape, 2), ValueError, r"indices: array must be C-contiguous"),
        (lambda: F.max_pool2d_backward(Y4.astype(np.float64), I4, X4.shape, 2), TypeError, r"^dy: expected a float32"),
        (lambda: F.max_pool2d_backward(Y4, I4, (2, 3, 6), 2), ValueError, r"input_shape: expected 4 dimensions"),
        (lambda: F.max_pool2d_backward(Y4, I4, (2, 3, -6, 6), 2), ValueError, r"input_shape: negative dimension"),
        (
            lambda: F.max_pool2d_backward(Y4, I4, (2, 3, 6.0, 6), 2),
            TypeError,
            r"input_shape\[2\]: expected an integer, got float",
        ),
        (lambda: F.max_pool2d_backward(Y4, I4, 6, 2), TypeError, r"^input_shape: "),
        (lambda: F.max_pool2d_backward(Y4, I4, X4.shape, 2, 2, 3), ValueError, r"^padding: "),
        (lambda: F.global_avg_pool_forward(X4[0]), ValueError, r"x: expected 4 dimensions"),
        (lambda: F.global_avg_pool_forward(np.ones((2, 3, 0, 4), np.float32)), ValueError, r"x: H and W must be >= 1"),
        (lambda: F.global_avg_pool_forward(X4.astype(np.float16)), TypeError, r"x: unsupported dtype float16"),
        (lambda: F.global_avg_pool_forward(X4.transpose(0, 1, 3, 2)), ValueError, r"x: array must be C-contiguous"),
        (
            lambda: F.global_avg_pool_backward(np.ones((2, 4), np.float32), X4.shape),
            ValueError,
            r"dy: expected the output shape \(2, 3\), got \(2, 4\)",
        ),
        (lambda: F.global_avg_pool_backward(np.ones((2, 3, 1, 1), np.float32), X4.shape), ValueError, r"^dy: expected"),
        (
            lambda: F.global_avg_pool_backward(np.ones((2, 3), np.float32), (2, 3, 4, 0)),
            ValueError,
            r"input_shape: H and W must be >= 1",
        ),
        (
            lambda: F.global_avg_pool_backward(np.ones((2, 3), np.float32), (2, 3, 2**40, 2**40)),
            ValueError,
            r"input_shape: too many elements",
        ),
        (lambda: F.global_avg_pool_backward(np.ones((2, 3), np.float32), None), TypeError, r"^input_shape: "),
    ],
)
def test_bad_arguments(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


@pytest.mark.gpu
def test_mixed_devices_are_an_error():
    dy = fastopt.to_device(Y4)
    with pytest.raises(ValueError, match=r"indices is on cpu but dy is on cuda:0"):
        F.max_pool2d_backward(dy, I4, X4.shape, 2)


@pytest.mark.gpu
def test_gpu_equals_cpu_bit_for_bit(rng):
    for shape, k, s, p in [((4, 8, 33, 31), 3, 1, 1), ((4, 8, 33, 31), 2, None, 0), ((2, 64, 7, 7), 3, 2, 1)]:
        x = rng.integers(-2, 3, size=shape).astype(np.float32) + rng.standard_normal(shape).astype(np.float32)
        x.reshape(-1)[::101] = np.nan
        y, idx = F.max_pool2d_forward(x, k, s, p)
        gy, gidx = F.max_pool2d_forward(fastopt.to_device(x), k, s, p)
        np.testing.assert_array_equal(fetch(gy), y)
        np.testing.assert_array_equal(fetch(gidx), idx)
        dy = rng.standard_normal(y.shape).astype(np.float32)
        dx = F.max_pool2d_backward(dy, idx, shape, k, s, p)
        gdx = F.max_pool2d_backward(fastopt.to_device(dy), gidx, shape, k, s, p)
        np.testing.assert_array_equal(fetch(gdx).view(np.int32), dx.view(np.int32))
        gdx = F.global_avg_pool_backward(fastopt.to_device(dy[:, :, 0, 0].copy()), shape)
        np.testing.assert_array_equal(fetch(gdx), F.global_avg_pool_backward(dy[:, :, 0, 0].copy(), shape))


def test_reference_output_size():
    assert R.pool_output_size(7, 9, (3, 3), (2, 2), (1, 1)) == (4, 5)
    assert math.prod(R.pool_output_size(1, 1, (1, 1), (1, 1), (0, 0))) == 1
