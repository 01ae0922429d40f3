"""2-D convolution, NCHW float32 (torch.nn.functional.conv2d semantics and its gradients)."""
from .. import _C
from ..reference.conv import pair

__all__ = ["conv2d_forward", "conv2d_backward"]


def conv2d_forward(x, w, b=None, stride=1, padding=0, dilation=1, groups=1, allow_tf32=False, stream=0):
    """y = conv2d(x, w, b): x (N, C, H, W), w (K, C/groups, R, S), b (K,) or None -> y (N, K, P, Q).

    stride, padding and dilation are ints or (h, w) pairs. Works on NumPy arrays (CPU) and on
    GPU arrays (fastopt.DeviceArray or any __cuda_array_interface__ array), returning an array
    on the same device. allow_tf32=True lets the GPU use TF32 tensor cores (about 10 mantissa
    bits); it is ignored on the CPU, which always computes in float32.
    """
    return _C.conv2d_forward(x, w, b, pair(stride, "stride"), pair(padding, "padding"), pair(dilation, "dilation"),
                             int(groups), bool(allow_tf32), stream)


def conv2d_backward(dy, x, w, stride=1, padding=0, dilation=1, groups=1, need=(True, True, True), allow_tf32=False,
                    stream=0):
    """(dx, dw, db) of conv2d_forward(x, w, b, ...) for the output gradient dy.

    need = (dx, dw, db) flags: a gradient not asked for is not computed and is returned as None.
    """
    need = tuple(need)
    if len(need) != 3:
        raise ValueError(f"need: expected three flags (dx, dw, db), got {need!r}")
    return tuple(_C.conv2d_backward(dy, x, w, pair(stride, "stride"), pair(padding, "padding"),
                                    pair(dilation, "dilation"), int(groups), bool(need[0]), bool(need[1]),
                                    bool(need[2]), bool(allow_tf32), stream))
