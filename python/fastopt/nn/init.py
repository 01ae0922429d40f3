"""Weight initializers with torch.nn.init's definitions (fans, gains, bounds).

Each initializer is a function (rng, shape) -> float32 NumPy array, drawn on the host once and
copied to the parameter buffer, so a seed gives the same network on every device.

fan_in = shape[1] * receptive field, fan_out = shape[0] * receptive field (receptive field =
prod(shape[2:])), as torch computes them for Linear (out, in) and Conv2d (K, C/groups, R, S).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from .._args import choice, finite, integer, shape as _shape
from .._types import Initializer

__all__ = [
    "calculate_gain",
    "fans",
    "xavier_normal",
    "xavier_uniform",
    "kaiming_normal",
    "kaiming_uniform",
    "lecun_normal",
    "lecun_uniform",
    "constant",
    "zeros",
    "ones",
]


_GAINS = ("linear", "conv1d", "conv2d", "conv3d", "sigmoid", "identity", "tanh", "relu", "leaky_relu", "selu")


def calculate_gain(nonlinearity: str, param: float | None = None) -> float:
    """The recommended gain for an activation, torch.nn.init.calculate_gain's table:
    linear/conv/sigmoid 1, tanh 5/3, relu sqrt(2), leaky_relu sqrt(2 / (1 + slope^2)) (slope
    default 0.01), selu 3/4."""
    choice(nonlinearity, "nonlinearity", _GAINS)
    if nonlinearity in ("linear", "conv1d", "conv2d", "conv3d", "sigmoid", "identity"):
        return 1.0
    if nonlinearity == "tanh":
        return 5.0 / 3.0
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "leaky_relu":
        slope = 0.01 if param is None else finite(param, "param")
        return math.sqrt(2.0 / (1.0 + slope * slope))
    return 0.75  # selu


def fans(shape: Sequence[int]) -> tuple[int, int]:
    """(fan_in, fan_out) of a weight shaped (out, in, *kernel)."""
    shape = _shape(shape, "shape", 0, ints_ok=False)
    if len(shape) < 2:
        raise ValueError(f"shape: fans need at least 2 dimensions, got {tuple(shape)}")
    receptive = int(np.prod(shape[2:])) if len(shape) > 2 else 1
    return shape[1] * receptive, shape[0] * receptive


def _fan(shape, mode):
    fan_in, fan_out = fans(shape)
    return fan_in if mode == "fan_in" else fan_out


def _gain(gain):
    return finite(gain, "gain")


def _normal(rng, shape, std):
    return (rng.standard_normal(shape) * std).astype(np.float32)


def _uniform(rng, shape, bound):
    return rng.uniform(-bound, bound, shape).astype(np.float32)


def xavier_normal(gain: float = 1.0) -> Initializer:
    """Glorot normal: std = gain * sqrt(2 / (fan_in + fan_out))."""
    gain = _gain(gain)
    return lambda rng, shape: _normal(rng, shape, gain * math.sqrt(2.0 / sum(fans(shape))))


def xavier_uniform(gain: float = 1.0) -> Initializer:
    """Glorot uniform: U(-a, a), a = gain * sqrt(6 / (fan_in + fan_out))."""
    gain = _gain(gain)
    return lambda rng, shape: _uniform(rng, shape, gain * math.sqrt(6.0 / sum(fans(shape))))


def kaiming_normal(a: float = 0.0, mode: str = "fan_in", nonlinearity: str = "leaky_relu") -> Initializer:
    """He normal: std = gain / sqrt(fan), gain = calculate_gain(nonlinearity, a) (torch's defaults)."""
    gain, mode = calculate_gain(nonlinearity, finite(a, "a")), choice(mode, "mode", ("fan_in", "fan_out"))
    return lambda rng, shape: _normal(rng, shape, gain / math.sqrt(_fan(shape, mode)))


def kaiming_uniform(a: float = 0.0, mode: str = "fan_in", nonlinearity: str = "leaky_relu") -> Initializer:
    """He uniform: U(-b, b), b = gain * sqrt(3 / fan). With a = sqrt(5) this is the default
    initialization of torch's Linear and Conv2d weights."""
    gain, mode = calculate_gain(nonlinearity, finite(a, "a")), choice(mode, "mode", ("fan_in", "fan_out"))
    return lambda rng, shape: _uniform(rng, shape, gain * math.sqrt(3.0 / _fan(shape, mode)))


def lecun_normal() -> Initializer:
    """LeCun normal: std = 1 / sqrt(fan_in)."""
    return lambda rng, shape: _normal(rng, shape, 1.0 / math.sqrt(fans(shape)[0]))


def lecun_uniform() -> Initializer:
    """LeCun uniform: U(-b, b), b = sqrt(3 / fan_in)."""
    return lambda rng, shape: _uniform(rng, shape, math.sqrt(3.0 / fans(shape)[0]))


def fan_in_uniform(fan_in: int) -> Initializer:
    """U(-1/sqrt(fan_in), 1/sqrt(fan_in)): torch's default bias initialization."""
    fan_in = integer(fan_in, "fan_in", 0)
    bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
    return lambda rng, shape: _uniform(rng, shape, bound)


def constant(value: float) -> Initializer:
    value = finite(value, "value")
    return lambda rng, shape: np.full(shape, value, np.float32)


def zeros() -> Initializer:
    return constant(0.0)


def ones() -> Initializer:
    return constant(1.0)
