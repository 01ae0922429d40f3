"""Containers: Sequential (layers in a line) and Residual (a body plus a shortcut, with drop path),
named as torch names their children so that state_dict keys match torch's for the same structure."""

from __future__ import annotations

from collections.abc import Mapping

from .. import functional as F
from .._args import real
from .._types import Array
from .module import Module, take_saved

__all__ = ["Sequential", "Residual"]


class Sequential(Module):
    """Layers applied in order; backward runs them in reverse, down to the lowest layer that
    trains or whose input needs a gradient. Children are named "0", "1", ... as in torch."""

    bf16 = True  # runs in a precision='bf16' network

    def __init__(self, *layers: Module) -> None:
        super().__init__()
        self.layers = list(layers)
        for i, layer in enumerate(self.layers):
            if not isinstance(layer, Module):
                raise TypeError(f"layers[{i}]: expected a fastopt.nn.Module, got {type(layer).__name__}")
        self._lowest = 0

    def children(self) -> list[tuple[str, Module]]:
        return [(str(i), layer) for i, layer in enumerate(self.layers)]

    def plan(self, needs_input_grad: bool) -> None:
        self.needs_input_grad = needs_input_grad
        below = needs_input_grad  # whether anything below layer i trains (or the input needs its gradient)
        self._lowest = len(self.layers)
        for i, layer in enumerate(self.layers):
            layer.plan(below)
            if self._lowest == len(self.layers) and (below or layer.trainable()):
                self._lowest = i
            below = below or layer.trainable()

    def forward(self, x: Array, training: bool = True) -> Array:
        for layer in self.layers:
            x = layer.forward(x, training)
        return x

    def backward(self, dout: Array, accumulate: bool = False) -> Array | None:
        """d(input) (None when not needed) from d(output). At the root, accumulate=True adds the
        parameter gradients into their slots instead of overwriting them (gradient accumulation
        over micro-batches); the slots must have been zeroed (zero_grad) or written by a plain
        backward since build."""
        self._begin_backward(accumulate)
        for layer in reversed(self.layers[self._lowest :]):
            dout = layer.backward(dout)
        return dout if self.needs_input_grad else None


class Residual(Module):
    """y = body(x) + shortcut(x), the shortcut the identity when None; backward runs through both
    branches and adds their d(input). Children "body" and "shortcut", as torch would name them.

    drop_path = p is stochastic depth (Huang et al. 2016, per sample as timm's DropPath): in
    training the body's output of each sample is dropped with probability p and the survivors are
    scaled by 1 / (1 - p) (dropout's rule, one Philox draw per sample from the module's seed and a
    stream offset that advances by N per call, so backward regenerates the decisions); identity
    scaling in eval. The shortcut's output must have the body's shape: a change of width or
    resolution needs a projection shortcut (a strided 1x1 Conv2d + BatchNorm2d)."""

    bf16 = True  # runs in a precision='bf16' network

    def __init__(self, body: Module, shortcut: Module | None = None, drop_path: float = 0.0) -> None:
        super().__init__()
        if not isinstance(body, Module):
            raise TypeError(f"body: expected a fastopt.nn.Module, got {type(body).__name__}")
        if shortcut is not None and not isinstance(shortcut, Module):
            raise TypeError(
                f"shortcut: expected a fastopt.nn.Module or None (the identity), got {type(shortcut).__name__}"
            )
        self.body, self.shortcut = body, shortcut
        self.drop_path = real(drop_path, "drop_path", 0.0, 1.0)
        self.seed = 0
        self.offset = 0
        self._saved = None

    def children(self) -> list[tuple[str, Module]]:
        return [("body", self.body)] + ([("shortcut", self.shortcut)] if self.shortcut is not None else [])

    def build_state(self, device: str, seed: int) -> None:
        self.seed = int(seed)

    def plan(self, needs_input_grad: bool) -> None:
        self.needs_input_grad = needs_input_grad
        for _, child in self.children():
            child.plan(needs_input_grad)

    def forward(self, x: Array, training: bool = True) -> Array:
        b = self.body.forward(x, training)
        s = x if self.shortcut is None else self.shortcut.forward(x, training)
        if tuple(b.shape) != tuple(s.shape):
            which = "the identity shortcut passes" if self.shortcut is None else "the shortcut gives"
            raise ValueError(
                f"Residual: the body maps x {tuple(x.shape)} to {tuple(b.shape)} but {which} "
                f"{tuple(s.shape)}; a projection shortcut (e.g. Sequential(Conv2d(c_in, c_out, 1, "
                "stride, bias=False), BatchNorm2d(c_out))) makes the shapes match"
            )
        drop = training and self.drop_path > 0.0
        y = F.residual_add(b, s, self.drop_path if drop else 0.0, self.seed, self.offset)
        self._saved = (drop, self.offset) if training else None
        if drop:
            self.offset += int(b.shape[0])
        return y

    def backward(self, dy: Array, accumulate: bool = False) -> Array | None:
        self._begin_backward(accumulate)
        drop, offset = take_saved(self, "_saved")
        d_body = F.residual_add(dy, None, self.drop_path, self.seed, offset) if drop else dy
        dx_body = self.body.backward(d_body)
        dx_short = dy if self.shortcut is None else self.shortcut.backward(dy)
        if not self.needs_input_grad:
            return None
        return F.residual_add(dx_body, dx_short)

    def own_extra_state(self) -> dict[str, int]:
        return {"seed": self.seed, "offset": self.offset}

    def load_own_extra_state(self, state: Mapping[str, int]) -> None:
        self.seed, self.offset = int(state["seed"]), int(state["offset"])

    def extra_repr(self) -> str:
        return f"drop_path={self.drop_path}" if self.drop_path else ""
