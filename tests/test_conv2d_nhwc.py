"""channels_last conv2d on the CPU (layout="nhwc", cpp/cpu/conv2d_nhwc.cpp): forward, data-grad,
weight-grad and bias-grad against the float64 reference run on the same values in NCHW, bf16 and
float32, on every CPU ISA copy the machine has, bit-identical across thread counts; its argument
rules.

Error bounds (bf16_checks.py derives them): every output is a sum of m exact bf16 products (fp32
inputs: products rounded once more, so m + 1 roundings on a term's path) added in fp32 in some
fixed order, so |got - want| <= gamma(m) S with S the same sum on absolute values; bf16 outputs
(y, dx) add their one rounding, u16 |want|. m is C R S + 1 for y (bias), K R S for dx and the
number of output pixels N P Q for dw and db."""

import numpy as np
import pytest
from bf16_checks import ISAS, assert_bf16_gemm_close, bf16, gamma, run_under_isa
from conftest import assert_bits_independent_of_threads

import fastopt.functional as F
from fastopt.reference import conv as ref

# (N, C, H, W, K, R, S, stride, padding, dilation), chosen to reach every path of the engine
# (lane blocks of 64, 48, 32 and 16 outputs, odd channel counts, stride phases, dead taps, window
# rows folded into one run for C < 16) and of the weight-grad (row tiles across taps, filter
# tails, odd pixel counts, several pixel blocks):
SHAPES = [
    (2, 16, 9, 9, 24, 3, 3, 1, 1, 1),  # 24 outputs: one 32-lane block with 8 masked lanes
    (3, 5, 11, 7, 13, 3, 3, 1, 1, 1),  # odd C: the last channel paired with zero
    (2, 3, 23, 21, 10, 7, 7, 2, 3, 1),  # 7x7/2 stem; data-grad in 4 stride phases
    (1, 34, 10, 13, 17, 3, 5, (2, 1), (1, 2), 1),  # mixed strides and paddings
    (2, 18, 8, 9, 12, 3, 3, 1, 2, 2),  # dilation
    (2, 64, 8, 8, 130, 3, 3, 2, 1, 1),  # 130 outputs: 64 + 64 + 2 lanes; 64 channels: 2 blocks in dw
    (1, 70, 5, 6, 48, 3, 3, 1, 0, 1),  # 48 outputs (3 vectors); 70 channels: 3 blocks in dw, no padding
    (2, 20, 17, 19, 36, 1, 1, 2, 0, 1),  # 1x1 stride 2: the data-grad's odd pixels receive nothing
    (1, 8, 9, 8, 8, 5, 5, 3, 4, 1),  # stride 3 > half the kernel: whole phases without taps
    (5, 24, 14, 14, 40, 3, 3, 1, 1, 1),  # 980 pixels: several weight-grad blocks, two filter tiles
    (2, 130, 6, 5, 20, 3, 3, 1, 1, 1),  # C >= 128: the interior unfolded too (no wide rows), odd pairs
    (2, 2, 5, 2, 6, 5, 5, 1, 2, 1),  # a folded window row wider than the image: both edges at once
    (1, 1, 1, 1, 1, 1, 1, 1, 0, 1),  # one element
]


def _nchw(a):
    return np.ascontiguousarray(a.transpose(0, 3, 1, 2))


def _nhwc(a):
    return np.ascontiguousarray(a.transpose(0, 2, 3, 1))


def _close(got, want, scale, terms, rounded, name, dtype):
    if dtype == "bfloat16":
        return assert_bf16_gemm_close(got, want, scale, terms, rounded, name)
    # float32 inputs: each product is rounded too (one more rounding per term).
    assert got.dtype == np.float32 and got.shape == want.shape, f"{name}: {got.dtype} {got.shape}"
    err, bound = np.abs(got.astype(np.float64) - want), gamma(terms + 1) * scale + 2.0**-126
    assert np.all(err <= bound), f"{name}: error {np.max(err - bound):.3g} over the bound"


def check_shape(shape, dtype, seed=0):
    n, c, h, w, k, r, s, stride, pad, dil = shape
    rng = np.random.default_rng(seed)
    cast = bf16 if dtype == "bfloat16" else (lambda a: np.asarray(a, np.float32))
    x, wt, b = (
        cast(rng.standard_normal((n, c, h, w))),
        cast(rng.standard_normal((k, c, r, s))),
        cast(rng.standard_normal(k)),
    )
    args = (stride, pad, dil)
    y = F.conv2d_forward(_nhwc(x), wt, b, *args, layout="nhwc")
    ax, aw = np.abs(x.astype(np.float64)), np.abs(wt.astype(np.float64))
    want = ref.conv2d_forward(x, wt, b, *args)
    scale = ref.conv2d_forward(ax, aw, np.abs(b.astype(np.float64)), *args)
    assert y.shape == (n, want.shape[2], want.shape[3], k)
    _close(_nchw(y), want, scale, c * r * s + 1, True, "y", dtype)
    dy = cast(rng.standard_normal(want.shape))
    got = F.conv2d_backward(_nhwc(dy), _nhwc(x), wt, *args, layout="nhwc")
    want = ref.conv2d_backward(dy, x, wt, *args)
    scale = ref.conv2d_backward(np.abs(dy.astype(np.float64)), ax, aw, *args)
    pixels = n * dy.shape[2] * dy.shape[3]
    _close(_nchw(got[0]), want[0], scale[0], k * r * s, True, "dx", dtype)
    _close(got[1], want[1], scale[1], pixels, False, "dw", dtype)
    _close(got[2], want[2], scale[2], pixels, False, "db", dtype)


