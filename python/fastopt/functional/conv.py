"""2-D convolution, NCHW (torch.nn.functional.conv2d semantics and its gradients).

dtypes: float32 or bfloat16 (ml_dtypes.bfloat16 arrays, fastopt.bfloat16, or torch.bfloat16
tensors), on the CPU and the GPU, with float32 accumulation. One call takes one dtype: x, w, b and dy all
float32 or all bfloat16; a mix raises TypeError naming the odd argument (nothing is converted).
In bfloat16, y and dx come back in bfloat16, rounded once to nearest even (NaN stays NaN), and
dw and db in float32, unrounded: what an optimizer with float32 master weights consumes. On the
GPU, bfloat16 runs the implicit-GEMM passes on bf16 tensor cores (sm_80+).

layout="nhwc" (CPU, groups=1) takes and returns channels_last arrays: x (N, H, W, C), y and dy
(N, P, Q, K), dx (N, H, W, C); w and dw stay (K, C, R, S). It is what torch's channels_last
tensors hold as they lie (fastopt.torch passes them without a copy), and on AVX512-BF16 CPUs the
faster bfloat16 path: no packing of x, padded taps skipped (cpp/cpu/conv2d_nhwc.cpp).
"""

from __future__ import annotations

from collections.abc import Sequence

from .. import _C
from .._args import boolean, flags, integer, layout as _layout_arg, pair, stream as _stream
from .._types import Array, IntPair, Stream

__all__ = ["conv2d_forward", "conv2d_backward"]


def _hyper(stride, padding, dilation, groups):
    return pair(stride, "stride"), pair(padding, "padding"), pair(dilation, "dilation"), integer(groups, "groups")


def conv2d_forward(
    x: Array,
    w: Array,
    b: Array | None = None,
    stride: IntPair = 1,
    padding: IntPair = 0,
    dilation: IntPair = 1,
    groups: int = 1,
    allow_tf32: bool = False,
    stream: Stream = 0,
    layout: str = "nchw",
) -> Array:
    """y = conv2d(x, w, b): x (N, C, H, W), w (K, C/groups, R, S), b (K,) or None -> y (N, K, P, Q).

    stride, padding and dilation are ints or (h, w) pairs. Works on NumPy arrays (CPU) and on
    GPU arrays (fastopt.DeviceArray or any __cuda_array_interface__ array), returning an array
    on the same device, in x's dtype (float32 or bfloat16: see the module's dtype rules).
    allow_tf32=True lets the GPU use TF32 tensor cores for float32 (about 10 mantissa bits); it is
    ignored on the CPU, which always accumulates in float32, and for bfloat16.
    """
    return _C.conv2d_forward(
        x,
        w,
        b,
        *_hyper(stride, padding, dilation, groups),
        boolean(allow_tf32, "allow_tf32"),
        _stream(stream),
        _layout_arg(layout),
    )


def conv2d_backward(
    dy: Array,
    x: Array,
    w: Array,
    stride: IntPair = 1,
    padding: IntPair = 0,
    dilation: IntPair = 1,
    groups: int = 1,
    need: Sequence[bool] = (True, True, True),
    allow_tf32: bool = False,
    stream: Stream = 0,
    dw_out: Array | None = None,
    db_out: Array | None = None,
    accumulate: bool = False,
    layout: str = "nchw",
) -> tuple[Array | None, Array | None, Array | None]:
    """(dx, dw, db) of conv2d_forward(x, w, b, ...) for the output gradient dy.

    need = (dx, dw, db) flags: a gradient not asked for is not computed and is returned as None.
    dx has x's dtype; dw and db are float32 (also for bfloat16 inputs).

    dw_out / db_out: C-contiguous float32 arrays of dw's / db's shape on x's device, sharing no
    memory with dy, x or w (e.g. a parameter's slot in a flat gradient buffer): the kernel writes
    the gradient there (and returns that array) instead of into a fresh one. accumulate=True adds
    it into them instead, rounded once (each out then required): gradient accumulation with no
    pass of its own.
    """
    need = flags(need, "need", ("dx", "dw", "db"))
    return tuple(
        _C.conv2d_backward(
            dy,
            x,
            w,
            *_hyper(stride, padding, dilation, groups),
            *need,
            boolean(allow_tf32, "allow_tf32"),
            _stream(stream),
            dw_out,
            db_out,
            boolean(accumulate, "accumulate"),
            _layout_arg(layout),
        )
    )
