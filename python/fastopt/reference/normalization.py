"""Float64 NumPy batch, layer and group normalization (torch.nn.functional semantics).

Statistics are taken in two passes (mean, then mean squared deviation), never as
E[x^2] - E[x]^2. Each *_forward returns (y, mean, rstd) with rstd = 1 / sqrt(var_biased + eps);
each *_backward returns (dx, dweight, dbias) with None for an absent weight.
"""

import numpy as np

__all__ = [
    "batch_norm_forward",
    "batch_norm_backward",
    "layer_norm_forward",
    "layer_norm_backward",
    "group_norm_forward",
    "group_norm_backward",
]


def _f64(a):
    return None if a is None else np.asarray(a, dtype=np.float64)


def _channel_view(x):
    """x (N, C, ...) as (N, C, S)."""
    return x.reshape(x.shape[0], x.shape[1], int(np.prod(x.shape[2:])))


def batch_norm_forward(
    x, gamma, beta, running_mean, running_var, training, momentum=0.1, eps=1e-5, num_batches_tracked=None
):
    """Returns (y, save_mean, save_invstd) and updates running_mean/running_var in place (float64
    arithmetic, stored in their own dtype) when training and they are given."""
    x3 = _channel_view(_f64(x))
    if training:
        count = x3.shape[0] * x3.shape[2]
        mean = x3.mean(axis=(0, 2))
        var = ((x3 - mean[None, :, None]) ** 2).mean(axis=(0, 2))
        if running_mean is not None:
            f = 1.0 / num_batches_tracked if momentum is None else momentum
            running_mean[...] = (1 - f) * _f64(running_mean) + f * mean
            running_var[...] = (1 - f) * _f64(running_var) + f * var * count / (count - 1)
    else:
        mean, var = _f64(running_mean), _f64(running_var)
    invstd = 1.0 / np.sqrt(var + eps)
    y = (x3 - mean[None, :, None]) * invstd[None, :, None]
    if gamma is not None:
        y = y * _f64(gamma)[None, :, None]
    if beta is not None:
        y = y + _f64(beta)[None, :, None]
    return y.reshape(np.shape(x)), mean, invstd


def batch_norm_backward(dy, x, gamma, save_mean, save_invstd, training=True):
    """Gradients of batch_norm_forward; eval mode (training=False) treats mean/invstd as constants."""
    x3, g3 = _channel_view(_f64(x)), _channel_view(_f64(dy))
    mean, invstd = _f64(save_mean)[None, :, None], _f64(save_invstd)[None, :, None]
    w = np.ones(x3.shape[1]) if gamma is None else _f64(gamma)
    xhat = (x3 - mean) * invstd
    dbeta = g3.sum(axis=(0, 2))
    dgamma = (g3 * xhat).sum(axis=(0, 2))
    k = w[None, :, None] * invstd
    if training:
        m = x3.shape[0] * x3.shape[2]
        dx = k * (g3 - dbeta[None, :, None] / m - xhat * dgamma[None, :, None] / m)
    else:
        dx = k * g3
    if gamma is None:
        dgamma = dbeta = None
    return dx.reshape(np.shape(x)), dgamma, dbeta


def _rows_forward(xr, eps):
    """Rows of xr normalized; xr is (R, L)."""
    mean = xr.mean(axis=1)
    var = ((xr - mean[:, None]) ** 2).mean(axis=1)
    rstd = 1.0 / np.sqrt(var + eps)
    return (xr - mean[:, None]) * rstd[:, None], mean, rstd


def _rows_backward(gr, xr, mean, rstd):
    """dx of rows normalized without affine, given the upstream gradient gr of xhat."""
    xhat = (xr - mean[:, None]) * rstd[:, None]
    L = xr.shape[1]
    return rstd[:, None] * (gr - gr.sum(axis=1, keepdims=True) / L - xhat * (gr * xhat).sum(axis=1, keepdims=True) / L)


def layer_norm_forward(x, normalized_shape, weight=None, bias=None, eps=1e-5):
    x = _f64(x)
    normalized_shape = tuple(normalized_shape)
    lead = x.shape[: x.ndim - len(normalized_shape)]
    xhat, mean, rstd = _rows_forward(x.reshape(int(np.prod(lead)), int(np.prod(normalized_shape))), eps)
    y = xhat.reshape(x.shape)
    if weight is not None:
        y = y * _f64(weight)
    if bias is not None:
        y = y + _f64(bias)
    return y, mean.reshape(lead), rstd.reshape(lead)


def layer_norm_backward(dy, x, normalized_shape, mean, rstd, weight=None):
    x, dy = _f64(x), _f64(dy)
    D = int(np.prod(tuple(normalized_shape)))
    xr, gr = x.reshape(-1, D), dy.reshape(-1, D)
    mean, rstd = _f64(mean).reshape(-1), _f64(rstd).reshape(-1)
    w = np.ones(D) if weight is None else _f64(weight).reshape(-1)
    dx = _rows_backward(gr * w, xr, mean, rstd).reshape(x.shape)
    if weight is None:
        return dx, None, None
    xhat = (xr - mean[:, None]) * rstd[:, None]
    shape = tuple(normalized_shape)
    return dx, (gr * xhat).sum(axis=0).reshape(shape), gr.sum(axis=0).reshape(shape)


def group_norm_forward(x, num_groups, weight=None, bias=None, eps=1e-5):
    x = _f64(x)
    N, C = x.shape[:2]
    L = C // num_groups * int(np.prod(x.shape[2:]))
    xhat, mean, rstd = _rows_forward(x.reshape(N * num_groups, L), eps)
    y = _channel_view(xhat.reshape(x.shape))
    if weight is not None:
        y = y * _f64(weight)[None, :, None]
    if bias is not None:
        y = y + _f64(bias)[None, :, None]
    return y.reshape(x.shape), mean.reshape(N, num_groups), rstd.reshape(N, num_groups)


def group_norm_backward(dy, x, num_groups, mean, rstd, weight=None):
    x, dy = _f64(x), _f64(dy)
    N, C = x.shape[:2]
    R, L = N * num_groups, C // num_groups * int(np.prod(x.shape[2:]))
    w = np.ones(C) if weight is None else _f64(weight)
    g = (_channel_view(dy) * w[None, :, None]).reshape(R, L)
    mean, rstd = _f64(mean).reshape(-1), _f64(rstd).reshape(-1)
    dx = _rows_backward(g, x.reshape(R, L), mean, rstd).reshape(x.shape)
    if weight is None:
        return dx, None, None
    xhat = ((x.reshape(R, L) - mean[:, None]) * rstd[:, None]).reshape(x.shape)
    g3 = _channel_view(dy)
    return dx, (g3 * _channel_view(xhat)).sum(axis=(0, 2)), g3.sum(axis=(0, 2))
