"""Ready-made networks: the small CNN `fastopt train` starts with, and the CIFAR ResNets."""

from __future__ import annotations

from collections.abc import Sequence

from .._args import boolean, integer, real
from . import init as I
from .containers import Residual, Sequential
from .layers import BatchNorm2d, Conv2d, Dropout, GlobalAvgPool2d, Linear, MaxPool2d, ReLU

__all__ = ["small_cnn", "resnet"]


def _conv(c_in, c_out, kernel=3, stride=1):
    # No conv bias: the batch norm right after it has its own shift.
    return Conv2d(
        c_in,
        c_out,
        kernel,
        stride=stride,
        padding=kernel // 2,
        bias=False,
        weight_init=I.kaiming_normal(mode="fan_out", nonlinearity="relu"),
    )


def small_cnn(
    in_channels: int = 1, num_classes: int = 10, widths: Sequence[int] = (32, 64), dropout: float = 0.25
) -> Sequential:
    """Two stages of two conv-BN-ReLU blocks, each stage ending in a 2x2 max pool, then global
    average pooling, dropout and a linear classifier. Global pooling makes it size-agnostic:
    the same network trains on 8x8 digits and 32x32 CIFAR-shaped images."""
    layers, c = [], in_channels
    for w in widths:
        layers += _plain_block(c, w) + _plain_block(w, w) + [MaxPool2d(2)]
        c = w
    layers += [GlobalAvgPool2d(), Dropout(dropout), Linear(c, num_classes)]
    return Sequential(*layers)


def _plain_block(c_in, c_out):
    # The small CNN keeps its original initialization (fan_in), so its seeds draw the same networks.
    return [
        Conv2d(c_in, c_out, 3, padding=1, bias=False, weight_init=I.kaiming_normal(nonlinearity="relu")),
        BatchNorm2d(c_out),
        ReLU(),
    ]


def resnet(
    depth: int = 20,
    num_classes: int = 10,
    in_channels: int = 3,
    width: int = 16,
    drop_path: float = 0.0,
    zero_init_residual: bool = False,
) -> Sequential:
    """The CIFAR ResNets of He et al. (2016, section 4.2): 6n + 2 weighted layers, depth 20, 32,
    44, 56, 110, ... A 3x3 conv-BN-ReLU stem of `width` channels, three stages of n basic blocks
    (conv-BN-ReLU-conv-BN plus a shortcut, then ReLU) at width, 2 width and 4 width channels, the
    first block of stages 2 and 3 at stride 2, then global average pooling and a linear layer.

    Where a block changes shape its shortcut is a strided 1x1 conv + BN projection (the paper's
    option B; option A pads with zeros instead): ResNet-20 has 0.27M parameters (272,474 for
    10 classes). Children are named as the torch model of the same structure names them
    ("3.body.0.weight", "9.shortcut.0.weight"). drop_path: stochastic depth, rising linearly
    from 0 to this value at the last block (Huang et al.'s rule). zero_init_residual: start each
    block's last BN scale at 0, so every block starts as the identity (Goyal et al.)."""
    depth = integer(depth, "depth", 8)
    if (depth - 2) % 6:
        raise ValueError(f"depth: CIFAR ResNets have 6n + 2 layers (20, 32, 44, 56, 110, ...), got {depth}")
    num_classes, in_channels = integer(num_classes, "num_classes", 1), integer(in_channels, "in_channels", 1)
    width, drop_path = integer(width, "width", 1), real(drop_path, "drop_path", 0.0, 1.0)
    zero_init_residual = boolean(zero_init_residual, "zero_init_residual")
    n = (depth - 2) // 6
    layers = [_conv(in_channels, width), BatchNorm2d(width), ReLU()]
    c, block = width, 0
    for stage, w in enumerate((width, 2 * width, 4 * width)):
        for b in range(n):
            stride = 2 if stage > 0 and b == 0 else 1
            last = BatchNorm2d(w)
            if zero_init_residual:
                last.params["weight"].init = I.zeros()
            body = Sequential(_conv(c, w, stride=stride), BatchNorm2d(w), ReLU(), _conv(w, w), last)
            shortcut = (
                None if stride == 1 and c == w else Sequential(_conv(c, w, kernel=1, stride=stride), BatchNorm2d(w))
            )
            block += 1
            layers += [Residual(body, shortcut, drop_path=drop_path * block / (3 * n)), ReLU()]
            c = w
    layers += [GlobalAvgPool2d(), Linear(c, num_classes)]
    return Sequential(*layers)
