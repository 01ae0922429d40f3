"""fastopt's kernels as torch custom ops in the `fastopt` namespace (torch.ops.fastopt.*).

Each op is functional (no input is mutated), has a fake kernel (shapes only, for torch.compile
and torch.library.opcheck) and an autograd formula whose backward is itself a fastopt custom op,
so a compiled graph holds them as opaque nodes without graph breaks. The ops take float32 or
bfloat16 tensors on the CPU or a CUDA device (fastopt's bf16 kernels: fp32 accumulation, one
rounding per output; tensor cores on the GPU); anything else is refused with an error naming
the argument. Conv and linear take weight and bias in the input's dtype; the
normalizations keep their affine parameters and running statistics float32 whatever the input's
dtype, and return float32 statistics.

Under torch.autocast (CPU or CUDA) these ops follow torch's rules: with dtype=torch.bfloat16,
conv2d and linear cast their floating inputs to bfloat16 (as torch's conv and matmul do) and the
others run in the dtype their input arrives in (bf16 activations stay bf16, parameters stay
float32); other autocast dtypes (float16) run them in float32 (fastopt has no fp16 kernels).
channels_last inputs keep their layout through relu, dropout and batch norm (any device), max
pool (CPU) and bf16 conv2d with groups=1 on CPUs with AVX512-BF16 (_conv_nhwc says why only
there): these run on the storage as it lies (batch norm on it as an (N*H*W, C) matrix, max pool
and conv through fastopt's NHWC kernels), so outputs and input gradients are channels_last too
and these layers convert no layouts (_as_lies is the shared helper). Other non-contiguous inputs
(and channels_last ones elsewhere) are copied to contiguous NCHW first, and those outputs are
contiguous. CPU results are NumPy arrays from fastopt's host cache, wrapped without a copy; CUDA
results are fastopt.DeviceArrays allocated by torch's caching allocator (fastopt.torch installs
it: fastopt.cuda.set_allocator) and computed on torch's current stream, handed over through
DLPack.

The user-facing API, with torch's signatures and defaults, is fastopt.torch.nn.functional. The
normalization ops are in ops_norm.py (re-exported here).
"""

import functools
from typing import Optional

import numpy as np
import torch
from ml_dtypes import bfloat16
from torch import Tensor
from torch.library import custom_op

from .. import _C, functional as K

_DEVICES = ("cpu", "cuda", "meta")


def check(t, name, input=None, dtype=None):
    """Refuses what the kernels cannot take, naming the argument: a dtype other than `dtype`
    (default: float32 or bfloat16), a device fastopt does not run on, or a device other
    than input's."""
    if not isinstance(t, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if t.device.type not in _DEVICES:
        raise ValueError(f"{name}: fastopt runs on CPU and CUDA tensors, got a tensor on {t.device}")
    if input is not None and t.device != input.device:
        raise ValueError(f"{name}: on {t.device}, but input is on {input.device}")
    if dtype is not None:
        if t.dtype != dtype:
            why = "input's dtype" if input is not None and dtype == input.dtype else "parameters stay float32"
            raise TypeError(f"{name}: expected a {dtype} tensor ({why}), got {t.dtype}; fastopt never converts")
        return
    if t.dtype not in (torch.float32, torch.bfloat16):
        raise TypeError(
            f"{name}: expected a float32 or bfloat16 tensor, got {t.dtype}; fastopt never "
            "converts (under torch.autocast these ops choose their dtype themselves)"
        )


def _check_all(input, same_dtype=False, **others):
    """input: float32 or bfloat16. others: input's dtype when same_dtype (conv and
    linear weights), else float32 (normalization parameters and statistics)."""
    check(input, "input")
    for name, t in others.items():
        if t is not None:
            check(t, name, input, input.dtype if same_dtype else torch.float32)


def _tensor(a):
    if a is None or isinstance(a, Tensor):
        return a
    if isinstance(a, np.ndarray):
        if a.dtype == bfloat16:  # torch.from_numpy does not know ml_dtypes' bfloat16: same bits, no copy
            return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
        return torch.from_numpy(a)
    # The kernel ran on torch's current stream, so no ordering is needed (stream=-1); torch's own
    # from_dlpack would name that stream and make a DeviceArray on a non-default stream sync the host.
    return torch.utils.dlpack.from_dlpack(a.__dlpack__(stream=-1))


def _run(kernel, device, *args, **kw):
    """kernel(*args) on device (torch's current stream on CUDA); NumPy / DeviceArray results as tensors."""
    if device.type == "cuda":
        with torch.cuda.device(device):
            out = kernel(*args, stream=torch.cuda.current_stream(device).cuda_stream, **kw)
    else:
        out = kernel(*args, **kw)
    return tuple(_tensor(a) for a in out) if isinstance(out, (tuple, list)) else _tensor(out)


def _c(t):
    return None if t is None else t.contiguous()


def _nhwc(t):
    """t is a 4-D channels_last tensor whose storage is not also in NCHW order (with C = 1 or
    H = W = 1 both orders are one: those take the NCHW path, whose outputs are both too)."""
    return t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last)


