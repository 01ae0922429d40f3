"""float64 NumPy reference of the dropout family, and the Philox4x32-10 it draws from.

Philox4x32-10 is Random123's definition (see cpp/include/fastopt/philox.h), written here in
vectorized uint64 arithmetic: a 32 x 32-bit product fits a uint64 exactly, its high and low
halves are the mulhilo of the C++ code. (numpy.random.Philox is the 4x64 variant: not usable.)

The stream: word s (0, 1, 2, ...) is output word s % 4 of the block with counter
(low 32 bits of s // 4, high 32 bits of s // 4, 0, 0) under key (low, high 32 bits of seed).
Element i of a call with `offset` draws word offset + i and is kept iff that word is below
floor((1 - p) * 2^32).
"""

import math

import numpy as np

M0, M1 = 0xD2511F53, 0xCD9E8D57
W0, W1 = 0x9E3779B9, 0xBB67AE85
MASK32 = np.uint64(0xFFFFFFFF)


def philox4x32_10(counter, key):
    """counter: uint-like array (..., 4), key: (k0, k1). Returns uint32 array (..., 4)."""
    c = np.asarray(counter, dtype=np.uint64)
    c0, c1, c2, c3 = (c[..., w].copy() for w in range(4))
    k0, k1 = int(key[0]) & 0xFFFFFFFF, int(key[1]) & 0xFFFFFFFF
    for _ in range(10):
        p0 = np.uint64(M0) * c0
        p1 = np.uint64(M1) * c2
        c0, c1, c2, c3 = (
            (p1 >> np.uint64(32)) ^ c1 ^ np.uint64(k0),
            p1 & MASK32,
            (p0 >> np.uint64(32)) ^ c3 ^ np.uint64(k1),
            p0 & MASK32,
        )
        k0, k1 = (k0 + W0) & 0xFFFFFFFF, (k1 + W1) & 0xFFFFFFFF
    return np.stack([c0, c1, c2, c3], axis=-1).astype(np.uint32)


def stream_words(seed, offset, n):
    """Words offset, offset + 1, ..., offset + n - 1 of the stream keyed by the 64-bit seed."""
    seed, offset = int(seed), int(offset)
    if n == 0:
        return np.zeros(0, np.uint32)
    first, last = offset // 4, (offset + n - 1) // 4
    j = np.arange(last - first + 1, dtype=np.uint64) + np.uint64(first)
    counter = np.stack([j & MASK32, j >> np.uint64(32), np.zeros_like(j), np.zeros_like(j)], axis=-1)
    words = philox4x32_10(counter, (seed & 0xFFFFFFFF, seed >> 32)).reshape(-1)
    lead = offset - 4 * first
    return words[lead : lead + n]


def threshold(p):
    """floor((1 - p) * 2^32), exact: the scaling by 2^32 of the double 1 - p is exact."""
    return math.floor((1.0 - p) * 2.0**32)


def scale(p):
    """The float32 multiplier of kept elements, as torch forms it: 1 / float32(1 - p)."""
    return np.float32(1.0) / np.float32(1.0 - p) if p < 1.0 else np.float32(0.0)


def dropout_mask(shape, p, seed, offset=0):
    shape = tuple(int(s) for s in shape)
    n = math.prod(shape)
    return (stream_words(seed, offset, n).astype(np.uint64) < np.uint64(threshold(p))).reshape(shape)


def dropout_forward(x, p, seed, offset=0, training=True):
    """float64 y = x * m, m = keep ? scale : 0 (the float32 scale, widened exactly)."""
    x = np.asarray(x, np.float64)
    if not training:
        return x.copy()
    keep = dropout_mask(x.shape, p, seed, offset)
    return x * np.where(keep, np.float64(scale(p)), 0.0)


def dropout_backward(dy, p, seed, offset=0):
    """dx = dy * m: the same mask, regenerated."""
    return dropout_forward(dy, p, seed, offset)
