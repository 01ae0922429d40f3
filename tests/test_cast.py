"""F.cast_ (float32 <-> bfloat16, in place, over lists of arrays) on every backend, and what it
enables: a precision='bf16' network on the GPU, whose parameter store rounds its fp32 master
weights to bf16 compute copies on the device every forward.

cast_ must give exactly ml_dtypes' (and torch's) rounding, bit for bit: round to nearest even,
ties included, subnormals kept, Inf kept, overflow to Inf, NaN stays NaN; the widening is exact.
"""

import numpy as np
import pytest
from conftest import fetch, put
from ml_dtypes import bfloat16

import fastopt
import fastopt.functional as F
from fastopt import nn


def special_values(rng, n):
    """n float32 values that exercise the rounding: ties (low 16 bits 0x8000, odd and even), just
    above and below them, subnormals, the largest finite values (overflow on rounding up), +-Inf,
    NaN, +-0 and ordinary numbers."""
    bits = rng.integers(0, 2**32, n, dtype=np.uint64).astype(np.uint32)
    tie = (bits & np.uint32(0xFFFF0000)) | np.uint32(0x8000)
    picks = np.concatenate(
        [
            tie,
            tie + np.uint32(1),
            tie - np.uint32(1),
            np.array(
                [
                    0x00000001,
                    0x007FFFFF,
                    0x00008000,
                    0x7F7FFFFF,
                    0xFF7FFFFF,
                    0x7F7F8000,
                    0x7F800000,
                    0xFF800000,
                    0x7FC00000,
                    0xFFC00001,
                    0x00000000,
                    0x80000000,
                ],
                np.uint32,
            ),
        ]
    )
    return np.concatenate([picks.view(np.float32), rng.standard_normal(n).astype(np.float32)])


@pytest.mark.parametrize("n", [1, 7, 1000, 70001])
def test_narrow_and_widen_match_ml_dtypes_bit_for_bit(rng, backend, n):
    x = special_values(rng, n)
    with np.errstate(invalid="ignore"):  # NumPy warns on the NaNs it converts
        want = x.astype(bfloat16)
    y = put(np.zeros(x.size, bfloat16), backend)
    F.cast_([y], [put(x, backend)])
    got = fetch(y)
    nan = np.isnan(want.astype(np.float32))
    assert np.array_equal(np.isnan(got.astype(np.float32)), nan)
    np.testing.assert_array_equal(got.view(np.uint16)[~nan], want.view(np.uint16)[~nan])
    back = put(np.zeros(x.size, np.float32), backend)
    F.cast_([back], [put(want, backend)])
    np.testing.assert_array_equal(fetch(back)[~nan], want.astype(np.float32)[~nan])  # exact


def test_many_pairs_in_one_call(rng, backend):
    xs = [rng.standard_normal(s).astype(np.float32) for s in [(3, 4), (5,), (2, 3, 7)]]
    ys = [put(np.zeros(x.shape, bfloat16), backend) for x in xs]
    F.cast_(ys, [put(x, backend) for x in xs])
    for x, y in zip(xs, ys):
        np.testing.assert_array_equal(fetch(y).view(np.uint16), x.astype(bfloat16).view(np.uint16))


def test_bad_pairs_are_refused(backend):
    x = put(np.ones(4, np.float32), backend)
    with pytest.raises(TypeError, match=r"xs\[0\]: already float32 like ys\[0\]"):
        F.cast_([put(np.zeros(4, np.float32), backend)], [x])
    with pytest.raises(ValueError, match=r"xs\[0\]: expected 3 elements like ys\[0\], got shape \(4,\)"):
        F.cast_([put(np.zeros(3, bfloat16), backend)], [x])
    with pytest.raises(ValueError, match=r"xs: expected 2 arrays \(one per ys\), got 1"):
        F.cast_([put(np.zeros(4, bfloat16), backend)] * 2, [x])
    with pytest.raises(TypeError, match=r"ys\[0\]: unsupported dtype float16"):
        F.cast_([put(np.zeros(4, np.float16), backend)], [x])
    with pytest.raises(TypeError, match=r"xs\[0\]: expected a float32 array, got int32"):
        F.cast_([put(np.zeros(4, bfloat16), backend)], [put(np.ones(4, np.int32), backend)])


@pytest.mark.gpu
def test_bf16_network_on_the_gpu_matches_the_cpu(rng):
    """The same precision='bf16' network on both devices: equal fp32 master weights, bf16 compute
    copies rounded alike (cast_ is bit-exact), so the outputs differ only by the GEMMs' fp32
    summation order before the one rounding to bf16: at most a couple of bf16 ulps (2^-7
    relative), far below what a wrong copy or a missing rounding would give. Then a few steps of
    training lower the loss on the GPU as well."""

    def build(device):
        model = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 10)
        )
        model.build(device, seed=3, precision="bf16")
        return model

    cpu, gpu = build("cpu"), build("cuda")
    x = rng.standard_normal((4, 3, 6, 6)).astype(np.float32).astype(bfloat16)
    want = cpu.forward(x, training=False).astype(np.float32)
    got = fetch(gpu.forward(fastopt.to_device(x), training=False))
    assert got.dtype == bfloat16
    np.testing.assert_allclose(got.astype(np.float32), want, rtol=2**-6, atol=2**-6 * np.abs(want).max())

    opt = fastopt.optim.AdamW(gpu.store.tensors, lr=1e-2)
    y = fastopt.to_device(rng.integers(0, 10, 4).astype(np.int32))
    xd = fastopt.to_device(x)
    losses = []
    for _ in range(5):
        gpu.zero_grad()
        logits = gpu.forward(xd, training=True)
        loss, dlogits = F.softmax_cross_entropy(logits, y)
        gpu.backward(dlogits)
        opt.step(gpu.store.grads)
        losses.append(float(loss))
    assert losses[-1] < losses[0], losses
