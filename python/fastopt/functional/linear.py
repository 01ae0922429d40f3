"""Linear (fully connected) layer, torch layout (torch.nn.functional.linear and its gradients).

dtypes: float32 or bfloat16 (ml_dtypes.bfloat16 arrays, fastopt.bfloat16, or torch.bfloat16
tensors), on the CPU and the GPU, with float32 accumulation. One call takes one dtype: x, weight, bias
and dy all float32 or all bfloat16; a mix raises TypeError naming the odd argument (nothing is
converted). In bfloat16, y and dx come back in bfloat16, rounded once to nearest even (NaN stays
NaN), and dweight and dbias in float32, unrounded: what an optimizer with float32 master weights
consumes. On the GPU, bfloat16 runs on bf16 tensor cores (sm_80+).
"""

from __future__ import annotations

from collections.abc import Sequence

from .. import _C
from .._args import boolean, flags, stream as _stream
from .._types import Array, Stream

__all__ = ["linear_forward", "linear_backward"]


def linear_forward(x: Array, weight: Array, bias: Array | None = None, stream: Stream = 0) -> Array:
    """y = x @ weight.T + bias: x (N, in), weight (out, in), bias (out,) or None -> y (N, out).

    Works on NumPy arrays (CPU) and on GPU arrays (fastopt.DeviceArray or any
    __cuda_array_interface__ array), returning a new array on x's device in x's dtype (float32
    or bfloat16: see the module's dtype rules). Sums run in float32 in an order fixed
    by the shape, so results are bitwise reproducible.
    """
    return _C.linear_forward(x, weight, bias, _stream(stream))


def linear_backward(
    dy: Array,
    x: Array,
    weight: Array,
    need: Sequence[bool] = (True, True, True),
    stream: Stream = 0,
    dweight_out: Array | None = None,
    dbias_out: Array | None = None,
    accumulate: bool = False,
) -> tuple[Array | None, Array | None, Array | None]:
    """(dx, dweight, dbias) of linear_forward(x, weight, bias) for the output gradient dy (N, out).

    dx = dy @ weight, dweight = dy.T @ x, dbias = dy.sum(0). need = (dx, dweight, dbias) flags:
    a gradient not asked for is not computed and is returned as None. dx has x's dtype; dweight
    and dbias are float32 (also for bfloat16 inputs).

    dweight_out / dbias_out: C-contiguous float32 arrays of (out, in) / (out,) on x's device,
    sharing no memory with dy, x or weight: the GEMM's final store writes the gradient there (and
    returns that array); accumulate=True adds it into them, rounded once (each out then required).
    """
    need = flags(need, "need", ("dx", "dweight", "dbias"))
    return tuple(
        _C.linear_backward(
            dy, x, weight, *need, _stream(stream), dweight_out, dbias_out, boolean(accumulate, "accumulate")
        )
    )
