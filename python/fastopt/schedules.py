"""Learning-rate schedules: set each param group's ``lr`` between optimizer steps.

The only thing a schedule assumes about an optimizer is ``optimizer.param_groups``,
a list of dicts with an ``'lr'`` key (it adds ``'initial_lr'``, as torch does).
Names, arguments, defaults and values follow torch.optim.lr_scheduler where torch
has the schedule. Differences from torch, all deliberate:

* Every schedule but ReduceLROnPlateau is a closed form lr(t) of the step count t
  and each group's initial lr (``base_lrs``), not torch's chain of multiplicative
  updates: no rounding accumulates, and a schedule does not follow an lr that
  someone else wrote into a group between steps.
* ``step()`` takes no epoch argument (deprecated in torch).
* ``load_state_dict`` writes the restored lrs back into the param groups, so a
  resume continues bit for bit even before the optimizer's own state is loaded.

Usage::

    sched = CosineAnnealingLR(opt, T_max=1000)
    for batch in data:
        ...; opt.step(); sched.step()

Composition: ``LinearWarmup(opt, 500, after=CosineAnnealingLR(opt, T_max=9500))``
ramps for 500 steps, then the cosine runs as if it had started at t = 500.

Arguments are checked at construction: a wrong kind of value (a str, a float for a step count, a
bool) raises TypeError, and one that could write a negative, NaN or infinite lr (gamma < 0,
eta_min < 0, a negative initial lr, decay_rate < 0, ...) raises ValueError, each naming the
argument; torch's own range checks (LinearLR's factors, ReduceLROnPlateau's factor < 1, ...) are
kept. A user's scale_fn is checked when it is called: an lr it would make impossible raises
ValueError and no group is written.
"""

from __future__ import annotations

import bisect
import copy
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from ._args import choice, finite, integer, real, shape
from ._types import HasParamGroups

__all__ = [
    "LRSchedule",
    "StepLR",
    "MultiStepLR",
    "ExponentialLR",
    "CosineAnnealingLR",
    "LinearLR",
    "CosineAnnealingWarmRestarts",
    "CyclicLR",
    "InverseTimeLR",
    "InverseSqrtLR",
    "LinearWarmup",
    "ReduceLROnPlateau",
]


def _param_groups(optimizer):
    groups = getattr(optimizer, "param_groups", None)
    if not isinstance(groups, list) or not all(isinstance(g, dict) and "lr" in g for g in groups):
        raise TypeError("optimizer must have param_groups: a list of dicts with an 'lr' key")
    return groups


def _per_group(name, value, groups):
    """One lr-like value >= 0 per group, from a list of them or one for all."""
    if isinstance(value, (list, tuple)):
        if len(value) != len(groups):
            raise ValueError(f"{name}: expected {len(groups)} values (one per param group), got {len(value)}")
        return [_rate(v, f"{name}[{i}]") for i, v in enumerate(value)]
    return [_rate(value, name)] * len(groups)


def _rate(value, name):
    """An lr, or a factor or bound of one: a finite real number >= 0."""
    return finite(value, name, 0.0)


def _steps(value, name, minimum=1):
    return integer(value, name, minimum)


class _Scheduler:
    """Bookkeeping every schedule shares: the optimizer, lrs out, state in and out."""

    def __init__(self, optimizer: HasParamGroups) -> None:
        _param_groups(optimizer)
        self.optimizer = optimizer

    def get_last_lr(self) -> list[float]:
        """The lrs this schedule last wrote, one per param group."""
        return list(self._last_lr)

    def _set_lrs(self, lrs):
        for i, lr in enumerate(lrs):
            if not (math.isfinite(lr) and lr >= 0):
                raise ValueError(
                    f"{type(self).__name__}: computed lr {lr!r} for param group {i} at step "
                    f"{getattr(self, 'last_epoch', 0)}; an lr must be finite and >= 0"
                )
        for group, lr in zip(self.optimizer.param_groups, lrs):
            group["lr"] = lr
        self._last_lr = list(lrs)

    def state_dict(self) -> dict[str, Any]:
        """Everything but the optimizer (and user callables, which do not pickle)."""
        out = {}
        for key, value in vars(self).items():
            if key == "optimizer" or callable(value):
                continue
            out[key] = value.state_dict() if isinstance(value, _Scheduler) else copy.deepcopy(value)
        return out

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        for key, value in state_dict.items():
            current = getattr(self, key, None)
            if callable(current):
                continue  # a user's scale function stays the one given to the constructor
            if isinstance(current, _Scheduler):
                current.load_state_dict(value)
            else:
                setattr(self, key, copy.deepcopy(value))
        self._set_lrs(self._last_lr)


