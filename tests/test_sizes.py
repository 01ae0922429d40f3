"""Sizes that cannot be allocated (issue 15, item 5): every op that allocates an output whose
size comes from its arguments checks the arithmetic first and names the argument.

A size past what an array can address (2^63 bytes: int64 overflow of the element count times
the item size) is impossible: ValueError. A size that is legal but that the allocator refuses is
a MemoryError naming the argument, the output and its shape, never a bare std::bad_alloc. The
refused sizes here are 2^58 bytes and more: beyond any x86-64 or arm64 address space (at most
2^57 bytes with 5-level paging) and any GPU, so they fail on every machine, whatever its
overcommit policy, without touching a page.
"""

import numpy as np
import pytest
from conftest import put

import fastopt
import fastopt.functional as F

X = np.ones((1, 1, 4, 4), np.float32)
W3 = np.ones((1, 1, 3, 3), np.float32)


def dev(backend):
    return "cpu" if backend == "cpu" else "cuda"


# (name, call(backend) -> anything, exception, message pattern): the message must start with the
# argument's name.
CASES = [
    (
        "conv2d padding 2^31",
        lambda b: F.conv2d_forward(put(X, b), put(W3, b), None, 1, 2**31),
        ValueError,
        r"^padding: y would have shape \(1, 1, 4294967298, 4294967298\), 2\^63 or more bytes of float32",
    ),
    (
        "conv2d padding 2^62",
        lambda b: F.conv2d_forward(put(X, b), put(W3, b), None, 1, 2**62),
        ValueError,
        r"^padding: \(4611686018427387904, 4611686018427387904\) is too large",
    ),
    (
        "conv2d dilation 2^62",
        lambda b: F.conv2d_forward(put(X, b), put(W3, b), None, 1, 0, 2**62),
        ValueError,
        r"^dilation: \(4611686018427387904, 4611686018427387904\) is too large",
    ),
    (
        "conv2d padding 2^63",
        lambda b: F.conv2d_forward(put(X, b), put(W3, b), None, 1, 2**63),
        ValueError,
        r"^padding: must be a 64-bit integer \(in \[-2\^63, 2\^63\)\), got 9223372036854775808$",
    ),
    (
        "conv2d stride 2^64",
        lambda b: F.conv2d_forward(put(X, b), put(W3, b), None, 2**64),
        ValueError,
        r"^stride: must be a 64-bit integer",
    ),
    (
        "conv2d padding 2^28",
        lambda b: F.conv2d_forward(put(X, b), put(W3, b), None, 1, 2**28),
        MemoryError,
        r"^padding: y would have shape \(1, 1, 536870914, 536870914\), 1 EiB of float32, which cannot be allocated",
    ),
    (
        "dropout_mask 2^58 elements",
        lambda b: F.dropout_mask((2**58,), 0.5, 1, device=dev(b)),
        MemoryError,
        r"^shape: the mask would have shape \(288230376151711744,\), 256 PiB of bool, which cannot be allocated",
    ),
    (
        "dropout_mask 2^80 elements",
        lambda b: F.dropout_mask((2**40, 2**40), 0.5, 1, device=dev(b)),
        ValueError,
        r"^shape: too many elements",
    ),
    (
        "global_avg_pool_backward 2^58 elements",
        lambda b: F.global_avg_pool_backward(put(np.ones((1, 1), np.float32), b), (1, 1, 2**29, 2**29)),
        MemoryError,
        r"^input_shape: dx would have shape \(1, 1, 536870912, 536870912\), 1 EiB of float32, which cannot be",
    ),
    (
        "global_avg_pool_backward 2^82 elements",
        lambda b: F.global_avg_pool_backward(put(np.ones((1, 1), np.float32), b), (1, 1, 2**62, 2**20)),
        ValueError,
        r"^input_shape: too many elements",
    ),
    (
        "max_pool2d_backward 2^62-element plane",
        lambda b: F.max_pool2d_backward(
            put(np.ones((1, 1, 1, 1), np.float32), b),
            put(np.zeros((1, 1, 1, 1), np.int32), b),
            (1, 1, 2**31, 2**31),
            1,
            2**30,
        ),
        ValueError,
        r"^input_shape: plane \(2147483648, 2147483648\) too large",
    ),
    (
        "mixup num_classes 2^56",
        lambda b: F.mixup(put(np.ones((2, 3), np.float32), b), put(np.zeros(2, np.int64), b), 0.5, 2**56),
        MemoryError,
        r"^num_classes: targets would have shape \(2, 72057594037927936\), 512 PiB of float32, which cannot be",
    ),
    (
        "mixup num_classes 2^62",
        lambda b: F.mixup(put(np.ones((2, 3), np.float32), b), put(np.zeros(2, np.int64), b), 0.5, 2**62),
        ValueError,
        r"^num_classes: targets would have shape \(2, 4611686018427387904\), 2\^63 or more bytes",
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_impossible_sizes_name_the_argument(case, backend):
    _, call, exc, pattern = case
    with pytest.raises(exc, match=pattern) as info:
        call(backend)
    if exc is MemoryError:
        on = "cpu" if backend == "cpu" else "cuda:0"
        assert str(info.value).endswith(f"which cannot be allocated on {on}"), str(info.value)


@pytest.mark.gpu
@pytest.mark.parametrize("make", [fastopt.empty, fastopt.zeros], ids=["empty", "zeros"])
def test_device_arrays_of_impossible_sizes_name_the_shape(make):
    with pytest.raises(
        ValueError,
        match=r"^shape: the array would have shape \(1099511627776, 1099511627776\), "
        r"2\^63 or more bytes of float32",
    ):
        make((2**40, 2**40), device="cuda")
    with pytest.raises(
        MemoryError,
        match=r"^shape: the array would have shape \(288230376151711744,\), 1 EiB of "
        r"float32, which cannot be allocated on cuda:0$",
    ):
        make((2**58,), device="cuda")
    with pytest.raises(ValueError, match=r"^shape: the array would have shape \(3, -1\), with a negative dimension"):
        make((3, -1), device="cuda")


def test_an_op_still_runs_after_a_refused_allocation(backend):
    """A refusal leaves nothing behind: the next call of the same op works."""
    with pytest.raises(MemoryError):
        F.conv2d_forward(put(X, backend), put(W3, backend), None, 1, 2**28)
    y = F.conv2d_forward(put(X, backend), put(W3, backend), None, 1, 1)
    y = y if isinstance(y, np.ndarray) else y.numpy()
    np.testing.assert_array_equal(y[0, 0], [[4, 6, 6, 4], [6, 9, 9, 6], [6, 9, 9, 6], [4, 6, 6, 4]])
