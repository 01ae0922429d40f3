"""fastopt.reference: float64 NumPy versions of every fastopt op, update rule, norm and
learning-rate schedule, written to be read. The tests use them as the oracle."""
from . import conv, dropout, normalization, norms, optim, schedules

__all__ = ["conv", "dropout", "normalization", "norms", "optim", "schedules"]
