"""The layers: each a forward/backward pair over fastopt's native kernels, with torch.nn's
constructor arguments, defaults and default initializations.

Weights decay; biases and normalization affines do not (they land in the store's second group).
Constructor arguments are checked as torch.nn's are, and strictly: a bool or float where an
integer goes, a str or None where a number goes, raise TypeError naming the argument; a value out
of range raises ValueError.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from .. import functional as F
from .._args import boolean, finite, integer, pair, real, shape
from .._types import Array, Initializer, IntPair, Shape
from . import init as I
from .module import Module, Parameter, take_saved as _take

__all__ = [
    "Conv2d",
    "Linear",
    "BatchNorm1d",
    "BatchNorm2d",
    "LayerNorm",
    "GroupNorm",
    "ReLU",
    "LeakyReLU",
    "Tanh",
    "Sigmoid",
    "ELU",
    "GELU",
    "MaxPool2d",
    "AvgPool2d",
    "GlobalAvgPool2d",
    "Flatten",
    "Dropout",
]


def _init(init, name):
    if init is not None and not callable(init):
        raise TypeError(f"{name}: expected an initializer (rng, shape) -> array or None, got {type(init).__name__}")
    return init


def _eps(eps):
    return finite(eps, "eps", 0.0)


def _computed(module, x, weight, bias):
    """x and the layer's weight and bias (Parameters, bias maybe None) in the network's compute
    dtype (ParameterStore.compute: bfloat16 copies in a precision='bf16' network)."""
    compute = module.store.compute
    return compute(x), compute(weight.data), None if bias is None else compute(bias.data)


class Conv2d(Module):
    """2-D convolution, NCHW. Default init as torch: weight kaiming_uniform(a=sqrt(5)), bias
    U(+-1/sqrt(fan_in)). allow_tf32 lets the GPU use TF32 tensor cores."""

    bf16 = True  # runs in a precision='bf16' network

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: IntPair,
        stride: IntPair = 1,
        padding: IntPair = 0,
        dilation: IntPair = 1,
        groups: int = 1,
        bias: bool = True,
        weight_init: Initializer | None = None,
        bias_init: Initializer | None = None,
        allow_tf32: bool = False,
    ) -> None:
        super().__init__()
        in_channels, out_channels = integer(in_channels, "in_channels", 1), integer(out_channels, "out_channels", 1)
        groups = integer(groups, "groups", 1)
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"groups: {groups} must divide in_channels {in_channels} and out_channels {out_channels}")
        kh, kw = pair(kernel_size, "kernel_size", 1)
        weight_init, bias_init = _init(weight_init, "weight_init"), _init(bias_init, "bias_init")
        shape = (out_channels, in_channels // groups, kh, kw)
        fan_in = I.fans(shape)[0]
        self.params["weight"] = Parameter(shape, weight_init or I.kaiming_uniform(a=math.sqrt(5)))
        self.params["bias"] = (
            Parameter((out_channels,), bias_init or I.fan_in_uniform(fan_in), decay=False)
            if boolean(bias, "bias")
            else None
        )
        self.conv = dict(
            stride=pair(stride, "stride", 1),
            padding=pair(padding, "padding", 0),
            dilation=pair(dilation, "dilation", 1),
            groups=groups,
            allow_tf32=boolean(allow_tf32, "allow_tf32"),
        )
        self._x = self._w = None

    def forward(self, x: Array, training: bool = True) -> Array:
        x, w, b = _computed(self, x, self.params["weight"], self.params["bias"])
        y = F.conv2d_forward(x, w, b, **self.conv)
        self._x, self._w = (x, w) if training else (None, None)
        return y

    def backward(self, dy: Array) -> Array | None:
        w, b = self.params["weight"], self.params["bias"]
        train = w.requires_grad
        dx, _, _ = F.conv2d_backward(
            dy,
            _take(self, "_x"),
            _take(self, "_w"),
            need=(self.needs_input_grad, train, train and b is not None),
            dw_out=_slot(w, train),
            db_out=_slot(b, train),
            accumulate=self.store.accumulate,
            **self.conv,
        )
        return dx

    def extra_repr(self) -> str:
        k, c = self.params["weight"].shape, self.conv
        return (
            f"{k[1] * c['groups']}, {k[0]}, kernel_size={k[2:]}, stride={c['stride']}, padding={c['padding']}, "
            f"bias={self.params['bias'] is not None}"
        )


class Linear(Module):
    """y = x W^T + b, x (N, in), on fastopt's batched GEMM. Init as torch."""

    bf16 = True  # runs in a precision='bf16' network

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        weight_init: Initializer | None = None,
        bias_init: Initializer | None = None,
    ) -> None:
        super().__init__()
        in_features, out_features = integer(in_features, "in_features", 1), integer(out_features, "out_features", 1)
        weight_init, bias_init = _init(weight_init, "weight_init"), _init(bias_init, "bias_init")
        self.params["weight"] = Parameter((out_features, in_features), weight_init or I.kaiming_uniform(a=math.sqrt(5)))
        self.params["bias"] = (
            Parameter((out_features,), bias_init or I.fan_in_uniform(in_features), decay=False)
            if boolean(bias, "bias")
            else None
        )
        self._x = self._w = None

    def forward(self, x: Array, training: bool = True) -> Array:
        x, w, b = _computed(self, x, self.params["weight"], self.params["bias"])
        y = F.linear_forward(x, w, b)
        self._x, self._w = (x, w) if training else (None, None)
        return y

    def backward(self, dy: Array) -> Array | None:
        w, b = self.params["weight"], self.params["bias"]
        train = w.requires_grad
        dx, _, _ = F.linear_backward(
            dy,
            _take(self, "_x"),
            _take(self, "_w"),
            need=(self.needs_input_grad, train, train and b is not None),
            dweight_out=_slot(w, train),
            dbias_out=_slot(b, train),
            accumulate=self.store.accumulate,
        )
        return dx

    def extra_repr(self) -> str:
        out_f, in_f = self.params["weight"].shape
        return f"in_features={in_f}, out_features={out_f}, bias={self.params['bias'] is not None}"


