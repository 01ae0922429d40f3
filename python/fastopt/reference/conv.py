"""float64 NumPy reference of conv2d (torch.nn.functional.conv2d semantics), NCHW.

The forward and weight-grad are one GEMM each over an im2col view (numpy.lib.stride_tricks
.as_strided on the zero-padded input: no copy until einsum needs one); the data-grad forms the
column gradient with one GEMM and folds it back with col2im written as a gather over the R x S
kernel taps. conv2d_loop is the plain definition, kept to check the fast forms on small shapes.
"""

import numpy as np
from numpy.lib.stride_tricks import as_strided

__all__ = ["conv2d_forward", "conv2d_backward", "conv2d_loop", "pair", "output_size"]


def pair(v, name):
    """(h, w) from an int or a pair of ints."""
    if isinstance(v, (int, np.integer)):
        return (int(v), int(v))
    v = tuple(v) if isinstance(v, (tuple, list)) else (v,)
    if len(v) != 2 or not all(isinstance(u, (int, np.integer)) for u in v):
        raise ValueError(f"{name}: expected an int or a pair of ints, got {v!r}")
    return (int(v[0]), int(v[1]))


def output_size(h, w, r, s, stride, padding, dilation):
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    return (h + 2 * ph - dh * (r - 1) - 1) // sh + 1, (w + 2 * pw - dw * (s - 1) - 1) // sw + 1


def _columns(x, r, s, p, q, stride, padding, dilation):
    """View (N, C, R, S, P, Q) of the zero-padded x: cols[n, c, i, j, a, b] = x[n, c, a*sh-ph+i*dh, b*sw-pw+j*dw]."""
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    n, c = xp.shape[:2]
    s0, s1, s2, s3 = xp.strides
    return as_strided(xp, (n, c, r, s, p, q), (s0, s1, s2 * dh, s3 * dw, s2 * sh, s3 * sw), writeable=False)


def _grouped(x, w, groups):
    n, c = x.shape[:2]
    k = w.shape[0]
    return c // groups, k // groups


def conv2d_forward(x, w, b=None, stride=1, padding=0, dilation=1, groups=1):
    x = np.asarray(x, np.float64)
    w = np.asarray(w, np.float64)
    stride, padding, dilation = pair(stride, "stride"), pair(padding, "padding"), pair(dilation, "dilation")
    n, c, h, wd = x.shape
    k, cg, r, s = w.shape
    p, q = output_size(h, wd, r, s, stride, padding, dilation)
    cg, kg = _grouped(x, w, groups)
    cols = _columns(x, r, s, p, q, stride, padding, dilation)
    y = np.empty((n, k, p, q))
    for g in range(groups):
        y[:, g * kg : (g + 1) * kg] = np.einsum(
            "ncijab,kcij->nkab", cols[:, g * cg : (g + 1) * cg], w[g * kg : (g + 1) * kg], optimize=True
        )
    if b is not None:
        y += np.asarray(b, np.float64)[None, :, None, None]
    return y


def conv2d_backward(dy, x, w, stride=1, padding=0, dilation=1, groups=1, need=(True, True, True)):
    dy = np.asarray(dy, np.float64)
    x = np.asarray(x, np.float64)
    w = np.asarray(w, np.float64)
    stride, padding, dilation = pair(stride, "stride"), pair(padding, "padding"), pair(dilation, "dilation")
    (sh, sw), (ph, pw), (dh, ddw) = stride, padding, dilation
    n, c, h, wd = x.shape
    k, _, r, s = w.shape
    p, q = dy.shape[2:]
    cg, kg = _grouped(x, w, groups)
    dx = dw = db = None
    if need[0]:
        dxp = np.zeros((n, c, h + 2 * ph, wd + 2 * pw))
        for g in range(groups):
            # dcols[n, c, i, j, a, b]: the gradient of every im2col entry; then scatter-add by tap,
            # each tap being a disjoint strided slice, so the fold is R*S vectorized additions.
            dcols = np.einsum(
                "nkab,kcij->ncijab", dy[:, g * kg : (g + 1) * kg], w[g * kg : (g + 1) * kg], optimize=True
            )
            for i in range(r):
                for j in range(s):
                    dxp[
                        :,
                        g * cg : (g + 1) * cg,
                        i * dh : i * dh + sh * (p - 1) + 1 : sh,
                        j * ddw : j * ddw + sw * (q - 1) + 1 : sw,
                    ] += dcols[:, :, i, j]
        dx = dxp[:, :, ph : ph + h, pw : pw + wd].copy()
    if need[1]:
        cols = _columns(x, r, s, p, q, stride, padding, dilation)
        dw = np.empty(w.shape)
        for g in range(groups):
            dw[g * kg : (g + 1) * kg] = np.einsum(
                "nkab,ncijab->kcij", dy[:, g * kg : (g + 1) * kg], cols[:, g * cg : (g + 1) * cg], optimize=True
            )
    if need[2]:
        db = dy.sum(axis=(0, 2, 3))
    return dx, dw, db


def conv2d_loop(x, w, b=None, stride=1, padding=0, dilation=1, groups=1):
    """The definition, element by element (small shapes only)."""
    x = np.asarray(x, np.float64)
    w = np.asarray(w, np.float64)
    (sh, sw), (ph, pw), (dh, dw) = pair(stride, "stride"), pair(padding, "padding"), pair(dilation, "dilation")
    n, c, h, wd = x.shape
    k, cg, r, s = w.shape
    p, q = output_size(h, wd, r, s, (sh, sw), (ph, pw), (dh, dw))
    kg = k // groups
    y = np.zeros((n, k, p, q))
    for ni in range(n):
        for ki in range(k):
            g = ki // kg
            for a in range(p):
                for bb in range(q):
                    acc = 0.0 if b is None else float(b[ki])
                    for ci in range(cg):
                        for i in range(r):
                            for j in range(s):
                                hh, ww = a * sh - ph + i * dh, bb * sw - pw + j * dw
                                if 0 <= hh < h and 0 <= ww < wd:
                                    acc += x[ni, g * cg + ci, hh, ww] * w[ki, ci, i, j]
                    y[ni, ki, a, bb] = acc
    return y
