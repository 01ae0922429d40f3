"""float64 NumPy reference of the activation family (torch.nn.functional semantics).

relu keeps NaN (torch's clamp_min propagates it) and the sign of -0.0. The gradients are taken
with respect to the input x, with torch's tests: relu's is threshold_backward(dy, y, 0), i.e. 0
where x <= 0 and dy elsewhere, NaN x included; leaky_relu's is dy where x > 0, else dy * slope.
"""
import numpy as np

__all__ = ["relu_forward", "relu_backward", "leaky_relu_forward", "leaky_relu_backward"]


def relu_forward(x):
    x = np.asarray(x, np.float64)
    return np.where(x < 0, 0.0, x)


def relu_backward(dy, x):
    return np.where(np.asarray(x) <= 0, 0.0, np.asarray(dy, np.float64))


def leaky_relu_forward(x, negative_slope=0.01):
    x = np.asarray(x, np.float64)
    return np.where(x > 0, x, x * negative_slope)


def leaky_relu_backward(dy, x, negative_slope=0.01):
    dy = np.asarray(dy, np.float64)
    return np.where(np.asarray(x) > 0, dy, dy * negative_slope)
