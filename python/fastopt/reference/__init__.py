"""fastopt.reference: float64 NumPy versions of fastopt's update rules, norms and
learning-rate schedules, written to be read. The tests use them as the oracle."""
from . import norms, optim, schedules

__all__ = ["norms", "optim", "schedules"]