def _to_nchw(t):
    """The channels_last (N, C, P, Q) tensor over an (N, P, Q, C) result's memory. A new tensor
    on that storage, not a permute: autograd refuses in-place ops (a ReLU(inplace=True) after the
    layer) on a custom op's output that is a view."""
    (n, p, q, c), (sn, sp, sq, sc) = t.shape, t.stride()
    return t.new_empty(0).set_(t.untyped_storage(), t.storage_offset(), (n, c, p, q), (sn, sc, sp, sq))


def _same(t):
    return t


def _as_lies(t, nhwc=None):
    """(view, restore): t as a contiguous operand for the kernels, and the map from a result of
    the kernel back to a logical (N, C, ...) tensor. nhwc (default _nhwc(t)): view is the
    contiguous (N, H, W, C) view of t's channels_last storage (t is copied only if it does not lie
    channels_last already) and restore turns an (N, P, Q, K) result into a channels_last
    (N, K, P, Q) tensor on the same memory, no copy; otherwise t.contiguous() and the identity.
    A gradient passes its forward input's layout as nhwc, so storage-indexed work (dropout's
    mask) lines up."""
    if _nhwc(t) if nhwc is None else nhwc:
        return t.contiguous(memory_format=torch.channels_last).permute(0, 2, 3, 1), _to_nchw
    return t.contiguous(), _same


def _empty_as(like, shape, nhwc, dtype=None):
    """A fake kernel's output where the real one returns restore(...) of _as_lies(.., nhwc):
    channels_last strides for nhwc (what the permuted view has), else contiguous."""
    layout = torch.channels_last if nhwc else torch.contiguous_format
    return torch.empty(tuple(shape), dtype=dtype or like.dtype, device=like.device, memory_format=layout)


def _grads(out, like, params=None):
    """Schemas cannot return None: a gradient not computed travels as an empty tensor, in the
    dtype the gradient would have (like's for the first, params' for the rest; default like's)."""
    dtypes = [like.dtype] + [like.dtype if params is None else params] * (len(out) - 1)
    return tuple(like.new_empty(0, dtype=d) if g is None else g for g, d in zip(out, dtypes))


def _given(g, needed):
    return g if needed else None


def _given_all(grads, needed):
    return tuple(_given(g, n) for g, n in zip(grads, needed))


def _new(like, shape):
    return like.new_empty(tuple(shape))


def _f32(like, shape):
    """A float32 output (statistics, normalization parameter gradients) whatever like's dtype."""
    return like.new_empty(tuple(shape), dtype=torch.float32)


def _as(t, like):
    """t in like's dtype: the bf16 kernels return the weight gradients of conv and linear in fp32,
    and autograd wants them in the dtype of the (autocast-cast, bf16) weight they belong to."""
    return t if t is None or t.dtype == like.dtype else t.to(like.dtype)


_lib = torch.library.Library("fastopt", "IMPL")
_AUTOCAST_KEYS = {"cpu": "AutocastCPU", "cuda": "AutocastCUDA"}


