"""float64 NumPy reference of the loss family: softmax cross-entropy with label smoothing.

With eps = label_smoothing, K classes and target distribution
    q = (1 - eps) * onehot(target) + eps / K        (class indices)
    q = (1 - eps) * target + eps / K                (soft targets, rows of probabilities)
row loss = -sum_k q_k log softmax(z)_k, loss = mean over rows (NaN for no rows), and
dlogits = (sum_k q_k * softmax(z) - q) / N, the exact gradient of the mean.
"""

import numpy as np


def target_distribution(target, num_classes, label_smoothing=0.0):
    """q (N, K) in float64 from class indices (N,) or soft targets (N, K)."""
    target = np.asarray(target)
    if target.ndim == 1:
        y = np.zeros((target.shape[0], num_classes))
        y[np.arange(target.shape[0]), target] = 1.0
    else:
        y = target.astype(np.float64)
    return (1.0 - label_smoothing) * y + label_smoothing / num_classes


def log_softmax(z):
    z = np.asarray(z, np.float64)
    shifted = z - z.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def target_class(target):
    """The class each row is scored against: the index, or the first argmax of a soft row."""
    target = np.asarray(target)
    return target if target.ndim == 1 else target.argmax(axis=1)


def hits(logits, target, topk=5):
    """(top-1 hits, top-k hits), k = min(topk, K): the target is within the top k iff fewer than
    k classes have a strictly larger logit."""
    z = np.asarray(logits, np.float64)
    t = target_class(target)
    greater = (z > z[np.arange(z.shape[0]), t][:, None]).sum(axis=1)
    return int((greater < 1).sum()), int((greater < min(topk, z.shape[1])).sum())


def row_losses(logits, target, label_smoothing=0.0):
    """-sum_k q_k log softmax(z)_k, a term with q_k = 0 counting 0 (the limit of q log p) even
    where z_k = -inf: such a class leaves the loss finite, as torch's does for class indices."""
    q = target_distribution(target, np.shape(logits)[1], label_smoothing)
    with np.errstate(invalid="ignore"):
        return -np.where(q == 0, 0.0, q * log_softmax(logits)).sum(axis=1)


def softmax_cross_entropy(logits, target, label_smoothing=0.0, topk=5):
    """(loss, dlogits, stats) with stats = [sum of row losses, top-1 hits, top-k hits]."""
    z = np.asarray(logits, np.float64)
    n = z.shape[0]
    q = target_distribution(target, z.shape[1], label_smoothing)
    rows = row_losses(z, target, label_smoothing)
    loss = rows.mean() if n > 0 else np.nan
    dlogits = (q.sum(axis=1, keepdims=True) * np.exp(log_softmax(z)) - q) / max(n, 1)
    return loss, dlogits, np.array([rows.sum(), *hits(z, target, topk)])
