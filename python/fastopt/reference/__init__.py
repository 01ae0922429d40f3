"""fastopt.reference: float64 NumPy versions of every fastopt op, update rule, norm and
learning-rate schedule, written to be read. The tests use them as the oracle. bfloat16 inputs
are taken as they are (widened exactly to float64); reference.bf16 rounds float inputs to
bfloat16 first and holds fastopt's two ways of storing a result in bfloat16."""

from . import activation, augment, bf16, conv, dropout, linear, loss, normalization, norms, optim, pooling, schedules

__all__ = [
    "activation",
    "augment",
    "bf16",
    "conv",
    "dropout",
    "linear",
    "loss",
    "normalization",
    "norms",
    "optim",
    "pooling",
    "schedules",
]
