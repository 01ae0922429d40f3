"""Batch, layer and group normalization (torch.nn.functional semantics), float32 (and bfloat16).

Arrays are C-contiguous float32 NumPy arrays (CPU) or GPU arrays (fastopt.DeviceArray, CuPy,
PyTorch); every op runs where x lives and returns new arrays there. Statistics accumulate in
double on the CPU and with Welford/Chan merges in float32 on the GPU; every reduction has a fixed
order, so results are bitwise reproducible run to run. `stream` is a CUDA stream handle (0: the
legacy default stream), ignored on the CPU.

Each forward returns (y, mean, rstd) where rstd = 1 / sqrt(var_biased + eps), and each backward
takes those saved statistics and returns (dx, dweight, dbias). dweight is None when the weight
(gamma) is None; dbias is None when has_bias is False, which by default it is exactly when the
weight is None (pass has_bias=True for a bias-only affine).

All three also take bfloat16 activations on the CPU (x, dy; y and dx come back bfloat16), with
every per-channel or per-row array (gamma/weight, beta/bias, running statistics, mean and rstd,
dweight, dbias) float32: statistics and affine math in fp32/double, one rounding per output element.

Each backward takes affine_grads=False to skip the affine gradients (a frozen layer's; they come
back None, and eval batch norm then runs no reduction at all), and out arrays for them
(dweight_out / dbias_out; batch norm: dgamma_out / dbeta_out): C-contiguous float32 arrays of the
parameter's shape on x's device, sharing no memory with dy or x. The final per-channel store
writes the gradient there (and returns that array); accumulate=True adds it into them, rounded
once (each out then required).
"""

from __future__ import annotations

from .. import _C
from .._args import boolean, finite, integer, real, shape, stream as _stream
from .._types import Array, Shape, Stream

__all__ = [
    "batch_norm_forward",
    "batch_norm_backward",
    "layer_norm_forward",
    "layer_norm_backward",
    "group_norm_forward",
    "group_norm_backward",
]


def _eps(eps):
    return finite(eps, "eps", 0.0)


def _has_bias(has_bias, weight):
    return weight is not None if has_bias is None else boolean(has_bias, "has_bias")


def batch_norm_forward(
    x: Array,
    gamma: Array | None,
    beta: Array | None,
    running_mean: Array | None,
    running_var: Array | None,
    training: bool,
    momentum: float | None = 0.1,
    eps: float = 1e-5,
    num_batches_tracked: int | None = None,
    stream: Stream = 0,
) -> tuple[Array, Array, Array]:
    """Batch normalization of x (N, C) or (N, C, H, W) (any (N, C, ...)): statistics per channel
    over every dim but C, as torch.nn.functional.batch_norm.

    training=True normalizes with the batch mean and biased variance and, when running_mean and
    running_var (float32 (C,), both or neither) are given, updates them in place:
    running = (1 - f) * running + f * batch with the unbiased batch variance, f = momentum; for
    momentum=None f = 1 / num_batches_tracked (a cumulative average; pass the count including
    this batch, as torch.nn.BatchNorm does after incrementing it). Training needs more than one
    value per channel (ValueError otherwise, as torch).
    training=False normalizes with running_mean / running_var (then required).
    gamma / beta (C,) may be None (no scale / no shift).

    Returns (y, save_mean, save_invstd), each (C,): the mean and 1 / sqrt(var + eps) actually
    used (batch statistics in training, running statistics in eval). Pass them to
    batch_norm_backward with the same `training`.
    """
    if num_batches_tracked is not None:
        num_batches_tracked = integer(num_batches_tracked, "num_batches_tracked", 0)
    if momentum is None:
        if not num_batches_tracked:
            raise ValueError(
                "num_batches_tracked: momentum=None (cumulative average) needs the batch count "
                f"including this batch, >= 1; got {num_batches_tracked!r}"
            )
        factor = 1.0 / num_batches_tracked
    else:
        factor = real(momentum, "momentum", 0.0, 1.0)
    return _C.batch_norm_forward(
        x, gamma, beta, running_mean, running_var, boolean(training, "training"), factor, _eps(eps), _stream(stream)
    )