def _autocast(op, lower):
    """op's autocast kernels (CPU and CUDA): the policy in the module docstring. register_autocast
    casts to one fixed dtype, which cannot say "bf16 only under bf16 autocast, and keep the
    parameters float32", so this registers the kernels themselves the way register_autocast does
    (excluding the autocast key around the call)."""
    for device, key in _AUTOCAST_KEYS.items():
        excluded = torch._C.DispatchKeySet(getattr(torch._C.DispatchKey, key))

        def cast(a, first, low, device=device):
            if not isinstance(a, Tensor) or not a.is_floating_point() or a.device.type != device:
                return a
            if low and (lower or (first and a.dtype == torch.bfloat16)):
                return a.to(torch.bfloat16)
            return a.float()

        def kernel(_, *args, device=device, excluded=excluded, cast=cast):
            low = torch.get_autocast_dtype(device) == torch.bfloat16
            with torch._C._ExcludeDispatchKeyGuard(excluded):
                return op(*[cast(a, i == 0, low) for i, a in enumerate(args)])

        _lib.impl(op._schema.name.split("::")[1], kernel, key, with_keyset=True)


def _register_autograd(op, backward, setup, lower=False):
    """lower: under bf16 autocast the op computes in bf16 (conv, linear), else it follows its input."""
    op.register_autograd(backward, setup_context=setup)
    _autocast(getattr(torch.ops.fastopt, op._name).default, lower)


# ----------------------------------------------------------------------------------- conv2d
def conv2d_output_shape(input, weight, stride, padding, dilation, groups):
    if input.dim() != 4:
        raise ValueError(f"input: expected a 4-D (N, C, H, W) tensor, got shape {tuple(input.shape)}")
    if weight.dim() != 4 or input.shape[1] != weight.shape[1] * groups or weight.shape[0] % groups != 0:
        raise ValueError(
            f"weight: expected (out_channels, {input.shape[1]} / groups={groups}, kH, kW) with "
            f"out_channels divisible by groups, got shape {tuple(weight.shape)}"
        )
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    p = (input.shape[2] + 2 * ph - dh * (weight.shape[2] - 1) - 1) // sh + 1
    q = (input.shape[3] + 2 * pw - dw * (weight.shape[3] - 1) - 1) // sw + 1
    if p < 1 or q < 1:
        raise ValueError(
            f"input: spatial size {tuple(input.shape[2:])} is too small for the kernel "
            f"{tuple(weight.shape[2:])} (output {p}x{q})"
        )
    return input.shape[0], weight.shape[0], p, q


@functools.cache
def _vnni_bf16():
    """The NHWC kernels' fast copy runs: AVX512-BF16, and no AMX tiles (the NCHW GEMMs run on the
    tiles, about 16x VDPBF16PS's rate; the NHWC kernels have no tile path yet)."""
    info = _C.build_info()
    return info["simd"] == "avx512bf16" and not info["amx"].startswith("tiles")


def _conv_nhwc(input, weight, groups):
    """Whether conv2d runs fastopt's channels_last kernels: bf16 on a CPU with AVX512-BF16 and
    no AMX tiles, groups=1, and input or weight channels_last (torch's rule for its own conv).
    There they skip the NCHW path's packing and its padded taps; fp32 keeps NCHW and its Winograd
    kernels, the CPUs without VDPBF16PS keep the NCHW GEMM over widened panels (the NHWC kernels'
    portable loop is slower), and AMX CPUs the NCHW tile GEMMs. Everywhere else a channels_last
    input is copied to NCHW."""
    return (
        input.device.type == "cpu"
        and input.dtype == torch.bfloat16
        and groups == 1
        and (_nhwc(input) or _nhwc(weight))
        and _vnni_bf16()
    )


def _tf32(device):
    return device.type == "cuda" and torch.backends.cudnn.allow_tf32


