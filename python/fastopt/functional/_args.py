"""Argument coercion shared by the functional wrappers: errors name the argument, and nothing is
converted that would hide a mistake (a bool is not a number here)."""
import operator


def integer(v, name):
    if isinstance(v, bool):
        raise TypeError(f"{name}: expected an integer, got bool")
    try:
        return operator.index(v)
    except TypeError:
        raise TypeError(f"{name}: expected an integer, got {type(v).__name__}") from None


def uint64(v, name):
    v = integer(v, name)
    if not 0 <= v < 2**64:
        raise ValueError(f"{name}: must be an integer in [0, 2^64), got {v}")
    return v


def number(v, name):
    if isinstance(v, bool):
        raise TypeError(f"{name}: expected a number, got bool")
    try:
        return float(v)
    except (TypeError, ValueError):
        raise TypeError(f"{name}: expected a number, got {type(v).__name__}") from None