class LRSchedule(_Scheduler):
    """Base of the closed-form schedules: lr_t = lr_at(t, base_lr) for each group.

    t = ``last_epoch`` counts the ``step()`` calls; the constructor applies t = 0
    (or t = last_epoch + 1 when resuming with ``last_epoch >= 0``, which needs
    ``'initial_lr'`` in every group, as in torch). Subclasses set their attributes,
    then call ``super().__init__`` and define ``lr_at`` (or ``lrs_at``).
    """

    def __init__(
        self, optimizer: HasParamGroups, last_epoch: int = -1, base_lrs: Sequence[float] | None = None
    ) -> None:
        super().__init__(optimizer)
        last_epoch = integer(last_epoch, "last_epoch", -1)
        groups = optimizer.param_groups
        if base_lrs is None:
            if last_epoch >= 0 and not all("initial_lr" in g for g in groups):
                raise KeyError("resuming with last_epoch >= 0 needs 'initial_lr' in every param group")
            keys = ["initial_lr" if "initial_lr" in g else "lr" for g in groups]
            base_lrs = [
                _rate(g[k], f"optimizer.param_groups[{i}][{k!r}]") for i, (g, k) in enumerate(zip(groups, keys))
            ]
        if last_epoch == -1:
            for group in groups:
                group.setdefault("initial_lr", group["lr"])
        self.base_lrs = list(base_lrs)
        self.last_epoch = last_epoch
        self.step()

    def lr_at(self, t: int, base_lr: float) -> float:
        raise NotImplementedError

    def lrs_at(self, t: int) -> list[float]:
        """The lr of every group after t steps (pure: changes nothing)."""
        return [self.lr_at(t, b) for b in self.base_lrs]

    def step(self) -> None:
        self.last_epoch += 1
        self._set_lrs(self.lrs_at(self.last_epoch))

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self._set_lrs(self.lrs_at(self.last_epoch))


