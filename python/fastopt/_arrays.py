"""The one place that answers, for a user's array, where it lives and how to make its twins.

The native layer (cpp/bindings/arrays.cpp) does the strict checks (dtype, contiguity, device,
aliasing) on every call and reads every dtype itself, bfloat16 included; this module only picks
devices, names dtypes and allocates state.

bfloat16 is ml_dtypes' NumPy dtype on the host (fastopt.bfloat16), torch.bfloat16 for tensors;
dtype_of maps both to numpy.dtype(bfloat16), and every bf16 op returns ml_dtypes arrays.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from ml_dtypes import bfloat16
from numpy.typing import ArrayLike

from . import _C
from ._C import DeviceArray
from ._types import Array, Device, DTypeLike, Stream

BFLOAT16 = np.dtype(bfloat16)
FLOAT16 = np.dtype(np.float16)
LOW_PRECISION = (BFLOAT16, FLOAT16)  # what fastopt.optim keeps fp32 master weights for


def _device_index(device: Device) -> int:
    if isinstance(device, int) and not isinstance(device, bool):
        return device
    if isinstance(device, str) and device.startswith("cuda"):
        return int(device.split(":")[1]) if ":" in device else 0
    raise ValueError(f"device: expected 'cuda', 'cuda:N' or an int, got {device!r}")


def canonical_device(device: Device) -> str:
    """'cpu' or 'cuda:N' for any device spelling fastopt accepts ('cuda', 'cuda:1', 1)."""
    return "cpu" if device == "cpu" else f"cuda:{_device_index(device)}"


def to_device(array: ArrayLike, device: Device = "cuda", stream: Stream = 0, non_blocking: bool = False) -> DeviceArray:
    """Copy a NumPy array to the GPU as a fastopt.DeviceArray (dtype and shape kept).

    non_blocking=True, as in torch: from pinned host memory (fastopt.cuda.pinned_empty) the copy is
    queued on `stream` and the call returns at once (keep the source unchanged until the stream
    has passed the copy); from ordinary memory the copy is synchronous anyway."""
    return _C.to_device(np.ascontiguousarray(array), _device_index(device), stream, bool(non_blocking))


def empty(
    shape: Sequence[int], dtype: DTypeLike = np.float32, device: Device = "cuda", stream: Stream = 0
) -> np.ndarray | DeviceArray:
    if device == "cpu":
        return np.empty(shape, dtype)
    return _C.empty(shape, np.dtype(dtype), _device_index(device), stream)


def zeros(
    shape: Sequence[int], dtype: DTypeLike = np.float32, device: Device = "cuda", stream: Stream = 0
) -> np.ndarray | DeviceArray:
    if device == "cpu":
        return np.zeros(shape, dtype)
    return _C.zeros(shape, np.dtype(dtype), _device_index(device), stream)


def is_cuda(x: object) -> bool:
    return isinstance(x, _C.DeviceArray) or hasattr(x, "__cuda_array_interface__")


def _is_torch(x):
    return type(x).__module__.startswith("torch") and hasattr(x, "data_ptr")


def device_of(x: Array) -> str:
    """'cpu' for NumPy arrays and CPU tensors, 'cuda:N' for GPU arrays; TypeError otherwise."""
    if isinstance(x, np.ndarray):
        return "cpu"
    if isinstance(x, _C.DeviceArray):
        return x.device
    if _is_torch(x):
        return "cpu" if x.device.type == "cpu" else f"cuda:{x.device.index or 0}"
    if hasattr(x, "__cuda_array_interface__"):
        dev = getattr(x, "device", None)  # torch.device / cupy Device
        index = getattr(dev, "index", None)
        if index is None:
            index = getattr(dev, "id", 0)
        return f"cuda:{index or 0}"
    raise TypeError(f"expected a numpy.ndarray, a torch.Tensor or a CUDA array, got {type(x).__name__}")


def dtype_of(x: object) -> np.dtype | None:
    """x's dtype as a numpy.dtype (torch.float32 -> float32, torch.bfloat16 -> ml_dtypes'
    bfloat16), or None when it has none."""
    dt = getattr(x, "dtype", None)
    if dt is None:
        return None
    try:
        return np.dtype(dt)
    except TypeError:
        pass
    try:
        return np.dtype(str(dt).rsplit(".", 1)[-1])  # torch.float32, torch.bfloat16
    except TypeError:
        pass
    if hasattr(x, "__cuda_array_interface__"):
        return np.dtype(x.__cuda_array_interface__["typestr"])
    return None


def full(
    shape: Sequence[int], value: float, dtype: DTypeLike = np.float32, device: Device = "cuda", stream: Stream = 0
) -> np.ndarray | DeviceArray:
    """An array of this shape on `device` ('cpu' too) filled with value."""
    if device == "cpu":
        return np.full(shape, value, dtype)
    out = zeros(shape, dtype, device, stream)
    if value != 0 or np.signbit(value):  # -0.0 is not zeros' +0.0
        _C.copy_(out, np.full(shape, value, dtype), stream)
    return out


def full_like(x: Array, value: float, dtype: DTypeLike = np.float32, stream: Stream = 0) -> Array:
    """An array of x's shape on x's device filled with value."""
    return full(tuple(x.shape), value, dtype, device_of(x), stream)


def to_numpy(x: Array) -> np.ndarray:
    """A NumPy copy of any supported array."""
    if isinstance(x, np.ndarray):
        return x.copy()
    if isinstance(x, _C.DeviceArray):
        return x.numpy()
    if _is_torch(x) and x.device.type == "cpu":
        if dtype_of(x) == BFLOAT16:  # torch has no NumPy bf16: reinterpret the bits
            import torch

            return x.detach().view(torch.int16).numpy().view(BFLOAT16).copy()
        return x.detach().numpy().copy()
    out = np.empty(tuple(x.shape), dtype_of(x))
    _C.copy_(out, x)
    return out


def copy_(dst: Array, src: Array, stream: Stream = 0) -> None:
    """Copy src into dst in place (host or device, either way); shapes' sizes must match."""
    _C.copy_(dst, np.ascontiguousarray(src) if isinstance(src, np.ndarray) else src, stream)
