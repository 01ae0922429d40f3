"""Ready-made networks."""
from . import init as I
from .layers import BatchNorm2d, Conv2d, Dropout, GlobalAvgPool2d, Linear, MaxPool2d, ReLU
from .module import Sequential

__all__ = ["small_cnn"]


def _block(c_in, c_out):
    # No conv bias: the batch norm right after it has its own shift.
    return [Conv2d(c_in, c_out, 3, padding=1, bias=False, weight_init=I.kaiming_normal(nonlinearity="relu")),
            BatchNorm2d(c_out), ReLU()]


def small_cnn(in_channels=1, num_classes=10, widths=(32, 64), dropout=0.25):
    """Two stages of two conv-BN-ReLU blocks, each stage ending in a 2x2 max pool, then global
    average pooling, dropout and a linear classifier. Global pooling makes it size-agnostic:
    the same network trains on 8x8 digits and 32x32 CIFAR-shaped images."""
    layers, c = [], in_channels
    for w in widths:
        layers += _block(c, w) + _block(w, w) + [MaxPool2d(2)]
        c = w
    layers += [GlobalAvgPool2d(), Dropout(dropout), Linear(c, num_classes)]
    return Sequential(*layers)