@custom_op("fastopt::conv2d", mutates_args=())
def conv2d(
    input: Tensor,
    weight: Tensor,
    bias: Optional[Tensor],
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    groups: int,
) -> Tensor:
    _check_all(input, True, weight=weight, bias=bias)
    conv2d_output_shape(input, weight, stride, padding, dilation, groups)
    nhwc = _conv_nhwc(input, weight, groups)
    x, restore = _as_lies(input, nhwc)
    return restore(
        _run(
            K.conv2d_forward,
            input.device,
            x,
            weight.contiguous(),
            _c(bias),
            tuple(stride),
            tuple(padding),
            tuple(dilation),
            groups,
            allow_tf32=_tf32(input.device),
            layout=_layout(nhwc),
        )
    )


@conv2d.register_fake
def _(input, weight, bias, stride, padding, dilation, groups):
    _check_all(input, True, weight=weight, bias=bias)
    shape = conv2d_output_shape(input, weight, stride, padding, dilation, groups)
    return _empty_as(input, shape, _conv_nhwc(input, weight, groups))


@custom_op("fastopt::conv2d_backward", mutates_args=())
def conv2d_backward(
    grad: Tensor,
    input: Tensor,
    weight: Tensor,
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    groups: int,
    need_input: bool,
    need_weight: bool,
    need_bias: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    nhwc = _conv_nhwc(input, weight, groups)
    x, restore = _as_lies(input, nhwc)
    out = _run(
        K.conv2d_backward,
        input.device,
        _as_lies(grad, nhwc)[0],
        x,
        weight.contiguous(),
        tuple(stride),
        tuple(padding),
        tuple(dilation),
        groups,
        (need_input, need_weight, need_bias),
        allow_tf32=_tf32(input.device),
        layout=_layout(nhwc),
    )
    dx = None if out[0] is None else restore(out[0])
    return _grads((dx, _as(out[1], weight), _as(out[2], weight)), input)


@conv2d_backward.register_fake
def _(grad, input, weight, stride, padding, dilation, groups, need_input, need_weight, need_bias):
    return (
        _empty_as(input, input.shape, _conv_nhwc(input, weight, groups)) if need_input else _new(input, (0,)),
        _new(input, weight.shape if need_weight else (0,)),
        _new(input, weight.shape[:1] if need_bias else (0,)),
    )


def _conv2d_setup(ctx, inputs, output):
    input, weight, bias, stride, padding, dilation, groups = inputs
    ctx.save_for_backward(input, weight)
    ctx.conf = (stride, padding, dilation, groups)
    ctx.has_bias = bias is not None


def _conv2d_grad(ctx, grad):
    input, weight = ctx.saved_tensors
    need = (ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2] and ctx.has_bias)
    grads = conv2d_backward(grad, input, weight, *ctx.conf, *need)
    return _given_all(grads, need) + (None,) * 4


_register_autograd(conv2d, _conv2d_grad, _conv2d_setup, lower=True)


# ----------------------------------------------------------------------------------- linear
def _linear_check(input, weight, bias):
    _check_all(input, True, weight=weight, bias=bias)
    if input.dim() < 1 or weight.dim() != 2 or input.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"weight: expected (out_features, {input.shape[-1] if input.dim() else '?'}), got shape "
            f"{tuple(weight.shape)}"
        )


def _rows(t):
    return t.contiguous().reshape(-1, t.shape[-1])


@custom_op("fastopt::linear", mutates_args=())
def linear(input: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
    _linear_check(input, weight, bias)
    y = _run(K.linear_forward, input.device, _rows(input), weight.contiguous(), _c(bias))
    return y.reshape(*input.shape[:-1], weight.shape[0])


@linear.register_fake
def _(input, weight, bias):
    _linear_check(input, weight, bias)
    return _new(input, (*input.shape[:-1], weight.shape[0]))


@custom_op("fastopt::linear_backward", mutates_args=())
def linear_backward(
    grad: Tensor, input: Tensor, weight: Tensor, need_input: bool, need_weight: bool, need_bias: bool
) -> tuple[Tensor, Tensor, Tensor]:
    dx, dw, db = _run(
        K.linear_backward,
        input.device,
        _rows(grad),
        _rows(input),
        weight.contiguous(),
        (need_input, need_weight, need_bias),
    )
    return _grads((None if dx is None else dx.reshape(input.shape), _as(dw, weight), _as(db, weight)), input)


@linear_backward.register_fake
def _(grad, input, weight, need_input, need_weight, need_bias):
    return (
        _new(input, input.shape if need_input else (0,)),
        _new(input, weight.shape if need_weight else (0,)),
        _new(input, weight.shape[:1] if need_bias else (0,)),
    )


def _linear_setup(ctx, inputs, output):
    input, weight, bias = inputs
    ctx.save_for_backward(input, weight)
    ctx.has_bias = bias is not None


def _linear_grad(ctx, grad):
    input, weight = ctx.saved_tensors
    need = (ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2] and ctx.has_bias)
    return _given_all(linear_backward(grad, input, weight, *need), need)


