"""The parameter store of a built network: one flat parameter array, one flat gradient array and
one flat buffer array (running statistics) per device, and the optimizer's groups over views of
them (module.py explains the layout)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import ArrayLike

from .. import _arrays, functional as F
from .._args import boolean, finite
from .._arrays import copy_, to_numpy
from .._types import Array, HasParamGroups

if TYPE_CHECKING:
    from .module import Module

__all__ = ["ParameterStore"]


def _view(flat, start, shape):
    return flat[start : start + int(np.prod(shape))].reshape(tuple(shape))


class ParameterStore:
    """The flat parameter, gradient and buffer arrays of a built model.

    `param_groups(weight_decay, ...)` are the optimizer's groups over flat views of the trainable
    parameters; `grads_for(groups)` the matching gradient views. With nothing frozen and no
    lr_scale the groups are the two views `tensors` ([decayed, not decayed], an empty part left
    out) and their gradients `grads`."""

    def __init__(self, root: Module, device: str, seed: int, input_grad: bool = False, precision: str = "fp32") -> None:
        self.root, self.device, self.input_grad, self.precision = root, device, input_grad, precision
        named = root.named_parameters()
        seen = {}
        for name, p in named:
            if id(p) in seen:
                raise ValueError(
                    f"build: parameter {name!r} is also {seen[id(p)]!r}; shared parameters are not supported"
                )
            seen[id(p)] = name
        self.names = {id(p): name for name, p in named}
        self.parameters = sorted((p for _, p in named), key=lambda p: not p.decay)  # stable: decayed first
        self.size = sum(p.size for p in self.parameters)
        self.num_decay = sum(p.size for p in self.parameters if p.decay)
        rng = np.random.default_rng(seed)
        host = np.empty(self.size, np.float32)
        self._offset = {}
        start = 0
        for p in self.parameters:
            self._offset[id(p)] = start
            start += p.size
        # Drawn in construction order, so the values do not depend on the decay layout.
        for _, p in named:
            value = np.asarray(p.init(rng, p.shape), np.float32)
            if value.shape != p.shape:
                raise ValueError(f"init: returned shape {value.shape} for a parameter of shape {p.shape}")
            host[self._offset[id(p)] : self._offset[id(p)] + p.size] = value.ravel()
        self.data = host if device == "cpu" else _arrays.to_device(host, device)
        self.grad = _arrays.zeros((self.size,), np.float32, device)
        for p in self.parameters:
            p.data = _view(self.data, self._offset[id(p)], p.shape)
            p.grad = _view(self.grad, self._offset[id(p)], p.shape)
        self._allocate_buffers(root, device)
        parts = [(0, self.num_decay), (self.num_decay, self.size)]
        self._parts = [(a, b) for a, b in parts if b > a]
        self._all = [self.data[a:b] for a, b in self._parts]
        self._all_grads = [self.grad[a:b] for a, b in self._parts]
        self._views = {id(t): (t, g, a, b) for t, g, (a, b) in zip(self._all, self._all_grads, self._parts)}
        self.grads_ready = False  # whether the gradients were zeroed or written since build
        self.accumulate = False  # the mode of the backward pass running now
        self.version = 0  # bumped by every freeze/unfreeze
        self._grads_cache = None

    def _allocate_buffers(self, root, device):
        specs = [(m, k, tuple(shape), fill) for _, m in root.named_modules() for k, shape, fill in m.buffer_specs()]
        host = np.concatenate(
            [np.full(int(np.prod(s)), fill, np.float32) for _, _, s, fill in specs] or [np.zeros(0, np.float32)]
        )
        self.buffers = host if device == "cpu" else _arrays.to_device(host, device)
        start = 0
        for m, k, s, _ in specs:
            setattr(m, k, _view(self.buffers, start, s))
            start += int(np.prod(s))

    def compute(self, a: Array | None) -> Array | None:
        """a in the network's compute dtype: a itself for precision 'fp32' (and for an array that is
        bfloat16 already), else a bfloat16 copy rounded to nearest even. The store keeps the fp32
        master values; conv and linear layers compute on these copies, made each forward."""
        if self.precision == "fp32" or a is None or _arrays.dtype_of(a) == _arrays.BFLOAT16:
            return a
        if isinstance(a, np.ndarray):
            return a.astype(_arrays.BFLOAT16)
        out = _arrays.empty(a.shape, _arrays.BFLOAT16, self.device)
        F.cast_([out], [a])
        return out

    def replan(self) -> None:
        self.root.plan(self.input_grad)
        self.version += 1

    # --------------------------------------------------------------------------- groups
    def _frozen(self):
        return [self.names[id(p)] for p in self.parameters if not p.requires_grad]

    @property
    def tensors(self) -> list[Array]:
        """The default groups' parameter views: [decayed, not decayed]."""
        self._refuse_frozen("tensors")
        return list(self._all)

    @property
    def grads(self) -> list[Array]:
        """The gradients of `tensors`."""
        self._refuse_frozen("grads")
        return list(self._all_grads)

    def _refuse_frozen(self, what):
        frozen = self._frozen()
        if frozen:
            raise RuntimeError(
                f"store.{what}: {len(frozen)} parameters are frozen ({frozen[0]}, ...): use "
                "store.param_groups(...) for the optimizer and store.grads_for(optimizer) for its "
                "gradients, which leave them out"
            )

    def param_groups(
        self, weight_decay: float, lr: float | None = None, lr_scale: Mapping[str, float] | None = None, l1: float = 0.0
    ) -> list[dict[str, Any]]:
        """Optimizer groups over the trainable parameters: weight decay on conv/linear weights,
        none on biases and normalization affines; frozen parameters left out.

        lr_scale: {name prefix: factor}, e.g. {"0": 0.1} trains module "0" (and everything
        below it) at a tenth of `lr` (then required): each group's "lr" is lr * factor, the
        longest matching prefix winning, others at lr. A prefix matches a parameter name equal
        to it or starting with it followed by a dot; "" matches every name, so {"": 0.1, "22": 1}
        trains everything but module "22" at lr / 10. l1 > 0 adds L1 regularization (the
        optimizer's l1 group option) to the groups that take weight decay."""
        weight_decay, l1 = finite(weight_decay, "weight_decay", 0.0), finite(l1, "l1", 0.0)
        scales = self._scales(lr_scale)
        if scales and lr is None:
            raise ValueError("lr: lr_scale sets each group's lr as lr * factor, so lr is needed too")
        lr = None if lr is None else finite(lr, "lr", 0.0)
        trainable = [p for p in self.parameters if p.requires_grad]
        if not trainable:
            raise ValueError("param_groups: every parameter is frozen; nothing to optimize (unfreeze() a part)")
        if len(trainable) == len(self.parameters) and not scales:
            return [
                self._group([t], a == 0 and self.num_decay, weight_decay, lr, l1)
                for t, (a, _) in zip(self._all, self._parts)
            ]
        groups = {}
        run = None  # (key, start, end) of the current run of adjacent parameters
        runs = []
        for p in trainable:
            key = (p.decay, self._scale_of(self.names[id(p)], scales))
            a = self._offset[id(p)]
            if run and run[0] == key and run[2] == a:
                run[2] = a + p.size
            else:
                run = [key, a, a + p.size]
                runs.append(run)
        for key, a, b in runs:
            groups.setdefault(key, []).append(self._slice(a, b))
        return [
            self._group(ts, decay, weight_decay, None if lr is None else lr * scale, l1)
            for (decay, scale), ts in groups.items()
        ]

    @staticmethod
    def _group(tensors, decay, weight_decay, lr, l1):
        group = {"params": tensors, "weight_decay": weight_decay if decay else 0.0}
        if lr is not None:
            group["lr"] = lr
        if l1 and decay:
            group["l1"] = l1
        return group

    def _scales(self, lr_scale):
        if lr_scale is None:
            return {}
        if not isinstance(lr_scale, Mapping):
            raise TypeError(f"lr_scale: expected a dict {{name prefix: factor}}, got {type(lr_scale).__name__}")
        names = list(self.names.values())
        out = {}
        for prefix, factor in lr_scale.items():
            if not isinstance(prefix, str):
                raise TypeError(f"lr_scale: keys are parameter name prefixes (str), got {type(prefix).__name__}")
            out[prefix] = finite(factor, f"lr_scale[{prefix!r}]", 0.0)
            if not any(_matches(n, prefix) for n in names):
                raise ValueError(f"lr_scale: prefix {prefix!r} matches no parameter (names look like {names[0]!r})")
        return out

    @staticmethod
    def _scale_of(name, scales):
        best = max((p for p in scales if _matches(name, p)), key=len, default=None)
        return 1.0 if best is None else scales[best]

    def _slice(self, a, b):
        for t, g, a0, b0 in self._views.values():
            if (a0, b0) == (a, b):
                return t
        t, g = self.data[a:b], self.grad[a:b]
        self._views[id(t)] = (t, g, a, b)
        return t

    def grads_for(self, groups: HasParamGroups | Sequence[Mapping[str, Any]]) -> list[Array]:
        """The gradient views of an optimizer's (or a list of groups') parameter tensors, in
        order: what optimizer.step takes. Refuses a tensor the store did not hand out, or one
        holding a parameter frozen since the groups were made."""
        groups = getattr(groups, "param_groups", groups)
        key = (self.version, tuple(id(t) for g in groups for t in g["params"]))
        if self._grads_cache is not None and self._grads_cache[0] == key:
            return list(self._grads_cache[1])
        out = []
        for gi, group in enumerate(groups):
            for t in group["params"]:
                entry = self._views.get(id(t))
                if entry is None or entry[0] is not t:
                    raise ValueError(
                        f"grads_for: param_groups[{gi}] holds a tensor that is not a view made by "
                        "this store's param_groups()"
                    )
                a, b = entry[2], entry[3]
                frozen = [p for p in self.parameters if not p.requires_grad and a <= self._offset[id(p)] < b]
                if frozen:
                    raise RuntimeError(
                        f"grads_for: {self.names[id(frozen[0])]!r} was frozen after the optimizer's "
                        "groups were made; build the optimizer again from store.param_groups(...)"
                    )
                out.append(entry[1])
        self._grads_cache = (key, out)
        return list(out)

    # ------------------------------------------------------------------------ gradients
    def zero_grad(self) -> None:
        F.axpby_(self.grad, self.grad, 0.0, 0.0)
        self.grads_ready = True

    def begin_backward(self, accumulate: bool) -> None:
        """Called by the root's backward: whether the layers add into the gradient slots."""
        accumulate = boolean(accumulate, "accumulate")
        if accumulate and not self.grads_ready:
            raise RuntimeError(
                "backward(accumulate=True): the gradients were never zeroed or written; call "
                "model.zero_grad() first, or run the first micro-batch with accumulate=False"
            )
        self.accumulate, self.grads_ready = accumulate, True

    def numpy(self) -> np.ndarray:
        return to_numpy(self.data)

    def load(self, values: ArrayLike) -> None:
        values = np.asarray(values, np.float32)
        if values.shape != (self.size,):
            raise ValueError(f"params: expected {self.size} values, got shape {values.shape}")
        copy_(self.data, values)


def _matches(name, prefix):
    return prefix == "" or name == prefix or name.startswith(prefix + ".")
