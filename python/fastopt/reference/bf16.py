"""bfloat16 in the reference: round the inputs to bfloat16 first, then compute in float64.

Every reference op takes bfloat16 arrays (ml_dtypes) as they are: np.asarray(x, np.float64)
widens them exactly, so the oracle of a bf16 kernel is the float64 op on the very values the
kernel saw, and the kernel's own error is its fp32 arithmetic plus one final rounding of each
output element to bfloat16 (unit roundoff u = 2^-8). `inputs` makes bf16 twins of float arrays
for a test; `round_nearest` and `stochastic_round` are the two ways fastopt stores an fp32 value
in bfloat16 (cpp/include/fastopt/bf16.h), bit for bit.
"""

import numpy as np
from ml_dtypes import bfloat16

from .dropout import MASK32, philox4x32_10

__all__ = ["U", "inputs", "round_nearest", "stochastic_round", "sr_words"]

U = 2.0**-8  # bfloat16's unit roundoff: 8 significand bits, round to nearest


def round_nearest(x):
    """x (float32 values; wider ones are first rounded to float32, as a kernel's fp32 result is)
    rounded to bfloat16, nearest even: an ml_dtypes bfloat16 array."""
    return np.asarray(x, np.float32).astype(bfloat16)


def inputs(*arrays):
    """Each array rounded to bfloat16 (None stays None): the inputs of a bf16 kernel and its oracle."""
    out = tuple(None if a is None else round_nearest(a) for a in arrays)
    return out[0] if len(out) == 1 else out


def sr_words(n, seed, tensor, step):
    """The random words of elements 0 .. n-1 of the parameter at flat index `tensor` at step
    `step` (counting from 1): word i % 4 of Philox4x32-10 with counter (low, high 32 bits of i // 4,
    tensor, low 32 bits of step) under the 64-bit seed (optim_rules.h, Rounding)."""
    seed = int(seed)
    j = np.arange((n + 3) // 4, dtype=np.uint64)
    counter = np.stack(
        [j & MASK32, j >> np.uint64(32), np.full_like(j, tensor), np.full_like(j, int(step) & 0xFFFFFFFF)], axis=-1
    )
    return philox4x32_10(counter, (seed & 0xFFFFFFFF, seed >> 32)).reshape(-1)[:n]


def hash32(x):
    """lowbias32 (C. Wellons) on uint32 arrays: the integer hash behind bf16 state rounding."""
    x = np.asarray(x, np.uint32)
    x = x ^ (x >> np.uint32(16))
    x = x * np.uint32(0x7FEB352D)
    x = x ^ (x >> np.uint32(15))
    x = x * np.uint32(0x846CA68B)
    return x ^ (x >> np.uint32(16))


def state_words(n, seed, tensor, step, j):
    """The random words (low 16 bits used) that round state buffer j (the rule's order) of elements
    0 .. n-1 of the parameter at flat index `tensor` at step `step` (from 1), for
    state_dtype="bfloat16" (optim_rules.h, state_word): word i = hash32(key + i * 0x9E3779B9)
    with key = hash32 chained over (seed low, seed high, tensor, step, i >> 32); state 0 takes the
    word, state 1 its high half, state 2 hash32(word ^ 0xA511E9B3)."""
    seed = int(seed)
    with np.errstate(over="ignore"):
        i = np.arange(n, dtype=np.uint64)
        k = hash32(np.uint32(seed & 0xFFFFFFFF) ^ np.uint32(0x5BD1E995))
        k = hash32(k ^ np.uint32(seed >> 32))
        k = hash32(k ^ np.uint32(tensor))
        k = hash32(k ^ np.uint32(int(step) & 0xFFFFFFFF))
        key = hash32(k ^ (i >> np.uint64(32)).astype(np.uint32))
        word = hash32(key + (i & np.uint64(MASK32)).astype(np.uint32) * np.uint32(0x9E3779B9))
        return [word, word >> np.uint32(16), hash32(word ^ np.uint32(0xA511E9B3))][j]


def stochastic_round(x, words):
    """float32 x stored as bfloat16 by stochastic rounding with the low 16 bits of `words`: the
    magnitude rounds up with probability (x's 16 dropped bits) / 2^16, so E[result] = x; NaN stays
    a quiet NaN."""
    u = np.asarray(x, np.float32).reshape(-1).view(np.uint32).astype(np.uint64)
    rounded = (u + (np.asarray(words, np.uint64) & np.uint64(0xFFFF))) >> np.uint64(16)
    nan = (u & np.uint64(0x7FFFFFFF)) > np.uint64(0x7F800000)
    bits = np.where(nan, (u >> np.uint64(16)) | np.uint64(0x40), rounded).astype(np.uint16)
    return bits.view(bfloat16).reshape(np.shape(x))
