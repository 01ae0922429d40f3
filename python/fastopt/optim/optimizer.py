"""The optimizer machinery shared by every rule: param groups, state, the fused step, and
checkpointing. A concrete optimizer only names its defaults, checks them, and maps a group to
its update rule (optimizers.py)."""

from __future__ import annotations

from collections import namedtuple
from collections.abc import Mapping
from typing import Any

import numpy as np

from .. import _C
from .._args import boolean, choice, finite, integer, real, stream as stream_arg, uint64
from .._arrays import BFLOAT16, LOW_PRECISION, copy_, device_of, dtype_of, full_like, to_device, to_numpy, zeros
from .._types import Arrays, Params, Stream

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


# The fp32 master copy of a bfloat16/float16 parameter (master_weights=True), kept in its state.
MASTER = "master"

# Buffers that only ever accumulate squares: a negative entry cannot come from any trajectory.
NONNEGATIVE_STATE = ("sum", "square_avg", "exp_avg_sq", "max_exp_avg_sq")


def check_range(name, value, low=0.0, high=None, high_open=True):
    """float(value) for a real number (never a bool or a str) in [low, high) ([low, high] unless
    high_open; no upper end when high is None), else TypeError / ValueError naming the argument."""
    if high is None:
        return real(value, name, low)
    return real(value, name, low, high, high_open=high_open)


def option_name(prefix, key):
    return f"{prefix}[{key!r}]" if prefix else key


def group_hyper(rule, group, prefix=""):
    """Check a param group's options against the optimizer class `rule` and return the native
    Hyper of its update. Errors name the option as prefix[key] (just the key without a prefix)."""
    missing = [key for key in rule.OPTIONS if key not in group]
    if missing:
        raise ValueError(f"{prefix or 'param group'}: missing option(s) {missing}")
    for key, check in rule.OPTIONS.items():
        check(group[key], option_name(prefix, key))
    if "initial_lr" in group:
        nonnegative(group["initial_lr"], option_name(prefix, "initial_lr"))
    l1 = nonnegative(group.get("l1", 0.0), option_name(prefix, "l1"))
    rule._check_rule(group, prefix)
    if group["master_weights"] and group["stochastic_rounding"]:
        raise ValueError(
            f"{option_name(prefix, 'stochastic_rounding')}: rounds parameters that have no master "
            "weights; with master_weights=True the fp32 master keeps every update (pick one)"
        )
    h = _C.Hyper()
    h.kind = rule._kind(group)
    h.lr = float(group["lr"])
    h.maximize = bool(group["maximize"])
    h.stochastic_rounding = bool(group["stochastic_rounding"])
    h.seed = int(group["seed"])
    h.l1 = l1
    rule._fill(h, group)
    return h


# Option checks, (value, name) -> value: optimizer hyperparameters are finite real numbers.
def any_real(value, name):
    return finite(value, name)


def nonnegative(value, name):
    return finite(value, name, 0.0)


def unit(value, name):
    return finite(value, name, 0.0, 1.0)


def state_dtype(value, name):
    """The canonical name of a state dtype option: "float32" or "bfloat16" (given as that str, a
    NumPy / ml_dtypes dtype or type, or a torch dtype)."""
    if isinstance(value, (np.dtype, type)):
        value = np.dtype(value).name
    elif type(value).__module__ == "torch":  # torch.float32 / torch.bfloat16
        value = str(value).removeprefix("torch.")
    return choice(value, name, ("float32", "bfloat16"))


STATE_DTYPES = {"float32": np.dtype(np.float32), "bfloat16": BFLOAT16}

# Options of every optimizer: how bfloat16/float16 parameters and the state are stored (see Optimizer).
PRECISION_OPTIONS = dict(master_weights=boolean, stochastic_rounding=boolean, seed=uint64, state_dtype=state_dtype)


