"""SyncBatchNorm: batch normalization whose training statistics cover every rank's batch, so
N ranks with batch B each normalize as one rank with batch N*B would.

Composed from the native batch-norm kernels rather than new ones:
- forward: each rank's per-channel (count, mean, M2) in float64, all-gathered and merged in rank
  order with Chan's formula (exact to float64 rounding, the same order on every rank, so every
  rank gets the same bits), then the eval-mode kernel normalizes with those statistics;
- backward: the eval-mode backward gives dy * gamma * invstd and this rank's sum(dy) and
  sum(dy * xhat); one all-reduce makes those global and the eval-mode forward, with the affine
  set to the correction's coefficients, computes the term it subtracts:
  dx = gamma * invstd * (dy - sum(dy) / N - xhat * sum(dy * xhat) / N).
The weight and bias gradients stay this rank's share, which DataParallel averages like any other.
"""

import numpy as np

from .. import functional as F
from .._arrays import copy_, to_numpy
from ..nn.layers import _BatchNorm, _data
from ..nn.module import take_saved
from . import core

__all__ = ["SyncBatchNorm", "convert_sync_batchnorm"]


class SyncBatchNorm(_BatchNorm):
    """torch.nn.SyncBatchNorm over (N, C, ...): BatchNorm whose training statistics are those of
    the global batch across all ranks of the process group. Without a process group (or with one
    rank) it is exactly BatchNorm. Eval mode and a frozen layer use the running statistics, as
    BatchNorm does. float32 activations (no bf16 path)."""

    bf16 = False
    ndims = (2, 3, 4, 5)

    def forward(self, x, training=True):
        batch_stats = (training and not self.frozen) or not self.track_running_stats
        if not batch_stats or core.world_size() == 1:
            return super().forward(x, training)
        if len(x.shape) not in self.ndims or x.shape[1] != self.num_features:
            raise ValueError(
                f"x: SyncBatchNorm({self.num_features}) expects (N, {self.num_features}, ...) input, "
                f"got shape {tuple(x.shape)}"
            )
        count, mean, var = global_statistics(x)
        if count < 2:
            raise ValueError(
                f"Expected more than 1 value per channel when training, got input size {tuple(x.shape)} "
                "on every rank together"
            )
        updating = training and not self.frozen and self.track_running_stats
        if updating:
            self.num_batches_tracked += 1
            f = 1.0 / self.num_batches_tracked if self.momentum is None else self.momentum
            for buf, stat in ((self.running_mean, mean), (self.running_var, var * count / (count - 1))):
                copy_(buf, ((1.0 - f) * to_numpy(buf).astype(np.float64) + f * stat).astype(np.float32))
        mean32, var32 = _on(x, mean.astype(np.float32)), _on(x, var.astype(np.float32))
        y, save_mean, invstd = F.batch_norm_forward(
            x, _data(self.params["weight"]), _data(self.params["bias"]), mean32, var32, False, 0.0, self.eps
        )
        self._saved, self._sync_saved = None, (x, save_mean, invstd, count) if training else None
        return y

    def backward(self, dy):
        if getattr(self, "_sync_saved", None) is None:  # the forward took BatchNorm's path
            return super().backward(dy)
        x, mean, invstd, count = take_saved(self, "_sync_saved")
        w, b = self.params["weight"], self.params["bias"]
        gamma = _data(w) if w is not None else _on(x, np.ones(self.num_features, np.float32))
        dx, dgamma, dbeta = F.batch_norm_backward(dy, x, gamma, mean, invstd, False, has_bias=True)
        torch, dist = core.torch_modules()
        sums = torch.stack([core.as_tensor(dbeta), core.as_tensor(dgamma)]).to(torch.float64)
        core.timed("SyncBatchNorm: summing sum(dy) and sum(dy * xhat)", dist.all_reduce, sums)
        sums = sums.cpu().numpy()
        g64, s64 = to_numpy(gamma).astype(np.float64), to_numpy(invstd).astype(np.float64)
        k1 = g64 * s64 * sums[0] / count  # the sum(dy) / N term
        k2 = g64 * s64 * s64 * sums[1] / count  # xhat * sum(dy * xhat) / N = k2 * (x - mean)
        ones = np.ones(self.num_features, np.float32)
        corr, _, _ = F.batch_norm_forward(
            x, _on(x, k2.astype(np.float32)), _on(x, k1.astype(np.float32)), mean, _on(x, ones), False, 0.0, 0.0
        )
        F.axpby_(dx, corr, -1.0, 1.0)
        if not self.frozen:
            self.set_grad(w, dgamma)
            self.set_grad(b, dbeta)
        return dx


def _on(x, array):
    """A float32 per-channel NumPy array where x lives (the CPU: itself)."""
    if isinstance(x, np.ndarray):
        return array
    torch, _ = core.torch_modules()
    return torch.from_numpy(array).to(core.as_tensor(x).device)


def global_statistics(x):
    """(count, mean, biased variance) per channel over every rank's x, float64 NumPy (C,): each
    rank's (n, mean, M2) in float64, gathered and merged with Chan et al.'s pairwise formula in
    rank order, so every rank computes the same bits."""
    torch, dist = core.torch_modules()
    t = core.as_tensor(x)
    c = t.shape[1]
    x64 = t.transpose(0, 1).reshape(c, -1).to(torch.float64)
    n = x64.shape[1]
    mean = x64.mean(dim=1)
    m2 = ((x64 - mean[:, None]) ** 2).sum(dim=1)
    mine = torch.cat([torch.full((1,), float(n), dtype=torch.float64, device=t.device), mean, m2])
    gathered = [torch.empty_like(mine) for _ in range(core.world_size())]
    core.timed("SyncBatchNorm: gathering batch statistics", dist.all_gather, gathered, mine)
    count, mean, m2 = 0.0, np.zeros(c), np.zeros(c)
    for part in gathered:
        part = part.cpu().numpy()
        nb, mb, m2b = part[0], part[1 : 1 + c], part[1 + c :]
        total = count + nb
        delta = mb - mean
        mean = mean + delta * (nb / total)
        m2 = m2 + m2b + delta * delta * (count * nb / total)
        count = total
    return count, mean, m2 / count


def convert_sync_batchnorm(module):
    """torch.nn.SyncBatchNorm.convert_sync_batchnorm for an unbuilt fastopt network: every
    BatchNorm1d/2d in the tree replaced, in place, by a SyncBatchNorm with the same options (and
    its initializers). Returns the module (a BatchNorm at the root comes back converted)."""
    if module.store is not None:
        raise ValueError("module: convert before build (the built store holds the old layers' parameters)")
    if isinstance(module, _BatchNorm) and not isinstance(module, SyncBatchNorm):
        return _synced(module)
    for name, child in module.children():
        new = convert_sync_batchnorm(child)
        if new is not child:
            _replace(module, child, new)
    return module


def _synced(bn):
    new = SyncBatchNorm.__new__(SyncBatchNorm)
    new.__dict__.update(bn.__dict__)  # the same options, parameters (unbuilt) and initializers
    return new


def _replace(parent, old, new):
    for key, value in vars(parent).items():
        if value is old:
            setattr(parent, key, new)
            return
        if isinstance(value, list) and any(v is old for v in value):
            value[[i for i, v in enumerate(value) if v is old][0]] = new
            return
    raise TypeError(f"convert_sync_batchnorm: cannot find where {type(parent).__name__} keeps its child")
