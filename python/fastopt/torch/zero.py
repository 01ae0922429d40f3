"""ZeroRedundancy: ZeRO stage 1 for fastopt.torch.optim's optimizers under torch DDP.

The parameters, taken in param_groups order and each in its memory order, form one virtual flat
vector cut into world_size contiguous chunks of ceil(total / world_size) elements, as
fastopt.distributed.ZeroOptimizer cuts the store's flat buffer: rank r's optimizer steps the
pieces of its chunk (views into the parameters, so each rank keeps 1 / world_size of the state),
then one all-gather gives every rank the updated parameters. DDP has already averaged the
gradients, so each piece's gradient is a view of p.grad. Clipping by the global norm needs one
all-reduced scalar (the sum of squares over each rank's pieces); each piece's gradient is then
scaled, in a copy, by the float32 coefficient the fused kernel would use and stepped unclipped:
the same arithmetic as the unsharded optimizer, whose parameters these stay equal to bit for bit
(up to the norm's summation order).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, overload

import numpy as np
import torch

from .._args import boolean
from ..distributed import core
from ..optim.optimizer import check_range

if TYPE_CHECKING:
    from torch.optim.optimizer import ParamsT

__all__ = ["ZeroRedundancy"]


def _flat(t):
    """A 1-d view of a dense tensor's memory, in memory order (channels_last included)."""
    return t.view(-1) if t.is_contiguous() else t.as_strided((t.numel(),), (1,))