class StepLR(LRSchedule):
    """lr_t = base_lr * gamma^floor(t / step_size)."""

    def __init__(self, optimizer: HasParamGroups, step_size: int, gamma: float = 0.1, last_epoch: int = -1) -> None:
        self.step_size = _steps(step_size, "step_size")
        self.gamma = _rate(gamma, "gamma")
        super().__init__(optimizer, last_epoch)

    def lr_at(self, t: int, base_lr: float) -> float:
        return base_lr * self.gamma ** (t // self.step_size)


class MultiStepLR(LRSchedule):
    """lr_t = base_lr * gamma^(number of milestones <= t); a repeated milestone counts twice."""

    def __init__(
        self, optimizer: HasParamGroups, milestones: Sequence[int], gamma: float = 0.1, last_epoch: int = -1
    ) -> None:
        self.milestones = sorted(shape(milestones, "milestones", 0, ints_ok=False))
        self.gamma = _rate(gamma, "gamma")
        super().__init__(optimizer, last_epoch)

    def lr_at(self, t: int, base_lr: float) -> float:
        return base_lr * self.gamma ** bisect.bisect_right(self.milestones, t)


class ExponentialLR(LRSchedule):
    """lr_t = base_lr * gamma^t."""

    def __init__(self, optimizer: HasParamGroups, gamma: float, last_epoch: int = -1) -> None:
        self.gamma = _rate(gamma, "gamma")
        super().__init__(optimizer, last_epoch)

    def lr_at(self, t: int, base_lr: float) -> float:
        return base_lr * self.gamma**t


def _cosine(eta_min, base_lr, t_cur, t_max):
    return eta_min + (base_lr - eta_min) * (1.0 + math.cos(math.pi * t_cur / t_max)) / 2.0


class CosineAnnealingLR(LRSchedule):
    """lr_t = eta_min + (base_lr - eta_min) (1 + cos(pi t / T_max)) / 2.

    Past T_max the cosine carries on (back up to base_lr at 2 T_max), as torch's does.
    """

    def __init__(self, optimizer: HasParamGroups, T_max: int, eta_min: float = 0.0, last_epoch: int = -1) -> None:
        self.T_max = _steps(T_max, "T_max")
        self.eta_min = _rate(eta_min, "eta_min")
        super().__init__(optimizer, last_epoch)

    def lr_at(self, t: int, base_lr: float) -> float:
        return _cosine(self.eta_min, base_lr, t, self.T_max)


class LinearLR(LRSchedule):
    """lr_t = base_lr * (s + (e - s) min(t, total_iters) / total_iters),  s, e = start/end factor."""

    def __init__(
        self,
        optimizer: HasParamGroups,
        start_factor: float = 1.0 / 3,
        end_factor: float = 1.0,
        total_iters: int = 5,
        last_epoch: int = -1,
    ) -> None:
        self.start_factor = real(start_factor, "start_factor", 0.0, 1.0, low_open=True)
        self.end_factor = real(end_factor, "end_factor", 0.0, 1.0)
        self.total_iters = _steps(total_iters, "total_iters")
        super().__init__(optimizer, last_epoch)

    def lr_at(self, t: int, base_lr: float) -> float:
        frac = min(t, self.total_iters) / self.total_iters
        return base_lr * (self.start_factor + (self.end_factor - self.start_factor) * frac)


class CosineAnnealingWarmRestarts(LRSchedule):
    """SGDR (Loshchilov & Hutter): cosine from base_lr down towards eta_min, restarted
    after T_0 steps, then after T_0 T_mult, T_0 T_mult^2, ... more.

        lr_t = eta_min + (base_lr - eta_min) (1 + cos(pi T_cur / T_i)) / 2
    with T_i the current period and T_cur the steps taken since the last restart.
    """

    def __init__(
        self, optimizer: HasParamGroups, T_0: int, T_mult: int = 1, eta_min: float = 0.0, last_epoch: int = -1
    ) -> None:
        self.T_0 = _steps(T_0, "T_0")
        self.T_mult = _steps(T_mult, "T_mult")
        self.eta_min = _rate(eta_min, "eta_min")
        super().__init__(optimizer, last_epoch)

    def period(self, t: int) -> tuple[int, int]:
        """(T_cur, T_i) at step t, in exact integer arithmetic."""
        if self.T_mult == 1:
            return t % self.T_0, self.T_0
        t_cur, t_i = t, self.T_0
        while t_cur >= t_i:
            t_cur -= t_i
            t_i *= self.T_mult
        return t_cur, t_i

    def lr_at(self, t: int, base_lr: float) -> float:
        t_cur, t_i = self.period(t)
        return _cosine(self.eta_min, base_lr, t_cur, t_i)


class CyclicLR(LRSchedule):
    """Cyclical learning rate (Smith 2017): up from base_lr to max_lr in step_size_up
    steps, back down in step_size_down (default: step_size_up), and again.

        cycle = 1 + floor(t / (up + down)),  u = t mod (up + down)
        h_t   = u / up  if u <= up  else  (up + down - u) / down        (0 .. 1 .. 0)
        lr_t  = base_lr + (max_lr - base_lr) h_t s
    with the amplitude scale s = 1 ('triangular'), 1 / 2^(cycle - 1) ('triangular2'),
    gamma^t ('exp_range'), or scale_fn(cycle) / scale_fn(t) for scale_mode
    'cycle' / 'iterations'. base_lr and max_lr are floats or one per group; the
    groups' lrs start at base_lr. Only the lr cycles (torch can cycle momentum too).
    """

    _MODES = ("triangular", "triangular2", "exp_range")

    def __init__(
        self,
        optimizer: HasParamGroups,
        base_lr: float | Sequence[float],
        max_lr: float | Sequence[float],
        step_size_up: int = 2000,
        step_size_down: int | None = None,
        mode: str = "triangular",
        gamma: float = 1.0,
        scale_fn: Callable[[int], float] | None = None,
        scale_mode: str = "cycle",
        last_epoch: int = -1,
    ) -> None:
        groups = _param_groups(optimizer)
        base_lrs = _per_group("base_lr", base_lr, groups)
        self.max_lrs = _per_group("max_lr", max_lr, groups)
        self.step_size_up = _steps(step_size_up, "step_size_up")
        self.step_size_down = _steps(step_size_up if step_size_down is None else step_size_down, "step_size_down")
        if scale_fn is None:
            choice(mode, "mode", self._MODES)
        elif not callable(scale_fn):
            raise TypeError(f"scale_fn: expected a function of the cycle or step count, got {type(scale_fn).__name__}")
        self.mode, self.gamma = mode, _rate(gamma, "gamma")
        self.scale_fn, self.scale_mode = scale_fn, choice(scale_mode, "scale_mode", ("cycle", "iterations"))
        if last_epoch == -1:
            for group, lr in zip(groups, base_lrs):
                group["lr"] = lr
        super().__init__(optimizer, last_epoch, base_lrs=base_lrs)

    def _scale(self, cycle, t):
        if self.scale_fn is not None:
            arg = cycle if self.scale_mode == "cycle" else t
            return _rate(self.scale_fn(arg), f"scale_fn({arg})")
        if self.mode == "triangular":
            return 1.0
        if self.mode == "triangular2":
            return 1.0 / 2.0 ** (cycle - 1)
        return self.gamma**t

    def height(self, t: int) -> tuple[float, int]:
        """(h_t, cycle): position on the triangle, 0 at base_lr and 1 at max_lr."""
        total = self.step_size_up + self.step_size_down
        cycle, u = 1 + t // total, t % total
        if u <= self.step_size_up:
            return u / self.step_size_up, cycle
        return (total - u) / self.step_size_down, cycle

    def lrs_at(self, t: int) -> list[float]:
        h, cycle = self.height(t)
        s = self._scale(cycle, t)
        return [b + (m - b) * h * s for b, m in zip(self.base_lrs, self.max_lrs)]


class InverseTimeLR(LRSchedule):
    """The "1/t" decay: lr_t = base_lr / (1 + decay_rate t / decay_steps)."""

    def __init__(
        self, optimizer: HasParamGroups, decay_rate: float, decay_steps: int = 1, last_epoch: int = -1
    ) -> None:
        self.decay_rate = _rate(decay_rate, "decay_rate")
        self.decay_steps = finite(decay_steps, "decay_steps", 0.0, low_open=True)
        super().__init__(optimizer, last_epoch)

    def lr_at(self, t: int, base_lr: float) -> float:
        return base_lr / (1.0 + self.decay_rate * t / self.decay_steps)


class InverseSqrtLR(LRSchedule):
    """Transformer-style inverse square root decay, normalized to base_lr at its peak:

        lr_t = base_lr * min(1, sqrt(warmup_steps / t))       (lr_0 = base_lr)

    Flat for t <= warmup_steps, then proportional to 1/sqrt(t): Vaswani et al.'s
    schedule with the linear ramp replaced by a plateau at the peak. (Note that
    ``LinearWarmup(opt, w, after=InverseSqrtLR(opt, w))`` ramps for w steps, stays
    flat for w more, then decays, because ``after`` sees t - w.)
    """

    def __init__(self, optimizer: HasParamGroups, warmup_steps: int, last_epoch: int = -1) -> None:
        self.warmup_steps = _steps(warmup_steps, "warmup_steps")
        super().__init__(optimizer, last_epoch)

    def lr_at(self, t: int, base_lr: float) -> float:
        if t <= self.warmup_steps:
            return base_lr
        return base_lr * math.sqrt(self.warmup_steps / t)


class LinearWarmup(LRSchedule):
    """Linear warm-up, then hand over to another schedule.

        lr_t = base_lr * (s + (1 - s) t / warmup_steps)     for t < warmup_steps
        lr_t = after's lr at t - warmup_steps                for t >= warmup_steps
               (base_lr when after is None)
    s = start_factor (default 0: the very first step uses lr 0, as in the common
    "linear warm-up from zero"). ``after`` must be a closed-form schedule built on
    the same optimizer; it is never stepped itself (only asked for lrs_at), so step
    only the LinearWarmup. For the ramp to meet ``after`` continuously, after's lr
    at its t = 0 should be base_lr, which holds for all schedules here but CyclicLR.
    """

    def __init__(
        self,
        optimizer: HasParamGroups,
        warmup_steps: int,
        after: LRSchedule | None = None,
        start_factor: float = 0.0,
        last_epoch: int = -1,
    ) -> None:
        self.warmup_steps = _steps(warmup_steps, "warmup_steps", minimum=0)
        start_factor = real(start_factor, "start_factor", 0.0, 1.0)
        if after is not None:
            if not isinstance(after, LRSchedule):
                raise TypeError("after must be a closed-form schedule (not ReduceLROnPlateau)")
            if after.optimizer is not optimizer:
                raise ValueError("after must be built on the same optimizer")
        self.start_factor = start_factor
        self.after = after
        super().__init__(optimizer, last_epoch)

    def lrs_at(self, t: int) -> list[float]:
        w, s = self.warmup_steps, self.start_factor
        if t < w:
            return [b * (s + (1.0 - s) * t / w) for b in self.base_lrs]
        if self.after is None:
            return list(self.base_lrs)
        return self.after.lrs_at(t - w)


class ReduceLROnPlateau(_Scheduler):
    """Multiply the lrs by ``factor`` when a metric has stopped improving.

    ``step(metric)`` once per evaluation. A metric is an improvement on the best
    so far when (mode, threshold_mode):

        min, rel: metric < best (1 - threshold)      min, abs: metric < best - threshold
        max, rel: metric > best (1 + threshold)      max, abs: metric > best + threshold

    (For 'rel' with a negative best this moves the bar the other way; that is
    torch's rule too.) After more than ``patience`` non-improving steps in a row,
    each group's lr becomes max(lr * factor, min_lr), unless that changes it by
    no more than eps; then ``cooldown`` steps follow in which bad steps are not
    counted. This one is stateful by nature: it scales the groups' current lrs.
    """

    def __init__(
        self,
        optimizer: HasParamGroups,
        mode: str = "min",
        factor: float = 0.1,
        patience: int = 10,
        threshold: float = 1e-4,
        threshold_mode: str = "rel",
        cooldown: int = 0,
        min_lr: float | Sequence[float] = 0.0,
        eps: float = 1e-8,
    ) -> None:
        super().__init__(optimizer)
        self.mode = choice(mode, "mode", ("min", "max"))
        self.factor = real(factor, "factor", 0.0, 1.0, high_open=True)
        self.patience = _steps(patience, "patience", minimum=0)
        self.threshold = _rate(threshold, "threshold")
        self.threshold_mode = choice(threshold_mode, "threshold_mode", ("rel", "abs"))
        self.cooldown = _steps(cooldown, "cooldown", minimum=0)
        self.eps = _rate(eps, "eps")
        self.min_lrs = _per_group("min_lr", min_lr, optimizer.param_groups)
        self.best = math.inf if mode == "min" else -math.inf
        self.num_bad_epochs = 0
        self.cooldown_counter = 0
        self.last_epoch = 0
        self._last_lr = [g["lr"] for g in optimizer.param_groups]

    def is_better(self, a: float, best: float) -> bool:
        if self.mode == "min":
            bar = best * (1.0 - self.threshold) if self.threshold_mode == "rel" else best - self.threshold
            return a < bar
        bar = best * (1.0 + self.threshold) if self.threshold_mode == "rel" else best + self.threshold
        return a > bar

    @property
    def in_cooldown(self) -> bool:
        return self.cooldown_counter > 0

    def step(self, metric: float | np.ndarray) -> None:
        """metric: a real number (Python, NumPy, or a 0-d array); NaN counts as no improvement."""
        if isinstance(metric, np.ndarray) and metric.ndim == 0:
            metric = metric[()]
        current = real(metric, "metric")
        self.last_epoch += 1
        if self.is_better(current, self.best):
            self.best = current
            self.num_bad_epochs = 0
        else:
            self.num_bad_epochs += 1
        if self.in_cooldown:
            self.cooldown_counter -= 1
            self.num_bad_epochs = 0
        if self.num_bad_epochs > self.patience:
            for group, min_lr in zip(self.optimizer.param_groups, self.min_lrs):
                old = float(group["lr"])
                new = max(old * self.factor, min_lr)
                if old - new > self.eps:
                    group["lr"] = new
            self.cooldown_counter = self.cooldown
            self.num_bad_epochs = 0
        self._last_lr = [g["lr"] for g in self.optimizer.param_groups]
