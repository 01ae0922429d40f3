"""torch.nn.functional's signatures and defaults on fastopt's kernels (the custom ops of
fastopt.torch.ops): conv2d, linear, batch_norm, dropout, layer_norm, group_norm, max_pool2d, relu.

Inputs are float32 CPU or CUDA tensors, or bfloat16 CPU tensors (conv and linear weights in the
input's dtype, normalization parameters float32); under torch.autocast they follow torch's CPU
rules on fastopt's bf16 kernels (see fastopt.torch.ops). channels_last inputs stay channels_last
through relu, dropout, batch_norm, max_pool2d (CPU) and bf16 conv2d (groups=1, CPUs with
AVX512-BF16) (fastopt.torch.ops says how); other
non-contiguous inputs, and channels_last ones elsewhere, are copied to contiguous NCHW first and
give contiguous outputs. A few options the kernels do not have fall back to torch's own op, as
documented on each function (fastopt.torch.convert leaves such layers as torch layers and lists
them); everything else that fastopt cannot compute is refused with an error naming the argument.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as TF

from ..._args import integer
from .. import ops

__all__ = [
    "conv2d",
    "linear",
    "batch_norm",
    "dropout",
    "layer_norm",
    "group_norm",
    "max_pool2d",
    "relu",
    "max_pool2d_fallback",
    "inplace_fallback",
]


def _pair(v, name):
    if isinstance(v, (tuple, list, torch.Size)):
        if len(v) == 1:
            v = (v[0], v[0])
        if len(v) != 2:
            raise ValueError(f"{name}: expected an int or a pair of ints, got {tuple(v)!r}")
        return [integer(v[0], name), integer(v[1], name)]
    v = integer(v, name)
    return [v, v]


def _batched(input, fn):
    """torch's 2-D ops also take one unbatched (C, H, W) image."""
    if isinstance(input, torch.Tensor) and input.dim() == 3:
        out = fn(input.unsqueeze(0))
        return tuple(o.squeeze(0) for o in out) if isinstance(out, tuple) else out.squeeze(0)
    return fn(input)


