"""Softmax cross-entropy, the loss every classifier here trains with."""

from __future__ import annotations

import numpy as np

from .. import _arrays, functional as F
from .._args import integer, real
from .._types import Array

__all__ = ["SoftmaxCrossEntropy"]


class SoftmaxCrossEntropy:
    """Mean cross-entropy of softmax(logits) against class indices or soft targets (mixup), with
    torch's label smoothing. forward returns the loss as a 0-d array on the logits' device (the
    step never waits for the host) and keeps d(loss)/d(logits), computed in the same pass, for
    backward. `stats`, a float32 (3,) array, accumulates [sum of losses, top-1 hits, top-k hits]
    on the device for the epoch's metrics. With bfloat16 logits (a precision='bf16' network) the
    loss is float32, d(logits) bfloat16, and float32 soft targets are rounded to bfloat16 (the
    kernel takes soft targets in the logits' dtype)."""

    def __init__(self, label_smoothing: float = 0.0, topk: int = 5) -> None:
        self.label_smoothing = real(label_smoothing, "label_smoothing", 0.0, 1.0)
        self.topk = integer(topk, "topk", 1)
        self._dlogits = None

    def forward(self, logits: Array, target: Array, training: bool = True, stats: Array | None = None) -> Array:
        if _arrays.dtype_of(logits) == _arrays.BFLOAT16 and _arrays.dtype_of(target) == np.float32:
            target = np.asarray(target).astype(_arrays.BFLOAT16)
        loss, dlogits = F.softmax_cross_entropy(
            logits, target, self.label_smoothing, need_grad=training, stats=stats, topk=self.topk
        )
        self._dlogits = dlogits
        return loss

    def backward(self) -> Array:
        if self._dlogits is None:
            raise RuntimeError("SoftmaxCrossEntropy.backward: call forward with training=True first")
        d, self._dlogits = self._dlogits, None
        return d

    __call__ = forward

    def __repr__(self):
        return f"SoftmaxCrossEntropy(label_smoothing={self.label_smoothing})"