def _affine(params, shape, affine, bias=True, name="affine"):
    affine, bias = boolean(affine, name), boolean(bias, "bias")
    params["weight"] = Parameter(shape, I.ones(), decay=False) if affine else None
    params["bias"] = Parameter(shape, I.zeros(), decay=False) if affine and bias else None


def _data(p):
    return None if p is None else p.data


def _slot(p, wanted=True):
    """p's slot in the store's flat gradient buffer, where the backward kernel writes (or, in an
    accumulating backward, adds) its gradient at its final store; None when not computed."""
    return p.grad if wanted and p is not None else None


class _BatchNorm(Module):
    """Batch normalization over every dim but C, torch.nn.BatchNorm semantics: batch statistics
    in training (running statistics updated with `momentum`, None = cumulative average), running
    statistics in eval and while frozen (then not updated either). The running statistics are
    views of the store's buffer array."""

    bf16 = True  # runs in a precision='bf16' network
    ndims = ()

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
    ) -> None:
        super().__init__()
        self.num_features, self.eps = integer(num_features, "num_features", 1), _eps(eps)
        self.momentum = None if momentum is None else real(momentum, "momentum", 0.0, 1.0)
        self.track_running_stats = boolean(track_running_stats, "track_running_stats")
        _affine(self.params, (self.num_features,), affine)
        self.running_mean = self.running_var = None
        self.num_batches_tracked = 0
        self._saved = None

    def buffer_specs(self) -> list[tuple[str, tuple[int, ...], float]]:
        if not self.track_running_stats:
            return []
        return [("running_mean", (self.num_features,), 0.0), ("running_var", (self.num_features,), 1.0)]

    def counters(self) -> list[str]:
        return ["num_batches_tracked"] if self.track_running_stats else []

    def forward(self, x: Array, training: bool = True) -> Array:
        if len(x.shape) not in self.ndims or x.shape[1] != self.num_features:
            raise ValueError(
                f"x: {type(self).__name__}({self.num_features}) expects {self.ndims[0]}-d input with "
                f"{self.num_features} channels, got shape {tuple(x.shape)}"
            )
        batch_stats = (training and not self.frozen) or not self.track_running_stats
        updating = training and not self.frozen and self.track_running_stats
        if updating:
            self.num_batches_tracked += 1
        # As torch.nn.BatchNorm: momentum=None (a cumulative average) matters only when updating.
        momentum = 0.0 if self.momentum is None and not updating else self.momentum
        y, mean, invstd = F.batch_norm_forward(
            x,
            _data(self.params["weight"]),
            _data(self.params["bias"]),
            self.running_mean,
            self.running_var,
            batch_stats,
            momentum,
            self.eps,
            num_batches_tracked=self.num_batches_tracked,
        )
        self._saved = (x, mean, invstd, batch_stats) if training else None
        return y

    def backward(self, dy: Array) -> Array | None:
        x, mean, invstd, batch_stats = _take(self, "_saved")
        w, b = self.params["weight"], self.params["bias"]
        # Frozen: no affine gradients, so eval-mode batch norm skips its reduction pass entirely.
        train = not self.frozen
        dx, _, _ = F.batch_norm_backward(
            dy,
            x,
            _data(w),
            mean,
            invstd,
            batch_stats,
            has_bias=b is not None,
            dgamma_out=_slot(w, train),
            dbeta_out=_slot(b, train),
            accumulate=self.store.accumulate,
            affine_grads=train,
        )
        return dx

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.params['weight'] is not None}"
        )


