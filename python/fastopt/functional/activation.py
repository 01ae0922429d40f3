"""Pointwise activations, forward and backward (torch.nn.functional.relu / leaky_relu semantics).

Each call returns a new float32 array on the input's device (NumPy on the CPU, fastopt.DeviceArray
on the GPU). The backward passes take the forward input x, not its output. NaN inputs propagate in
the forward pass; -0.0 stays -0.0 through relu, as in torch, so outputs match torch bit for bit.
"""
from .. import _C
from .._args import finite, stream as _stream

__all__ = ["relu_forward", "relu_backward", "leaky_relu_forward", "leaky_relu_backward"]


def relu_forward(x, stream=0):
    """y = max(x, 0) elementwise; NaN stays NaN. Any shape, including empty."""
    return _C.relu_forward(x, _stream(stream))


def relu_backward(dy, x, stream=0):
    """dx = 0 where x <= 0, else dy (torch's threshold_backward: NaN x passes dy); dy, x of one shape."""
    return _C.relu_backward(dy, x, _stream(stream))


def leaky_relu_forward(x, negative_slope=0.01, stream=0):
    """y = x if x > 0 else x * negative_slope, the slope rounded to float32 as torch does."""
    return _C.leaky_relu_forward(x, finite(negative_slope, "negative_slope"), _stream(stream))


def leaky_relu_backward(dy, x, negative_slope=0.01, stream=0):
    """dx = dy if x > 0 else dy * negative_slope."""
    return _C.leaky_relu_backward(dy, x, finite(negative_slope, "negative_slope"), _stream(stream))
