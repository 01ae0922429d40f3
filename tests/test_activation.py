"""ReLU and LeakyReLU, forward and backward, on every backend, against the float64 reference and
torch.

Tolerances: relu (both passes) and relu/leaky backward selections are exact. leaky_relu computes
x * float32(slope) in float32, as torch does: fastopt equals that float32 product bit for bit, and
is within 2^-23 relative of the float64 x * slope (2^-24 for the slope's float32 rounding, 2^-24
for the product's).
"""

import numpy as np
import pytest
from conftest import fetch, put, torch_with_cuda

import fastopt
from fastopt import functional as F
from fastopt.reference import activation as R

SHAPES = [(0,), (1,), (7,), (2, 0, 3), (3, 5, 7, 9), (2, 3, 13, 11), (4099,), (32768 * 2 + 13,)]
SLOPES = [0.01, 0.2, 0.0, -0.5, 1.5, 1 / 3]


def _inputs(rng, shape):
    """Normal values with zeros, -0.0, NaN and +-inf mixed in (where there is room)."""
    x = rng.standard_normal(shape).astype(np.float32)
    flat = x.reshape(-1)
    special = np.array([0.0, -0.0, np.nan, np.inf, -np.inf, -np.nan], np.float32)
    k = min(flat.size, special.size)
    pos = rng.choice(flat.size, size=k, replace=False) if flat.size else np.zeros(0, int)
    flat[pos] = special[:k]
    return x


def _same_bits(a, b):
    """Bit-equal, signed zeros included, except NaN payloads: a GPU's arithmetic returns the one
    canonical NaN (0x7fffffff) where the CPU passes the input's sign and payload on."""
    assert a.dtype == b.dtype == np.float32 and a.shape == b.shape
    np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
    keep = ~np.isnan(a)
    np.testing.assert_array_equal(a[keep].view(np.int32), b[keep].view(np.int32))


@pytest.mark.parametrize("shape", SHAPES)
def test_relu_forward_backward(backend, rng, shape):
    x = _inputs(rng, shape)
    dy = rng.standard_normal(shape).astype(np.float32)
    y = fetch(F.relu_forward(put(x, backend)))
    np.testing.assert_array_equal(y, R.relu_forward(x))  # exact; NaN where x is NaN
    _same_bits(y, np.where(x < 0, np.float32(0), x))  # keeps -0.0, as torch's clamp_min
    dx = fetch(F.relu_backward(put(dy, backend), put(x, backend)))
    assert dx.dtype == np.float32 and dx.shape == shape
    np.testing.assert_array_equal(dx, R.relu_backward(dy, x))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("slope", SLOPES)
def test_leaky_relu_forward_backward(backend, rng, shape, slope):
    x = _inputs(rng, shape)
    dy = rng.standard_normal(shape).astype(np.float32)
    s32 = np.float32(slope)
    y = fetch(F.leaky_relu_forward(put(x, backend), slope))
    with np.errstate(invalid="ignore"):
        _same_bits(y, np.where(x > 0, x, x * s32))
        np.testing.assert_allclose(y, R.leaky_relu_forward(x, slope), rtol=2**-23, atol=0)
    dx = fetch(F.leaky_relu_backward(put(dy, backend), put(x, backend), slope))
    _same_bits(dx, np.where(x > 0, dy, dy * s32))
    np.testing.assert_allclose(dx, R.leaky_relu_backward(dy, x, slope), rtol=2**-23, atol=0)


def test_default_slope_is_torchs(backend, rng):
    x = rng.standard_normal(1000).astype(np.float32)
    np.testing.assert_array_equal(
        fetch(F.leaky_relu_forward(put(x, backend))), np.where(x > 0, x, x * np.float32(0.01))
    )


def test_nan_propagation(backend):
    x = np.array([np.nan, -np.nan, 1.0, -1.0], np.float32)
    dy = np.full(4, 2.0, np.float32)
    assert np.isnan(fetch(F.relu_forward(put(x, backend)))[:2]).all()
    assert np.isnan(fetch(F.leaky_relu_forward(put(x, backend), 0.1))[:2]).all()
    # As in torch: relu's backward (threshold_backward, y <= 0 ? 0 : dy) passes dy at NaN, while
    # leaky_relu's (x > 0 ? dy : dy * slope) scales it.
    np.testing.assert_array_equal(fetch(F.relu_backward(put(dy, backend), put(x, backend))), [2, 2, 2, 0])
    np.testing.assert_array_equal(fetch(F.leaky_relu_backward(put(dy, backend), put(x, backend), 0.5)), [1, 1, 2, 1])
    # A NaN gradient stays NaN where it passes, and is cut where relu blocks it.
    g = np.array([np.nan] * 4, np.float32)
    got = fetch(F.relu_backward(put(g, backend), put(x, backend)))
    np.testing.assert_array_equal(np.isnan(got), [True, True, True, False])