class BatchNorm1d(_BatchNorm):
    """Over (N, C) or (N, C, L)."""

    ndims = (2, 3)


class BatchNorm2d(_BatchNorm):
    """Over (N, C, H, W)."""

    ndims = (4,)


class _SampleNorm(Module):
    """Statistics per sample (layer and group norm): the same in training and eval. Subclasses
    name their functional pair and its grouping argument (`self.arg`)."""

    bf16 = True  # runs in a precision='bf16' network
    forward_fn = backward_fn = None

    def forward(self, x: Array, training: bool = True) -> Array:
        y, mean, rstd = type(self).forward_fn(
            x, self.arg, _data(self.params["weight"]), _data(self.params["bias"]), self.eps
        )
        self._saved = (x, mean, rstd) if training else None
        return y

    def backward(self, dy: Array) -> Array | None:
        x, mean, rstd = _take(self, "_saved")
        w, b = self.params["weight"], self.params["bias"]
        train = not self.frozen
        dx, _, _ = type(self).backward_fn(
            dy,
            x,
            self.arg,
            mean,
            rstd,
            _data(w),
            has_bias=b is not None,
            dweight_out=_slot(w, train),
            dbias_out=_slot(b, train),
            accumulate=self.store.accumulate,
            affine_grads=train,
        )
        return dx

    def extra_repr(self) -> str:
        return f"{self.arg}, eps={self.eps}"


class LayerNorm(_SampleNorm):
    """Normalization over the trailing normalized_shape dims, per sample."""

    forward_fn, backward_fn = F.layer_norm_forward, F.layer_norm_backward

    def __init__(
        self, normalized_shape: Shape, eps: float = 1e-5, elementwise_affine: bool = True, bias: bool = True
    ) -> None:
        super().__init__()
        dims = shape(normalized_shape, "normalized_shape", 1)
        self.arg, self.eps = dims, _eps(eps)
        _affine(self.params, dims, elementwise_affine, bias, "elementwise_affine")
        self._saved = None


class GroupNorm(_SampleNorm):
    """Normalization per (sample, group of consecutive channels)."""

    forward_fn, backward_fn = F.group_norm_forward, F.group_norm_backward

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5, affine: bool = True) -> None:
        super().__init__()
        num_groups, num_channels = integer(num_groups, "num_groups", 1), integer(num_channels, "num_channels", 1)
        if num_channels % num_groups:
            raise ValueError(f"num_groups: {num_groups} must divide num_channels {num_channels}")
        self.arg, self.eps = num_groups, _eps(eps)
        _affine(self.params, (num_channels,), affine)
        self._saved = None


class ReLU(Module):
    bf16 = True  # runs in a precision='bf16' network

    def __init__(self) -> None:
        super().__init__()
        self._x = None

    def forward(self, x: Array, training: bool = True) -> Array:
        self._x = x if training else None
        return F.relu_forward(x)

    def backward(self, dy: Array) -> Array | None:
        return F.relu_backward(dy, _take(self, "_x"))


class LeakyReLU(Module):
    bf16 = True  # runs in a precision='bf16' network

    def __init__(self, negative_slope: float = 0.01) -> None:
        super().__init__()
        self.negative_slope = finite(negative_slope, "negative_slope")
        self._x = None

    def forward(self, x: Array, training: bool = True) -> Array:
        self._x = x if training else None
        return F.leaky_relu_forward(x, self.negative_slope)

    def backward(self, dy: Array) -> Array | None:
        return F.leaky_relu_backward(dy, _take(self, "_x"), self.negative_slope)

    def extra_repr(self) -> str:
        return f"negative_slope={self.negative_slope}"


class _Pointwise(Module):
    """An activation whose backward reads its input: subclasses name the functional pair."""

    bf16 = True  # runs in a precision='bf16' network

    forward_fn = backward_fn = None

    def __init__(self) -> None:
        super().__init__()
        self._x = None

    def _args(self):
        return ()

    def forward(self, x: Array, training: bool = True) -> Array:
        self._x = x if training else None
        return type(self).forward_fn(x, *self._args())

    def backward(self, dy: Array) -> Array | None:
        return type(self).backward_fn(dy, _take(self, "_x"), *self._args())


class Tanh(_Pointwise):
    forward_fn, backward_fn = F.tanh_forward, F.tanh_backward


class Sigmoid(_Pointwise):
    forward_fn, backward_fn = F.sigmoid_forward, F.sigmoid_backward


class ELU(_Pointwise):
    """x if x > 0 else alpha * (exp(x) - 1)."""

    forward_fn, backward_fn = F.elu_forward, F.elu_backward

    def __init__(self, alpha: float = 1.0) -> None:
        super().__init__()
        self.alpha = finite(alpha, "alpha")

    def _args(self):
        return (self.alpha,)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}"


