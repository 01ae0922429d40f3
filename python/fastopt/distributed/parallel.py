"""DataParallel: data-parallel training of a fastopt.nn network, torch DDP's contract.

Every rank holds the whole model. At build (or wrapping, for a built model) the ranks check they
built the same network and take rank 0's parameters and buffers; after each backward the flat
gradient buffer is averaged over the ranks by ONE all-reduce, through a torch view of fastopt's
own buffer (no copy). Clipping needs nothing more: after the average every rank holds the global
gradient, so the optimizer's fused max_grad_norm clips by the norm over all ranks' data.

Gradients are reduced after the whole backward, not in buckets overlapped with it: on the CPU
(gloo) the all-reduce competes with the backward's own threads for the same cores, so overlap
does not pay there; `fastopt bench distributed` reports the all-reduce's share of a step.
"""

import contextlib
import zlib

import numpy as np

from .._args import boolean
from .._arrays import to_numpy
from . import core

__all__ = ["DataParallel"]


class DataParallel:
    """Wrap a fastopt.nn network (built or not) for data-parallel training; the process group must
    be initialized (fastopt.distributed.init).

    Use it as the model: forward / backward / build and every other attribute pass through to the
    network (so fastopt.train.Trainer takes it as it is); backward ends with the gradient average,
    skipped inside `no_sync()` (gradient accumulation: reduce once, on the last micro-batch).
    Each rank feeds its own part of the batch; with the loss a mean over the local batch, the
    averaged gradient is that of the mean over the global batch.

    broadcast=True (torch DDP's behaviour): rank 0's parameters and buffers overwrite the others'
    at build. broadcast=False: they must already agree, bit for bit (a DistributedError names the
    first parameter that differs). broadcast_buffers=True: every training forward starts from rank
    0's buffers (running statistics), as DDP does, and so does the first eval forward after
    training; with SyncBatchNorm they agree anyway."""

    def __init__(self, model, broadcast=True, broadcast_buffers=True):
        from ..nn import Module

        if not isinstance(model, Module):
            raise TypeError(f"model: expected a fastopt.nn.Module, got {type(model).__name__}")
        core.require_init("DataParallel")
        if model.store is not None and model.store.root is not model:
            raise ValueError("model: part of another built network; wrap the network it was built in")
        self.__dict__.update(
            module=model,
            broadcast=boolean(broadcast, "broadcast"),
            broadcast_buffers=boolean(broadcast_buffers, "broadcast_buffers"),
            _sync=True,
            _stale=False,
        )
        if model.store is not None:
            self._join()

    def __getattr__(self, name):  # only reached for names DataParallel itself lacks
        return getattr(self.__dict__["module"], name)

    def __setattr__(self, name, value):
        setattr(self.module, name, value)

    # ------------------------------------------------------------------------- setup
    def build(self, *args, **kwargs):
        store = self.module.build(*args, **kwargs)
        self._join()
        return store

    def _join(self):
        store = self.module.store
        core.backend_for(core.torch_modules()[1].get_backend(), store.device)
        check_same_network(self.module, "DataParallel")
        _, dist = core.torch_modules()
        if self.broadcast:
            for flat in (store.data, store.buffers):
                if flat.size:
                    core.collective(
                        "DataParallel: broadcasting rank 0's parameters", dist.broadcast, core.as_tensor(flat), 0
                    )
            counters = [(m, k) for _, m in self.module.named_modules() for k in m.counters()]
            values = core.all_gather_objects("DataParallel: counters", [getattr(m, k) for m, k in counters])[0]
            for (m, k), v in zip(counters, values):
                setattr(m, k, v)
        else:
            check_same_values(self.module, "DataParallel")

    # ------------------------------------------------------------------ forward/backward
    def forward(self, x, training=True):
        store = self.module.store
        # Before a training forward, and before the first eval forward after training (each rank
        # updated its running statistics from its own batch), so that every rank evaluates alike.
        if (
            (training or self._stale)
            and self.broadcast_buffers
            and store is not None
            and store.buffers.size
            and core.world_size() > 1
        ):
            _, dist = core.torch_modules()
            core.timed("DataParallel: broadcasting buffers", dist.broadcast, core.as_tensor(store.buffers), 0)
        self.__dict__["_stale"] = training
        return self.module.forward(x, training)

    __call__ = forward

    def backward(self, dout, accumulate=False):
        dx = self.module.backward(dout, accumulate=accumulate)
        if self._sync:
            self.sync_gradients()
        return dx

    @contextlib.contextmanager
    def no_sync(self):
        """Backward passes inside leave the gradients local (accumulate micro-batches, then run the
        last backward outside: its average covers them all, the average being linear)."""
        self.__dict__["_sync"] = False
        try:
            yield
        finally:
            self.__dict__["_sync"] = True

    def sync_gradients(self):
        """Average the flat gradient buffer over the ranks, in place: one all-reduce (sum) and one
        scale by 1 / world_size."""
        allreduce_mean(self.module.store.grad, "DataParallel: averaging gradients")

    def mean_over_ranks(self, value):
        """float(value) averaged over the ranks (one scalar all-reduce): fastopt.train.Trainer's
        loss checks (NaN, explosion) see the global batch's loss and so stop every rank alike."""
        value, world = float(value), core.world_size()
        return value if world == 1 else core.global_sum("DataParallel: averaging the loss", value) / world

    def __repr__(self):
        return f"DataParallel(world_size={core.world_size()},\n  {self.module!r}\n)"


def allreduce_mean(flat, what):
    world = core.world_size()
    if world == 1 or flat.size == 0:
        return
    torch, dist = core.torch_modules()
    t = core.as_tensor(flat)
    core.timed(what, dist.all_reduce, t)
    t.mul_(1.0 / world)  # exact for a power-of-two world; else torch DDP's rounding too


def check_same_network(model, what):
    """Every rank built the same network: parameter and buffer names and shapes, and the world size
    each rank's process group reports. DistributedError naming the first difference otherwise."""
    mine = [(n, tuple(p.shape)) for n, p in model.named_parameters()] + [
        (n, tuple(np.shape(v))) for n, v in model.named_buffers()
    ]
    everyone = core.all_gather_objects(f"{what}: comparing the networks", mine)
    me = core.rank()
    for r, theirs in enumerate(everyone):
        if theirs == mine:
            continue
        diff = next(
            (
                f"{a[0]!r} of shape {a[1]} here, {b[0]!r} of shape {b[1]} on rank {r}"
                for a, b in zip(mine, theirs)
                if a != b
            ),
            f"{len(mine)} parameters and buffers here, {len(theirs)} on rank {r}",
        )
        raise core.DistributedError(f"{what}: rank {me} and rank {r} built different networks ({diff})")


def check_same_values(model, what):
    """Every rank's parameters equal rank 0's bit for bit (CRC32 of each parameter's bytes)."""
    names = [n for n, _ in model.named_parameters()]
    mine = [zlib.crc32(to_numpy(p.data).tobytes()) for _, p in model.named_parameters()]
    everyone = core.all_gather_objects(f"{what}: comparing parameters", mine)
    for r, theirs in enumerate(everyone):
        for name, a, b in zip(names, everyone[0], theirs):
            if a != b:
                raise core.DistributedError(
                    f"{what}: parameter {name!r} differs between rank 0 and rank {r} at start (build every rank "
                    "from the same seed and checkpoint, or pass broadcast=True to take rank 0's)"
                )
