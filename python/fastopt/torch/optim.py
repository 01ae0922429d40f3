"""torch.optim optimizers whose step is fastopt's fused native step.

`SGD`, `Adagrad`, `RMSprop`, `Adam` and `AdamW` are `torch.optim.Optimizer` subclasses with
torch's constructor arguments, defaults and update formulas (the arguments and checks are those of
fastopt.optim's classes of the same name), plus two keyword-only options:

- `max_grad_norm`: clip by the global L2 norm of all gradients first, torch's `clip_grad_norm_`
  definition (coef = min(1, max_norm / (norm + 1e-6))), fused into the step: the gradients are
  read once for the norm and once for the update, and are not modified.
- `skip_nonfinite`: a NaN/Inf gradient cancels the whole step (with `max_grad_norm` it always does).

`step()` reads `p.grad`, skips parameters whose grad is None, and makes one native call per device
however many tensors. After a step with a norm pass (`max_grad_norm` or `skip_nonfinite`),
`opt.grad_norm` is the pre-clip global norm as a 0-d float32 tensor on the parameters' device
(on the GPU it is not read back, so the step never waits for the GPU); otherwise it is None.

LR schedulers and `torch.amp.GradScaler` work unchanged. The optimizers take GradScaler's fused
path, as torch's fused Adam does (`_step_supports_amp_scaling`): GradScaler only checks the
gradients for Inf/NaN and hands over `grad_scale` and `found_inf`; the step skips itself when
found_inf is set and otherwise unscales inside the kernel (1/scale folded into the gradient
multiplier, exact for GradScaler's power-of-two scales), saving the unscale pass that writes every
gradient. On the GPU the two scalars stay in device memory and the kernels read them there: no
sync (after a step skipped that way, `grad_norm`, when computed, is the non-finite norm found).

`state_dict()` is torch's format, so a checkpoint moves between this optimizer and torch's own of
the same name in both directions. Parameters must be dense (any memory format, channels_last
included), on the CPU or a CUDA device, and float32, bfloat16, or float16 on the CPU: the
low-precision ones take fastopt.optim's `master_weights` (an fp32 master in the state as
'master', updated in the fused step that writes the parameter) or `stochastic_rounding` (bf16).
State buffers are float32, or bfloat16 on the CPU with `state_dtype=torch.bfloat16` (rounded
stochastically: fastopt.optim.Optimizer says why), loaded checkpoints included (torch would cast
them to the parameter's dtype).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, overload

import torch

from .. import _C
from .._args import boolean
from .._arrays import BFLOAT16
from ..optim import optimizers as _rules
from ..optim.optimizer import STATE_NAMES, check_range, group_hyper, state_dtype

if TYPE_CHECKING:
    from torch.optim.optimizer import ParamsT

__all__ = ["Optimizer", "SGD", "Adagrad", "RMSprop", "Adam", "AdamW"]

_STRIDED = torch.strided
_LOW = (torch.bfloat16, torch.float16)  # parameter dtypes whose state fastopt keeps in float32
_STATE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}  # the state_dtype option
# Group keys of torch's optimizers that choose an implementation, not the math: fastopt's step is
# always the fused one, so they are dropped when a torch state_dict is loaded.
_TORCH_IMPL_KEYS = ("foreach", "fused", "capturable", "differentiable", "decoupled_weight_decay")


def _is_dense(t):
    """True when t's elements fill one block of memory exactly (contiguous in some dimension order)."""
    expected = 1
    for size, stride in sorted(zip(t.shape, t.stride()), key=lambda s: s[1]):
        if size != 1 and stride != expected:
            return False
        expected *= size
    return True


def _flat(t):
    """A 1-d view of a dense tensor's memory (the native step is elementwise, so any order will do
    as long as the parameter, its gradient and its state share it)."""
    return t if t.is_contiguous() else t.as_strided((t.numel(),), (1,))


