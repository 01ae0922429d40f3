"""float64 NumPy reference of the activation family (torch.nn.functional semantics).

relu keeps NaN (torch's clamp_min propagates it) and the sign of -0.0. The gradients are taken
with respect to the input x, with torch's tests: relu's is threshold_backward(dy, y, 0), i.e. 0
where x <= 0 and dy elsewhere, NaN x included; leaky_relu's is dy where x > 0, else dy * slope.
elu tests x <= 0 as torch does (a NaN x passes dy backward); alpha is rounded to float32 first, as
the kernels use it. gelu is the exact erf form. residual_add and axpby are the pointwise maps of
the containers and optimizers (fastopt.functional.activation).
"""

import math

import numpy as np

from .dropout import dropout_mask, scale

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
    "axpby",
]


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


def tanh_forward(x):
    return np.tanh(np.asarray(x, np.float64))


def tanh_backward(dy, x):
    t = np.tanh(np.asarray(x, np.float64))
    return np.asarray(dy, np.float64) * (1.0 - t * t)


def sigmoid_forward(x):
    x = np.asarray(x, np.float64)
    with np.errstate(over="ignore"):  # exp(-x) = inf for x < -709 gives the right 0
        return 1.0 / (1.0 + np.exp(-x))


def sigmoid_backward(dy, x):
    s = sigmoid_forward(x)
    return np.asarray(dy, np.float64) * s * (1.0 - s)


def _alpha(alpha):
    return float(np.float32(alpha))


def elu_forward(x, alpha=1.0):
    x = np.asarray(x, np.float64)
    return np.where(x <= 0, _alpha(alpha) * np.expm1(np.minimum(x, 0.0)), x)


def elu_backward(dy, x, alpha=1.0):
    x, dy = np.asarray(x, np.float64), np.asarray(dy, np.float64)
    return np.where(x <= 0, dy * _alpha(alpha) * np.exp(np.minimum(x, 0.0)), dy)


_erf = np.vectorize(math.erf, otypes=[np.float64])


def _cdf(x):
    return 0.5 * (1.0 + _erf(x / math.sqrt(2.0)))


def gelu_forward(x):
    x = np.asarray(x, np.float64)
    return x * _cdf(x)


def gelu_backward(dy, x):
    x = np.asarray(x, np.float64)
    pdf = np.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)
    return np.asarray(dy, np.float64) * (_cdf(x) + x * pdf)


def residual_add(body, shortcut=None, p=0.0, seed=0, offset=0):
    """y = shortcut + body * f_n, f_n = keep_n ? float32 1 / (1 - p) : 0 with dropout's rule drawn
    once per sample (word offset + n)."""
    body = np.asarray(body, np.float64)
    n = body.shape[0]
    keep = dropout_mask((n,), p, seed, offset) if p > 0 else np.ones(n, bool)
    f = np.where(keep, np.float64(scale(p)) if p > 0 else 1.0, 0.0).reshape((n,) + (1,) * (body.ndim - 1))
    y = body * f
    return y if shortcut is None else np.asarray(shortcut, np.float64) + y


def axpby(y, x, a, b):
    """a * x + b * y, a term with a zero coefficient left out (BLAS's convention)."""
    out = np.zeros(np.shape(y))
    if a != 0:
        out = out + a * np.asarray(x, np.float64)
    if b != 0:
        out = out + b * np.asarray(y, np.float64)
    return out