def check_all():
    for shape in SHAPES:
        check_shape(shape, "bfloat16")


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
@pytest.mark.parametrize("shape", SHAPES, ids=[str(s) for s in SHAPES])
def test_against_reference(shape, dtype, rng):
    check_shape(shape, dtype, seed=rng)


@pytest.mark.parametrize("isa", ISAS)
def test_every_isa_copy(isa):
    # avx512bf16 multiplies with VDPBF16PS; the other copies run the portable loop.
    run_under_isa(isa, "import test_conv2d_nhwc as t\nt.check_all()\n")


def test_bits_independent_of_threads(tmp_path):
    # Forward and data-grad items are scheduled dynamically and the weight-grad's units split by
    # the team size: no output may depend on either.
    assert_bits_independent_of_threads(
        tmp_path,
        """
from ml_dtypes import bfloat16
rng = np.random.default_rng(5)
for n, c, hw, k, st in [(4, 32, 14, 40, 1), (3, 5, 11, 13, 2), (9, 24, 16, 70, 1)]:
    x = rng.standard_normal((n, hw, hw, c)).astype(np.float32).astype(bfloat16)
    w = rng.standard_normal((k, c, 3, 3)).astype(np.float32).astype(bfloat16)
    b = rng.standard_normal(k).astype(np.float32).astype(bfloat16)
    y = F.conv2d_forward(x, w, b, st, 1, layout="nhwc")
    dy = rng.standard_normal(y.shape).astype(np.float32).astype(bfloat16)
    dx, dw, db = F.conv2d_backward(dy, x, w, st, 1, layout="nhwc")
    out += [y.view(np.uint16), dx.view(np.uint16), dw, db]
""",
    )


def test_accumulate_into_outs():
    rng = np.random.default_rng(3)
    x, wt = bf16(rng.standard_normal((2, 7, 6, 10))), bf16(rng.standard_normal((12, 10, 3, 3)))
    dy = bf16(rng.standard_normal((2, 7, 6, 12)))
    _, dw, db = F.conv2d_backward(dy, x, wt, 1, 1, layout="nhwc")
    dw_out, db_out = np.ones_like(dw), np.ones_like(db)
    got = F.conv2d_backward(dy, x, wt, 1, 1, dw_out=dw_out, db_out=db_out, accumulate=True, layout="nhwc")
    assert got[1] is dw_out and got[2] is db_out
    np.testing.assert_array_equal(dw_out, (dw + np.float32(1)).astype(np.float32))
    np.testing.assert_array_equal(db_out, (db + np.float32(1)).astype(np.float32))


def test_nan_reaches_exactly_its_outputs():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 8, 8, 16)).astype(np.float32)
    x[1, 4, 5, 3] = np.nan
    x, wt = bf16(x), bf16(rng.standard_normal((20, 16, 3, 3)))
    y = F.conv2d_forward(x, wt, None, 1, 1, layout="nhwc")
    want = ref.conv2d_forward(_nchw(x), wt, None, 1, 1)
    np.testing.assert_array_equal(np.isnan(_nchw(y).astype(np.float32)), np.isnan(want))
    assert np.isnan(want).sum() == 20 * 9


def test_arguments_named():
    x, wt = bf16(np.ones((1, 5, 5, 4))), bf16(np.ones((6, 4, 3, 3)))
    with pytest.raises(ValueError, match="layout"):
        F.conv2d_forward(x, wt, layout="NHWC")
    with pytest.raises(TypeError, match="layout"):
        F.conv2d_forward(x, wt, layout=None)
    with pytest.raises(ValueError, match="groups"):
        F.conv2d_forward(bf16(np.ones((1, 5, 5, 6))), bf16(np.ones((6, 3, 3, 3))), groups=2, layout="nhwc")
    with pytest.raises(ValueError, match=r"x: .*\(N, H, W, C\)"):
        F.conv2d_forward(x[0], wt, layout="nhwc")
    with pytest.raises(ValueError, match="w: "):  # w's channels are checked against x's last axis
        F.conv2d_forward(bf16(np.ones((1, 5, 4, 5))), wt, layout="nhwc")
    with pytest.raises(ValueError, match="dy: "):  # an NCHW-shaped dy for an NHWC call
        F.conv2d_backward(bf16(np.ones((1, 6, 3, 3))), x, wt, layout="nhwc")
    with pytest.raises(TypeError, match="w"):
        F.conv2d_forward(x, wt.astype(np.float32), layout="nhwc")


@pytest.mark.gpu
def test_gpu_refuses_nhwc():
    import fastopt

    if not fastopt.cuda.is_available():
        pytest.skip("no usable CUDA GPU here")
    x, wt = fastopt.to_device(np.ones((1, 5, 5, 4), np.float32)), fastopt.to_device(np.ones((6, 4, 3, 3), np.float32))
    with pytest.raises(ValueError, match="layout: 'nhwc' runs on the CPU only"):
        F.conv2d_forward(x, wt, layout="nhwc")
