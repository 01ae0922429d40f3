"""Linear (fully connected) layer, float32, torch layout (torch.nn.functional.linear and its gradients)."""
from .. import _C
from .._args import flags, stream as _stream

__all__ = ["linear_forward", "linear_backward"]


def linear_forward(x, weight, bias=None, stream=0):
    """y = x @ weight.T + bias: x (N, in), weight (out, in), bias (out,) or None -> y (N, out).

    Works on NumPy arrays (CPU) and on GPU arrays (fastopt.DeviceArray or any
    __cuda_array_interface__ array), returning a new float32 array on x's device. Sums run in
    float32 in an order fixed by the shape, so results are bitwise reproducible.
    """
    return _C.linear_forward(x, weight, bias, _stream(stream))


def linear_backward(dy, x, weight, need=(True, True, True), stream=0):
    """(dx, dweight, dbias) of linear_forward(x, weight, bias) for the output gradient dy (N, out).

    dx = dy @ weight, dweight = dy.T @ x, dbias = dy.sum(0). need = (dx, dweight, dbias) flags:
    a gradient not asked for is not computed and is returned as None.
    """
    need = flags(need, "need", ("dx", "dweight", "dbias"))
    return tuple(_C.linear_backward(dy, x, weight, *need, _stream(stream)))