def _same_padding(input, weight, stride, dilation):
    """padding='same' as torch: total d * (k - 1) per dim, the odd pixel at the end (padded here
    explicitly, then the symmetric part goes to the kernel)."""
    if stride != [1, 1]:
        raise ValueError("padding: padding='same' is not supported for strided convolutions")
    total = [d * (k - 1) for d, k in zip(dilation, weight.shape[2:])]
    if total[0] % 2 or total[1] % 2:
        input = TF.pad(input, (0, total[1] % 2, 0, total[0] % 2))
    return input, [t // 2 for t in total]


def conv2d(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: int | Sequence[int] = 1,
    padding: int | Sequence[int] | str = 0,
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
) -> torch.Tensor:
    """torch.nn.functional.conv2d: padding an int, a pair, 'valid' or 'same'."""
    stride, dilation, groups = _pair(stride, "stride"), _pair(dilation, "dilation"), integer(groups, "groups")
    if min(stride) < 1 or min(dilation) < 1 or groups < 1:
        raise ValueError(
            f"stride, dilation and groups must be positive, got stride {stride}, dilation {dilation}, groups {groups}"
        )

    def run(x):
        pad = padding
        if isinstance(pad, str):
            if pad not in ("valid", "same"):
                raise ValueError(f"padding: expected 'valid', 'same', an int or a pair of ints, got {pad!r}")
            x, pad = (x, 0) if pad == "valid" else _same_padding(x, weight, stride, dilation)
        pad = _pair(pad, "padding")
        if min(pad) < 0:
            raise ValueError(f"padding: must be non-negative, got {pad}")
        return ops.conv2d(x, weight, bias, stride, pad, dilation, groups)

    return _batched(input, run)


def linear(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """torch.nn.functional.linear: y = input @ weight.T + bias over any leading dims."""
    return ops.linear(input, weight, bias)


def _verify_batch_size(input):
    size = input.shape[0]
    for d in input.shape[2:]:
        size *= d
    if size == 1:
        raise ValueError(f"Expected more than 1 value per channel when training, got input size {input.shape}")


def batch_norm(
    input: torch.Tensor,
    running_mean: torch.Tensor | None,
    running_var: torch.Tensor | None,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> torch.Tensor:
    """torch.nn.functional.batch_norm. In training the running statistics (when given) are
    updated in place with torch's rule: running = (1 - momentum) * running + momentum * batch,
    with the unbiased batch variance; the normalization is an autograd-aware fastopt op, the update
    plain torch arithmetic outside autograd."""
    if not training:
        return ops.batch_norm(input, weight, bias, running_mean, running_var, False, eps)[0]
    _verify_batch_size(input)
    y, mean, _, var = ops.batch_norm(input, weight, bias, None, None, True, eps)
    with torch.no_grad():
        for running, batch in ((running_mean, mean), (running_var, var)):
            if running is not None:
                running.mul_(1 - momentum).add_(batch, alpha=momentum)
    return y


def inplace_fallback(inplace: bool) -> str | None:
    """Why a layer with this `inplace` runs torch's op (None when fastopt takes it)."""
    if inplace:
        return "inplace=True (fastopt's kernels write new tensors; torch's in-place op is kept)"
    return None


def _probability(p):
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p <= 1.0:
        raise ValueError(f"p: dropout probability has to be a number between 0 and 1, but got {p!r}")
    return float(p)


def dropout(input: torch.Tensor, p: float = 0.5, training: bool = True, inplace: bool = False) -> torch.Tensor:
    """torch.nn.functional.dropout. The keep mask is Philox of a 63-bit seed drawn from torch's
    default CPU generator (torch.manual_seed makes runs reproducible) and is regenerated in the
    backward pass. training=False returns input itself; inplace=True runs torch's op."""
    p = _probability(p)
    if inplace:
        return TF.dropout(input, p, training, inplace=True)
    if not training:
        return input
    seed = torch.randint(0, 2**63 - 1, (), dtype=torch.int64)
    return ops.dropout(input, p, seed)


def _normalized_shape(normalized_shape):
    if isinstance(normalized_shape, (tuple, list, torch.Size)):
        return [integer(d, "normalized_shape") for d in normalized_shape]
    return [integer(normalized_shape, "normalized_shape")]


def layer_norm(
    input: torch.Tensor,
    normalized_shape: int | Sequence[int],
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    eps: float = 1e-5,
) -> torch.Tensor:
    """torch.nn.functional.layer_norm over the trailing dims normalized_shape."""
    return ops.layer_norm(input, _normalized_shape(normalized_shape), weight, bias, eps)[0]


def group_norm(
    input: torch.Tensor,
    num_groups: int,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    eps: float = 1e-5,
) -> torch.Tensor:
    """torch.nn.functional.group_norm (input (N, C, ...), num_groups dividing C)."""
    return ops.group_norm(input, integer(num_groups, "num_groups"), weight, bias, eps)[0]


def max_pool2d_fallback(
    dilation: int | Sequence[int] = 1, ceil_mode: bool = False, return_indices: bool = False
) -> str | None:
    """Why max pooling with these options runs torch's op (None when fastopt takes it)."""
    reasons = []
    if _pair(dilation, "dilation") != [1, 1]:
        reasons.append(f"dilation={dilation}")
    if ceil_mode:
        reasons.append("ceil_mode=True")
    if return_indices:
        reasons.append("return_indices=True")
    return f"{', '.join(reasons)} (not in fastopt's kernel; torch's op is kept)" if reasons else None


def max_pool2d(
    input: torch.Tensor,
    kernel_size: int | Sequence[int],
    stride: int | Sequence[int] | None = None,
    padding: int | Sequence[int] = 0,
    dilation: int | Sequence[int] = 1,
    ceil_mode: bool = False,
    return_indices: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """torch.nn.functional.max_pool2d. dilation != 1, ceil_mode=True and return_indices=True run
    torch's op (fastopt's indices are int32 and it has neither option)."""
    if max_pool2d_fallback(dilation, ceil_mode, return_indices):
        return TF.max_pool2d(
            input, kernel_size, stride, padding, dilation, ceil_mode=ceil_mode, return_indices=return_indices
        )
    kernel_size = _pair(kernel_size, "kernel_size")
    stride = (
        kernel_size if stride is None or (isinstance(stride, (tuple, list)) and not stride) else _pair(stride, "stride")
    )
    padding = _pair(padding, "padding")
    return _batched(input, lambda x: ops.max_pool2d(x, kernel_size, stride, padding)[0])


def relu(input: torch.Tensor, inplace: bool = False) -> torch.Tensor:
    """torch.nn.functional.relu; inplace=True runs torch's in-place op."""
    if inplace:
        return torch.relu_(input)
    return ops.relu(input)