class GELU(_Pointwise):
    """x * Phi(x), the exact (erf) form: torch's GELU(approximate='none')."""

    forward_fn, backward_fn = F.gelu_forward, F.gelu_backward


def _pool_hyper(kernel_size, stride, padding):
    pair(kernel_size, "kernel_size", 1)
    if stride is not None:
        pair(stride, "stride", 1)
    pair(padding, "padding", 0)
    return kernel_size, stride, padding


class MaxPool2d(Module):
    """Max pooling (floor mode); backward routes each output's gradient to its argmax."""

    bf16 = True  # runs in a precision='bf16' network

    def __init__(self, kernel_size: IntPair, stride: IntPair | None = None, padding: IntPair = 0) -> None:
        super().__init__()
        self.kernel_size, self.stride, self.padding = _pool_hyper(kernel_size, stride, padding)
        self._saved = None

    def forward(self, x: Array, training: bool = True) -> Array:
        y, idx = F.max_pool2d_forward(x, self.kernel_size, self.stride, self.padding)
        self._saved = (tuple(x.shape), idx) if training else None
        return y

    def backward(self, dy: Array) -> Array | None:
        shape, idx = _take(self, "_saved")
        return F.max_pool2d_backward(dy, idx, shape, self.kernel_size, self.stride, self.padding)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class AvgPool2d(Module):
    """Average pooling (floor mode), torch's count_include_pad=True default (padding counts as zeros)."""

    bf16 = True  # runs in a precision='bf16' network

    def __init__(
        self, kernel_size: IntPair, stride: IntPair | None = None, padding: IntPair = 0, count_include_pad: bool = True
    ) -> None:
        super().__init__()
        self.kernel_size, self.stride, self.padding = _pool_hyper(kernel_size, stride, padding)
        self.count_include_pad = boolean(count_include_pad, "count_include_pad")
        self._shape = None

    def _hyper(self):
        return dict(
            kernel_size=self.kernel_size,
            stride=self.stride,
            padding=self.padding,
            count_include_pad=self.count_include_pad,
        )

    def forward(self, x: Array, training: bool = True) -> Array:
        self._shape = tuple(x.shape) if training else None
        return F.avg_pool2d_forward(x, **self._hyper())

    def backward(self, dy: Array) -> Array | None:
        return F.avg_pool2d_backward(dy, _take(self, "_shape"), **self._hyper())

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class GlobalAvgPool2d(Module):
    """(N, C, H, W) -> (N, C): the mean over H and W."""

    bf16 = True  # runs in a precision='bf16' network

    def __init__(self) -> None:
        super().__init__()
        self._shape = None

    def forward(self, x: Array, training: bool = True) -> Array:
        self._shape = tuple(x.shape) if training else None
        return F.global_avg_pool_forward(x)

    def backward(self, dy: Array) -> Array | None:
        return F.global_avg_pool_backward(dy, _take(self, "_shape"))


class Flatten(Module):
    """(N, ...) -> (N, prod(...)), a free view."""

    bf16 = True  # runs in a precision='bf16' network

    def __init__(self) -> None:
        super().__init__()
        self._shape = None

    def forward(self, x: Array, training: bool = True) -> Array:
        self._shape = tuple(x.shape) if training else None
        return x.reshape(x.shape[0], -1)

    def backward(self, dy: Array) -> Array | None:
        return dy.reshape(_take(self, "_shape"))


class Dropout(Module):
    """Inverted dropout; identity in eval. The mask of each training call comes from the layer's
    seed (drawn at build) and a stream offset that advances by the input's size every call, so
    backward regenerates it and a checkpoint (which stores the offset) resumes the same masks."""

    bf16 = True  # runs in a precision='bf16' network

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        self.p = real(p, "p", 0.0, 1.0)
        self.seed = 0
        self.offset = 0
        self._saved = None

    def build_state(self, device: str, seed: int) -> None:
        self.seed = int(seed)

    def forward(self, x: Array, training: bool = True) -> Array:
        if not training or self.p == 0.0:
            self._saved = self.offset if training else None
            return x
        y = F.dropout_forward(x, self.p, self.seed, self.offset)
        self._saved = self.offset
        self.offset += int(np.prod(x.shape))
        return y

    def backward(self, dy: Array) -> Array | None:
        offset = _take(self, "_saved")
        return dy if self.p == 0.0 else F.dropout_backward(dy, self.p, self.seed, offset)

    def own_extra_state(self) -> dict[str, int]:
        return {"seed": self.seed, "offset": self.offset}

    def load_own_extra_state(self, state: Mapping[str, int]) -> None:
        self.seed, self.offset = int(state["seed"]), int(state["offset"])

    def extra_repr(self) -> str:
        return f"p={self.p}"