class ZeroRedundancy(torch.optim.Optimizer):
    """`ZeroRedundancy(model.parameters(), fastopt.torch.optim.AdamW, lr=1e-3, max_grad_norm=1.0)`:
    optimizer_class's state sharded over the ranks of the initialized process group (torch
    DDP's; torch.distributed.init_process_group or fastopt.distributed.init). param_groups are
    the whole parameters' groups: LR schedulers and option edits work as usual (every rank alike).
    max_grad_norm / skip_nonfinite as fastopt.torch.optim's; grad_norm after a step with a norm
    pass is the global norm.

    Checkpoints as torch's ZeroRedundancyOptimizer: consolidate_state_dict(to=0) on every rank,
    then state_dict() on rank `to`: the unsharded optimizer's state_dict (torch's format), which
    optimizer_class itself or a ZeroRedundancy on any number of ranks loads (load_state_dict on
    every rank keeps that rank's part)."""

    def __init__(
        self,
        params: ParamsT,
        optimizer_class: type[torch.optim.Optimizer],
        *,
        max_grad_norm: float | None = None,
        skip_nonfinite: bool = False,
        **defaults: Any,
    ) -> None:
        _, dist = core.torch_modules()
        if not dist.is_initialized():
            raise RuntimeError(
                "ZeroRedundancy: no process group; initialize torch.distributed (or fastopt.distributed.init()) first"
            )
        if not isinstance(optimizer_class, type) or not issubclass(optimizer_class, torch.optim.Optimizer):
            raise TypeError(f"optimizer_class: expected a fastopt.torch.optim optimizer class, got {optimizer_class!r}")
        super().__init__(params, defaults)
        self.world, self.rank = dist.get_world_size(), dist.get_rank()
        if max_grad_norm is not None:
            max_grad_norm = check_range("max_grad_norm", max_grad_norm)
        self.max_grad_norm, self.skip_nonfinite = max_grad_norm, boolean(skip_nonfinite, "skip_nonfinite")
        self.grad_norm = None
        params = [p for g in self.param_groups for p in g["params"]]
        total = sum(p.numel() for p in params)
        self.chunk = -(-total // self.world)
        self.lo, self.hi = min(self.rank * self.chunk, total), min((self.rank + 1) * self.chunk, total)
        self.total, self._ranges, shards, start = total, [], [], 0
        for group in self.param_groups:
            pieces = []
            for p in group["params"]:
                a, b = start, start + p.numel()
                s = min(max(a, self.lo), b)
                e = max(min(b, self.hi), s)
                self._ranges.append((p, a, b, s, e))
                pieces.append(_flat(p.detach())[s - a : e - a])
                start = b
            shards.append({**{k: v for k, v in group.items() if k != "params"}, "params": pieces})
        self.shard = optimizer_class(shards, **defaults)
        self._consolidated = None

    # ------------------------------------------------------------------------------ step
    @overload
    def step(self, closure: None = None) -> None: ...

    @overload
    def step(self, closure: Callable[[], float]) -> float: ...

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group, inner in zip(self.param_groups, self.shard.param_groups):
            inner.update({k: v for k, v in group.items() if k != "params"})
        pieces = [inner_p for g in self.shard.param_groups for inner_p in g["params"]]
        for piece, (p, a, _, s, e) in zip(pieces, self._ranges):
            piece.grad = (
                None
                if p.grad is None
                else _flat(p.grad if p.grad.stride() == p.stride() else torch.empty_like(p).copy_(p.grad))[
                    s - a : e - a
                ]
            )
        self.grad_norm = None
        clip, skip = self.max_grad_norm, bool(self.skip_nonfinite)
        if clip is not None or skip:
            local = sum(float(torch.sum(q.grad.to(torch.float64) ** 2)) for q in pieces if q.grad is not None)
            norm = math.sqrt(core.global_sum("ZeroRedundancy: the global gradient norm", local))
            self.grad_norm = torch.tensor(norm, dtype=torch.float32)
            if not math.isfinite(norm):
                return loss  # every rank sees the same norm: all skip
            coef = np.float32(min(1.0, clip / (norm + 1e-6))) if clip is not None else np.float32(1)
            if coef != 1:  # a scaled copy: p.grad stays as it is, as with the fused clipping
                for q in pieces:
                    if q.grad is not None:
                        q.grad = q.grad * torch.tensor(coef, device=q.grad.device)
        self.shard.step()
        for q in pieces:
            q.grad = None
        self._all_gather()
        return loss

    def _pack(self, values):
        """This rank's chunk, padded to chunk length: values[i] is a flat piece of parameter i."""
        device = self._ranges[0][0].device
        flat = torch.zeros(self.chunk, dtype=torch.float32, device=device)
        for v, (_, _, _, s, e) in zip(values, self._ranges):
            if e > s:
                flat[s - self.lo : e - self.lo] = v.reshape(-1).to(torch.float32)
        return flat

    def _all_gather(self):
        _, dist = core.torch_modules()
        if self.world == 1:
            return
        pieces = [q for g in self.shard.param_groups for q in g["params"]]
        mine = self._pack(pieces)
        parts = [torch.empty_like(mine) for _ in range(self.world)]
        core.timed("ZeroRedundancy: all-gathering parameters", dist.all_gather, parts, mine)
        whole = torch.cat(parts)
        for p, a, b, _, _ in self._ranges:
            _flat(p.detach()).copy_(whole[a:b])

    # -------------------------------------------------------------------- checkpointing
    def consolidate_state_dict(self, to: int = 0) -> None:
        """Gather the unsharded state on rank `to` (a collective: every rank calls it)."""
        _, dist = core.torch_modules()
        shard = self.shard.state_dict()
        names = sorted({k for entry in shard["state"].values() for k in entry if k != "step"})
        full = {i: {} for i in range(len(self._ranges))}
        for i, entry in shard["state"].items():
            if "step" in entry:
                full[i]["step"] = entry["step"].clone()
        for name in names:
            mine = self._pack([shard["state"].get(i, {}).get(name, torch.zeros(0)) for i in range(len(self._ranges))])
            parts = [torch.empty_like(mine) for _ in range(self.world)] if self.rank == to else None
            core.collective("ZeroRedundancy.consolidate_state_dict", dist.gather, mine, parts, to)
            if parts is not None:
                whole = torch.cat(parts).cpu()
                for i, (p, a, b, _, _) in enumerate(self._ranges):
                    value = torch.empty_like(p, dtype=torch.float32, device="cpu")
                    _flat(value).copy_(whole[a:b])
                    full[i][name] = value
        groups, start = [], 0
        for group in self.param_groups:
            n = len(group["params"])
            options = {k: v for k, v in group.items() if k != "params"}
            groups.append({**options, "params": list(range(start, start + n))})
            start += n
        self._consolidated = (
            {"state": {i: e for i, e in full.items() if e}, "param_groups": groups} if self.rank == to else None
        )

    def state_dict(self) -> dict[str, Any]:
        if self._consolidated is None:
            raise RuntimeError(
                "ZeroRedundancy.state_dict: call consolidate_state_dict(to=rank) on every rank first, "
                "then state_dict() on that rank"
            )
        return self._consolidated

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Keep this rank's part of an unsharded state_dict (call it on every rank)."""
        groups = state_dict["param_groups"]
        if len(groups) != len(self.param_groups):
            raise ValueError(f"state_dict: has {len(groups)} parameter groups, this optimizer {len(self.param_groups)}")
        ids = [i for g in groups for i in g["params"]]
        if len(ids) != len(self._ranges):
            raise ValueError(f"state_dict: has {len(ids)} parameters, this optimizer {len(self._ranges)}")
        state = {}
        for k, (key, (p, a, _, s, e)) in enumerate(zip(ids, self._ranges)):
            entry = state_dict["state"].get(key)
            if entry is None:
                continue
            state[k] = {}
            for name, value in entry.items():
                if name != "step" and torch.is_tensor(value) and value.dim() > 0:
                    if tuple(value.shape) != tuple(p.shape):
                        raise ValueError(
                            f"state_dict['state'][{key!r}][{name!r}]: has shape {tuple(value.shape)}, "
                            f"its parameter {tuple(p.shape)}"
                        )
                    value = _flat(torch.empty_like(p, dtype=value.dtype).copy_(value))[s - a : e - a].clone()
                state[k][name] = value
        shard_groups = [
            {
                **g,
                "params": list(
                    range(sum(len(h["params"]) for h in groups[:gi]), sum(len(h["params"]) for h in groups[: gi + 1]))
                ),
            }
            for gi, g in enumerate(groups)
        ]
        self.shard.load_state_dict({"state": state, "param_groups": shard_groups})
        for group, inner in zip(self.param_groups, self.shard.param_groups):
            group.update({k: v for k, v in inner.items() if k != "params"})