_register_autograd(linear, _linear_grad, _linear_setup, lower=True)


# ---------------------------------------------------------------------------------- dropout
def _seed(seed):
    if (
        not isinstance(seed, Tensor)
        or seed.dtype != torch.int64
        or seed.numel() != 1
        or seed.device.type not in ("cpu", "meta")
    ):
        raise ValueError(f"seed: expected a one-element int64 CPU tensor, got {seed!r}")


@custom_op("fastopt::dropout", mutates_args=())
def dropout(input: Tensor, p: float, seed: Tensor) -> Tensor:
    """Inverted dropout with the Philox mask of (seed, offset 0): backward regenerates it."""
    check(input, "input")
    _seed(seed)
    x, restore = _as_lies(input)
    return restore(_run(K.dropout_forward, input.device, x, p, int(seed.item())))


@dropout.register_fake
def _(input, p, seed):
    check(input, "input")
    _seed(seed)
    return _empty_as(input, input.shape, _nhwc(input))


@custom_op("fastopt::dropout_backward", mutates_args=())
def dropout_backward(grad: Tensor, p: float, seed: Tensor) -> Tensor:
    """The mask is indexed by storage position: grad must lie as the forward input did."""
    g, restore = _as_lies(grad)
    return restore(_run(K.dropout_backward, grad.device, g, p, int(seed.item())))


@dropout_backward.register_fake
def _(grad, p, seed):
    return _empty_as(grad, grad.shape, _nhwc(grad))


def _dropout_setup(ctx, inputs, output):
    ctx.p, ctx.nhwc = inputs[1], _nhwc(inputs[0])
    ctx.save_for_backward(inputs[2])


def _dropout_grad(ctx, grad):
    grad = grad.contiguous(memory_format=torch.channels_last if ctx.nhwc else torch.contiguous_format)
    return dropout_backward(grad, ctx.p, ctx.saved_tensors[0]), None, None


_register_autograd(dropout, _dropout_grad, _dropout_setup)


# --------------------------------------------------------------------------------- relu
@custom_op("fastopt::relu", mutates_args=())
def relu(input: Tensor) -> Tensor:
    check(input, "input")
    x, restore = _as_lies(input)
    return restore(_run(K.relu_forward, input.device, x))


@relu.register_fake
def _(input):
    check(input, "input")
    return _empty_as(input, input.shape, _nhwc(input))


@custom_op("fastopt::relu_backward", mutates_args=())
def relu_backward(grad: Tensor, input: Tensor) -> Tensor:
    x, restore = _as_lies(input)
    return restore(_run(K.relu_backward, input.device, _as_lies(grad, _nhwc(input))[0], x))


@relu_backward.register_fake
def _(grad, input):
    return _empty_as(input, input.shape, _nhwc(input))


def _relu_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[0])


def _relu_grad(ctx, grad):
    return relu_backward(grad, ctx.saved_tensors[0])


_register_autograd(relu, _relu_grad, _relu_setup)


