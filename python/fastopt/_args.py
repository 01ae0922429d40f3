"""Argument checks shared by every public entry point (functional ops, optimizers, schedules, layers).

Each helper returns the plain Python value it checked and raises TypeError for the wrong kind of
value, ValueError for a value out of range, both naming the argument. Nothing is converted that
would hide a mistake: a bool is not a number, a str is not a number, a float is not an integer.
"""

import math
import numbers
import operator

import numpy as np

_BOOLS = (bool, np.bool_)


def _kind(v):
    return type(v).__name__


def _fmt(bound):
    return str(bound) if isinstance(bound, int) else f"{bound:g}"


def _check_interval(v, name, low, high, low_open, high_open, finite=False):
    above = v > low if low_open else v >= low
    below = v < high if high_open else v <= high
    if above and below and not (finite and math.isinf(v)):
        return
    if high == math.inf:
        bound = f"{'>' if low_open else '>='} {_fmt(low)}" if low > -math.inf else ""
    elif low == -math.inf:
        bound = f"{'<' if high_open else '<='} {_fmt(high)}"
    else:
        bound = f"in {'(' if low_open else '['}{_fmt(low)}, {_fmt(high)}{')' if high_open else ']'}"
    if finite and not bound.startswith("in"):
        need = f"be a finite number {bound}".rstrip()
    else:
        need = ("lie " if bound.startswith("in") else "be ") + bound
    raise ValueError(f"{name}: must {need}, got {v!r}")


_INT64 = (-(2**63), 2**63 - 1)


def integer(v, name, low=-math.inf, high=math.inf):
    """A Python or NumPy integer (never a bool or a float) in [low, high], as a Python int.
    Unbounded ends stop at int64's: the native layer takes 64-bit integers, and a bigger one
    would otherwise fail in pybind11's conversion with a message that names no argument."""
    if isinstance(v, _BOOLS) or not isinstance(v, numbers.Integral):
        raise TypeError(f"{name}: expected an integer, got {_kind(v)}")
    v = operator.index(v)
    _check_interval(v, name, low, high, False, False)
    if not _INT64[0] <= v <= _INT64[1]:
        raise ValueError(f"{name}: must be a 64-bit integer (in [-2^63, 2^63)), got {v}")
    return v


def uint64(v, name):
    if isinstance(v, _BOOLS) or not isinstance(v, numbers.Integral):
        raise TypeError(f"{name}: expected an integer, got {_kind(v)}")
    v = operator.index(v)
    if not 0 <= v < 2**64:
        raise ValueError(f"{name}: must be an integer in [0, 2^64), got {v}")
    return v


def real(v, name, low=-math.inf, high=math.inf, low_open=False, high_open=False):
    """A real number (Python or NumPy float or integer; never a bool or a str) in the interval, as a
    Python float. Without bounds any value passes, NaN too; with bounds NaN lies in none, and +-inf
    only in a closed infinite end."""
    return _real(v, name, low, high, low_open, high_open, False)


def finite(v, name, low=-math.inf, high=math.inf, low_open=False, high_open=False):
    """real() that also refuses +-inf."""
    return _real(v, name, low, high, low_open, high_open, True)


def _real(v, name, low, high, low_open, high_open, finite):
    if isinstance(v, _BOOLS) or not isinstance(v, numbers.Real):
        raise TypeError(f"{name}: expected a real number, got {_kind(v)}")
    v = float(v)
    if finite or low > -math.inf or high < math.inf:
        _check_interval(v, name, low, high, low_open, high_open, finite)
    return v


def boolean(v, name):
    if not isinstance(v, _BOOLS):
        raise TypeError(f"{name}: expected a bool, got {_kind(v)}")
    return bool(v)


def shape(v, name, low=-math.inf, ints_ok=True):
    """A tuple of integers >= low from a tuple or list of them (or one integer when ints_ok)."""
    if ints_ok and isinstance(v, numbers.Integral) and not isinstance(v, _BOOLS):
        v = (v,)
    if not isinstance(v, (tuple, list)):
        raise TypeError(f"{name}: expected {'an int or ' if ints_ok else ''}a tuple of ints, got {_kind(v)}")
    return tuple(integer(d, f"{name}[{i}]", low) for i, d in enumerate(v))


def pair(v, name, low=-math.inf):
    """(h, w) from an int or a pair of ints, each >= low."""
    if not isinstance(v, (tuple, list)):
        return (integer(v, name, low),) * 2
    if len(v) != 2:
        raise ValueError(f"{name}: expected an int or a pair of ints, got {tuple(v)!r}")
    return tuple(integer(d, name, low) for d in v)


def flags(v, name, names):
    """One bool per entry of `names` (the `need` masks of the backward passes)."""
    what = f"{len(names)} flags ({', '.join(names)})"
    if not isinstance(v, (tuple, list)):
        raise TypeError(f"{name}: expected a tuple of {what}, got {_kind(v)}")
    if len(v) != len(names):
        raise ValueError(f"{name}: expected {what}, got {tuple(v)!r}")
    return tuple(boolean(f, f"{name}[{i}]") for i, f in enumerate(v))


def choice(v, name, options):
    if not isinstance(v, str):
        raise TypeError(f"{name}: expected one of {', '.join(map(repr, options))}, got {_kind(v)}")
    if v not in options:
        raise ValueError(f"{name}: expected one of {', '.join(map(repr, options))}, got {v!r}")
    return v


def layout(v):
    """An image op's memory layout: "nchw" or "nhwc" (channels_last)."""
    return choice(v, "layout", ("nchw", "nhwc"))


def stream(v):
    """A CUDA stream handle: an integer >= 0 (0 is the legacy default stream)."""
    return uint64(v, "stream")
