"""The optimizer machinery shared by every rule: param groups, state, the fused step, and
checkpointing. A concrete optimizer only names its defaults, checks them, and maps a group to
its update rule (optimizers.py)."""
from collections import namedtuple

import numpy as np

from .. import _C
from .._arrays import copy_, device_of, dtype_of, full_like, to_numpy, zeros

K = _C.OptKind

# State buffers per rule, in the order the native kernels take them (optim_rules.h).
STATE_NAMES = {
    K.SGD: (),
    K.SGD_MOMENTUM: ("momentum_buffer",),
    K.SGD_NESTEROV: ("momentum_buffer",),
    K.ADAGRAD: ("sum",),
    K.RMSPROP: ("square_avg",),
    K.RMSPROP_MOMENTUM: ("square_avg", "momentum_buffer"),
    K.RMSPROP_CENTERED: ("square_avg", "grad_avg"),
    K.RMSPROP_CENTERED_MOMENTUM: ("square_avg", "momentum_buffer", "grad_avg"),
    K.ADAM: ("exp_avg", "exp_avg_sq"),
    K.ADAM_AMSGRAD: ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"),
}

StepResult = namedtuple("StepResult", ["norm", "skipped"])
StepResult.__doc__ = """What a step reports.

norm: the global L2 norm of the gradients before clipping (None when no norm pass ran: no
max_grad_norm and no skip_nonfinite). skipped: True when a NaN/Inf gradient cancelled the step.
On the GPU both are 0-d DeviceArrays, so the step never waits for the host; float() / bool()
on them reads them back."""


def check_range(name, value, low=0.0, high=None, high_open=True):
    """Raise ValueError naming the argument unless low <= value (< or <=) high."""
    value = float(value)
    if not (value >= low and (high is None or (value < high if high_open else value <= high))):
        bound = f"in [{low}, {high}{')' if high_open else ']'}" if high is not None else f">= {low}"
        raise ValueError(f"{name}: must be {bound}, got {value}")
    return value


def group_hyper(rule, group):
    """The native step's hyper-parameters for one group, checked first: schedules and users may
    have edited the group since the last step. `rule` is an optimizer or its class (its _check,
    _kind and _fill read only the group and class attributes), so fastopt.torch.optim builds its
    steps here too."""
    cls = rule if isinstance(rule, type) else type(rule)
    cls._check(rule, group)
    h = _C.Hyper()
    h.kind = cls._kind(rule, group)
    h.lr = float(group["lr"])
    h.maximize = bool(group.get("maximize", False))
    cls._fill(rule, h, group)
    return h


