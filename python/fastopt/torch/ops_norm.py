"""The normalization ops of fastopt's torch front (batch, layer and group norm), as custom ops in
the `fastopt` namespace with their backward ops, fake kernels, autograd and autocast rules: the
conventions of ops.py, which re-exports them. Batch norm in training is functional (y, mean,
invstd, var): torch refuses an autograd formula on an op that mutates its inputs, so the running
statistics are updated by the caller (fastopt.torch.nn.functional.batch_norm). A channels_last
batch norm input runs as the (N*H*W, C) matrix its storage is, which the kernel's 2-d path
normalizes per column: the same statistics (summed in another order), channels_last y and dx."""

from typing import Optional

import torch
from torch import Tensor
from torch.library import custom_op

from .. import functional as K
from .ops import (
    _as_lies,
    _c,
    _check_all,
    _empty_as,
    _f32,
    _given,
    _given_all,
    _grads,
    _new,
    _nhwc,
    _register_autograd,
    _run,
)


# ------------------------------------------------------------------------------- batch norm
def _channels(input):
    if input.dim() < 2:
        raise ValueError(f"input: expected (N, C, ...), got shape {tuple(input.shape)}")
    return input.shape[1]


def _batch_norm_check(input, weight, bias, running_mean, running_var, training):
    _check_all(input, weight=weight, bias=bias, running_mean=running_mean, running_var=running_var)
    c = _channels(input)
    for name, t in (("weight", weight), ("bias", bias), ("running_mean", running_mean), ("running_var", running_var)):
        if t is not None and tuple(t.shape) != (c,):
            raise ValueError(f"{name}: expected shape ({c},) for input with {c} channels, got {tuple(t.shape)}")
    if not training and (running_mean is None or running_var is None):
        raise ValueError(
            "running_mean: normalizing with running statistics (training=False) needs running_mean and running_var"
        )
    return c


def _columns(t, nhwc):
    """(operand, restore) of batch norm: a channels_last t as its storage's (N*H*W, C) matrix
    (nhwc: the forward input's layout, for a gradient), else t.contiguous()."""
    x, restore = _as_lies(t, nhwc)
    if not nhwc:
        return x, restore
    return x.reshape(-1, x.shape[-1]), lambda r: restore(r.reshape(x.shape))