@pytest.mark.parametrize("slope", [0.01, 0.2, -0.3])
def test_matches_torch_bit_for_bit(rng, slope):
    torch = pytest.importorskip("torch")
    x = _inputs(rng, (3, 5, 7, 9))
    dy = rng.standard_normal(x.shape).astype(np.float32)
    tx = torch.from_numpy(x).requires_grad_()
    ty = torch.relu(tx)
    ty.backward(torch.from_numpy(dy))
    _same_bits(F.relu_forward(x), ty.detach().numpy())
    _same_bits(F.relu_backward(dy, x), tx.grad.numpy())
    tx = torch.from_numpy(x).requires_grad_()
    ty = torch.nn.functional.leaky_relu(tx, slope)
    ty.backward(torch.from_numpy(dy))
    _same_bits(F.leaky_relu_forward(x, slope), ty.detach().numpy())
    _same_bits(F.leaky_relu_backward(dy, x, slope), tx.grad.numpy())


def test_torch_tensors_are_accepted(rng):
    torch = pytest.importorskip("torch")
    x = rng.standard_normal((4, 6)).astype(np.float32)
    np.testing.assert_array_equal(F.relu_forward(torch.from_numpy(x)), R.relu_forward(x))


def test_inputs_untouched_and_read_only_ok(rng):
    x = rng.standard_normal(100).astype(np.float32)
    keep = x.copy()
    x.flags.writeable = False
    y = F.relu_forward(x)
    assert y.flags.writeable and not np.shares_memory(x, y)
    np.testing.assert_array_equal(y, R.relu_forward(x))
    dx = F.leaky_relu_backward(x, x)
    np.testing.assert_array_equal(dx, np.where(x > 0, x, x * np.float32(0.01)))  # dy * slope, in float32
    np.testing.assert_array_equal(x, keep)


def test_zero_dimensional_array():
    y = F.leaky_relu_forward(np.array(-2.0, np.float32), 0.5)
    assert y.shape == () and y == np.float32(-1.0)


@pytest.mark.parametrize(
    "call,exc,match",
    [
        (lambda x: F.relu_forward(x.astype(np.float64)), TypeError, r"x: expected a float32 array, got float64"),
        (lambda x: F.relu_forward(x[:, ::2]), ValueError, r"x: array must be C-contiguous"),
        (lambda x: F.relu_forward([1.0, -1.0]), TypeError, r"^x: "),
        (lambda x: F.relu_forward(x.astype(np.int32)), TypeError, r"^x: expected a float32 array, got int32"),
        (lambda x: F.relu_backward(x.astype(np.float16), x), TypeError, r"dy: unsupported dtype float16"),
        (lambda x: F.relu_backward(x, x.T), ValueError, r"^x: array must be C-contiguous"),
        (lambda x: F.relu_backward(x[:2], x), ValueError, r"dy: expected the shape \(4, 6\) of x, got \(2, 6\)"),
        (lambda x: F.relu_backward(x.reshape(6, 4), x), ValueError, r"^dy: expected the shape"),
        (lambda x: F.relu_backward(None, x), TypeError, r"^dy: "),
        (lambda x: F.leaky_relu_forward(x, "big"), TypeError, r"negative_slope: expected a real number, got str"),
        (lambda x: F.leaky_relu_backward(x, x, None), TypeError, r"^negative_slope: "),
        (lambda x: F.leaky_relu_backward(x.reshape(-1), x), ValueError, r"^dy: expected the shape"),
        (lambda x: F.leaky_relu_backward(x, x.astype(np.float64)), TypeError, r"^x: expected a float32"),
    ],
)
def test_bad_arguments(call, exc, match):
    with pytest.raises(exc, match=match):
        call(np.ones((4, 6), np.float32))


@pytest.mark.gpu
def test_mixed_devices_are_an_error():
    x = np.ones(8, np.float32)
    with pytest.raises(ValueError, match=r"dy is on cuda:0 but x is on cpu"):
        F.relu_backward(fastopt.to_device(x), x)
    with pytest.raises(ValueError, match=r"^dy is on cpu but x is on cuda:0"):
        F.leaky_relu_backward(x, fastopt.to_device(x))


@pytest.mark.gpu
def test_gpu_equals_cpu_on_unaligned_views_and_torch_stream(rng):
    # Views starting 1 float into a buffer take the scalar path; a torch stream is honoured.
    torch = torch_with_cuda()
    x = _inputs(rng, (100003,))
    dy = rng.standard_normal(x.shape).astype(np.float32)
    tx = torch.from_numpy(np.concatenate([[0], x]).astype(np.float32)).cuda()[1:]
    tdy = torch.from_numpy(np.concatenate([[0], dy]).astype(np.float32)).cuda()[1:]
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        y = F.leaky_relu_forward(tx, 0.2, stream=stream.cuda_stream)
        dx = F.relu_backward(tdy, tx, stream=stream.cuda_stream)
    stream.synchronize()
    _same_bits(fetch(y), F.leaky_relu_forward(x, 0.2))
    _same_bits(fetch(dx), F.relu_backward(dy, x))
