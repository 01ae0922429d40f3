"""fastopt.torch.convert(model): torch layers -> fastopt.torch.nn layers, in place."""

from __future__ import annotations

from typing import TypeVar

import torch

from .. import cuda
from . import nn
from .nn import functional as F

_M = TypeVar("_M", bound=torch.nn.Module)

# torch class -> fastopt class; exact types only, so a user's subclass (its own forward) stays as it is.
_LAYERS = {
    getattr(torch.nn, cls.__name__): cls
    for cls in (
        nn.Conv2d,
        nn.Linear,
        nn.BatchNorm1d,
        nn.BatchNorm2d,
        nn.Dropout,
        nn.LayerNorm,
        nn.GroupNorm,
        nn.MaxPool2d,
        nn.ReLU,
    )
}

LAYOUT_NOTE = (
    "inputs: float32 contiguous NCHW tensors go to the kernels as they are; channels_last inputs stay "
    "channels_last through ReLU, Dropout and BatchNorm (any device), MaxPool2d (CPU) and, in bf16 with "
    "groups=1 on a CPU with AVX512-BF16 and no AMX, Conv2d, which run on "
    "the storage as it lies (outputs and input gradients channels_last, no copy); the other layers "
    "(and other non-contiguous inputs) convert with .contiguous() (one copy per layer) and give "
    "contiguous NCHW outputs; under torch.autocast('cpu', bfloat16) conv and linear compute in bf16 "
    "and the other layers keep a bf16 input bf16 (fastopt's bf16 kernels); float16 autocast and CUDA run them "
    "in float32"
)


def _tensors_fallback(module):
    for name, t in list(module.named_parameters(recurse=False)) + list(module.named_buffers(recurse=False)):
        if name == "num_batches_tracked":
            continue
        if t.dtype != torch.float32:
            return f"{name} is {t.dtype} (fastopt's kernels are float32)"
        if t.device.type == "cuda" and not cuda.is_available():
            return f"{name} is on {t.device}, and this fastopt has no usable CUDA backend"
        if t.device.type not in ("cpu", "cuda"):
            return f"{name} is on {t.device} (fastopt runs on CPU and CUDA)"
    return None


def fallback_reason(module: torch.nn.Module) -> str | None:
    """Why convert() leaves this torch layer as it is (None: it would be converted)."""
    reason = _tensors_fallback(module)
    if reason is None and isinstance(module, torch.nn.MaxPool2d):
        reason = F.max_pool2d_fallback(module.dilation, module.ceil_mode, module.return_indices)
    if reason is None and isinstance(module, (torch.nn.Dropout, torch.nn.ReLU)):
        reason = F.inplace_fallback(module.inplace)
    return reason


def convert(model: _M, verbose: bool = False) -> _M:
    """Replace every supported torch layer of `model` (Conv2d, Linear, BatchNorm1d/2d, Dropout,
    LayerNorm, GroupNorm, MaxPool2d, ReLU; the model itself too) by its fastopt.torch.nn twin, in
    place: each module object stays, with its Parameters, buffers, hooks and state_dict keys, and
    only its class changes, so an optimizer made before keeps working. Layers whose configuration
    the kernels cannot take stay torch layers. verbose=True prints what was converted, what was
    kept and why, and how inputs are handled (channels_last, autocast). Returns the model."""
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    converted, kept = {}, []
    for name, module in model.named_modules():
        target = _LAYERS.get(type(module))
        if target is None:
            continue
        reason = fallback_reason(module)
        if reason is None:
            module.__class__ = target
            converted[target.__name__] = converted.get(target.__name__, 0) + 1
        else:
            kept.append(f"{name or '(model)'} ({type(module).__name__}): {reason}")
    if verbose:
        total = sum(converted.values())
        counts = ", ".join(f"{k} x{v}" for k, v in converted.items()) or "none"
        lines = [f"fastopt.torch.convert: {total} layer{'s' * (total != 1)} now run fastopt's kernels ({counts})"]
        lines += [f"  kept as torch: {k}" for k in kept]
        lines.append(f"  {LAYOUT_NOTE}")
        print("\n".join(lines))
    return model
