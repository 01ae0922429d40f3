"""Modules with explicit forward/backward (the cs231n layer shape), and the parameter store.

A module's forward(x, training) keeps what its backward needs on the module itself; backward(dout)
uses it once, writes the parameter gradients into their slots and returns d(input). No autograd
tape: a network is a Sequential, and training is forward, loss, backward, one optimizer step.

Parameters live in one contiguous buffer per device, and their gradients in a second one:
`Sequential.build` lays the parameters out (those with weight decay first, then biases and
normalization affines), draws their initial values on the host from one seed, copies them to the
device once, and hands each Parameter a view of its slice. The optimizer then steps two flat
tensors, a single native call (one launch on the GPU) however many layers there are.
"""
import numpy as np

from .. import _arrays
from .._args import boolean, integer, shape as _shape
from .._arrays import copy_, to_numpy

__all__ = ["Parameter", "Module", "Sequential", "ParameterStore"]


class Parameter:
    """A learnable tensor: its shape, initializer (rng, shape) -> float32 array, and whether weight
    decay applies. `data` and `grad` are views into the store's flat buffers once built."""

    def __init__(self, shape, init, decay=True):
        self.shape = _shape(shape, "shape", 0)
        if not callable(init):
            raise TypeError(f"init: expected an initializer (rng, shape) -> array, got {type(init).__name__}")
        self.init = init
        self.decay = boolean(decay, "decay")
        self.data = None
        self.grad = None

    @property
    def size(self):
        return int(np.prod(self.shape))

    def __repr__(self):
        return f"Parameter(shape={self.shape}, decay={self.decay})"


def _view(flat, start, shape):
    return flat[start:start + int(np.prod(shape))].reshape(tuple(shape))


class Module:
    """Base: subclasses set `self.params` (name -> Parameter or None) in __init__ and implement
    forward/backward. `needs_input_grad` is cleared by Sequential for the first layer, whose
    input is data: its d(input) is never computed."""

    def __init__(self):
        self.params = {}
        self.device = "cpu"
        self.needs_input_grad = True

    def parameters(self):
        return [p for p in self.params.values() if p is not None]

    def build(self, device, seed):
        """Allocate what is not a parameter (running statistics, ...) on `device`."""
        self.device = device

    def forward(self, x, training=True):
        raise NotImplementedError

    def backward(self, dout):
        raise NotImplementedError

    # Extra state a checkpoint needs besides the parameters (running statistics, RNG offsets).
    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass

    def __call__(self, x, training=True):
        return self.forward(x, training)

    def extra_repr(self):
        return ""

    def __repr__(self):
        return f"{type(self).__name__}({self.extra_repr()})"


class ParameterStore:
    """The flat parameter and gradient buffers of a built model.

    `tensors` / `grads` are the optimizer's inputs: [decayed, not decayed] flat views (an empty
    part left out), aligned with `param_groups(weight_decay)`."""

    def __init__(self, parameters, device, seed):
        self.device = device
        self.parameters = sorted(parameters, key=lambda p: not p.decay)  # stable: decayed first
        self.size = sum(p.size for p in self.parameters)
        self.num_decay = sum(p.size for p in self.parameters if p.decay)
        rng = np.random.default_rng(seed)
        host = np.empty(self.size, np.float32)
        start = 0
        # Drawn in construction order, so the values do not depend on the decay layout.
        offsets = {}
        for p in self.parameters:
            offsets[id(p)] = start
            start += p.size
        for p in parameters:
            value = np.asarray(p.init(rng, p.shape), np.float32)
            if value.shape != p.shape:
                raise ValueError(f"init: returned shape {value.shape} for a parameter of shape {p.shape}")
            host[offsets[id(p)]:offsets[id(p)] + p.size] = value.ravel()
        self.data = host if device == "cpu" else _arrays.to_device(host, device)
        self.grad = _arrays.zeros((self.size,), np.float32, device)
        for p in self.parameters:
            p.data = _view(self.data, offsets[id(p)], p.shape)
            p.grad = _view(self.grad, offsets[id(p)], p.shape)
        parts = [(0, self.num_decay), (self.num_decay, self.size)]
        self._parts = [(a, b) for a, b in parts if b > a]
        self.tensors = [self.data[a:b] for a, b in self._parts]
        self.grads = [self.grad[a:b] for a, b in self._parts]

    def param_groups(self, weight_decay):
        """Optimizer groups over `tensors`: weight decay on weights, none on biases and norm affines."""
        return [{"params": [t], "weight_decay": weight_decay if a == 0 and self.num_decay else 0.0}
                for t, (a, _) in zip(self.tensors, self._parts)]

    def numpy(self):
        return to_numpy(self.data)

    def load(self, values):
        values = np.asarray(values, np.float32)
        if values.shape != (self.size,):
            raise ValueError(f"params: expected {self.size} values, got shape {values.shape}")
        copy_(self.data, values)


class Sequential(Module):
    """Layers applied in order; backward runs them in reverse."""

    def __init__(self, *layers):
        super().__init__()
        self.layers = list(layers)
        for i, layer in enumerate(self.layers):
            if not isinstance(layer, Module):
                raise TypeError(f"layers[{i}]: expected a fastopt.nn.Module, got {type(layer).__name__}")
        self.store = None

    def parameters(self):
        return [p for layer in self.layers for p in layer.parameters()]

    def build(self, device="cpu", seed=0, input_grad=False):
        """Allocate the parameters (one flat buffer on `device`, drawn from `seed`) and every
        layer's state; returns the ParameterStore. input_grad=False skips d(input) of the first
        layer (its input is data)."""
        device = _arrays.canonical_device(device)
        seed, input_grad = integer(seed, "seed", 0), boolean(input_grad, "input_grad")
        self.device = device
        seeds = np.random.SeedSequence(seed).spawn(len(self.layers) + 1)
        self.store = ParameterStore(self.parameters(), device, seeds[0])
        for i, layer in enumerate(self.layers):
            layer.build(device, int(seeds[i + 1].generate_state(1, np.uint64)[0]))
        if self.layers:
            self.layers[0].needs_input_grad = input_grad
        return self.store

    def forward(self, x, training=True):
        for layer in self.layers:
            x = layer.forward(x, training)
        return x

    def backward(self, dout):
        for layer in reversed(self.layers):
            dout = layer.backward(dout)
        return dout

    def state_dict(self):
        """Parameters (flat) and every layer's extra state, as NumPy values."""
        out = {"params": self.store.numpy()}
        for i, layer in enumerate(self.layers):
            for key, value in layer.state_dict().items():
                out[f"{i}.{key}"] = value
        return out

    def load_state_dict(self, state):
        self.store.load(state["params"])
        for i, layer in enumerate(self.layers):
            prefix = f"{i}."
            mine = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
            layer.load_state_dict(mine)

    def __repr__(self):
        inner = "\n".join(f"  ({i}) {layer!r}" for i, layer in enumerate(self.layers))
        return f"Sequential(\n{inner}\n)"
