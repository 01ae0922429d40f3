"""fastopt: fused CUDA and C++ kernels for neural-network training.

Arrays are NumPy float32 arrays on the CPU and fastopt.DeviceArray (or any CUDA array: CuPy,
PyTorch) on the GPU; every op runs where its arrays live. fastopt.bfloat16 (ml_dtypes' NumPy
bfloat16) is the dtype of the mixed-precision kernels and optimizers (CPU; see the README).
"""

from ml_dtypes import bfloat16

from . import _C, cuda, functional, nn, optim, reference, schedules
from ._arrays import empty, to_device, zeros
from ._C import DeviceArray
from .functional import clip_grad_norm_, clip_grad_value_, global_norm

__version__ = _C.build_info()["version"]


def host_cache_info():
    """The cache that large CPU outputs (>= min_bytes) come from, as a dict: cached_bytes (freed
    blocks it holds for the next outputs of their size), cap_bytes (FASTOPT_HOST_CACHE_MB, default
    1024; 0 turns it off), min_bytes, hits and misses."""
    return dict(_C.host_cache_info())


def empty_host_cache():
    """Free the blocks the CPU output cache holds (arrays still alive keep theirs)."""
    _C.empty_host_cache()


def build_info():
    """How this fastopt was built: version, CUDA (version, architectures), OpenMP, SIMD, compiler."""
    return dict(_C.build_info())


def switches():
    """Every environment switch of the native code (README, "Environment switches"), as a list of
    dicts: name, alias (an older name still honoured, or None), backend ("cpu", "cuda", "host", "cuda
    emulation"), default, read ("once": fixed at first use; "per call"), meaning, and value (the
    environment's now, None when unset)."""
    return [dict(s) for s in _C.switches()]


__all__ = [
    "bfloat16",
    "DeviceArray",
    "to_device",
    "empty",
    "zeros",
    "build_info",
    "switches",
    "host_cache_info",
    "empty_host_cache",
    "cuda",
    "functional",
    "nn",
    "optim",
    "reference",
    "schedules",
    "clip_grad_norm_",
    "clip_grad_value_",
    "global_norm",
]