# ------------------------------------------------------------------------------ max pool 2d
def max_pool2d_output_shape(input, kernel_size, stride, padding):
    if input.dim() != 4:
        raise ValueError(f"input: expected a 4-D (N, C, H, W) tensor, got shape {tuple(input.shape)}")
    (kh, kw), (sh, sw), (ph, pw) = kernel_size, stride, padding
    if min(kh, kw, sh, sw) < 1 or min(ph, pw) < 0 or 2 * ph > kh or 2 * pw > kw:
        raise ValueError(
            f"padding: must be at most half of kernel_size (positive, like stride), got kernel_size "
            f"{tuple(kernel_size)}, stride {tuple(stride)}, padding {tuple(padding)}"
        )
    p, q = (input.shape[2] + 2 * ph - kh) // sh + 1, (input.shape[3] + 2 * pw - kw) // sw + 1
    if p < 1 or q < 1:
        raise ValueError(
            f"input: spatial size {tuple(input.shape[2:])} is too small for kernel_size {tuple(kernel_size)}"
        )
    return input.shape[0], input.shape[1], p, q


def _pool_nhwc(input):
    """fastopt's NHWC max pool runs on the CPU only; channels_last CUDA tensors go through NCHW."""
    return input.device.type == "cpu" and _nhwc(input)


def _layout(nhwc):
    return "nhwc" if nhwc else "nchw"


@custom_op("fastopt::max_pool2d", mutates_args=())
def max_pool2d(input: Tensor, kernel_size: list[int], stride: list[int], padding: list[int]) -> tuple[Tensor, Tensor]:
    """(y, indices): indices are int32 flat positions h * W + w within each input plane, whatever
    the layout; a channels_last CPU input gives channels_last y and indices."""
    check(input, "input")
    max_pool2d_output_shape(input, kernel_size, stride, padding)
    nhwc = _pool_nhwc(input)
    x, restore = _as_lies(input, nhwc)
    hyper = tuple(kernel_size), tuple(stride), tuple(padding)
    y, indices = _run(K.max_pool2d_forward, input.device, x, *hyper, layout=_layout(nhwc))
    return restore(y), restore(indices)


@max_pool2d.register_fake
def _(input, kernel_size, stride, padding):
    check(input, "input")
    shape, nhwc = max_pool2d_output_shape(input, kernel_size, stride, padding), _pool_nhwc(input)
    return _empty_as(input, shape, nhwc), _empty_as(input, shape, nhwc, torch.int32)


@custom_op("fastopt::max_pool2d_backward", mutates_args=())
def max_pool2d_backward(
    grad: Tensor,
    indices: Tensor,
    input_shape: list[int],
    kernel_size: list[int],
    stride: list[int],
    padding: list[int],
    channels_last: bool = False,
) -> Tensor:
    """channels_last: the forward ran NHWC (a channels_last CPU input); dx is then channels_last."""
    nhwc = channels_last and grad.device.type == "cpu"
    (g, restore), (i, _) = _as_lies(grad, nhwc), _as_lies(indices, nhwc)
    shape = [input_shape[0], *input_shape[2:], input_shape[1]] if nhwc else input_shape
    hyper = tuple(kernel_size), tuple(stride), tuple(padding)
    return restore(_run(K.max_pool2d_backward, grad.device, g, i, shape, *hyper, layout=_layout(nhwc)))


@max_pool2d_backward.register_fake
def _(grad, indices, input_shape, kernel_size, stride, padding, channels_last=False):
    return _empty_as(grad, input_shape, channels_last and grad.device.type == "cpu")


def _max_pool2d_setup(ctx, inputs, output):
    ctx.shape, ctx.conf, ctx.nhwc = list(inputs[0].shape), inputs[1:], _pool_nhwc(inputs[0])
    ctx.save_for_backward(output[1])


def _max_pool2d_grad(ctx, grad, _):
    dx = max_pool2d_backward(grad, ctx.saved_tensors[0], ctx.shape, *ctx.conf, ctx.nhwc)
    return dx, None, None, None


_register_autograd(max_pool2d, _max_pool2d_grad, _max_pool2d_setup)


# The normalizations live in ops_norm.py (imported last: it builds on the helpers above).
from .ops_norm import (  # noqa: E402, F401  (re-exported: ops.batch_norm, ...)
    batch_norm,
    batch_norm_backward,
    group_norm,
    group_norm_backward,
    layer_norm,
    layer_norm_backward,
)
