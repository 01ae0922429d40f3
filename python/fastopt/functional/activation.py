"""Pointwise activations, forward and backward (torch.nn.functional.relu / leaky_relu semantics).

Each call returns a new float32 array on the input's device (NumPy on the CPU, fastopt.DeviceArray
on the GPU). The backward passes take the forward input x, not its output. NaN inputs propagate in
the forward pass; -0.0 stays -0.0 through relu, as in torch, so outputs match torch bit for bit.
"""
from .. import _C

__all__ = ["relu_forward", "relu_backward", "leaky_relu_forward", "leaky_relu_backward"]


def _slope(negative_slope):
    try:
        return float(negative_slope)
    except (TypeError, ValueError):
        raise TypeError(f"negative_slope: expected a number, got {type(negative_slope).__name__}") from None


def relu_forward(x, stream=0):
    """y = max(x, 0) elementwise; NaN stays NaN. Any shape, including empty."""
    return _C.relu_forward(x, stream)


def relu_backward(dy, x, stream=0):
    """dx = 0 where x <= 0, else dy (torch's threshold_backward: NaN x passes dy); dy, x of one shape."""
    return _C.relu_backward(dy, x, stream)


def leaky_relu_forward(x, negative_slope=0.01, stream=0):
    """y = x if x > 0 else x * negative_slope, the slope rounded to float32 as torch does."""
    return _C.leaky_relu_forward(x, _slope(negative_slope), stream)


def leaky_relu_backward(dy, x, negative_slope=0.01, stream=0):
    """dx = dy if x > 0 else dy * negative_slope."""
    return _C.leaky_relu_backward(dy, x, _slope(negative_slope), stream)
