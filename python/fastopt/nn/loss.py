"""Softmax cross-entropy, the loss every classifier here trains with."""
from .. import functional as F
from .._args import integer, real

__all__ = ["SoftmaxCrossEntropy"]


class SoftmaxCrossEntropy:
    """Mean cross-entropy of softmax(logits) against class indices or soft targets (mixup), with
    torch's label smoothing. forward returns the loss as a 0-d array on the logits' device (the
    step never waits for the host) and keeps d(loss)/d(logits), computed in the same pass, for
    backward. `stats`, a float32 (3,) array, accumulates [sum of losses, top-1 hits, top-k hits]
    on the device for the epoch's metrics."""

    def __init__(self, label_smoothing=0.0, topk=5):
        self.label_smoothing = real(label_smoothing, "label_smoothing", 0.0, 1.0)
        self.topk = integer(topk, "topk", 1)
        self._dlogits = None

    def forward(self, logits, target, training=True, stats=None):
        loss, dlogits = F.softmax_cross_entropy(logits, target, self.label_smoothing, need_grad=training,
                                                stats=stats, topk=self.topk)
        self._dlogits = dlogits
        return loss

    def backward(self):
        if self._dlogits is None:
            raise RuntimeError("SoftmaxCrossEntropy.backward: call forward with training=True first")
        d, self._dlogits = self._dlogits, None
        return d

    __call__ = forward

    def __repr__(self):
        return f"SoftmaxCrossEntropy(label_smoothing={self.label_smoothing})"
