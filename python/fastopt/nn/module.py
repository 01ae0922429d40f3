"""Modules with explicit forward/backward (the cs231n layer shape), and the parameter store.

A module's forward(x, training) keeps what its backward needs on the module itself; backward(dout)
uses it once, writes the parameter gradients into their slots and returns d(input). No autograd
tape: a network is a tree of containers (Sequential, Residual) over layers, and training is
forward, loss, backward, one optimizer step.

Names follow torch for the same structure: a Sequential's children are "0", "1", ..., a
Residual's "body" and "shortcut", a layer's parameters "weight" and "bias" and batch norm's
buffers "running_mean", "running_var" and "num_batches_tracked". So `state_dict()` of a fastopt
model and of the torch model of the same structure have the same keys, and load into each other.

Parameters live in one contiguous buffer per device, and their gradients in a second one; the
float buffers (batch norm's running statistics) in a third. `build` (on the root of the tree)
lays the parameters out (those with weight decay first, then biases and normalization affines),
draws their initial values on the host from one seed, copies them to the device once, and hands
each Parameter a view of its slice. The optimizer then steps a few flat tensors, a single
native call (one launch on the GPU) however many layers there are, and weight averaging
(optim.EMA) covers parameters and statistics in one call too.

Transfer learning: `freeze()` marks a subtree's parameters as not trained. The store's
`param_groups` leaves them out (so the optimizer never touches them or keeps state for them),
backward skips their weight-gradient kernels, a frozen batch norm normalizes with its running
statistics and leaves them as they are, and backward stops at the first layer below which
nothing trains.
"""

from __future__ import annotations

from collections import namedtuple
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import _arrays, functional as F
from .._args import boolean, choice, integer, shape as _shape
from .._arrays import copy_, to_numpy
from .._types import Array, Device, Initializer, Shape

if TYPE_CHECKING:
    from .store import ParameterStore

__all__ = ["Parameter", "Module", "IncompatibleKeys"]

IncompatibleKeys = namedtuple("IncompatibleKeys", ["missing_keys", "unexpected_keys"])


class Parameter:
    """A learnable tensor: its shape, initializer (rng, shape) -> float32 array, and whether weight
    decay applies. `data` and `grad` are views into the store's flat buffers once built;
    `requires_grad` is False while its module is frozen."""

    def __init__(self, shape: Shape, init: Initializer, decay: bool = True) -> None:
        self.shape = _shape(shape, "shape", 0)
        if not callable(init):
            raise TypeError(f"init: expected an initializer (rng, shape) -> array, got {type(init).__name__}")
        self.init = init
        self.decay = boolean(decay, "decay")
        self.requires_grad = True
        self.data = None
        self.grad = None

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    def __repr__(self):
        return f"Parameter(shape={self.shape}, decay={self.decay}{'' if self.requires_grad else ', frozen'})"


def take_saved(module: Module, name: str) -> Any:
    """The state a forward saved for backward, used exactly once."""
    value = getattr(module, name, None)
    if value is None:
        raise RuntimeError(
            f"{type(module).__name__}.backward: no saved forward state (call forward with "
            "training=True before each backward)"
        )
    setattr(module, name, None)
    return value


def _join(prefix, name):
    return f"{prefix}.{name}" if prefix else name


