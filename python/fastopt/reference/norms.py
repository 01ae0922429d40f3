"""Float64 NumPy gradient norms and clipping (torch.nn.utils semantics)."""

import math

import numpy as np

__all__ = ["vector_norm", "global_norm", "clip_grad_norm", "clip_grad_value"]


def vector_norm(x, norm_type=2.0):
    """The p-norm of all entries of x, as torch.linalg.vector_norm defines it.

        p = inf: max |x_i|     p = -inf: min |x_i|     p = 0: number of x_i != 0
        otherwise (sum |x_i|^p)^(1/p)
    An empty x has norm 0 (for p = -inf too, where torch raises instead).
    """
    a = np.abs(np.asarray(x, dtype=np.float64)).ravel()
    p = float(norm_type)
    if a.size == 0:
        return 0.0
    if p == math.inf:
        return float(a.max())
    if p == -math.inf:
        return float(a.min())
    if p == 0.0:
        return float(np.count_nonzero(a))
    return float(np.sum(a**p) ** (1.0 / p))


def global_norm(grads, norm_type=2.0):
    """torch.nn.utils.get_total_norm: the norm of the vector of per-tensor norms.

    For p > 0 (inf included) this is the p-norm of all gradients concatenated.
    (For p = 0 it counts the tensors with a nonzero entry, as torch's does.)
    An empty list has norm 0.
    """
    if len(grads) == 0:
        return 0.0
    return vector_norm([vector_norm(g, norm_type) for g in grads], norm_type)


def clip_grad_norm(grads, max_norm, norm_type=2.0):
    """Scale all gradients together so their global norm is at most max_norm.

        total = global_norm(grads, p);   coef = min(1, max_norm / (total + 1e-6))
    Returns (list of clipped float64 copies, total).
    """
    total = global_norm(grads, norm_type)
    coef = float(np.minimum(1.0, max_norm / (total + 1e-6)))
    return [np.asarray(g, dtype=np.float64) * coef for g in grads], total


def clip_grad_value(grads, clip_value):
    """Clamp every gradient entry to [-clip_value, clip_value]; returns float64 copies."""
    c = float(clip_value)
    return [np.clip(np.asarray(g, dtype=np.float64), -c, c) for g in grads]
