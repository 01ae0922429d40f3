"""float64 NumPy reference of the pooling family (torch.nn.functional semantics), NCHW.

max_pool2d is the definition, vectorized over (N, C, P, Q) only: the kh x kw window offsets are
visited in row-major order and an element replaces the running max iff it is greater or NaN, the
running index starting at the window's first in-plane element. So the first of tied maxima wins,
a NaN always wins (the last NaN if several), and padded positions are never candidates.
"""

import numpy as np

from .conv import pair

__all__ = [
    "max_pool2d_forward",
    "max_pool2d_backward",
    "global_avg_pool_forward",
    "global_avg_pool_backward",
    "avg_pool2d_forward",
    "avg_pool2d_backward",
    "pool_output_size",
]


def pool_output_size(h, w, kernel_size, stride, padding):
    (kh, kw), (sh, sw), (ph, pw) = kernel_size, stride, padding
    return (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1


def _hyper(kernel_size, stride, padding):
    kernel_size = pair(kernel_size, "kernel_size")
    stride = kernel_size if stride is None else pair(stride, "stride")
    return kernel_size, stride, pair(padding, "padding")


def max_pool2d_forward(x, kernel_size, stride=None, padding=0):
    """(y float64, indices int64) with y, indices of shape (N, C, P, Q)."""
    x = np.asarray(x, np.float64)
    (kh, kw), (sh, sw), (ph, pw) = hyper = _hyper(kernel_size, stride, padding)
    n, c, h, w = x.shape
    p, q = pool_output_size(h, w, *hyper)
    rows0 = np.arange(p) * sh - ph  # unclipped window origins
    cols0 = np.arange(q) * sw - pw
    first = np.maximum(rows0, 0)[:, None] * w + np.maximum(cols0, 0)[None, :]
    best = np.full((n, c, p, q), -np.inf)
    index = np.broadcast_to(first, (n, c, p, q)).copy()
    for i in range(kh):
        for j in range(kw):
            rows, cols = rows0 + i, cols0 + j
            valid = ((rows >= 0) & (rows < h))[:, None] & ((cols >= 0) & (cols < w))[None, :]
            r, s = np.clip(rows, 0, h - 1), np.clip(cols, 0, w - 1)
            v = x[:, :, r[:, None], s[None, :]]
            take = valid & ((v > best) | np.isnan(v))
            best = np.where(take, v, best)
            index = np.where(take, (r[:, None] * w + s[None, :]), index)
    return best, index


def max_pool2d_backward(dy, indices, input_shape):
    """dx[n, c, i] = sum of dy[n, c, p, q] over the (p, q) with indices[n, c, p, q] == i."""
    dy, indices = np.asarray(dy, np.float64), np.asarray(indices)
    n, c, h, w = input_shape
    pq = indices.shape[2] * indices.shape[3]
    dx = np.zeros((n, c, h * w))
    nn, cc = np.meshgrid(np.arange(n), np.arange(c), indexing="ij")
    np.add.at(dx, (nn[:, :, None], cc[:, :, None], indices.reshape(n, c, pq)), dy.reshape(n, c, pq))
    return dx.reshape(n, c, h, w)


def global_avg_pool_forward(x):
    return np.asarray(x, np.float64).mean(axis=(2, 3))


def global_avg_pool_backward(dy, input_shape):
    n, c, h, w = input_shape
    return np.broadcast_to(np.asarray(dy, np.float64)[:, :, None, None] / (h * w), (n, c, h, w)).copy()


def _avg_windows(x_shape, kernel_size, stride, padding, count_include_pad):
    """For each output (p, q): the clipped row and column ranges of its window, and its divisor."""
    hyper = _hyper(kernel_size, stride, padding)
    (kh, kw), (sh, sw), (ph, pw) = hyper
    h, w = x_shape[2], x_shape[3]
    p, q = pool_output_size(h, w, *hyper)
    for i in range(p):
        r0, r1 = max(i * sh - ph, 0), min(i * sh - ph + kh, h)
        for j in range(q):
            c0, c1 = max(j * sw - pw, 0), min(j * sw - pw + kw, w)
            yield i, j, (r0, r1, c0, c1), (kh * kw if count_include_pad else (r1 - r0) * (c1 - c0))


def avg_pool2d_forward(x, kernel_size, stride=None, padding=0, count_include_pad=True):
    """torch's definition: the window's sum over the plane (padding counts as zeros) / divisor."""
    x = np.asarray(x, np.float64)
    p, q = pool_output_size(x.shape[2], x.shape[3], *_hyper(kernel_size, stride, padding))
    y = np.zeros(x.shape[:2] + (p, q))
    for i, j, (r0, r1, c0, c1), div in _avg_windows(x.shape, kernel_size, stride, padding, count_include_pad):
        y[:, :, i, j] = x[:, :, r0:r1, c0:c1].sum(axis=(2, 3)) / div
    return y


def avg_pool2d_backward(dy, input_shape, kernel_size, stride=None, padding=0, count_include_pad=True):
    dy = np.asarray(dy, np.float64)
    dx = np.zeros(tuple(input_shape))
    for i, j, (r0, r1, c0, c1), div in _avg_windows(input_shape, kernel_size, stride, padding, count_include_pad):
        dx[:, :, r0:r1, c0:c1] += dy[:, :, i, j][:, :, None, None] / div
    return dx