def _numpy(t):
    t = t.detach()
    return t.view(torch.int16).numpy().view(BFLOAT16) if t.dtype == torch.bfloat16 else t.numpy()


class _Fp32:
    """A loaded state tensor of a bf16/fp16 parameter, hidden from torch's load_state_dict (which
    casts state to the parameter's dtype) until _import_steps restores it as float32."""

    def __init__(self, value):
        self.value = value


class _Plan:
    """One device's native call for a given set of parameters with gradients: everything but the
    gradients, which change every step. steps: None when the call covers all of the device's
    counters, else the indices of those it covers.

    On the CPU the native step is handed NumPy views of the tensors' memory: the binding reads an
    ndarray in ~0.1 us, a tensor through its Python methods in ~2 us, which for a few hundred
    tensors would cost more than the step of a small model. The views are valid while each
    parameter keeps its storage (`ptrs`, checked every step: `p.data = ...` swaps it)."""

    def __init__(self, device, index, originals, states, group_of, steps, masters):
        self.device, self.index, self.originals, self.group_of, self.steps = device, index, originals, group_of, steps
        self.host = _numpy if device.type == "cpu" else None
        view = self.host or (lambda t: t)
        self.params = [view(_flat(p)) for p in originals]
        self.states = [tuple(view(_flat(s)) for s in st) for st in states]
        self.masters = (
            None if all(m is None for m in masters) else [m if m is None else view(_flat(m)) for m in masters]
        )
        self.flat = [not p.is_contiguous() for p in originals]
        self.ptrs = [p.data_ptr() for p in originals]

    def stale(self):
        return any(p.data_ptr() != ptr for p, ptr in zip(self.originals, self.ptrs))


