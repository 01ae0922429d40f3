"""GPU queries. Importing fastopt never needs a GPU or a driver; these answer at run time."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from . import _C
from ._types import DTypeLike, Stream


def is_available() -> bool:
    """True when fastopt was built with CUDA and a GPU with a working driver is present (or the
    build emulates one: see is_emulated)."""
    return _C.cuda.device_count() > 0


def is_emulated() -> bool:
    """True for a test build (FASTOPT_CUDA=EMULATE) whose CUDA kernels run on the host: device 0
    is then an emulation, right but slow, never the default and never benchmarked."""
    return _C.cuda.is_emulated()


def has_gpu() -> bool:
    """True when a real GPU is usable (available and not emulated)."""
    return is_available() and not is_emulated()


def device_count() -> int:
    return _C.cuda.device_count()


def device_name(device: int = 0) -> str:
    return _C.cuda.device_name(device)


def synchronize(stream: Stream = 0) -> None:
    """Wait for the work queued on `stream` (default: the legacy default stream)."""
    _C.cuda.synchronize(stream)


def pinned_empty(shape: Sequence[int], dtype: DTypeLike = "float32") -> np.ndarray:
    """An uninitialized C-contiguous NumPy array in page-locked (pinned) host memory, released
    with the array. A copy from it to the GPU can run asynchronously
    (fastopt.to_device(a, non_blocking=True)). Needs a CUDA build; pinned memory is a scarce
    system resource, so reuse such buffers rather than making one per batch."""
    return _C.pinned_empty(tuple(int(d) for d in shape), np.dtype(dtype))


def versions() -> tuple[int, int]:
    """(runtime, driver) CUDA versions as integers such as 13000; 0 where unknown."""
    return _C.cuda.runtime_version(), _C.cuda.driver_version()


def set_allocator(
    alloc: Callable[[int, int, int], int] | None, free: Callable[[int, int, int, int], None] | None
) -> None:
    """Make fastopt's GPU arrays with `alloc(nbytes, device, stream) -> int address` and release
    them with `free(address, nbytes, device, stream)` instead of fastopt's own stream-ordered pool;
    `set_allocator(None, None)` returns to the pool. An array is always freed by the allocator
    that made it. `import fastopt.torch` installs torch's caching allocator this way (when torch
    sees a GPU), so torch and fastopt share one pool of GPU memory and torch's memory statistics
    count fastopt's arrays."""
    _C.set_allocator(alloc, free)
