"""ZeRO stage 1: optimizer state sharded over the ranks, and world-size-independent checkpoints.

The flat parameter buffer is cut into world_size contiguous chunks of ceil(size / world_size)
elements; rank r owns chunk r. Each step: one reduce-scatter leaves every rank the average of its
chunk's gradients; the rank steps its chunk with the fastopt optimizer it was given (the fused
native kernel, over views of the store's buffers, so state exists for that chunk only); one
all-gather brings every rank the updated parameters. The update is elementwise, except clipping,
whose global norm is the square root of one all-reduced scalar (each rank's sum of squares over
its chunk); the gradient chunk is scaled by the float32 coefficient the fused kernel would use,
then stepped unclipped, which is the fused kernel's arithmetic exactly.

Bytes per step on a ring (P ranks, S parameters, 4 B each): all-reduce 2 (P - 1) / P * 4S;
reduce-scatter + all-gather the same total, but each rank keeps 1 / P of the optimizer state.
"""

import json
import math
import os

import numpy as np

from .._args import boolean
from ..optim.optimizer import StepResult, check_range
from . import core

__all__ = ["ZeroOptimizer", "save_checkpoint", "load_checkpoint"]


class ZeroOptimizer:
    """ZeRO-1 around any fastopt optimizer: `ZeroOptimizer(model, groups, fastopt.optim.AdamW,
    lr=1e-3)` where model is the built network (or its DataParallel) and groups come from
    model.store.param_groups(...). The optimizer is built over this rank's part of each group;
    param_groups are its groups (schedules edit them as usual, on every rank alike).

    step(max_grad_norm=None, skip_nonfinite=False) reduces the gradients itself (use it instead of
    DataParallel's average: run the backward inside `no_sync()` or on the bare model) and returns
    StepResult(norm, skipped) as the optimizer does; norm is over all ranks' gradients. Afterwards
    the store's gradient buffer holds only this rank's chunk averaged (the rest: local values).

    state_dict(dst=0) gathers the unsharded optimizer's state_dict (the same layout, loadable by
    an unsharded optimizer over the same groups, or by a ZeroOptimizer on any number of ranks) on
    rank dst (every rank with dst=None) and returns None on the others; load_state_dict takes
    such a full state_dict on every rank and keeps each rank's part."""

    def __init__(self, model, groups, optimizer, **options):
        core.require_init("ZeroOptimizer")
        store = getattr(model, "store", None)
        if store is None:
            raise ValueError("model: build it first (ZeroOptimizer shards its store's flat buffers)")
        if not callable(optimizer):
            raise TypeError(f"optimizer: expected a fastopt optimizer class, got {type(optimizer).__name__}")
        if isinstance(groups, dict) or not isinstance(groups, (list, tuple)) or not groups:
            raise TypeError("groups: expected the list of param groups from model.store.param_groups(...)")
        groups = [g if isinstance(g, dict) else {"params": [g]} for g in groups]
        self.store, self.world, self.rank = store, core.world_size(), core.rank()
        self.chunk = -(-store.size // self.world)
        self.lo, self.hi = self._bounds(self.rank)
        self._ranges, shards, self._grads = [], [], []
        for gi, group in enumerate(groups):
            params = []
            for t in group["params"]:
                a, b = _range_of(store, t, f"groups[{gi}]")
                s = min(max(a, self.lo), b)
                e = max(min(b, self.hi), s)
                self._ranges.append((a, b, s, e))
                params.append(store.data[s:e])
                self._grads.append(store.grad[s:e])
            shards.append({**group, "params": params})
        self.optimizer = optimizer(shards, **options)

    def _bounds(self, r):
        return min(r * self.chunk, self.store.size), min((r + 1) * self.chunk, self.store.size)

    @property
    def param_groups(self):
        return self.optimizer.param_groups

    # ------------------------------------------------------------------------------ step
    def step(self, max_grad_norm=None, skip_nonfinite=False):
        if max_grad_norm is not None:
            max_grad_norm = check_range("max_grad_norm", max_grad_norm)
        skip_nonfinite = boolean(skip_nonfinite, "skip_nonfinite")
        torch, _ = core.torch_modules()
        mine = self._reduce_scatter()
        norm = None
        if max_grad_norm is not None or skip_nonfinite:
            norm = math.sqrt(
                core.global_sum(
                    "ZeroOptimizer: the global gradient norm", float(torch.sum(mine.to(torch.float64) ** 2))
                )
            )
            if not math.isfinite(norm):
                return StepResult(norm, True)  # every rank sees the same norm: all skip
            if max_grad_norm is not None:
                coef = np.float32(min(1.0, max_grad_norm / (norm + 1e-6)))  # the fused kernel's coefficient
                if coef != 1:
                    mine.mul_(torch.tensor(coef, device=mine.device))
        self.optimizer.step(self._grads)
        self._all_gather()
        return StepResult(norm, False)

    def _chunks(self, flat):
        """Views of every rank's chunk of `flat`; a chunk shorter than the rest (the last) is a
        zero-padded copy, as the collectives need equal sizes."""
        torch, _ = core.torch_modules()
        t = core.as_tensor(flat)
        out = []
        for r in range(self.world):
            a, b = self._bounds(r)
            part = t[a:b]
            if b - a < self.chunk:
                part = torch.cat([part, torch.zeros(self.chunk - (b - a), dtype=t.dtype, device=t.device)])
            out.append(part)
        return out

    def _own(self, flat):
        return core.as_tensor(flat)[self.lo : self.hi]

    def _reduce_scatter(self):
        """This rank's chunk of the gradients, averaged over the ranks, in place; returned as a view."""
        _, dist = core.torch_modules()
        mine = self._own(self.store.grad)
        if self.world == 1:
            return mine
        parts = self._chunks(self.store.grad)
        out = parts[self.rank].clone()
        core.timed("ZeroOptimizer: reduce-scattering gradients", dist.reduce_scatter, out, parts)
        mine.copy_(out[: self.hi - self.lo])
        mine.mul_(1.0 / self.world)
        return mine

    def _all_gather(self):
        _, dist = core.torch_modules()
        if self.world == 1:
            return
        parts = self._chunks(self.store.data)
        mine = parts[self.rank].clone()
        core.timed("ZeroOptimizer: all-gathering parameters", dist.all_gather, parts, mine)
        a, b = self._bounds(self.world - 1)
        if b - a < self.chunk:  # the padded last chunk came back into a copy
            core.as_tensor(self.store.data)[a:b].copy_(parts[-1][: b - a])

    # ---------------------------------------------------------------- checkpointing
    def state_dict(self, dst=0):
        """The unsharded state_dict (see the class), on rank dst (every rank for dst=None)."""
        torch, dist = core.torch_modules()
        shard = self.optimizer.state_dict()
        names = sorted({k for entry in shard["state"].values() for k in entry if k != "step"})
        full = {i: {"step": shard["state"][i]["step"]} for i in range(len(self._ranges))}
        for name in names:
            flat = np.zeros(self.chunk, np.float32)
            for i, (a, b, s, e) in enumerate(self._ranges):
                if e > s:
                    flat[s - self.lo : e - self.lo] = shard["state"][i][name]
            gathered = self._gather(torch.from_numpy(flat).to(core.as_tensor(self.store.data).device), dst)
            if gathered is not None:
                for i, (a, b, _, _) in enumerate(self._ranges):
                    full[i][name] = gathered[a:b].copy()
        if dst is not None and self.rank != dst:
            return None
        return {"state": full, "param_groups": shard["param_groups"]}

    def _gather(self, t, dst):
        _, dist = core.torch_modules()
        if self.world == 1:
            return t.cpu().numpy()
        if dst is None:
            out = [core.torch_modules()[0].empty_like(t) for _ in range(self.world)]
            core.collective("ZeroOptimizer.state_dict: gathering state", dist.all_gather, out, t)
        else:
            out = [core.torch_modules()[0].empty_like(t) for _ in range(self.world)] if self.rank == dst else None
            core.collective("ZeroOptimizer.state_dict: gathering state", dist.gather, t, out, dst)
            if out is None:
                return None
        return np.concatenate([o.cpu().numpy() for o in out])

    def load_state_dict(self, state_dict):
        """Keep this rank's part of a full (unsharded) state_dict; checked as the optimizer checks."""
        if not isinstance(state_dict, dict) or "state" not in state_dict or "param_groups" not in state_dict:
            raise ValueError("state_dict: expected an optimizer state_dict with 'state' and 'param_groups'")
        shard = {}
        for key, entry in state_dict["state"].items():
            i = int(key)
            if not 0 <= i < len(self._ranges) or not isinstance(entry, dict):
                raise ValueError(f"state_dict['state'][{key!r}]: names no parameter of this optimizer")
            a, b, s, e = self._ranges[i]
            part = {}
            for name, value in entry.items():
                if name != "step":
                    if np.shape(value) != (b - a,):
                        raise ValueError(
                            f"state_dict['state'][{key!r}][{name!r}]: has shape {np.shape(value)}, the "
                            f"parameter ({b - a},)"
                        )
                    value = np.ascontiguousarray(value[s - a : e - a])
                part[name] = value
            shard[i] = part
        self.optimizer.load_state_dict({"state": shard, "param_groups": state_dict["param_groups"]})

    def __repr__(self):
        return (
            f"ZeroOptimizer(rank {self.rank} of {self.world}, elements [{self.lo}, {self.hi}) of "
            f"{self.store.size},\n{self.optimizer!r})"
        )


def _range_of(store, t, where):
    """[a, b) of a store-made view within the flat buffer (the store keeps it for grads_for)."""
    entry = store._views.get(id(t))
    if entry is None or entry[0] is not t:
        raise ValueError(f"{where}: holds a tensor that is not a view made by the store's param_groups()")
    return entry[2], entry[3]


# ----------------------------------------------------------------------- checkpoint files
def save_checkpoint(path, model, optimizer, meta=None):
    """Write model, optimizer (a ZeroOptimizer's gathered state or a replicated optimizer's) and
    `meta` (JSON-able) to one .npz at path. A collective: call it on every rank; rank 0 alone
    writes, atomically (a temporary file renamed over path), and the others wait for it. The file
    does not depend on the number of ranks."""
    from ..train import write_atomically

    state = optimizer.state_dict(dst=0) if isinstance(optimizer, ZeroOptimizer) else optimizer.state_dict()
    module = getattr(model, "module", model)
    if core.rank() == 0:
        arrays = {f"model/{k}": np.asarray(v) for k, v in module.state_dict().items()}
        for i, entry in state["state"].items():
            for name, value in entry.items():
                arrays[f"optim/{i}/{name}"] = np.asarray(value)
        info = {
            "param_groups": state["param_groups"],
            "meta": meta,
            "world_size": core.world_size(),
            "extra_state": module.extra_state(),
        }
        arrays["meta"] = np.frombuffer(json.dumps(info).encode(), np.uint8)
        write_atomically(path, lambda f: np.savez(f, **arrays))
    if core.is_initialized():
        core.barrier("save_checkpoint: waiting for rank 0's write")


def load_checkpoint(path, model, optimizer):
    """Restore what save_checkpoint wrote, on any number of ranks (call it on every rank); returns
    the meta it was saved with."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"path: no checkpoint at {path}")
    with np.load(path) as z:
        info = json.loads(bytes(z["meta"]).decode())
        model_state = {k[len("model/") :]: z[k] for k in z.files if k.startswith("model/")}
        state = {}
        for k in z.files:
            if k.startswith("optim/"):
                _, i, name = k.split("/", 2)
                value = z[k]
                state.setdefault(int(i), {})[name] = int(value) if name == "step" else value
    module = getattr(model, "module", model)
    module.load_state_dict(model_state)
    module.load_extra_state(info.get("extra_state", {}))
    optimizer.load_state_dict({"state": state, "param_groups": info["param_groups"]})
    return info["meta"]