@custom_op("fastopt::batch_norm", mutates_args=())
def batch_norm(
    input: Tensor,
    weight: Optional[Tensor],
    bias: Optional[Tensor],
    running_mean: Optional[Tensor],
    running_var: Optional[Tensor],
    training: bool,
    eps: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(y, mean, invstd, batch variance): training normalizes with the batch statistics (running
    ones are not read) and returns the unbiased batch variance for the caller's running-stat
    update; eval normalizes with running_mean / running_var and returns an empty variance."""
    c = _batch_norm_check(input, weight, bias, running_mean, running_var, training)
    x, restore = _columns(input, _nhwc(input))
    if training:
        # The kernel's running-stat update with factor 1 on zeros yields the batch mean and the
        # unbiased batch variance, computed in the same pass, without mutating an op input.
        mean, var = x.new_zeros(c, dtype=torch.float32), x.new_zeros(c, dtype=torch.float32)
        y, save_mean, invstd = _run(K.batch_norm_forward, x.device, x, _c(weight), _c(bias), mean, var, True, 1.0, eps)
        return restore(y), save_mean, invstd, var
    y, mean, invstd = _run(
        K.batch_norm_forward,
        x.device,
        x,
        _c(weight),
        _c(bias),
        running_mean.contiguous(),
        running_var.contiguous(),
        False,
        0.0,
        eps,
    )
    return restore(y), mean, invstd, _f32(x, (0,))


@batch_norm.register_fake
def _(input, weight, bias, running_mean, running_var, training, eps):
    c = _batch_norm_check(input, weight, bias, running_mean, running_var, training)
    y = _empty_as(input, input.shape, _nhwc(input))
    return y, _f32(input, (c,)), _f32(input, (c,)), _f32(input, (c,) if training else (0,))


@custom_op("fastopt::batch_norm_backward", mutates_args=())
def batch_norm_backward(
    grad: Tensor, input: Tensor, weight: Optional[Tensor], mean: Tensor, invstd: Tensor, training: bool, has_bias: bool
) -> tuple[Tensor, Tensor, Tensor]:
    nhwc = _nhwc(input)
    (g, _), (x, restore) = _columns(grad, nhwc), _columns(input, nhwc)
    dx, dw, db = _run(K.batch_norm_backward, input.device, g, x, _c(weight), mean, invstd, training, has_bias)
    return _grads((None if dx is None else restore(dx), dw, db), input, torch.float32)


@batch_norm_backward.register_fake
def _(grad, input, weight, mean, invstd, training, has_bias):
    c = input.shape[1]
    return (
        _empty_as(input, input.shape, _nhwc(input)),
        _f32(input, (c,) if weight is not None else (0,)),
        _f32(input, (c,) if has_bias else (0,)),
    )


def _batch_norm_setup(ctx, inputs, output):
    input, weight, bias, _, _, training, _ = inputs
    y, mean, invstd, var = output
    ctx.mark_non_differentiable(mean, invstd, var)
    ctx.save_for_backward(input, weight, mean, invstd)
    ctx.training, ctx.has_bias = training, bias is not None


def _batch_norm_grad(ctx, grad, *_):
    input, weight, mean, invstd = ctx.saved_tensors
    grads = batch_norm_backward(grad, input, weight, mean, invstd, ctx.training, ctx.has_bias)
    return _given_all(grads, ctx.needs_input_grad[:3]) + (None,) * 4


_register_autograd(batch_norm, _batch_norm_grad, _batch_norm_setup)


# ---------------------------------------------------------------------------- layer / group norm
def _layer_norm_check(input, normalized_shape, weight, bias):
    _check_all(input, weight=weight, bias=bias)
    k = len(normalized_shape)
    if k == 0 or input.dim() < k or list(input.shape[input.dim() - k :]) != list(normalized_shape):
        raise ValueError(
            f"normalized_shape: {list(normalized_shape)} must be the trailing dims of input's shape "
            f"{tuple(input.shape)}"
        )
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and list(t.shape) != list(normalized_shape):
            raise ValueError(f"{name}: expected shape {tuple(normalized_shape)}, got {tuple(t.shape)}")
    return input.shape[: input.dim() - k]


def _group_norm_check(input, num_groups, weight, bias):
    _check_all(input, weight=weight, bias=bias)
    c = _channels(input)
    if num_groups < 1 or c % num_groups != 0:
        raise ValueError(f"num_groups: must divide the {c} channels of input, got {num_groups}")
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and tuple(t.shape) != (c,):
            raise ValueError(f"{name}: expected shape ({c},), got {tuple(t.shape)}")
    return input.shape[0], num_groups


@custom_op("fastopt::layer_norm", mutates_args=())
def layer_norm(
    input: Tensor, normalized_shape: list[int], weight: Optional[Tensor], bias: Optional[Tensor], eps: float
) -> tuple[Tensor, Tensor, Tensor]:
    _layer_norm_check(input, normalized_shape, weight, bias)
    return _run(
        K.layer_norm_forward, input.device, input.contiguous(), list(normalized_shape), _c(weight), _c(bias), eps
    )


@layer_norm.register_fake
def _(input, normalized_shape, weight, bias, eps):
    stats = _layer_norm_check(input, normalized_shape, weight, bias)
    return _new(input, input.shape), _f32(input, stats), _f32(input, stats)


@custom_op("fastopt::group_norm", mutates_args=())
def group_norm(
    input: Tensor, num_groups: int, weight: Optional[Tensor], bias: Optional[Tensor], eps: float
) -> tuple[Tensor, Tensor, Tensor]:
    _group_norm_check(input, num_groups, weight, bias)
    return _run(K.group_norm_forward, input.device, input.contiguous(), num_groups, _c(weight), _c(bias), eps)


@group_norm.register_fake
def _(input, num_groups, weight, bias, eps):
    stats = _group_norm_check(input, num_groups, weight, bias)
    return _new(input, input.shape), _f32(input, stats), _f32(input, stats)


def _affine_grads_fake(input, weight, has_bias):
    shape = (0,) if weight is None else weight.shape
    bshape = (0,) if not has_bias else (weight.shape if weight is not None else input.shape[1:2])
    return _new(input, input.shape), _f32(input, shape), _f32(input, bshape)


@custom_op("fastopt::layer_norm_backward", mutates_args=())
def layer_norm_backward(
    grad: Tensor,
    input: Tensor,
    normalized_shape: list[int],
    mean: Tensor,
    rstd: Tensor,
    weight: Optional[Tensor],
    has_bias: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    out = _run(
        K.layer_norm_backward,
        input.device,
        grad.contiguous(),
        input.contiguous(),
        list(normalized_shape),
        mean,
        rstd,
        _c(weight),
        has_bias,
    )
    return _grads(out, input, torch.float32)


@layer_norm_backward.register_fake
def _(grad, input, normalized_shape, mean, rstd, weight, has_bias):
    dx, dw, db = _affine_grads_fake(input, weight, has_bias)
    return dx, dw, (_f32(input, normalized_shape) if has_bias and weight is None else db)


@custom_op("fastopt::group_norm_backward", mutates_args=())
def group_norm_backward(
    grad: Tensor, input: Tensor, num_groups: int, mean: Tensor, rstd: Tensor, weight: Optional[Tensor], has_bias: bool
) -> tuple[Tensor, Tensor, Tensor]:
    out = _run(
        K.group_norm_backward,
        input.device,
        grad.contiguous(),
        input.contiguous(),
        num_groups,
        mean,
        rstd,
        _c(weight),
        has_bias,
    )
    return _grads(out, input, torch.float32)


@group_norm_backward.register_fake
def _(grad, input, num_groups, mean, rstd, weight, has_bias):
    return _affine_grads_fake(input, weight, has_bias)


def _norm_setup(ctx, inputs, output):
    input, shape_or_groups, weight, bias, _ = inputs
    y, mean, rstd = output
    ctx.mark_non_differentiable(mean, rstd)
    ctx.save_for_backward(input, mean, rstd, weight)
    ctx.arg, ctx.has_bias = shape_or_groups, bias is not None


def _norm_grad(backward):
    def grad_fn(ctx, grad, *_):
        input, mean, rstd, weight = ctx.saved_tensors
        grads = backward(grad, input, ctx.arg, mean, rstd, weight, ctx.has_bias)
        need = ctx.needs_input_grad
        return _given(grads[0], need[0]), None, _given(grads[1], need[2]), _given(grads[2], need[3]), None

    return grad_fn


_register_autograd(layer_norm, _norm_grad(layer_norm_backward), _norm_setup)
_register_autograd(group_norm, _norm_grad(group_norm_backward), _norm_setup)
