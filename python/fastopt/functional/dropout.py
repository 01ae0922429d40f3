"""Inverted dropout (torch.nn.functional.dropout semantics) with a counter-based mask.

The keep decision of element i is a pure function of (seed, offset, i): Philox4x32-10 word
offset + i under the 64-bit key `seed` (cpp/include/fastopt/philox.h), kept iff it is below
floor((1 - p) * 2^32). The CPU, the GPU and fastopt.reference.dropout therefore give the same
mask bit for bit, and the backward pass regenerates it instead of storing it. A caller that
draws several masks from one seed advances `offset` by the number of elements each time
(offset += x.size), which never reuses a random word.

dropout_forward / dropout_backward also take bfloat16 on the CPU (the same mask; x * factor in
fp32, rounded once to bfloat16).
"""

from __future__ import annotations

from .. import _C
from .._args import boolean, real, shape as _shape, stream as _stream, uint64
from .._arrays import _device_index
from .._types import Array, Device, Shape, Stream

__all__ = ["dropout_forward", "dropout_backward", "dropout_mask"]


def _probability(p):
    return real(p, "p")  # its range is checked natively, with torch's message


def dropout_forward(x: Array, p: float, seed: int, offset: int = 0, training: bool = True, stream: Stream = 0) -> Array:
    """y = x * mask / (1 - p) with mask_i ~ Bernoulli(1 - p); a new float32 array on x's device.

    p is the drop probability, in [0, 1]: p = 0 returns a copy of x, p = 1 returns x * 0 (zeros
    for finite x). Kept elements are multiplied by the float32 1 / (1 - p), as torch does, and a
    dropped element is x * 0, so NaN inputs stay NaN as in torch. seed: integer in [0, 2^64);
    offset: the first stream word used, offset + x.size <= 2^64.
    training=False is the identity and, like torch, returns x itself (no copy; the arguments
    are still validated).
    """
    return _C.dropout_forward(
        x,
        _probability(p),
        uint64(seed, "seed"),
        uint64(offset, "offset"),
        boolean(training, "training"),
        _stream(stream),
    )


def dropout_backward(dy: Array, p: float, seed: int, offset: int = 0, stream: Stream = 0) -> Array:
    """dx = dy * mask / (1 - p), the mask of the forward call with the same (p, seed, offset)."""
    return _C.dropout_backward(dy, _probability(p), uint64(seed, "seed"), uint64(offset, "offset"), _stream(stream))


def dropout_mask(
    shape: Shape, p: float, seed: int, offset: int = 0, device: Device = "cpu", stream: Stream = 0
) -> Array:
    """The keep mask of an array of this shape: bool NumPy array, or a bool fastopt.DeviceArray
    on the GPU for device='cuda' / 'cuda:N'."""
    dev = -1 if device == "cpu" else _device_index(device)
    return _C.dropout_mask(
        _shape(shape, "shape"), _probability(p), uint64(seed, "seed"), uint64(offset, "offset"), dev, _stream(stream)
    )
