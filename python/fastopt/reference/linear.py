"""float64 NumPy reference of the linear layer (torch.nn.functional.linear semantics).

y  = x @ w.T + b        x (N, in), w (out, in), b (out,) or None
dx = dy @ w,   dw = dy.T @ x,   db = dy.sum(0)
"""

import numpy as np

__all__ = ["linear_forward", "linear_backward"]


def linear_forward(x, w, b=None):
    x = np.asarray(x, np.float64)
    w = np.asarray(w, np.float64)
    y = x @ w.T
    if b is not None:
        y += np.asarray(b, np.float64)
    return y


def linear_backward(dy, x, w, need=(True, True, True)):
    dy = np.asarray(dy, np.float64)
    x = np.asarray(x, np.float64)
    w = np.asarray(w, np.float64)
    dx = dy @ w if need[0] else None
    dw = dy.T @ x if need[1] else None
    db = dy.sum(axis=0) if need[2] else None
    return dx, dw, db