def betas(value, name):
    if not isinstance(value, (tuple, list)):
        raise TypeError(f"{name}: expected a pair of real numbers, got {type(value).__name__}")
    if len(value) != 2:
        raise ValueError(f"{name}: expected a pair, got {tuple(value)!r}")
    return tuple(finite(b, f"{name}[{i}]", 0.0, 1.0, high_open=True) for i, b in enumerate(value))


def _index(key, n, where):
    """The flat parameter index a checkpoint's state key names (an int, or its str from JSON)."""
    if isinstance(key, str) and key.isdigit():
        key = int(key)
    if isinstance(key, (bool, np.bool_)) or not isinstance(key, (int, np.integer)) or not 0 <= key < n:
        raise ValueError(f"{where}: key {key!r} names no parameter (this optimizer has {n}, indexed 0 to {n - 1})")
    return int(key)


def _loaded(check, value, name, *args):
    """check(value, name, ...) where a wrong kind is a corrupt checkpoint too: ValueError."""
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value[()]  # np.savez stores Python scalars as 0-d arrays
    try:
        return check(value, name, *args)
    except TypeError as e:
        raise ValueError(str(e)) from None


class Optimizer:
    """Base class. A subclass names its options and their checks (OPTIONS, option -> check(value,
    name)) and the update rules it may use (KINDS), passes its defaults to __init__, and implements
    _kind(group) -> _C.OptKind and _fill(hyper, group) (and _check_rule(group, prefix) for checks
    across options), all classmethods, so that a group can be checked without an instance.

    Parameters are float32, or bfloat16 / float16 (CPU; NumPy ml_dtypes arrays or torch tensors),
    each with a gradient of its own dtype. State is float32, or with state_dtype="bfloat16" (CPU)
    bfloat16: half the state's memory and bytes per step (AdamW on float32 parameters: 28 -> 20 B
    per element). The rule still runs in fp32; each new state value is rounded stochastically
    (Philox words of its own, deterministic in seed, parameter, step and element), because
    round-to-nearest would drop every increment under half a bf16 ulp: Adam's second moment moves
    by 0.1% of itself a step, and would freeze. A buffer found in the other dtype (a checkpoint,
    or the option changed) is converted at the next step: widened exactly, or rounded to nearest.
    Three options of every group say how a low-precision parameter is stored:
    - master_weights=True: the optimizer keeps a float32 master copy (state 'master', in
      state_dict; made from the parameter at its first step). The fused step reads the bf16/fp16
      gradient, updates the master and the state in fp32 and writes the parameter rounded to
      nearest even, in one pass: the master follows the float32 optimizer's trajectory on the
      upcast gradients bit for bit. The optimizer then owns the values: a parameter changed from
      outside is overwritten at the next step (load a state_dict instead).
    - stochastic_rounding=True (bfloat16 only, no master): the updated value is rounded up or down
      with probability given by Philox bits, unbiased, deterministic in (seed, parameter index,
      step): small updates survive on average instead of rounding away.
    - neither: the update is computed in fp32 and rounded to nearest even (updates below half a
      bf16 ulp of the parameter are lost, as with torch's optimizers on bf16 parameters).
    float32 parameters ignore all three.

    Any group may also set l1 >= 0 (absent: 0), L1 regularization: l1 * sign(p) is added to the
    gradient inside the fused update (after the L2 term), every rule alike."""

    OPTIONS = {}
    KINDS = ()

    def __init__(self, params: Params, defaults: Mapping[str, Any]) -> None:
        self.defaults = dict(defaults)
        group_hyper(type(self), self.defaults)  # a bad default is named plainly: "lr: ..."
        self.param_groups = []
        self.state = []  # per flat parameter: {state name: array}
        self._params = []  # flat, group by group
        self._group_of = []
        self._steps = None  # int64 per parameter, on the parameters' device
        groups = _as_list(params, "params")
        if not groups:
            raise ValueError("params: optimizer got an empty parameter list")
        if not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        for group in groups:
            self.add_param_group(group)

    @classmethod
    def _check_rule(cls, group, prefix):
        pass

    @classmethod
    def state_names(cls) -> set[str]:
        """Every state buffer this optimizer's rules keep."""
        return {name for kind in cls.KINDS for name in STATE_NAMES[kind]}

    def _hyper(self, group, prefix):
        unknown = set(group) - set(self.defaults) - {"params", "initial_lr", "l1"}
        if unknown:
            raise ValueError(f"{prefix}: unknown option(s) {sorted(unknown)} for {type(self).__name__}")
        return group_hyper(type(self), group, prefix)

    # -------------------------------------------------------------------- groups and state
    def add_param_group(self, group: dict[str, Any]) -> None:
        if not isinstance(group, dict) or "params" not in group:
            raise TypeError("param group: expected a dict with a 'params' entry")
        group = dict(group)
        gi = len(self.param_groups)
        params = _as_list(group["params"], f"param_groups[{gi}]['params']")
        if not params:
            raise ValueError("params: a parameter group is empty")
        for key, value in self.defaults.items():
            group.setdefault(key, value)
        self._hyper(group, f"param_groups[{gi}]")
        seen = {id(p) for p in self._params}
        device = device_of(self._params[0]) if self._params else None
        for i, p in enumerate(params):
            dt = dtype_of(p)
            if dt != np.float32 and dt not in LOW_PRECISION:
                raise TypeError(
                    f"params[{len(self._params) + i}]: expected float32, bfloat16 or float16, "
                    f"got {getattr(p, 'dtype', type(p).__name__)}"
                )
            if dt == np.float16 and device_of(p) != "cpu":
                raise TypeError(
                    f"params[{len(self._params) + i}]: float16 on the GPU: not yet (issue 21); "
                    "fastopt's CUDA optimizers take float32 and bfloat16 parameters"
                )
            if id(p) in seen:
                raise ValueError(f"params[{len(self._params) + i}]: a parameter appears twice")
            seen.add(id(p))
            d = device_of(p)
            device = device or d
            if d != device:
                raise ValueError(f"params[{len(self._params) + i}]: on {d}, but the other parameters are on {device}")
        group["params"] = params
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
        """Parameter i's state buffers for `kind` in the group's state dtype, creating missing ones
        (torch creates state lazily too: a group switched to momentum starts its buffer then) and
        converting ones held in the other dtype."""
        state, p = self.state[i], self._params[i]
        group = self.param_groups[self._group_of[i]]
        dtype = STATE_DTYPES[state_dtype(group["state_dtype"], "state_dtype")]
        if dtype == BFLOAT16 and device_of(p) != "cpu":
            raise ValueError(
                f"param_groups[{self._group_of[i]}]['state_dtype']: bfloat16 state on the GPU: not yet; "
                "fastopt's CUDA optimizers keep float32 state"
            )
        for name in STATE_NAMES[kind]:
            if name not in state:
                state[name] = full_like(p, self._initial_state(name, group), dtype)
            elif dtype_of(state[name]) != dtype:
                value = to_numpy(state[name]).astype(dtype)
                state[name] = value if device_of(p) == "cpu" else to_device(value, device_of(p))
        return tuple(state[name] for name in STATE_NAMES[kind])

    @classmethod
    def _initial_state(cls, name, group):
        return 0.0

    def _master(self, i, on):
        """Parameter i's fp32 master (made from the parameter when missing), or None when its group
        keeps none or it is float32. A master dropped while master_weights is off is made afresh
        when it comes back on, so it never resumes from stale values."""
        state, p = self.state[i], self._params[i]
        if not on or dtype_of(p) not in LOW_PRECISION:
            state.pop(MASTER, None)
            return None
        if MASTER not in state:
            master = to_numpy(p).astype(np.float32)
            state[MASTER] = master if device_of(p) == "cpu" else to_device(master, device_of(p))
        return state[MASTER]

    # ------------------------------------------------------------------------------ step
    def step(
        self, grads: Arrays, max_grad_norm: float | None = None, skip_nonfinite: bool = False, stream: Stream = 0
    ) -> StepResult:
        """Update every parameter from `grads` (aligned with the parameters, group by group).

        max_grad_norm: clip by the global L2 norm first, fused into the update (the gradients
        themselves are not modified). A NaN/Inf gradient skips the whole step when clipping or
        when skip_nonfinite=True: no parameter, state or step count changes. Returns StepResult.
        """
        grads = [grads] if hasattr(grads, "shape") else _as_list(grads, "grads")
        if len(grads) != len(self._params):
            raise ValueError(f"grads: got {len(grads)} gradients for {len(self._params)} parameters")
        if max_grad_norm is not None:
            max_grad_norm = check_range("max_grad_norm", max_grad_norm)
        skip_nonfinite, stream = boolean(skip_nonfinite, "skip_nonfinite"), stream_arg(stream)
        # Schedules and users may have edited the groups since the last step: check them again.
        hypers = [self._hyper(group, f"param_groups[{gi}]") for gi, group in enumerate(self.param_groups)]
        kinds = tuple(h.kind for h in hypers)
        masters_on = tuple(bool(group["master_weights"]) for group in self.param_groups)
        state_dtypes = tuple(group["state_dtype"] for group in self.param_groups)
        key = (kinds, masters_on, state_dtypes)
        if self._state_cache is None or self._state_cache[0] != key:
            buffers = [self._buffers(i, kinds[g]) for i, g in enumerate(self._group_of)]
            masters = [self._master(i, masters_on[g]) for i, g in enumerate(self._group_of)]
            self._state_cache = (key, buffers, None if all(m is None for m in masters) else masters)
        norm, skipped = _C.optim_step(
            self._params,
            grads,
            self._state_cache[1],
            self._steps,
            hypers,
            self._group_of,
            max_grad_norm,
            skip_nonfinite,
            stream,
            self._state_cache[2],
        )
        return StepResult(norm, skipped)

    # ------------------------------------------------------------------- checkpointing
    def state_dict(self) -> dict[str, Any]:
        """A checkpoint as NumPy copies: {'state': {index: {'step': int, buffer: array}},
        'param_groups': [{options..., 'params': [indices]}]}, torch's layout, ready for np.savez
        or pickle; the fp32 master of a bf16/fp16 parameter is its buffer 'master'. Loading it into
        an optimizer over the same parameters continues bit-identically."""
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

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Continue from a state_dict() checkpoint. Everything is checked before anything changes:
        a checkpoint that does not fit this optimizer (entries missing, another optimizer's options
        or buffers, buffers of the wrong shape or dtype, non-finite or impossible values, negative
        or non-integer step counts) raises ValueError naming the entry and leaves it as it was."""
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"state_dict: expected a dict, got {type(state_dict).__name__}")
        for key in ("state", "param_groups"):
            if key not in state_dict:
                raise ValueError(f"state_dict: missing the {key!r} entry (not an optimizer checkpoint?)")
        options = self._loaded_groups(state_dict["param_groups"])
        state, steps = self._loaded_state(state_dict["state"])
        for group, saved in zip(self.param_groups, options):
            group.update(saved)
        for i, (p, entry) in enumerate(zip(self._params, state)):
            on_cpu = device_of(p) == "cpu"
            for name, value in entry.items():
                if not on_cpu:
                    value = value.astype(np.float32)  # GPU state is float32: a bf16 buffer widens exactly
                buf = self.state[i].get(name)
                if buf is None or dtype_of(buf) != value.dtype:
                    buf = full_like(p, 0.0, value.dtype)
                if on_cpu:
                    np.copyto(buf, value)
                else:
                    copy_(buf, value)
                entry[name] = buf
        self.state = state
        copy_(self._steps, steps)
        self._state_cache = None

    def _loaded_groups(self, groups):
        """The options of every saved group, checked as this optimizer's (nothing is changed)."""
        if not isinstance(groups, (list, tuple)):
            raise ValueError(f"state_dict['param_groups']: expected a list of dicts, got {type(groups).__name__}")
        if len(groups) != len(self.param_groups):
            raise ValueError(f"state_dict: has {len(groups)} parameter groups, this optimizer {len(self.param_groups)}")
        out = []
        for gi, (saved, group) in enumerate(zip(groups, self.param_groups)):
            where = f"state_dict['param_groups'][{gi}]"
            if not isinstance(saved, Mapping) or not isinstance(saved.get("params"), (list, tuple)):
                raise ValueError(f"{where}: expected a dict with a 'params' list")
            if len(saved["params"]) != len(group["params"]):
                raise ValueError(
                    f"state_dict: group {gi} has {len(saved['params'])} parameters, expected {len(group['params'])}"
                )
            options = {k: v for k, v in saved.items() if k != "params"}
            _loaded(self._hyper, {**group, **options}, where)
            out.append(options)
        return out

    def _loaded_state(self, saved):
        """(per-parameter {name: float32 array}, int64 step counts), checked against the parameters."""
        if not isinstance(saved, Mapping):
            raise ValueError(f"state_dict['state']: expected a dict, got {type(saved).__name__}")
        n = len(self._params)
        entries = {}
        for key, entry in saved.items():
            i = _index(key, n, "state_dict['state']")
            if i in entries:
                raise ValueError(f"state_dict['state']: parameter {i} has two entries ({entries[i][0]!r}, {key!r})")
            entries[i] = (key, entry)
        allowed = self.state_names() | {MASTER}
        steps = np.zeros(n, np.int64)
        state = []
        for i, p in enumerate(self._params):
            key, entry = entries.get(i, (i, {}))
            where = f"state_dict['state'][{key!r}]"
            if not isinstance(entry, Mapping):
                raise ValueError(f"{where}: expected a dict, got {type(entry).__name__}")
            steps[i] = _loaded(integer, entry.get("step", 0), f"{where}['step']", 0, 2**63 - 1)
            buffers = {}
            for name, value in entry.items():
                if name == "step":
                    continue
                if name not in allowed:
                    raise ValueError(
                        f"{where}[{name!r}]: {type(self).__name__} keeps no such state (only "
                        f"{sorted(allowed)}); a checkpoint of another optimizer?"
                    )
                if name == MASTER and dtype_of(p) not in LOW_PRECISION:
                    raise ValueError(f"{where}[{name!r}]: parameter {i} is {dtype_of(p)}, which keeps no master")
                buffers[name] = _buffer(
                    value, tuple(p.shape), f"{where}[{name!r}]", name in NONNEGATIVE_STATE, low=name != MASTER
                )
            state.append(buffers)
        return state, steps

    def __repr__(self):
        lines = [f"{type(self).__name__} ("]
        for i, group in enumerate(self.param_groups):
            opts = ", ".join(f"{k}={v}" for k, v in group.items() if k != "params")
            lines.append(f"  group {i}: {len(group['params'])} tensors, {opts}")
        return "\n".join(lines + [")"])


def _as_list(values, name):
    if hasattr(values, "shape"):
        return [values]
    if isinstance(values, (str, bytes, Mapping)) or not hasattr(values, "__iter__"):
        raise TypeError(f"{name}: expected an array or a list of them, got {type(values).__name__}")
    return list(values)


def _buffer(value, shape, where, nonnegative, low=True):
    """A saved state buffer as a float32 (or, unless it is a master (low=False), bfloat16:
    state_dtype) array of the parameter's shape, finite (and >= 0 where it accumulates squares)."""
    what = "float32 or bfloat16" if low else "float32"
    if not isinstance(value, np.ndarray):
        raise ValueError(f"{where}: expected a {what} NumPy array, got {type(value).__name__}")
    if value.dtype != np.float32 and not (low and value.dtype == BFLOAT16):
        raise ValueError(f"{where}: expected {what}, got {value.dtype}")
    if value.shape != shape:
        raise ValueError(f"{where}: has shape {value.shape}, parameter {shape}")
    if not np.isfinite(value).all():
        raise ValueError(f"{where}: holds NaN or Inf")
    if nonnegative and (value < 0).any():
        raise ValueError(f"{where}: holds negative values, which a sum of squares never does")
    return value