class Optimizer:
    """Base class. Subclasses set `defaults` through __init__ and implement _check(group),
    _kind(group) -> _C.OptKind and _fill(hyper, group)."""

    def __init__(self, params, defaults):
        self.defaults = dict(defaults)
        self.param_groups = []
        self.state = []         # per flat parameter: {state name: array}
        self._params = []       # flat, group by group
        self._group_of = []
        self._steps = None      # int64 per parameter, on the parameters' device
        groups = list(params) if not hasattr(params, "shape") else [params]
        if not groups:
            raise ValueError("params: optimizer got an empty parameter list")
        if not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        for group in groups:
            self.add_param_group(group)

    # -------------------------------------------------------------------- groups and state
    def add_param_group(self, group):
        if not isinstance(group, dict) or "params" not in group:
            raise TypeError("param group: expected a dict with a 'params' entry")
        group = dict(group)
        params = group["params"]
        params = [params] if hasattr(params, "shape") else list(params)
        if not params:
            raise ValueError("params: a parameter group is empty")
        for key, value in self.defaults.items():
            group.setdefault(key, value)
        unknown = set(group) - set(self.defaults) - {"params", "initial_lr"}
        if unknown:
            raise ValueError(f"param group: unknown option(s) {sorted(unknown)}")
        self._check(group)
        seen = {id(p) for p in self._params}
        device = device_of(self._params[0]) if self._params else None
        for i, p in enumerate(params):
            if dtype_of(p) != np.float32:
                raise TypeError(f"params[{len(self._params) + i}]: expected float32, got {getattr(p, 'dtype', type(p).__name__)}")
            if id(p) in seen:
                raise ValueError(f"params[{len(self._params) + i}]: a parameter appears twice")
            seen.add(id(p))
            d = device_of(p)
            device = device or d
            if d != device:
                raise ValueError(f"params[{len(self._params) + i}]: on {d}, but the other parameters are on {device}")
        group["params"] = params
        gi = len(self.param_groups)
        self.param_groups.append(group)
        for p in params:
            self._params.append(p)
            self._group_of.append(gi)
            self.state.append({})
        old = to_numpy(self._steps) if self._steps is not None else np.zeros(0, np.int64)
        steps = np.concatenate([old, np.zeros(len(params), np.int64)])
        self._steps = steps if device == "cpu" else zeros(steps.shape, np.int64, device)
        if device != "cpu":
            copy_(self._steps, steps)
        self._state_cache = None

    def _buffers(self, i, kind):
        """Parameter i's state buffers for `kind`, creating missing ones (torch creates state
        lazily too: a group switched to momentum starts its buffer then)."""
        state = self.state[i]
        for name in STATE_NAMES[kind]:
            if name not in state:
                state[name] = full_like(self._params[i], self._initial_state(name, self.param_groups[self._group_of[i]]))
        return tuple(state[name] for name in STATE_NAMES[kind])

    def _initial_state(self, name, group):
        return 0.0

    # ------------------------------------------------------------------------------ step
    def step(self, grads, max_grad_norm=None, skip_nonfinite=False, stream=0):
        """Update every parameter from `grads` (aligned with the parameters, group by group).

        max_grad_norm: clip by the global L2 norm first, fused into the update (the gradients
        themselves are not modified). A NaN/Inf gradient skips the whole step when clipping or
        when skip_nonfinite=True: no parameter, state or step count changes. Returns StepResult.
        """
        grads = [grads] if hasattr(grads, "shape") else list(grads)
        if len(grads) != len(self._params):
            raise ValueError(f"grads: got {len(grads)} gradients for {len(self._params)} parameters")
        if max_grad_norm is not None:
            max_grad_norm = check_range("max_grad_norm", max_grad_norm)
        hypers = [group_hyper(self, group) for group in self.param_groups]
        kinds = tuple(h.kind for h in hypers)
        if self._state_cache is None or self._state_cache[0] != kinds:
            self._state_cache = (kinds, [self._buffers(i, kinds[g]) for i, g in enumerate(self._group_of)])
        norm, skipped = _C.optim_step(self._params, grads, self._state_cache[1], self._steps, hypers,
                                      self._group_of, max_grad_norm, bool(skip_nonfinite), stream)
        return StepResult(norm, skipped)

    # ------------------------------------------------------------------- checkpointing
    def state_dict(self):
        """A checkpoint as NumPy copies: {'state': {index: {'step': int, buffer: array}},
        'param_groups': [{options..., 'params': [indices]}]}, torch's layout, ready for np.savez
        or pickle. Loading it into an optimizer over the same parameters continues bit-identically."""
        steps = to_numpy(self._steps)
        state = {}
        for i, s in enumerate(self.state):
            entry = {"step": int(steps[i])}
            entry.update({name: to_numpy(buf) for name, buf in s.items()})
            state[i] = entry
        groups, start = [], 0
        for group in self.param_groups:
            g = {k: v for k, v in group.items() if k != "params"}
            g["params"] = list(range(start, start + len(group["params"])))
            start += len(group["params"])
            groups.append(g)
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict):
        groups = state_dict["param_groups"]
        if len(groups) != len(self.param_groups):
            raise ValueError(f"state_dict: has {len(groups)} parameter groups, this optimizer {len(self.param_groups)}")
        for gi, (saved, group) in enumerate(zip(groups, self.param_groups)):
            if len(saved["params"]) != len(group["params"]):
                raise ValueError(f"state_dict: group {gi} has {len(saved['params'])} parameters, expected {len(group['params'])}")
        steps = np.zeros(len(self._params), np.int64)
        new_state = []
        for i, p in enumerate(self._params):
            saved = state_dict["state"].get(i, state_dict["state"].get(str(i), {}))
            steps[i] = int(saved.get("step", 0))
            entry = {}
            for name, value in saved.items():
                if name == "step":
                    continue
                value = np.asarray(value, np.float32)
                if value.shape != tuple(p.shape):
                    raise ValueError(f"state_dict: state[{i}][{name!r}] has shape {value.shape}, parameter {tuple(p.shape)}")
                buf = self.state[i].get(name)
                if buf is None:
                    buf = full_like(p, 0.0)
                copy_(buf, value)
                entry[name] = buf
            new_state.append(entry)
        for saved, group in zip(groups, self.param_groups):
            group.update({k: v for k, v in saved.items() if k != "params"})
            self._check(group)
        self.state = new_state
        copy_(self._steps, steps)
        self._state_cache = None

    def __repr__(self):
        lines = [f"{type(self).__name__} ("]
        for i, group in enumerate(self.param_groups):
            opts = ", ".join(f"{k}={v}" for k, v in group.items() if k != "params")
            lines.append(f"  group {i}: {len(group['params'])} tensors, {opts}")
        return "\n".join(lines + [")"])
