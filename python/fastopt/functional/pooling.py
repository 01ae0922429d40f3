"""2-D max, average and global average pooling, NCHW float32, forward and backward
(torch.nn.functional.max_pool2d / avg_pool2d / adaptive_avg_pool2d(x, 1) semantics).

max_pool2d_forward returns the max of every window and its flat position h*W + w within the
input plane, as int32 (torch's indices, at half the bytes); max_pool2d_backward routes dy back
through those indices, deterministically (no atomics: each input gathers from the windows that
cover it, in row-major order). Outputs are new arrays on the input's device.

max pooling also runs on NHWC (channels last) arrays on the CPU: layout="nhwc" takes x (N, H, W, C)
and gives y and indices (N, P, Q, C), with the same values and indices as the NCHW call on the
transposed x (indices stay h*W + w within the input plane) and the same dx bits.

All three also take bfloat16 on the CPU and return bfloat16: the max is exact (one of the
inputs), max pool's dx and average pooling's window sums and gathers are summed in fp32 and the
global mean in double, each rounded once.
"""

from __future__ import annotations

from collections.abc import Sequence

from .. import _C
from .._args import boolean, layout as _layout_arg, pair, shape, stream as _stream
from .._types import Array, IntPair, Stream

__all__ = [
    "max_pool2d_forward",
    "max_pool2d_backward",
    "global_avg_pool_forward",
    "global_avg_pool_backward",
    "avg_pool2d_forward",
    "avg_pool2d_backward",
]


def _hyper(kernel_size, stride, padding):
    kernel_size = pair(kernel_size, "kernel_size")
    stride = kernel_size if stride is None else pair(stride, "stride")
    return kernel_size, stride, pair(padding, "padding")


def _shape(input_shape):
    return shape(input_shape, "input_shape", ints_ok=False)


def max_pool2d_forward(
    x: Array,
    kernel_size: IntPair,
    stride: IntPair | None = None,
    padding: IntPair = 0,
    stream: Stream = 0,
    layout: str = "nchw",
) -> tuple[Array, Array]:
    """(y, indices) of max pooling x (N, C, H, W) -> (N, C, P, Q), P = (H + 2*ph - kh) // sh + 1.

    kernel_size, stride and padding are ints or (h, w) pairs; stride None means kernel_size;
    padding at most half the kernel (padded positions never win). indices: int32 (N, C, P, Q),
    the flat position h*W + w of the max within its input plane. Ties go to the first max in
    row-major window order; a NaN in a window is selected (the last one if several), as in torch.
    layout="nhwc" (CPU only): x is (N, H, W, C) and y, indices are (N, P, Q, C).
    """
    k, s, p = _hyper(kernel_size, stride, padding)
    return tuple(_C.max_pool2d_forward(x, k, s, p, _stream(stream), _layout_arg(layout)))


def max_pool2d_backward(
    dy: Array,
    indices: Array,
    input_shape: Sequence[int],
    kernel_size: IntPair,
    stride: IntPair | None = None,
    padding: IntPair = 0,
    stream: Stream = 0,
    layout: str = "nchw",
) -> Array:
    """dx (input_shape) of max_pool2d_forward: dx[i] = sum of dy over the outputs whose index is i.

    dy and indices (int32) have the forward's output shape; the hyper-parameters are the forward's.
    Sums run in row-major output order, so results are bitwise reproducible on every backend. An
    index outside its own window (never produced by the forward) contributes nothing.
    layout="nhwc" (CPU only): input_shape is (N, H, W, C), dy and indices (N, P, Q, C).
    """
    k, s, p = _hyper(kernel_size, stride, padding)
    return _C.max_pool2d_backward(dy, indices, _shape(input_shape), k, s, p, _stream(stream), _layout_arg(layout))


def global_avg_pool_forward(x: Array, stream: Stream = 0) -> Array:
    """y (N, C) = mean of x (N, C, H, W) over H, W (summed in double, rounded once); H*W >= 1."""
    return _C.global_avg_pool_forward(x, _stream(stream))


def global_avg_pool_backward(dy: Array, input_shape: Sequence[int], stream: Stream = 0) -> Array:
    """dx (input_shape) = dy[n, c] / (H*W) at every (h, w); dy has shape (N, C)."""
    return _C.global_avg_pool_backward(dy, _shape(input_shape), _stream(stream))


def avg_pool2d_forward(
    x: Array,
    kernel_size: IntPair,
    stride: IntPair | None = None,
    padding: IntPair = 0,
    count_include_pad: bool = True,
    stream: Stream = 0,
) -> Array:
    """y of average pooling x (N, C, H, W) -> (N, C, P, Q) (torch.nn.functional.avg_pool2d, floor mode).

    Each window's sum (clipped to the plane, in float32, row-major) is divided by kh * kw with
    count_include_pad (torch's default: padded positions count as zeros), else by the number of
    positions inside the plane. Hyper-parameters as max_pool2d_forward's (padding <= kernel/2).
    """
    k, s, p = _hyper(kernel_size, stride, padding)
    return _C.avg_pool2d_forward(x, k, s, p, boolean(count_include_pad, "count_include_pad"), _stream(stream))


def avg_pool2d_backward(
    dy: Array,
    input_shape: Sequence[int],
    kernel_size: IntPair,
    stride: IntPair | None = None,
    padding: IntPair = 0,
    count_include_pad: bool = True,
    stream: Stream = 0,
) -> Array:
    """dx (input_shape) of avg_pool2d_forward: each input gathers dy / divisor from the windows that
    cover it, in row-major output order (deterministic, no atomics)."""
    k, s, p = _hyper(kernel_size, stride, padding)
    return _C.avg_pool2d_backward(
        dy, _shape(input_shape), k, s, p, boolean(count_include_pad, "count_include_pad"), _stream(stream)
    )
