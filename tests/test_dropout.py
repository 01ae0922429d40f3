"""Dropout: Philox4x32-10 known answers, masks bit for bit equal to the NumPy reference on every
backend, forward/backward values, statistics of the keep decision, and argument errors.

Tolerances: the mask is compared exactly (bit for bit). y = x * float32(scale) is one float32
rounding of the exact product, so fastopt's output equals the float32 product x * scale exactly
and is within 2^-24 relative of the float64 reference; dropped elements are exactly x * 0.
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
from fastopt.reference import dropout as R

# Random123's published known-answer vectors (kat_vectors, philox4x32 with 10 rounds).
KAT = [
    (
        (0x00000000, 0x00000000, 0x00000000, 0x00000000),
        (0x00000000, 0x00000000),
        (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8),
    ),
    (
        (0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF),
        (0xFFFFFFFF, 0xFFFFFFFF),
        (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD),
    ),
    (
        (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
        (0xA4093822, 0x299F31D0),
        (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1),
    ),
]

SHAPES = [(0,), (1,), (3,), (4,), (5,), (97,), (4099,), (3, 5, 7), (2, 0, 3), (32768 * 2 + 13,)]
OFFSETS = [0, 1, 2, 3, 12345, 2**34 + 3]  # 2^34 + 3: block counters above 2^32 (c1 != 0)


@pytest.mark.parametrize("counter,key,expect", KAT)
def test_philox_known_answers_native(counter, key, expect):
    assert _C.philox4x32_10(counter, key) == expect


@pytest.mark.parametrize("counter,key,expect", KAT)
def test_philox_known_answers_reference(counter, key, expect):
    out = R.philox4x32_10(np.array([counter], np.uint64), key)
    assert out.dtype == np.uint32
    assert tuple(int(v) for v in out[0]) == expect


def test_philox_reference_matches_native_on_random_counters(rng):
    counters = rng.integers(0, 2**32, size=(64, 4), dtype=np.uint64)
    key = tuple(int(k) for k in rng.integers(0, 2**32, size=2))
    ref = R.philox4x32_10(counters, key)
    for c, r in zip(counters, ref):
        assert _C.philox4x32_10([int(v) for v in c], key) == tuple(int(v) for v in r)


def test_stream_layout():
    # Word s is word s % 4 of block s // 4, whose counter is (lo32, hi32 of s // 4, 0, 0).
    seed = 0x0123456789ABCDEF
    key = (seed & 0xFFFFFFFF, seed >> 32)
    for s in [0, 1, 6, 4 * 2**32 + 2]:
        j = s // 4
        expect = _C.philox4x32_10([j & 0xFFFFFFFF, j >> 32, 0, 0], key)[s % 4]
        assert int(R.stream_words(seed, s, 1)[0]) == expect


def test_threshold_and_scale():
    assert R.threshold(0.0) == 2**32
    assert R.threshold(1.0) == 0
    assert R.threshold(0.5) == 2**31
    assert R.threshold(0.25) == 3 * 2**30
    assert R.threshold(2.0**-40) == 2**32 - 1  # (1 - 2^-40) 2^32 = 2^32 - 2^-8, floored
    assert R.scale(0.0) == np.float32(1.0)
    assert R.scale(1.0) == np.float32(0.0)
    assert R.scale(0.999) == np.float32(1.0) / np.float32(0.001)


def _seed(rng):
    return int(rng.integers(0, 2**63)) * 2 + int(rng.integers(0, 2))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("offset", OFFSETS)
def test_mask_matches_reference(backend, rng, shape, offset):
    p = float(rng.uniform(0.05, 0.95))
    seed = _seed(rng)
    device = "cpu" if backend == "cpu" else "cuda"
    got = fetch(F.dropout_mask(shape, p, seed, offset, device=device))
    assert got.dtype == np.bool_ and got.shape == shape
    np.testing.assert_array_equal(got, R.dropout_mask(shape, p, seed, offset))


@pytest.mark.parametrize("seed", [0, 1, 2**32 - 1, 2**32, 2**64 - 1])
def test_mask_extreme_seeds_and_last_offset(backend, seed):
    n = 1001
    device = "cpu" if backend == "cpu" else "cuda"
    for offset in (0, 2**64 - n):
        got = fetch(F.dropout_mask((n,), 0.5, seed, offset, device=device))
        np.testing.assert_array_equal(got, R.dropout_mask((n,), 0.5, seed, offset))


@pytest.mark.gpu
def test_gpu_mask_equals_cpu_mask_bit_for_bit(rng):
    for n, offset in [(2**20 + 7, 0), (2**20 + 7, 3), (12345, 2**40 + 1)]:
        p, seed = float(rng.uniform(0.1, 0.9)), _seed(rng)
        np.testing.assert_array_equal(
            fetch(F.dropout_mask(n, p, seed, offset, device="cuda")), F.dropout_mask(n, p, seed, offset)
        )
        x = rng.standard_normal(n).astype(np.float32)
        np.testing.assert_array_equal(
            fetch(F.dropout_forward(put(x, "cuda"), p, seed, offset)), F.dropout_forward(x, p, seed, offset)
        )


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("p", [0.1, 0.5, 0.8, 1 / 3])
def test_forward_and_backward(backend, rng, shape, p):
    seed, offset = _seed(rng), int(rng.integers(0, 2**40))
    x = rng.standard_normal(shape).astype(np.float32) * 3
    y = fetch(F.dropout_forward(put(x, backend), p, seed, offset))
    keep = R.dropout_mask(shape, p, seed, offset)
    assert y.dtype == np.float32 and y.shape == shape
    np.testing.assert_array_equal(y, x * np.where(keep, R.scale(p), np.float32(0)))  # torch's float32 math
    np.testing.assert_allclose(y, R.dropout_forward(x, p, seed, offset), rtol=2**-24, atol=0)
    assert np.all(y[~keep] == 0)

    dy = rng.standard_normal(shape).astype(np.float32)
    dx = fetch(F.dropout_backward(put(dy, backend), p, seed, offset))
    np.testing.assert_array_equal(dx, dy * np.where(keep, R.scale(p), np.float32(0)))
    np.testing.assert_allclose(dx, dy.astype(np.float64) * keep / (1 - p), rtol=2**-23, atol=0)


def test_p_zero_and_one(backend, rng):
    x = rng.standard_normal(1003).astype(np.float32)
    x[:4] = [np.finfo(np.float32).max, -np.finfo(np.float32).max, np.finfo(np.float32).tiny, -0.0]
    y0 = fetch(F.dropout_forward(put(x, backend), 0.0, 5))
    np.testing.assert_array_equal(y0, x)
    assert np.signbit(y0[3])
    assert fetch(F.dropout_mask(x.shape, 0.0, 5, device="cpu" if backend == "cpu" else "cuda")).all()
    y1 = fetch(F.dropout_forward(put(x, backend), 1.0, 5))
    assert not np.isnan(y1).any()
    np.testing.assert_array_equal(y1, np.zeros_like(x))
    np.testing.assert_array_equal(np.signbit(y1), np.signbit(x))  # x * 0, as torch computes it
    assert not fetch(F.dropout_backward(put(x, backend), 1.0, 5)).any()


def test_nonfinite_inputs_follow_torch():
    # torch multiplies by the mask: NaN stays NaN and Inf * 0 is NaN in dropped positions too.
    x = np.array([np.nan, np.inf, -np.inf, 1.0] * 64, np.float32)
    keep = R.dropout_mask(x.shape, 0.5, 9)
    y = F.dropout_forward(x, 0.5, 9)
    with np.errstate(invalid="ignore"):
        np.testing.assert_array_equal(y, x * np.where(keep, R.scale(0.5), np.float32(0)))
    assert np.isnan(y[0::4]).all() and np.isnan(y[1::4][~keep[1::4]]).all()


def test_eval_mode_returns_input_itself(backend, rng):
    x = put(rng.standard_normal(10).astype(np.float32), backend)
    assert F.dropout_forward(x, 0.5, 1, training=False) is x
    with pytest.raises(ValueError, match=r"^p: "):
        F.dropout_forward(x, 1.5, 1, training=False)


def test_offset_skips_words(rng):
    # A call at offset k sees exactly words k, k + 1, ... of the offset-0 stream, across chunk
    # boundaries and unaligned starts alike.
    seed, n = _seed(rng), 70001
    whole = F.dropout_mask(n + 40, 0.5, seed)
    for k in [1, 2, 3, 4, 17, 39]:
        np.testing.assert_array_equal(F.dropout_mask(n, 0.5, seed, k), whole[k : k + n])
    a = F.dropout_mask(n, 0.5, seed, 0)
    b = F.dropout_mask(n, 0.5, seed, n)
    np.testing.assert_array_equal(np.concatenate([a, b]), F.dropout_mask(2 * n, 0.5, seed))


def test_mask_independent_of_thread_count():
    # Chunks are spread over OpenMP threads; the words an element draws must not depend on that.
    n, offset, seed = 3 * 32768 + 5, 3, 2**63 + 11
    code = (
        "import sys, numpy as np; from fastopt import functional as F; "
        f"sys.stdout.write(np.packbits(F.dropout_mask({n}, 0.3, {seed}, {offset})).tobytes().hex())"
    )
    one = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert one == np.packbits(F.dropout_mask(n, 0.3, seed, offset)).tobytes().hex()


def test_deterministic_and_seed_dependent(rng):
    x = rng.standard_normal(50000).astype(np.float32)
    np.testing.assert_array_equal(F.dropout_forward(x, 0.3, 42), F.dropout_forward(x, 0.3, 42))
    assert (F.dropout_mask(x.shape, 0.5, 42) != F.dropout_mask(x.shape, 0.5, 43)).mean() > 0.45


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_keep_fraction_and_mean_within_statistical_bounds(backend, rng, p):
    n = 1 << 22
    seed = _seed(rng)
    device = "cpu" if backend == "cpu" else "cuda"
    keep = fetch(F.dropout_mask(n, p, seed, device=device)).mean()
    # 6 sigma of a binomial proportion: a false alarm once in ~10^9 runs. An 8-bit threshold
    # (keep 0.8984 for 0.9) would be off by about 9 sigma at p = 0.1.
    assert abs(keep - (1 - p)) < 6 * math.sqrt(p * (1 - p) / n)
    y = fetch(F.dropout_forward(put(np.ones(n, np.float32), backend), p, seed))
    # E[y] = 1 for x = 1; Var[y] = p / (1 - p) per element.
    assert abs(y.astype(np.float64).mean() - 1.0) < 6 * math.sqrt(p / (1 - p) / n)


def test_scale_matches_torch(rng):
    torch = pytest.importorskip("torch")
    for p in [0.1, 1 / 3, 0.9, 0.999, 0.123456789]:
        x = rng.standard_normal(4096).astype(np.float32)
        y = torch.nn.functional.dropout(torch.from_numpy(x), p).numpy()
        kept = y != 0
        np.testing.assert_array_equal(y[kept], x[kept] * R.scale(p))


def test_read_only_input_is_fine(rng):
    x = rng.standard_normal(1000).astype(np.float32)
    x.flags.writeable = False
    y = F.dropout_forward(x, 0.0, 1)
    assert y.flags.writeable and not np.shares_memory(x, y)
    np.testing.assert_array_equal(y, x)  # p = 0: an exact copy
    np.testing.assert_array_equal(F.dropout_forward(x, 0.5, 1), R.dropout_forward(x, 0.5, 1).astype(np.float32))


@pytest.mark.parametrize(
    "call,exc,match",
    [
        (
            lambda x: F.dropout_forward(x.astype(np.float64), 0.5, 1),
            TypeError,
            r"x: expected a float32 array, got float64",
        ),
        (lambda x: F.dropout_forward(x[::2], 0.5, 1), ValueError, r"x: array must be C-contiguous"),
        (lambda x: F.dropout_forward([1.0, 2.0], 0.5, 1), TypeError, r"^x: "),
        (lambda x: F.dropout_backward(x.astype(np.float16), 0.5, 1), TypeError, r"dy: unsupported dtype float16"),
        (lambda x: F.dropout_forward(x, -0.1, 1), ValueError, r"p: dropout probability has to be between 0 and 1"),
        (lambda x: F.dropout_forward(x, 1.0000001, 1), ValueError, r"^p: "),
        (lambda x: F.dropout_backward(x, float("nan"), 1), ValueError, r"^p: "),
        (lambda x: F.dropout_forward(x, "half", 1), TypeError, r"p: expected a real number, got str"),
        (lambda x: F.dropout_forward(x, 0.5, -1), ValueError, r"seed: must be an integer in \[0, 2\^64\)"),
        (lambda x: F.dropout_forward(x, 0.5, 2**64), ValueError, r"^seed: "),
        (lambda x: F.dropout_forward(x, 0.5, 1.5), TypeError, r"seed: expected an integer, got float"),
        (lambda x: F.dropout_forward(x, 0.5, True), TypeError, r"^seed: "),
        (lambda x: F.dropout_forward(x, 0.5, 1, offset=-3), ValueError, r"^offset: "),
        (
            lambda x: F.dropout_forward(x, 0.5, 1, offset=2**64 - 15),
            ValueError,
            r"offset: offset \+ numel must not exceed",
        ),
        (lambda x: F.dropout_backward(x, 0.5, 1, offset="0"), TypeError, r"^offset: "),
        (lambda x: F.dropout_mask((3, -1), 0.5, 1), ValueError, r"shape\[1\]: must be an integer"),
        (lambda x: F.dropout_mask((3, 2.0), 0.5, 1), TypeError, r"shape\[1\]: expected an integer"),
        (lambda x: F.dropout_mask(4, 2.0, 1), ValueError, r"^p: "),
        (lambda x: F.dropout_mask(4, 0.5, 1, device="tpu"), ValueError, r"^device: "),
        (lambda x: _C.philox4x32_10([0, 0, 0], [0, 0]), ValueError, r"counter: expected 4 words, got 3"),
        (
            lambda x: _C.philox4x32_10([0, 0, 0, 0], [0, 2**32]),
            ValueError,
            r"key\[1\]: must be an integer in \[0, 2\^32\)",
        ),
        (lambda x: _C.philox4x32_10([0, -1, 0, 0], [0, 0]), ValueError, r"counter\[1\]: "),
    ],
)
def test_bad_arguments(call, exc, match):
    with pytest.raises(exc, match=match):
        call(np.ones(16, np.float32))


def test_gpu_mask_without_gpu_is_an_error():
    if fastopt.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(RuntimeError):
        F.dropout_mask(4, 0.5, 1, device="cuda")
