"""2-D max pooling and global average pooling, NCHW float32, forward and backward
(torch.nn.functional.max_pool2d / adaptive_avg_pool2d(x, 1) semantics).

max_pool2d_forward returns the max of every window and its flat position h*W + w within the
input plane, as int32 (torch's indices, at half the bytes); max_pool2d_backward routes dy back
through those indices, deterministically (no atomics: each input gathers from the windows that
cover it, in row-major order). Outputs are new arrays on the input's device.
"""
from .. import _C
from .._args import pair, shape, stream as _stream

__all__ = ["max_pool2d_forward", "max_pool2d_backward", "global_avg_pool_forward", "global_avg_pool_backward"]


def _hyper(kernel_size, stride, padding):
    kernel_size = pair(kernel_size, "kernel_size")
    stride = kernel_size if stride is None else pair(stride, "stride")
    return kernel_size, stride, pair(padding, "padding")


def _shape(input_shape):
    return shape(input_shape, "input_shape", ints_ok=False)


def max_pool2d_forward(x, kernel_size, stride=None, padding=0, stream=0):
    """(y, indices) of max pooling x (N, C, H, W) -> (N, C, P, Q), P = (H + 2*ph - kh) // sh + 1.

    kernel_size, stride and padding are ints or (h, w) pairs; stride None means kernel_size;
    padding at most half the kernel (padded positions never win). indices: int32 (N, C, P, Q),
    the flat position h*W + w of the max within its input plane. Ties go to the first max in
    row-major window order; a NaN in a window is selected (the last one if several), as in torch.
    """
    k, s, p = _hyper(kernel_size, stride, padding)
    return tuple(_C.max_pool2d_forward(x, k, s, p, _stream(stream)))


def max_pool2d_backward(dy, indices, input_shape, kernel_size, stride=None, padding=0, stream=0):
    """dx (input_shape) of max_pool2d_forward: dx[i] = sum of dy over the outputs whose index is i.

    dy and indices (int32) have the forward's output shape; the hyper-parameters are the forward's.
    Sums run in row-major output order, so results are bitwise reproducible on every backend. An
    index outside its own window (never produced by the forward) contributes nothing.
    """
    k, s, p = _hyper(kernel_size, stride, padding)
    return _C.max_pool2d_backward(dy, indices, _shape(input_shape), k, s, p, _stream(stream))


def global_avg_pool_forward(x, stream=0):
    """y (N, C) = mean of x (N, C, H, W) over H, W (summed in double, rounded once); H*W >= 1."""
    return _C.global_avg_pool_forward(x, _stream(stream))


def global_avg_pool_backward(dy, input_shape, stream=0):
    """dx (input_shape) = dy[n, c] / (H*W) at every (h, w); dy has shape (N, C)."""
    return _C.global_avg_pool_backward(dy, _shape(input_shape), _stream(stream))
