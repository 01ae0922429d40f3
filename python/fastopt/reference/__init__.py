"""fastopt.reference: float64 NumPy versions of every fastopt op, update rule, norm and
learning-rate schedule, written to be read. The tests use them as the oracle."""
from . import activation, augment, conv, dropout, linear, loss, normalization, norms, optim, pooling, schedules

__all__ = [
    "activation", "augment", "conv", "dropout", "linear", "loss", "normalization", "norms", "optim", "pooling", "schedules",
]