class Optimizer(torch.optim.Optimizer):
    """Base class: a subclass names the fastopt.optim class (`_rule`) whose signature, defaults,
    checks and update rule it takes."""

    _rule = None
    _torch_steps = True  # torch keeps a per-parameter 'step' in the state (SGD does not)
    _eager_state = False  # torch's Adagrad creates its state in __init__, not at the first step

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        sig = inspect.signature(cls._rule.__init__)
        extra = [
            inspect.Parameter("max_grad_norm", inspect.Parameter.KEYWORD_ONLY, default=None),
            inspect.Parameter("skip_nonfinite", inspect.Parameter.KEYWORD_ONLY, default=False),
        ]
        cls._rule_signature = sig
        cls.__signature__ = sig.replace(parameters=list(sig.parameters.values())[1:] + extra)

    def __init__(
        self,
        params: ParamsT,
        *args: Any,
        max_grad_norm: float | None = None,
        skip_nonfinite: bool = False,
        **kwargs: Any,
    ) -> None:
        bound = self._rule_signature.bind(self, params, *args, **kwargs)
        bound.apply_defaults()
        defaults = {k: v for k, v in bound.arguments.items() if k not in ("self", "params")}
        group_hyper(self._rule, defaults)  # a bad argument is named plainly: "lr: ..."
        if max_grad_norm is not None:
            max_grad_norm = check_range("max_grad_norm", max_grad_norm)
        self.max_grad_norm = max_grad_norm
        self.skip_nonfinite = boolean(skip_nonfinite, "skip_nonfinite")
        self.grad_norm = None
        self._steps = {}  # device -> int64 step counters of its parameters, in param_groups order
        self._where = []  # flat parameter index -> (device, slot in that device's counters)
        self._plans = None
        super().__init__(params, defaults)
        self._install_hooks()

    # ------------------------------------------------------------------- groups and state
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        gi = len(self.param_groups) - 1
        try:
            group_hyper(self._rule, group, f"param_groups[{gi}]")
            start = len(self._where)
            seen = {id(p) for g in self.param_groups[:-1] for p in g["params"]}
            for i, p in enumerate(group["params"]):
                self._check_param(p, self._name(gi, i), seen)
        except Exception:
            self.param_groups.pop()
            raise
        for p in group["params"]:
            device = p.device
            old = self._steps.get(device, torch.zeros(0, dtype=torch.int64, device=device))
            self._where.append((device, old.numel()))
            self._steps[device] = torch.cat([old, torch.zeros(1, dtype=torch.int64, device=device)])
        if self._eager_state:
            kind = group_hyper(self._rule, group, f"param_groups[{gi}]").kind
            for i, p in enumerate(group["params"]):
                self._state_of(start + i, p, group, kind)
        self._plans = None

    def _name(self, gi, i):
        names = self.param_groups[gi].get("param_names")
        return repr(names[i]) if names else f"param_groups[{gi}]['params'][{i}]"

    @staticmethod
    def _check_param(p, name, seen):
        if p.dtype != torch.float32 and p.dtype not in _LOW:
            raise TypeError(
                f"{name}: expected a torch.float32 parameter, got {p.dtype} (bfloat16 too, and float16 on the CPU)"
            )
        if p.dtype == torch.float16 and p.device.type != "cpu":
            raise TypeError(
                f"{name}: float16 on the GPU: fastopt's CUDA optimizers take float32 and bfloat16 parameters"
            )
        if p.device.type not in ("cpu", "cuda"):
            raise ValueError(f"{name}: on {p.device}, but fastopt runs on cpu and cuda")
        if not _is_dense(p):
            raise ValueError(
                f"{name}: a parameter must be dense (a view with gaps or overlaps cannot be "
                "stepped in place); make it contiguous before creating the optimizer"
            )
        if id(p) in seen:
            raise ValueError(f"{name}: a parameter appears twice in this optimizer")
        seen.add(id(p))

    def _state_of(self, i, p, group, kind):
        """Parameter i's state buffers for `kind` in the native order, creating missing ones the way
        torch does: zeros (Adagrad: initial_accumulator_value) laid out like the parameter."""
        state = self.state[p]
        dtype = _STATE_DTYPES[state_dtype(group["state_dtype"], "state_dtype")]
        if dtype == torch.bfloat16 and p.device.type != "cpu":
            gi = next(k for k, g in enumerate(self.param_groups) if g is group)
            raise ValueError(
                f"param_groups[{gi}]['state_dtype']: bfloat16 state on the GPU: not yet; fastopt's CUDA "
                "optimizers keep float32 state"
            )
        for name in STATE_NAMES[kind]:
            if name in state and (state[name].stride() != p.stride() or state[name].dtype != dtype):
                # p.data was swapped for another layout, or the state is in the other dtype (a
                # checkpoint, or state_dtype changed): widened exactly or rounded to nearest.
                state[name] = torch.empty_like(p, dtype=dtype).copy_(state[name])
            if name not in state:
                init = self._rule._initial_state(name, group)
                state[name] = torch.full_like(p, init, dtype=dtype, memory_format=torch.preserve_format)
                if name == "momentum_buffer" and not self._torch_steps:
                    # torch's SGD starts a new momentum buffer as the gradient (b = g), which the
                    # native rule does at step 1: this counter only marks that first step.
                    device, slot = self._where[i]
                    self._steps[device][slot] = 0
        return tuple(state[name] for name in STATE_NAMES[kind])

    def _master_of(self, p, group):
        """p's fp32 master (made from p when missing) when its group keeps one, else None (and a
        master left from before is dropped, so that switching back on never resumes stale values)."""
        state = self.state[p]
        if not group["master_weights"] or p.dtype not in _LOW:
            state.pop("master", None)
            return None
        if "master" not in state or state["master"].stride() != p.stride():
            state["master"] = torch.empty_like(p, dtype=torch.float32).copy_(state.get("master", p))
        return state["master"]

    def _plan(self, kinds, grads):
        """The per-device native calls for this set of parameters with gradients (cached: it only
        changes when a group's rule or the set of gradients that are None does)."""
        key = (
            kinds,
            tuple(bool(g["master_weights"]) for g in self.param_groups),
            tuple(g["state_dtype"] for g in self.param_groups),
            tuple(i for i, g in enumerate(grads) if g is None),
        )
        if self._plans is not None and self._plans[0] == key and not any(p.stale() for p in self._plans[1]):
            return self._plans[1]
        per_device = {}
        i = 0
        for gi, group in enumerate(self.param_groups):
            for j, p in enumerate(group["params"]):
                if grads[i] is not None:
                    device, slot = self._where[i]
                    if p.device != device or (p.dtype != torch.float32 and p.dtype not in _LOW):
                        raise ValueError(
                            f"{self._name(gi, j)}: was a float32 tensor (or bf16/fp16) on {device} "
                            f"when the optimizer was made, is now {p.dtype} on {p.device}; make the "
                            "optimizer after moving or converting the model"
                        )
                    entry = per_device.setdefault(device, ([], [], [], [], [], []))
                    values = (i, p, self._state_of(i, p, group, kinds[gi]), gi, slot, self._master_of(p, group))
                    for lst, value in zip(entry, values):
                        lst.append(value)
                i += 1
        plans = []
        for device, (index, originals, states, group_of, slots, masters) in per_device.items():
            whole = slots == list(range(self._steps[device].numel()))
            steps = None if whole else torch.tensor(slots, dtype=torch.int64, device=device)
            plans.append(_Plan(device, index, originals, states, group_of, steps, masters))
        self._plans = (key, plans)
        return plans

    # ------------------------------------------------------------------------------ step
    # GradScaler's fused path (see the module docstring), on either device.
    _step_supports_amp_scaling = True

    def _amp_scaling(self, plans):
        """(skip, inv_scale, device scalars) from the attributes GradScaler sets just before a
        fused step. With CPU parameters they are read here (skip: nothing changes, not even the
        step counts); GPU parameters get them as device scalars (grad_scale, found_inf) that the
        step reads on the GPU, so the host never waits."""
        found_inf, scale = getattr(self, "found_inf", None), getattr(self, "grad_scale", None)
        if found_inf is None and scale is None:
            return False, 1.0, (None, None)
        if any(plan.device.type == "cpu" for plan in plans):
            if found_inf is not None and float(found_inf) != 0.0:
                return True, 1.0, (None, None)
            return False, 1.0 if scale is None else 1.0 / float(scale), (None, None)
        return False, 1.0, (scale, found_inf)

    @staticmethod
    def _on(t, device):
        """A GradScaler scalar as the 1-element float32 tensor the native step reads on device."""
        return None if t is None else t.to(device=device, dtype=torch.float32, non_blocking=True).reshape(1)

    @overload
    def step(self, closure: None = None) -> None: ...

    @overload
    def step(self, closure: Callable[[], float]) -> float: ...

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """One fused step over every parameter with a gradient; returns closure's loss, if given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        hypers = [group_hyper(self._rule, group, f"param_groups[{gi}]") for gi, group in enumerate(self.param_groups)]
        grads = [p.grad for group in self.param_groups for p in group["params"]]
        plans = self._plan(tuple(h.kind for h in hypers), grads)
        # Both may have been set since construction: checked again, like the groups.
        clip = None if self.max_grad_norm is None else check_range("max_grad_norm", self.max_grad_norm)
        skip = boolean(self.skip_nonfinite, "skip_nonfinite")
        norm_pass = clip is not None or skip
        if norm_pass and len(plans) > 1:
            raise ValueError(
                f"max_grad_norm / skip_nonfinite: the parameters are on {len(plans)} devices "
                f"({', '.join(str(p.device) for p in plans)}), but the global norm is computed "
                "within one native call; clip with torch.nn.utils.clip_grad_norm_ instead"
            )
        self.grad_norm = None
        skip_all, inv_scale, (scale, found_inf) = self._amp_scaling(plans)
        if skip_all:  # an Inf/NaN in the scaled gradients: nothing changes, the step counts included
            return loss
        for plan in plans:
            gl = [self._grad(grads[i], k, plan) for k, i in enumerate(plan.index)]
            counters = self._steps[plan.device]
            steps = counters if plan.steps is None else counters.index_select(0, plan.steps)
            stream = torch.cuda.current_stream(plan.device).cuda_stream if plan.device.type == "cuda" else 0
            norm, _ = _C.optim_step(
                plan.params,
                gl,
                plan.states,
                steps,
                hypers,
                plan.group_of,
                clip,
                skip,
                stream,
                plan.masters,
                inv_scale,
                self._on(scale, plan.device),
                self._on(found_inf, plan.device),
            )
            if plan.steps is not None:
                counters.index_copy_(0, plan.steps, steps)
            # Autograd must see the in-place change (a parameter saved for a pending backward).
            torch.autograd.graph.increment_version(plan.originals)
            if norm is not None:
                self.grad_norm = self._as_tensor(norm, plan.device)
        return loss

    def _grad(self, g, k, plan):
        if not plan.flat[k] and g.layout is _STRIDED and g.is_contiguous():
            return plan.host(g) if plan.host else g
        if g.layout is not _STRIDED:
            raise TypeError(
                f"{self._name(*self._locate(plan.index[k]))}.grad: {g.layout} gradients are not "
                "supported (fastopt's step is dense; torch.optim.SparseAdam takes sparse gradients)"
            )
        p = plan.originals[k]
        if g.stride() != p.stride():
            g = torch.empty_like(p).copy_(g)  # a gradient laid out unlike its parameter: rare, copied
        return plan.host(_flat(g)) if plan.host else _flat(g)

    def _locate(self, i):
        for gi, group in enumerate(self.param_groups):
            if i < len(group["params"]):
                return gi, i
            i -= len(group["params"])
        raise IndexError(i)

    @staticmethod
    def _as_tensor(norm, device):
        if device.type == "cpu":
            return torch.tensor(norm, dtype=torch.float32)
        # A 0-d DeviceArray written on torch's current stream: viewed without a copy or a wait.
        return torch.utils.dlpack.from_dlpack(norm.__dlpack__(stream=-1))

    # -------------------------------------------------------------------- checkpointing
    def _install_hooks(self):
        # Prepended, so that user hooks see torch's format too.
        self.register_state_dict_post_hook(Optimizer._export_steps, prepend=True)
        self.register_load_state_dict_pre_hook(Optimizer._check_loaded, prepend=True)
        self.register_load_state_dict_post_hook(Optimizer._import_steps, prepend=True)

    def _counts(self):
        host = {d: c.tolist() for d, c in self._steps.items()}
        return [host[d][slot] for d, slot in self._where]

    def _export_steps(self, state_dict):
        """torch's per-parameter 'step' (a float32 0-d CPU tensor) from the step counters."""
        if not self._torch_steps:
            return state_dict
        counts = self._counts()
        state = {
            k: ({"step": torch.tensor(float(counts[k]), dtype=torch.float32), **v} if isinstance(k, int) else v)
            for k, v in state_dict["state"].items()
        }
        return {**state_dict, "state": state}

    def _check_loaded(self, state_dict):
        """Refuse what fastopt cannot continue (before anything changes); drop torch's
        implementation switches; fill options a checkpoint lacks from this optimizer's defaults."""
        ids = [i for g in state_dict["param_groups"] for i in g["params"]]
        params = dict(zip(ids, (p for g in self.param_groups for p in g["params"])))
        allowed = self._rule.state_names() | {"master"}
        state = {}
        for key, entry in state_dict["state"].items():
            for name, value in entry.items() if key in params else ():
                where = f"state_dict['state'][{key!r}][{name!r}]"
                if name == "master" and params[key].dtype not in _LOW:
                    raise ValueError(f"{where}: its parameter is {params[key].dtype}, which keeps no master")
                if name == "step":
                    step = float(value)
                    if not (step >= 0 and step.is_integer()):
                        raise ValueError(f"{where}: expected a step count (an integer >= 0), got {step}")
                elif name not in allowed:
                    raise ValueError(
                        f"{where}: {type(self).__name__} keeps no such state (only {sorted(allowed)}); "
                        "a checkpoint of another optimizer?"
                    )
                elif value is not None and tuple(value.shape) != tuple(params[key].shape):
                    raise ValueError(
                        f"{where}: has shape {tuple(value.shape)}, its parameter {tuple(params[key].shape)}"
                    )
            if key in params and params[key].dtype in _LOW:  # kept float32 through torch's cast to the param's dtype
                entry = {
                    k: _Fp32(v) if torch.is_tensor(v) and v.is_floating_point() and k != "step" else v
                    for k, v in entry.items()
                }
            state[key] = entry
        groups = []
        for gi, saved in enumerate(state_dict["param_groups"]):
            if saved.get("differentiable"):
                raise ValueError(
                    f"state_dict: param group {gi} was saved with differentiable=True, "
                    "which fastopt's step does not support"
                )
            if self._rule is _rules.Adam and saved.get("decoupled_weight_decay"):
                raise ValueError(
                    f"state_dict: param group {gi} has decoupled_weight_decay=True (torch's AdamW "
                    "rule): load it into fastopt.torch.optim.AdamW"
                )
            group = {k: v for k, v in {**self.defaults, **saved}.items() if k not in _TORCH_IMPL_KEYS}
            group_hyper(self._rule, group, f"state_dict['param_groups'][{gi}]")
            groups.append(group)
        return {**state_dict, "state": state, "param_groups": groups}

    def _import_steps(self):
        """Step counters from the loaded 'step' entries (SGD: 1 where a momentum buffer exists, so
        the next step continues it), and state buffers laid out like their parameters."""
        counts = {d: c.tolist() for d, c in self._steps.items()}
        i = 0
        for group in self.param_groups:
            for p in group["params"]:
                state = self.state.get(p, {})
                for name in [k for k, v in state.items() if v is None]:
                    del state[name]  # torch's SGD once saved momentum_buffer=None
                step = state.pop("step", None) if self._torch_steps else ("momentum_buffer" in state)
                device, slot = self._where[i]
                counts[device][slot] = int(step) if step is not None else 0
                for name, value in state.items():
                    if isinstance(value, _Fp32):
                        state[name] = torch.empty_like(p, dtype=torch.float32).copy_(value.value)
                    elif torch.is_tensor(value) and value.stride() != p.stride():
                        state[name] = torch.empty_like(p).copy_(value)
                i += 1
        for device, values in counts.items():
            self._steps[device].copy_(torch.tensor(values, dtype=torch.int64))
        self._plans = None

    def __getstate__(self):
        return {
            **super().__getstate__(),
            "max_grad_norm": self.max_grad_norm,
            "skip_nonfinite": self.skip_nonfinite,
            "grad_norm": None,
            "_steps": self._steps,
            "_where": self._where,
            "_plans": None,
        }

    def __setstate__(self, state):
        hooked = "_optimizer_state_dict_post_hooks" in self.__dict__
        super().__setstate__(state)
        if not hooked:  # unpickling (deepcopy, multiprocessing): torch does not keep hooks
            self._install_hooks()


class SGD(Optimizer):
    __doc__ = _rules.SGD.__doc__
    _rule = _rules.SGD
    _torch_steps = False


class Adagrad(Optimizer):
    __doc__ = _rules.Adagrad.__doc__
    _rule = _rules.Adagrad
    _eager_state = True


class RMSprop(Optimizer):
    __doc__ = _rules.RMSprop.__doc__
    _rule = _rules.RMSprop


class Adam(Optimizer):
    __doc__ = _rules.Adam.__doc__
    _rule = _rules.Adam


class AdamW(Optimizer):
    __doc__ = _rules.AdamW.__doc__
    _rule = _rules.AdamW


from .zero import ZeroRedundancy  # noqa: E402,F401 - ZeRO-1 over these optimizers (zero.py)
