"""Pointwise ops, forward and backward: the activations (torch.nn.functional.relu, leaky_relu,
tanh, sigmoid, elu, gelu semantics), the residual add with drop path, and axpby_.

Each call returns a new array of the input's dtype on its device (NumPy on the CPU, fastopt.DeviceArray
on the GPU). The backward passes take the forward input x, not its output. NaN inputs propagate in
the forward pass; -0.0 stays -0.0 through relu, as in torch, so outputs match torch bit for bit.

Every op but axpby_ also takes bfloat16 on the CPU (fastopt.bfloat16 arrays or torch.bfloat16
tensors; dy and x, body and shortcut of one dtype) and returns bfloat16: fp32 math, one rounding.
"""

from __future__ import annotations

from .. import _C
from .._args import finite, real, stream as _stream, uint64
from .._types import Array, Arrays, Stream

__all__ = [
    "relu_forward",
    "relu_backward",
    "leaky_relu_forward",
    "leaky_relu_backward",
    "tanh_forward",
    "tanh_backward",
    "sigmoid_forward",
    "sigmoid_backward",
    "elu_forward",
    "elu_backward",
    "gelu_forward",
    "gelu_backward",
    "residual_add",
    "axpby_",
    "cast_",
]


def relu_forward(x: Array, stream: Stream = 0) -> Array:
    """y = max(x, 0) elementwise; NaN stays NaN. Any shape, including empty."""
    return _C.relu_forward(x, _stream(stream))


def relu_backward(dy: Array, x: Array, stream: Stream = 0) -> Array:
    """dx = 0 where x <= 0, else dy (torch's threshold_backward: NaN x passes dy); dy, x of one shape."""
    return _C.relu_backward(dy, x, _stream(stream))


def leaky_relu_forward(x: Array, negative_slope: float = 0.01, stream: Stream = 0) -> Array:
    """y = x if x > 0 else x * negative_slope, the slope rounded to float32 as torch does."""
    return _C.leaky_relu_forward(x, finite(negative_slope, "negative_slope"), _stream(stream))


def leaky_relu_backward(dy: Array, x: Array, negative_slope: float = 0.01, stream: Stream = 0) -> Array:
    """dx = dy if x > 0 else dy * negative_slope."""
    return _C.leaky_relu_backward(dy, x, finite(negative_slope, "negative_slope"), _stream(stream))


# The smooth activations: libm's (host) or CUDA's (device) float functions, each within 2 ulps,
# so CPU and GPU agree to a few ulps, not bit for bit. The backward passes take x.
def tanh_forward(x: Array, stream: Stream = 0) -> Array:
    """y = tanh(x)."""
    return _C.smooth_forward(_C.Smooth.tanh, x, 1.0, _stream(stream))


def tanh_backward(dy: Array, x: Array, stream: Stream = 0) -> Array:
    """dx = dy * (1 - tanh(x)^2)."""
    return _C.smooth_backward(_C.Smooth.tanh, dy, x, 1.0, _stream(stream))


def sigmoid_forward(x: Array, stream: Stream = 0) -> Array:
    """y = 1 / (1 + exp(-x))."""
    return _C.smooth_forward(_C.Smooth.sigmoid, x, 1.0, _stream(stream))


def sigmoid_backward(dy: Array, x: Array, stream: Stream = 0) -> Array:
    """dx = dy * s (1 - s), s = sigmoid(x)."""
    return _C.smooth_backward(_C.Smooth.sigmoid, dy, x, 1.0, _stream(stream))


def elu_forward(x: Array, alpha: float = 1.0, stream: Stream = 0) -> Array:
    """y = x if x > 0 else alpha * (exp(x) - 1) (torch's test x <= 0; alpha rounded to float32)."""
    return _C.smooth_forward(_C.Smooth.elu, x, finite(alpha, "alpha"), _stream(stream))


def elu_backward(dy: Array, x: Array, alpha: float = 1.0, stream: Stream = 0) -> Array:
    """dx = dy if x > 0 else dy * alpha * exp(x) (a NaN x passes dy, as in torch)."""
    return _C.smooth_backward(_C.Smooth.elu, dy, x, finite(alpha, "alpha"), _stream(stream))


def gelu_forward(x: Array, stream: Stream = 0) -> Array:
    """y = x * Phi(x) = x / 2 * (1 + erf(x / sqrt(2))), the exact form (torch's approximate='none')."""
    return _C.smooth_forward(_C.Smooth.gelu, x, 1.0, _stream(stream))


def gelu_backward(dy: Array, x: Array, stream: Stream = 0) -> Array:
    """dx = dy * (Phi(x) + x * phi(x)), phi the standard normal density."""
    return _C.smooth_backward(_C.Smooth.gelu, dy, x, 1.0, _stream(stream))


def residual_add(
    body: Array, shortcut: Array | None = None, p: float = 0.0, seed: int = 0, offset: int = 0, stream: Stream = 0
) -> Array:
    """y = shortcut + body * f_n for every sample n (the first dim): a new array on body's device.

    Drop path (stochastic depth): f_n = 1 / (1 - p) (as float32, dropout's scale) if sample n is
    kept, else 0, kept iff Philox word offset + n under `seed` is below floor((1 - p) * 2^32),
    dropout's rule (fastopt.functional.dropout) with one draw per sample. p = 0 is the plain sum.
    shortcut None gives body * f_n, which is also the backward of the body branch (the same p,
    seed and offset regenerate the decisions). A caller drawing again advances offset by N.
    """
    p = real(p, "p", 0.0, 1.0)
    seed, offset = uint64(seed, "seed"), uint64(offset, "offset")
    rows = body.shape[0] if len(body.shape) else 0
    if offset + rows > 2**64:
        raise ValueError("offset: offset + N must not exceed 2^64 (the stream would wrap around)")
    return _C.residual_add(body, shortcut, p, seed, offset, _stream(stream))


def axpby_(ys: Arrays, xs: Arrays, a: float, b: float, stream: Stream = 0) -> None:
    """ys[i] = a * xs[i] + b * ys[i] in place, for one array or lists of them, in one native call.

    A term whose coefficient is 0 is not read (BLAS's convention): b = 0 overwrites ys even where
    they hold NaN, a = b = 0 zeroes them. xs[i] may be ys[i] itself (a scale in place); no other
    memory may be shared. Weight averaging (avg = d * avg + (1 - d) * w), gradient accumulation
    (g += dw) and zeroing are this call.
    """
    single = hasattr(ys, "shape")
    ys, xs = ([ys], [xs]) if single else (list(ys), list(xs))
    _C.axpby_(ys, xs, real(a, "a"), real(b, "b"), _stream(stream))


def cast_(ys: Arrays, xs: Arrays, stream: Stream = 0) -> None:
    """ys[i] = xs[i] converted between float32 and bfloat16, in place, for every pair: fp32 ->
    bf16 rounds to nearest even (NaN stays NaN, as ml_dtypes and torch), bf16 -> fp32 is exact.
    Each pair shares a device and an element count and differs in dtype; one call covers all of
    them (the bf16 compute copies of a network's fp32 master weights, made every forward)."""
    _C.cast_(ys, xs, _stream(stream))