class Module:
    """Base: subclasses set `self.params` (name -> Parameter or None) in __init__ and implement
    forward/backward; containers list their submodules in children(). `needs_input_grad` is set
    at build and by freeze(): False where nothing below the module trains and its input is data,
    so its d(input) is never computed. `bf16`: the module runs in a network built with
    precision='bf16' (its kernels take bfloat16 activations)."""

    bf16 = False

    def __init__(self) -> None:
        self.params = {}
        self.device = "cpu"
        self.needs_input_grad = True
        self.frozen = False
        self.store = None  # the ParameterStore of the tree this module was built in

    # ---------------------------------------------------------------------------- the tree
    def children(self) -> list[tuple[str, Module]]:
        """[(name, module)] of the direct submodules, in torch's registration order."""
        return []

    def named_modules(self, prefix: str = "") -> list[tuple[str, Module]]:
        """[(name, module)], this module first ("" at the root), then each subtree in order."""
        out = [(prefix, self)]
        for name, child in self.children():
            out += child.named_modules(_join(prefix, name))
        return out

    def modules(self) -> list[Module]:
        return [m for _, m in self.named_modules()]

    def named_parameters(self, prefix: str = "") -> list[tuple[str, Parameter]]:
        """[(name, Parameter)] with torch's names ("3.body.0.weight") and order."""
        return [
            (_join(p, k), param)
            for p, m in self.named_modules(prefix)
            for k, param in m.params.items()
            if param is not None
        ]

    def parameters(self) -> list[Parameter]:
        return [p for _, p in self.named_parameters()]

    def buffer_specs(self) -> list[tuple[str, tuple[int, ...], float]]:
        """[(name, shape, initial value)] of this module's own float32 buffers (running
        statistics), allocated by build as views of the store's buffer array."""
        return []

    def counters(self) -> list[str]:
        """Names of this module's own int64 scalar buffers (batch norm's num_batches_tracked)."""
        return []

    def named_buffers(self, prefix: str = "") -> list[tuple[str, Array | int]]:
        """[(name, array or int)] of every buffer in the tree, torch's names and order."""
        out = []
        for p, m in self.named_modules(prefix):
            out += [(_join(p, k), getattr(m, k)) for k, _, _ in m.buffer_specs()]
            out += [(_join(p, k), getattr(m, k)) for k in m.counters()]
        return out

    def trainable(self) -> bool:
        return any(p.requires_grad for p in self.parameters())

    # -------------------------------------------------------------------------- building
    def build(
        self, device: Device = "cpu", seed: int = 0, input_grad: bool = False, precision: str = "fp32"
    ) -> ParameterStore:
        """Allocate the parameters (one flat buffer on `device`, drawn from `seed`), the buffers
        and every module's state; returns the ParameterStore. input_grad=False skips d(input) of
        the first layer (its input is data). Only the root of a tree is built.

        precision='bf16' (CPU): mixed precision as torch AMP runs it. The store keeps float32
        master parameters (the optimizer steps them with float32 gradients); conv and linear
        layers compute on bfloat16 copies of their weights and inputs, made each forward, so
        activations and their gradients flow in bfloat16 (batch norm's statistics and affine stay
        float32) and the loss is float32. Every module must have a bfloat16 path (`bf16`)."""
        device = _arrays.canonical_device(device)
        seed, input_grad = integer(seed, "seed", 0), boolean(input_grad, "input_grad")
        precision = choice(precision, "precision", ("fp32", "bf16"))
        if self.store is not None and self.store.root is not self:
            raise RuntimeError(
                f"build: this {type(self).__name__} is part of a built network; build that network "
                "(its store holds this module's parameters)"
            )
        modules = self.named_modules()
        owners = {}
        for name, m in modules:
            if id(m) in owners:
                raise ValueError(
                    f"build: module {name!r} also appears as {owners[id(m)]!r}; a module can sit in "
                    "one place of a network only (build a second one for the other place)"
                )
            owners[id(m)] = name
        if precision == "bf16":
            lacking = [f"{name or 'the root'} ({type(m).__name__})" for name, m in modules if not m.bf16]
            if lacking:
                raise ValueError(
                    "precision: bf16 needs a bfloat16 path in every module; not yet in " + ", ".join(lacking)
                )
        seeds = np.random.SeedSequence(seed).spawn(len(modules))
        from .store import ParameterStore  # the store lays out a tree of Modules

        self.store = ParameterStore(self, device, seeds[0], input_grad, precision)
        for (_, m), s in zip(modules, seeds):
            m.device, m.store = device, self.store
            m.build_state(device, int(s.generate_state(1, np.uint64)[0]))
        self.store.replan()
        return self.store

    def build_state(self, device: str, seed: int) -> None:
        """Per-module state that is neither a parameter nor a buffer (a dropout seed)."""

    def _require_built(self, what):
        if self.store is None:
            raise RuntimeError(
                f"{what}: {type(self).__name__} is not built yet; call build(device, seed) on the whole network first"
            )

    def plan(self, needs_input_grad: bool) -> None:
        """Set which d(input) the backward pass computes (containers pass it down)."""
        self.needs_input_grad = needs_input_grad

    # ------------------------------------------------------------------- forward/backward
    def forward(self, x: Array, training: bool = True) -> Array:
        raise NotImplementedError

    def backward(self, dout: Array) -> Array | None:
        raise NotImplementedError

    def __call__(self, x: Array, training: bool = True) -> Array:
        return self.forward(x, training)

    def _begin_backward(self, accumulate):
        """Containers' backward starts here: at the root it sets the store's accumulate mode."""
        if self.store is not None and self.store.root is self:
            self.store.begin_backward(accumulate)
        elif accumulate:
            raise ValueError(
                "accumulate: only the root of a built network takes it (its backward sets the mode for every layer)"
            )

    def set_grad(self, param: Parameter, value: Array) -> None:
        """Write (or, in an accumulating backward, add) a gradient into its slot."""
        if param is not None and value is not None:  # a copy is axpby with b = 0: one native pass either way
            F.axpby_(param.grad, value, 1.0, 1.0 if self.store.accumulate else 0.0)

    def zero_grad(self) -> None:
        """Zero the gradients of this module's parameters (the whole store at the root)."""
        self._require_built("zero_grad")
        if self.store.root is self:
            self.store.zero_grad()
        else:
            for p in self.parameters():
                F.axpby_(p.grad, p.grad, 0.0, 0.0)

    # --------------------------------------------------------------- transfer learning
    def freeze(self) -> Module:
        """Stop training this module and everything below it: no weight gradients, batch norm
        on its running statistics (not updated), and the store's param_groups leave the
        parameters out. Build (and load the pretrained weights) first; build the optimizer
        after freezing."""
        return self._set_frozen(True, "freeze")

    def unfreeze(self) -> Module:
        """Train this subtree again (give the optimizer its parameters: store.param_groups)."""
        return self._set_frozen(False, "unfreeze")

    def _set_frozen(self, frozen, what):
        self._require_built(what)
        for m in self.modules():
            m.frozen = frozen
            for p in m.params.values():
                if p is not None:
                    p.requires_grad = not frozen
        self.store.replan()
        return self

    # --------------------------------------------------------------------- state dicts
    def state_dict(self) -> dict[str, np.ndarray]:
        """{name: NumPy copy} of every parameter and buffer, torch's keys and order (the int64
        num_batches_tracked as a 0-d array, as torch's tensor becomes)."""
        self._require_built("state_dict")
        out = {}
        for p, m in self.named_modules():
            for k, param in m.params.items():
                if param is not None:
                    out[_join(p, k)] = to_numpy(param.data)
            for k, _, _ in m.buffer_specs():
                out[_join(p, k)] = to_numpy(getattr(m, k))
            for k in m.counters():
                out[_join(p, k)] = np.asarray(getattr(m, k), np.int64)
        return out

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True) -> IncompatibleKeys:
        """Copy parameters and buffers from {name: array} (a fastopt or torch state_dict, torch
        tensors or NumPy arrays). Everything is checked before anything changes: with strict, a
        missing or unexpected key raises RuntimeError as torch does; a shape that differs, or a
        value that is not a real array, raises RuntimeError either way. strict=False loads what
        matches (a new head keeps its initialization) and returns IncompatibleKeys."""
        self._require_built("load_state_dict")
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"state_dict: expected a dict of arrays, got {type(state_dict).__name__}")
        strict = boolean(strict, "strict")
        targets = {}
        for p, m in self.named_modules():
            for k, param in m.params.items():
                if param is not None:
                    targets[_join(p, k)] = ("param", param, param.shape)
            for k, shape, _ in m.buffer_specs():
                targets[_join(p, k)] = ("buffer", (m, k), tuple(shape))
            for k in m.counters():
                targets[_join(p, k)] = ("counter", (m, k), ())
        missing = [k for k in targets if k not in state_dict]
        unexpected = [k for k in state_dict if k not in targets]
        errors = []
        if strict and missing:
            errors.append("Missing key(s) in state_dict: " + ", ".join(f'"{k}"' for k in missing) + ".")
        if strict and unexpected:
            errors.append("Unexpected key(s) in state_dict: " + ", ".join(f'"{k}"' for k in unexpected) + ".")
        values = {}
        for key, (kind, _, shape) in targets.items():
            if key in state_dict:
                value, problem = _loadable(state_dict[key], shape, kind)
                if problem == "size mismatch":  # torch's wording
                    errors.append(
                        f"size mismatch for {key}: copying a param with shape "
                        f"{tuple(np.shape(state_dict[key]))} from checkpoint, the shape in current model "
                        f"is {tuple(shape)}."
                    )
                elif problem:
                    errors.append(f"{key}: {problem}")
                values[key] = value
        if errors:
            raise RuntimeError(f"Error(s) in loading state_dict for {type(self).__name__}:\n\t" + "\n\t".join(errors))
        for key, value in values.items():
            kind, target, _ = targets[key]
            if kind == "param":
                copy_(target.data, value)
            elif kind == "buffer":
                copy_(getattr(*target), value)
            else:
                setattr(*target, int(value))
        return IncompatibleKeys(missing, unexpected)

    # Dropout-like layers keep RNG positions a checkpoint needs; torch's state_dict has no place
    # for them, so they travel separately.
    def extra_state(self) -> dict[str, int]:
        """{name: int} of every module's RNG state (dropout seed and stream offset)."""
        out = {}
        for p, m in self.named_modules():
            out.update({_join(p, k): v for k, v in m.own_extra_state().items()})
        return out

    def load_extra_state(self, state: Mapping[str, int]) -> None:
        for p, m in self.named_modules():
            mine = {k: state[_join(p, k)] for k in m.own_extra_state() if _join(p, k) in state}
            if mine:
                m.load_own_extra_state(mine)

    def own_extra_state(self) -> dict[str, int]:
        return {}

    def load_own_extra_state(self, state: Mapping[str, int]) -> None:
        pass

    def extra_repr(self) -> str:
        return ""

    def __repr__(self):
        children = self.children()
        if not children:
            return f"{type(self).__name__}({self.extra_repr()})"
        inner = "\n".join(f"  ({name}) " + repr(m).replace("\n", "\n  ") for name, m in children)
        return f"{type(self).__name__}({self.extra_repr()}\n{inner}\n)"


def _loadable(value, shape, kind):
    """(float32 or int array, None) or (None, what is wrong)."""
    if hasattr(value, "detach"):  # a torch tensor
        value = value.detach().cpu().numpy()
    try:
        array = np.asarray(value)
    except Exception as e:  # noqa: BLE001 - anything unconvertible is reported by name
        return None, f"not an array ({type(e).__name__}: {e})"
    if array.dtype.kind not in "fiu":
        return None, f"expected a real-valued array, got dtype {array.dtype}"
    if tuple(array.shape) != tuple(shape) and not (kind == "counter" and array.size == 1):
        return None, "size mismatch"
    if kind == "counter":
        count = array.reshape(()).item()
        if count != int(count) or count < 0:
            return None, f"expected a count >= 0, got {count!r}"
        return int(count), None
    return np.ascontiguousarray(array, np.float32), None
