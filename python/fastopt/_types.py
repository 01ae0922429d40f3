"""Type aliases of the public signatures. Annotations only: nothing here is checked at run time
(the checks are _args' and the native layer's)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol, Union

import numpy as np
from numpy.typing import DTypeLike

from ._C import DeviceArray


class CudaArray(Protocol):
    """Any GPU array fastopt reads in place (CuPy, PyTorch, Numba): __cuda_array_interface__."""

    @property
    def __cuda_array_interface__(self) -> dict[str, Any]: ...

    @property
    def shape(self) -> tuple[int, ...]: ...


# What every op takes and returns: NumPy on the CPU, fastopt.DeviceArray (or another CUDA array) on the GPU.
Array = Union[np.ndarray, DeviceArray, CudaArray]
# One array or a list of them (the gradient lists of clipping and axpby_).
Arrays = Union[Array, Sequence[Array]]
# An optimizer's parameters: one array, a list of them, or param groups (dicts with a "params" entry).
Params = Union[Array, Iterable[Array], Iterable[dict[str, Any]]]


class HasParamGroups(Protocol):
    """What a schedule drives: an optimizer with torch's param_groups (fastopt's or torch's)."""

    param_groups: list[dict[str, Any]]


# A weight initializer: (rng, shape) -> float32 NumPy array (fastopt.nn.init).
Initializer = Callable[[np.random.Generator, tuple[int, ...]], np.ndarray]
Stream = int  # a CUDA stream handle; 0 is the legacy default stream
Device = Union[str, int]  # 'cpu', 'cuda', 'cuda:N' or N
IntPair = Union[int, tuple[int, int], list[int]]  # an int or an (h, w) pair
Shape = Union[int, tuple[int, ...], list[int]]

__all__ = [
    "Array",
    "Arrays",
    "CudaArray",
    "Device",
    "DTypeLike",
    "HasParamGroups",
    "Initializer",
    "IntPair",
    "Params",
    "Shape",
    "Stream",
]
