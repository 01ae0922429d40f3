"""Global gradient norms and clipping (torch.nn.utils semantics)."""

from __future__ import annotations

import math

from .. import _C
from .._args import boolean, real, stream as _stream
from .._arrays import is_cuda, to_numpy
from .._types import Array, Arrays, Stream


def _norm_type(norm_type):
    return real(norm_type, "norm_type", 0.0, low_open=True)


def _as_list(grads):
    if hasattr(grads, "shape") and not isinstance(grads, (list, tuple)):
        return [grads]
    return list(grads)


def global_norm(grads: Arrays, norm_type: float = 2.0, stream: Stream = 0) -> float | Array:
    """The norm of all gradients taken together: (sum_i ||g_i||_p^p)^(1/p); p = inf is max |g|.

    Returns a Python float for CPU arrays, a 0-d fastopt.DeviceArray (float32, still on the GPU,
    no host sync) for GPU arrays. An empty list has norm 0.
    """
    grads = _as_list(grads)
    return _C.grad_norm(grads, _norm_type(norm_type), _stream(stream))


def clip_grad_norm_(
    grads: Arrays, max_norm: float, norm_type: float = 2.0, error_if_nonfinite: bool = False, stream: Stream = 0
) -> float | Array:
    """Scale gradients in place so that their global norm is at most max_norm.

    As torch.nn.utils.clip_grad_norm_: coefficient min(1, max_norm / (norm + 1e-6)); returns the
    norm before clipping. error_if_nonfinite=True raises RuntimeError, leaving the gradients as
    they were, when the norm is NaN or Inf (on the GPU this reads the norm back: one sync).
    """
    grads = _as_list(grads)
    max_norm, norm_type = real(max_norm, "max_norm", 0.0), _norm_type(norm_type)
    error_if_nonfinite, stream = boolean(error_if_nonfinite, "error_if_nonfinite"), _stream(stream)
    norm = _C.grad_norm(grads, norm_type, stream)
    if error_if_nonfinite:
        value = float(to_numpy(norm)) if is_cuda(norm) else norm
        if not math.isfinite(value):
            raise RuntimeError(
                f"The total norm of order {norm_type} for gradients is non-finite, so it cannot be "
                "clipped. To disable this error and scale the gradients by the non-finite norm anyway, "
                "set error_if_nonfinite=False"
            )
    _C.clip_by_norm_(grads, norm, max_norm, stream)
    return norm


def clip_grad_value_(grads: Arrays, clip_value: float, stream: Stream = 0) -> None:
    """Clamp every gradient element in place to [-clip_value, clip_value] (torch semantics)."""
    clip_value = real(clip_value, "clip_value", 0.0)
    _C.clamp_(_as_list(grads), -clip_value, clip_value, _stream(stream))