def batch_norm_backward(
    dy: Array,
    x: Array,
    gamma: Array | None,
    save_mean: Array,
    save_invstd: Array,
    training: bool = True,
    has_bias: bool | None = None,
    stream: Stream = 0,
    dgamma_out: Array | None = None,
    dbeta_out: Array | None = None,
    accumulate: bool = False,
    affine_grads: bool = True,
) -> tuple[Array | None, Array | None, Array | None]:
    """Gradients of batch_norm_forward: (dx, dgamma, dbeta).

    save_mean / save_invstd are what the forward returned. training=True differentiates through
    the batch statistics (sum dy and sum dy * (x - mean) per channel, fused in one pass);
    training=False is the eval-mode backward, where mean and invstd are constants:
    dx = dy * gamma * invstd.
    """
    affine = boolean(affine_grads, "affine_grads")
    return tuple(
        _C.batch_norm_backward(
            dy,
            x,
            gamma,
            save_mean,
            save_invstd,
            boolean(training, "training"),
            affine and gamma is not None,
            affine and _has_bias(has_bias, gamma),
            _stream(stream),
            dgamma_out,
            dbeta_out,
            boolean(accumulate, "accumulate"),
        )
    )


def _normalized_shape(normalized_shape):
    return list(shape(normalized_shape, "normalized_shape", 1))


def layer_norm_forward(
    x: Array,
    normalized_shape: Shape,
    weight: Array | None = None,
    bias: Array | None = None,
    eps: float = 1e-5,
    stream: Stream = 0,
) -> tuple[Array, Array, Array]:
    """Layer normalization over the trailing dims normalized_shape (int or tuple), as
    torch.nn.functional.layer_norm; weight / bias have shape normalized_shape (elementwise affine).
    The same in training and eval. Returns (y, mean, rstd), mean/rstd shaped x.shape[:-k]."""
    return _C.layer_norm_forward(x, _normalized_shape(normalized_shape), weight, bias, _eps(eps), _stream(stream))


def layer_norm_backward(
    dy: Array,
    x: Array,
    normalized_shape: Shape,
    mean: Array,
    rstd: Array,
    weight: Array | None = None,
    has_bias: bool | None = None,
    stream: Stream = 0,
    dweight_out: Array | None = None,
    dbias_out: Array | None = None,
    accumulate: bool = False,
    affine_grads: bool = True,
) -> tuple[Array | None, Array | None, Array | None]:
    """Gradients of layer_norm_forward: (dx, dweight, dbias)."""
    affine = boolean(affine_grads, "affine_grads")
    return tuple(
        _C.layer_norm_backward(
            dy,
            x,
            _normalized_shape(normalized_shape),
            mean,
            rstd,
            weight,
            affine and weight is not None,
            affine and _has_bias(has_bias, weight),
            _stream(stream),
            dweight_out,
            dbias_out,
            boolean(accumulate, "accumulate"),
        )
    )


def group_norm_forward(
    x: Array,
    num_groups: int,
    weight: Array | None = None,
    bias: Array | None = None,
    eps: float = 1e-5,
    stream: Stream = 0,
) -> tuple[Array, Array, Array]:
    """Group normalization of x (N, C, ...), as torch.nn.functional.group_norm: the C channels
    split into num_groups consecutive groups, statistics per (sample, group); num_groups = C is
    instance norm, 1 is layer norm over (C, ...) with per-channel affine. weight / bias (C,).
    Returns (y, mean, rstd), mean/rstd shaped (N, num_groups)."""
    return _C.group_norm_forward(x, integer(num_groups, "num_groups", 1), weight, bias, _eps(eps), _stream(stream))


def group_norm_backward(
    dy: Array,
    x: Array,
    num_groups: int,
    mean: Array,
    rstd: Array,
    weight: Array | None = None,
    has_bias: bool | None = None,
    stream: Stream = 0,
    dweight_out: Array | None = None,
    dbias_out: Array | None = None,
    accumulate: bool = False,
    affine_grads: bool = True,
) -> tuple[Array | None, Array | None, Array | None]:
    """Gradients of group_norm_forward: (dx, dweight, dbias)."""
    affine = boolean(affine_grads, "affine_grads")
    return tuple(
        _C.group_norm_backward(
            dy,
            x,
            integer(num_groups, "num_groups", 1),
            mean,
            rstd,
            weight,
            affine and weight is not None,
            affine and _has_bias(has_bias, weight),
            _stream(stream),
            dweight_out,
            dbias_out,
            boolean(accumulate, "accumulate"),
        )
    )
