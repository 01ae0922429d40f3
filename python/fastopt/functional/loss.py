"""Softmax cross-entropy with label smoothing (torch.nn.functional.cross_entropy, reduction
'mean'), forward and backward fused into one call.

Arrays are C-contiguous: NumPy on the CPU, GPU arrays (fastopt.DeviceArray, CuPy, PyTorch) on the
GPU; outputs are new arrays on the logits' device and `stream` (a CUDA stream handle, 0: the
legacy default stream) is ignored on the CPU. Every row reduction and the mean have a fixed
order, so results are bitwise reproducible run to run.

bfloat16 logits (CPU; soft targets then bfloat16 too) give the same float32 loss the float32 kernel
gives on their values, and bfloat16 dlogits (the float32 gradient rounded once).
"""

from __future__ import annotations

from .. import _C
from .._args import boolean, integer, real, stream as _stream
from .._types import Array, Stream

__all__ = ["softmax_cross_entropy"]


def softmax_cross_entropy(
    logits: Array,
    target: Array,
    label_smoothing: float = 0.0,
    need_grad: bool = True,
    stats: Array | None = None,
    topk: int = 5,
    stream: Stream = 0,
) -> tuple[Array, Array | None]:
    """Mean softmax cross-entropy of logits (N, K) float32, K >= 1, and its gradient.

    target: class indices, int32 or int64 (N,) in [0, K), or soft targets, float32 (N, K) whose
    rows are probability vectors (e.g. from mixup). With eps = label_smoothing in [0, 1] the
    target distribution is q = (1 - eps) * onehot(target) + eps / K (soft: (1 - eps) * target +
    eps / K) and row loss = -sum_k q_k log softmax(z)_k, computed stably.

    Returns (loss, dlogits): loss is the mean over rows as a 0-d float32 array on the logits'
    device (a NumPy 0-d array on the CPU, a DeviceArray of shape () on the GPU), so reading it is
    the caller's choice of when to wait. N = 0 gives NaN, as torch's mean of nothing.
    dlogits = (Q softmax(z) - q) / N, Q = sum_k q_k (1 for probability rows), float32 (N, K);
    None when need_grad is False.

    stats: optional float32 (3,) array on the same device, updated in place:
    stats += [sum of row losses, rows whose target class is the top-1 prediction, rows whose
    target class is within the top k = min(topk, K)]. The target class of a soft row is its
    first argmax. It is within the top k iff fewer than k classes have a strictly larger logit
    (ties count for the target). Counts are exact while the totals stay below 2^24.

    A class index outside [0, K) raises ValueError on the CPU; on the GPU (no sync to raise) that
    row's loss is NaN, and so are its dlogits row, the mean and stats[0].
    """
    return _C.softmax_cross_entropy(
        logits,
        target,
        real(label_smoothing, "label_smoothing"),
        boolean(need_grad, "need_grad"),
        stats,
        integer(topk, "topk"),
        _stream(stream),
    )
