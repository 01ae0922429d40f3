"""conv2d forward and gradients against the float64 NumPy reference, the reference against the
plain definition (and against torch in float64 when installed), and argument checking.

Tolerance: max |native - reference| / max |reference| < 1e-5 for every output (float32
accumulation over at most a few thousand terms here, Winograd transforms included; the issue's
bound is 1e-4)."""

import itertools
import os

import numpy as np
import pytest
from conftest import assert_bits_independent_of_threads, fetch, put

import fastopt.functional as F
from fastopt.reference import conv as ref

RTOL = 1e-5


def rel_err(got, want):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape
    scale = np.abs(want).max() if want.size else 0.0
    return np.abs(got - want).max() / scale if want.size and scale > 0 else np.abs(got - want).max(initial=0.0)


def check(backend, rng, n, c, h, w, k, r, s, stride, padding, dilation, groups, bias, need=(True, True, True)):
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    wt = rng.standard_normal((k, c // groups, r, s)).astype(np.float32)
    b = rng.standard_normal(k).astype(np.float32) if bias else None
    args = (stride, padding, dilation, groups)
    y = fetch(F.conv2d_forward(put(x, backend), put(wt, backend), None if b is None else put(b, backend), *args))
    want = ref.conv2d_forward(x, wt, b, *args)
    assert y.dtype == np.float32
    assert rel_err(y, want) < RTOL
    dy = rng.standard_normal(want.shape).astype(np.float32)
    got = F.conv2d_backward(put(dy, backend), put(x, backend), put(wt, backend), *args, need=need)
    wants = ref.conv2d_backward(dy, x, wt, *args, need=need)
    for name, g, gw, asked in zip(("dx", "dw", "db"), got, wants, need):
        if not asked:
            assert g is None, name
            continue
        g = fetch(g)
        assert g.dtype == np.float32, name
        assert rel_err(g, gw) < RTOL, name


# The full product: stride x padding x dilation x groups x kernel size x bias, N = 1,
# odd spatial sizes (large enough that a 7x7 kernel with dilation 2 and no padding still fits).
C, K = 4, 8


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("ksize", [1, 3, 5, 7])
@pytest.mark.parametrize("groups", [1, 2, C])
@pytest.mark.parametrize("dilation", [1, 2])
@pytest.mark.parametrize("padding", [0, 1, 2])
@pytest.mark.parametrize("stride", [1, 2])
def test_all_combinations(backend, rng, stride, padding, dilation, groups, ksize, bias):
    check(backend, rng, 1, C, 15, 13, K, ksize, ksize, stride, padding, dilation, groups, bias)


@pytest.mark.parametrize(
    "n,c,h,w,k,r,s,stride,padding,dilation,groups",
    [
        (2, 3, 9, 11, 5, 3, 2, (2, 1), (1, 0), (1, 2), 1),  # non-square everything
        (3, 40, 13, 13, 30, 3, 3, 1, 1, 1, 1),  # reduction over several KC blocks
        (2, 48, 11, 9, 10, 3, 3, 1, 2, 2, 2),  # data-grad as a gather, grouped, dilated
        (1, 300, 5, 7, 160, 1, 1, 1, 0, 1, 1),  # more rows than one MC block
        (2, 6, 31, 29, 12, 3, 3, 2, 1, 1, 3),  # many column tiles, grouped
        (4, 6, 33, 35, 8, 3, 3, 1, 1, 1, 1),  # weight-grad over 4 image chunks
        (5, 3, 23, 23, 7, 7, 7, 2, 3, 1, 1),  # stem-like, 3 input channels
        (2, 3, 61, 67, 8, 7, 7, 2, 3, 1, 1),  # stem-like, 34 columns: vectors across a row end
        (1, 5, 40, 41, 6, 3, 3, 2, 2, 2, 1),  # column stride 2, dilated
        (1, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1),  # one element
        (1, 2, 1, 1, 3, 3, 3, 1, 1, 1, 1),  # 1x1 image, all taps but one in padding
        (2, 8, 7, 7, 8, 3, 3, 1, 1, 1, 8),  # depthwise
        (1, 2, 8, 8, 2, 3, 3, 3, 0, 1, 1),  # stride that skips input pixels
        (2, 10, 12, 11, 200, 3, 3, 2, 1, 1, 1),  # data-grad, 10 channels: weights in 4 chunks
        (13, 12, 7, 7, 20, 3, 3, 2, 1, 1, 2),  # col2im data-grad on 4x4 outputs: runs of 12 images and 1
        (1, 6, 2, 3, 20, 3, 3, 3, 2, 2, 2),  # stride past the image: phases with no pixel
        (1, 2, 100, 301, 2, 3, 3, 1, 1, 1, 2),  # depthwise, rows in several shared-memory bands
        (1, 3, 90, 257, 6, 5, 5, 2, 2, 2, 3),  # the same strided and dilated, 2 planes per channel
        (2, 6, 9, 70, 12, 3, 3, 1, 3, 1, 6),  # depthwise x2, padding past R - 1, rows past 64
        (1, 4, 11, 13, 4, 5, 5, 1, 2, 1, 4),  # depthwise 5x5
        (2, 3, 15, 17, 3, 7, 3, 1, (3, 0), 1, 3),  # depthwise 7x3, no column padding
    ],
)
def test_shapes(backend, rng, n, c, h, w, k, r, s, stride, padding, dilation, groups):
    check(backend, rng, n, c, h, w, k, r, s, stride, padding, dilation, groups, bias=True)


# Channel-wise layers (one input channel per group) with square 3x3, 5x5 and 7x7 filters at unit
# stride take the CPU's AVX-512 blocks: 4 output rows x up to 64 columns, loads masked to the
# plane. Widths put every vector count (1 to 4) in a block and several blocks in a row, heights
# leave 0 to 3 rows after the 4-row blocks, and padding runs from 0 to K - 1 (the data-grad's
# K - 1 - p: from K - 1 to 0); 2 filters per channel make the data-grad add a second plane.
# The last shape gives the weight-grad's image sums several batches (2500 filters x 9 taps:
# 2 images a batch).
@pytest.mark.parametrize(
    "n,c,h,w,k,r,padding",
    [
        (2, 3, 9, 16, 3, 3, 1),  # one vector per row, 1 row after the blocks
        (1, 2, 6, 64, 4, 3, 0),  # 4 vectors, no padding, 2 rows after the blocks
        (2, 2, 11, 65, 2, 3, 2),  # a 64-column block and a 1-column one; padding K - 1
        (1, 3, 8, 130, 3, 5, 2),  # 3 column blocks, the last of 1 vector
        (2, 2, 15, 47, 4, 5, 4),  # padding K - 1: the data-grad pads 0
        (1, 2, 14, 33, 2, 7, 3),  # 7x7, 3 vectors
        (2, 1, 9, 9, 2, 7, 0),  # 7x7, no padding: 3 x 3 outputs
        (3, 2500, 5, 5, 2500, 3, 1),  # weight-grad image sums in batches
    ],
)
def test_channelwise_shapes(backend, rng, n, c, h, w, k, r, padding):
    check(backend, rng, n, c, h, w, k, r, r, 1, padding, 1, c, bias=True)


# A pixel that no tap of a filter column reaches must not touch that column's weight gradient,
# even when it is Inf (0 * Inf is NaN): with no padding, the last image column meets only the
# last filter column. Summing vector lanes past the output row's end would meet it.
@pytest.mark.parametrize("r", [3, 5, 7])
def test_channelwise_weight_grad_ignores_unreached_inf(backend, rng, r):
    n, c, h, w = 2, 3, 12, 37
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    x[:, :, ::2, -1] = np.inf
    wt = rng.standard_normal((c, 1, r, r)).astype(np.float32)
    dy = rng.standard_normal((n, c, h - r + 1, w - r + 1)).astype(np.float32)
    args = (1, 0, 1, c)
    with np.errstate(invalid="ignore"):  # Inf - Inf in the last column's sums
        want = ref.conv2d_backward(dy, x, wt, *args, need=(False, True, False))[1]
    got = fetch(
        F.conv2d_backward(put(dy, backend), put(x, backend), put(wt, backend), *args, need=(False, True, False))[1]
    )
    assert np.isfinite(want[..., :-1]).all() and not np.isfinite(want[..., -1]).any()
    assert rel_err(got[..., :-1], want[..., :-1]) < RTOL
    assert not np.isfinite(got[..., -1]).any()


def set_winograd(monkeypatch, value):
    """The CPU's and the GPU's Winograd switches (on by default on the CPU, opt-in on the GPU) both to `value`."""
    for name in ("FASTOPT_CPU_CONV2D_WINOGRAD", "FASTOPT_CUDA_CONV2D_WINOGRAD"):
        monkeypatch.setenv(name, value)


# 3x3 unit-stride layers with >= 8 channels per group take the CPU's Winograd F(2x2, 3x3) path
# (>= 128 for the weight-grad; FASTOPT_CPU_CONV2D_WINOGRAD=0: the direct GEMMs), and with "1" and
# >= 32 the GPU's (opt-in there); odd outputs leave tiles overhanging the image, padding 0 and 2
# move the taps, and 1x1 / 2x3 images leave most taps in the padding. Its error measured
# against the reference stays below the direct GEMMs' (shorter reductions).
@pytest.mark.parametrize("winograd", ["1", "0"])
@pytest.mark.parametrize(
    "n,c,h,w,k,padding,groups,bias",
    [
        (2, 64, 9, 11, 64, 1, 1, True),  # odd width: the last tile column overhangs
        (1, 64, 7, 7, 96, 0, 1, False),  # no padding, 5x5 out, more filters than channels
        (3, 72, 6, 5, 64, 2, 1, True),  # padding 2 (data-grad pads 0), 8x7 out
        (2, 128, 5, 6, 192, 1, 2, True),  # grouped, 64 -> 96 per group
        (1, 64, 1, 1, 64, 1, 1, True),  # 1x1 image: one tile, 8 of 9 taps in the padding
        (1, 64, 2, 3, 80, 2, 1, False),  # output larger than the input
        (5, 65, 13, 4, 70, 1, 1, True),  # channel counts off the tile multiples, many blocks
        (1, 320, 4, 4, 64, 1, 1, True),  # reduction over two KC blocks
        (2, 130, 9, 7, 136, 1, 1, True),  # weight-grad: channel and filter strips off their tile sizes
        (8, 256, 13, 13, 128, 0, 1, False),  # weight-grad over two blocks of 256 tiles
        (1, 256, 6, 6, 256, 1, 2, True),  # weight-grad, grouped
        (4, 8, 11, 9, 12, 1, 1, True),  # CPU: the fewest channels it takes, filters off MR
        (2, 16, 6, 7, 24, 0, 2, False),  # CPU: 8 channels per group
        (7, 33, 7, 9, 40, 2, 1, True),  # GPU: channels and filters off their blocks of 32 and 4,
        # 210 tiles: weight-grad splits, the last stage partial
    ],
)
def test_winograd_shapes(backend, rng, monkeypatch, winograd, n, c, h, w, k, padding, groups, bias):
    set_winograd(monkeypatch, winograd)
    check(backend, rng, n, c, h, w, k, 3, 3, 1, padding, 1, groups, bias)


# The GPU's few-channel data-grad (Cg < 16) with FASTOPT_CUDA_CONV2D_STRIPS=1: each thread a strip of
# up to 8 rows of one stride phase, all channels, at most 4 row taps per phase with unit row
# dilation; shapes past that take the pixels kernel either way. Only data-grad changes.
@pytest.mark.gpu
@pytest.mark.parametrize("strips", ["1", "0"])
@pytest.mark.parametrize(
    "n,c,h,w,k,r,s,stride,padding,dilation,groups",
    [
        (5, 3, 23, 23, 7, 7, 7, 2, 3, 1, 1),  # stem-like: 4 x 4, 4 x 3, 3 x 4, 3 x 3 taps per phase
        (2, 3, 21, 19, 200, 7, 7, 2, 3, 1, 1),  # 3 channels, weights in 4 chunks, 11 x 10 phase rows
        (1, 1, 70, 40, 3, 3, 3, 1, 1, 1, 1),  # one channel: 9 strips x 40 columns, two blocks
        (2, 4, 13, 9, 6, 4, 4, 1, 2, 1, 2),  # 2 per group, 4 row taps, even kernel
        (1, 5, 17, 11, 8, 3, 5, 1, (4, 1), (1, 2), 1),  # 8-wide (5 channels), padding past R - 1, dilated columns
        (2, 9, 10, 12, 5, 3, 3, (3, 2), 1, 1, 1),  # 16-wide (9 channels), stride 3 rows: one row tap
        (1, 15, 9, 9, 4, 5, 3, 2, 2, 1, 1),  # 15 channels, 5 rows at stride 2: 3 and 2 row taps
        (1, 6, 2, 3, 20, 3, 3, 3, 2, (1, 2), 2),  # stride past the image: phases with no pixel
        (1, 2, 9, 9, 4, 5, 5, 1, 2, 1, 1),  # 5 row taps: the pixels kernel
        (1, 2, 9, 9, 4, 3, 3, 1, 2, 2, 1),  # dilated rows: the pixels kernel
    ],
)
def test_few_channel_data_grad(rng, monkeypatch, strips, n, c, h, w, k, r, s, stride, padding, dilation, groups):
    monkeypatch.setenv("FASTOPT_CUDA_CONV2D_STRIPS", strips)
    check("cuda", rng, n, c, h, w, k, r, s, stride, padding, dilation, groups, bias=False, need=(True, False, False))


# The GPU's depthwise weight-grad with FASTOPT_CUDA_CONV2D_DW_TAPS=1 (square 3, 5 and 7 kernels): a
# block per filter and chunk of images sums all taps; other kernels take the per-element blocks.
@pytest.mark.gpu
@pytest.mark.parametrize("taps", ["1", "0"])
@pytest.mark.parametrize(
    "n,c,h,w,k,r,stride,padding,dilation",
    [
        (5, 8, 7, 9, 8, 3, 1, 1, 1),  # one image per chunk, odd width
        (2, 2, 100, 301, 2, 3, 1, 1, 1),  # 4 bands of rows per plane
        (3, 3, 90, 257, 6, 5, 2, 2, 2),  # 5x5, strided and dilated, 2 filters per channel
        (2, 4, 23, 19, 4, 7, (2, 1), 3, 1),  # 7x7, row stride 2
        (1, 6, 9, 70, 12, 3, 1, 3, 1),  # padding past R - 1
        (2, 4, 11, 13, 4, (3, 5), 1, 1, 1),  # 3x5: the per-element blocks
    ],
)
def test_depthwise_weight_grad_taps(rng, monkeypatch, taps, n, c, h, w, k, r, stride, padding, dilation):
    monkeypatch.setenv("FASTOPT_CUDA_CONV2D_DW_TAPS", taps)
    rr, ss = r if isinstance(r, tuple) else (r, r)
    check("cuda", rng, n, c, h, w, k, rr, ss, stride, padding, dilation, c, bias=False, need=(False, True, False))


# FASTOPT_CUDA_CONV2D_DW_LOADS=1 batches the depthwise tiles' loads (8 per thread before any store):
# the same tiles, so the same bits as without it, and right against the reference.
@pytest.mark.gpu
@pytest.mark.parametrize(
    "n,c,h,w,k,r,s,stride,padding,dilation",
    [
        (3, 8, 13, 11, 8, 3, 3, 1, 1, 1),  # 3x3: 15 x 13 tiles, 195 elements (a partial batch)
        (1, 2, 100, 301, 2, 3, 3, 1, 1, 1),  # bands of rows
        (2, 3, 31, 29, 6, 5, 3, 2, 2, 2),  # strided, dilated, 2 filters per channel
        (2, 4, 56, 56, 4, 7, 7, 1, 3, 1),  # 62 x 62 tiles: 16 loads per thread
    ],
)
def test_depthwise_batched_loads(rng, monkeypatch, n, c, h, w, k, r, s, stride, padding, dilation):
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    wt = rng.standard_normal((k, 1, r, s)).astype(np.float32)
    args = (stride, padding, dilation, c)
    want_y = ref.conv2d_forward(x, wt, None, *args)
    dy = rng.standard_normal(want_y.shape).astype(np.float32)
    want_dx = ref.conv2d_backward(dy, x, wt, *args, need=(True, False, False))[0]
    got = {}
    for on in ("1", "0"):
        monkeypatch.setenv("FASTOPT_CUDA_CONV2D_DW_LOADS", on)
        xd, wd, dyd = put(x, "cuda"), put(wt, "cuda"), put(dy, "cuda")
        got[on] = (
            fetch(F.conv2d_forward(xd, wd, None, *args)),
            fetch(F.conv2d_backward(dyd, xd, wd, *args, need=(True, False, False))[0]),
        )
    assert rel_err(got["1"][0], want_y) < RTOL and rel_err(got["1"][1], want_dx) < RTOL
    np.testing.assert_array_equal(got["1"][0], got["0"][0])
    np.testing.assert_array_equal(got["1"][1], got["0"][1])


# Each opt-in kernel sums in another order than the default one (strips: each pixel over k, s, r
# where the pixels kernel goes k, r, s; taps: by image chunks): with thousands of terms per output
# some bits differ, which shows that the switch took it.
@pytest.mark.gpu
@pytest.mark.parametrize(
    "switch,n,c,h,k,r,stride,padding,groups,need",
    [
        ("FASTOPT_CUDA_CONV2D_STRIPS", 2, 3, 24, 64, 7, 2, 3, 1, (True, False, False)),
        ("FASTOPT_CUDA_CONV2D_DW_TAPS", 16, 4, 20, 4, 3, 1, 1, 4, (False, True, False)),
    ],
)
def test_opt_in_kernels_run(rng, monkeypatch, switch, n, c, h, k, r, stride, padding, groups, need):
    x = rng.standard_normal((n, c, h, h)).astype(np.float32)
    wt = rng.standard_normal((k, c // groups, r, r)).astype(np.float32)
    p = (h + 2 * padding - r) // stride + 1
    dy = rng.standard_normal((n, k, p, p)).astype(np.float32)
    args = (stride, padding, 1, groups)
    want = ref.conv2d_backward(dy, x, wt, *args, need=need)[need.index(True)]
    got = {}
    for on in ("1", "0"):
        monkeypatch.setenv(switch, on)
        grads = F.conv2d_backward(put(dy, "cuda"), put(x, "cuda"), put(wt, "cuda"), *args, need=need)
        got[on] = fetch(grads[need.index(True)])
        assert rel_err(got[on], want) < RTOL, on
    assert not np.array_equal(got["1"], got["0"])


@pytest.mark.parametrize("isa", ["baseline", "avx2"])
def test_winograd_narrower_isa_copies(tmp_path, isa):
    # The CPU kernels are compiled per ISA (other tile shapes, scalar transforms); this machine
    # runs the widest, so run the narrower copies on Winograd shapes in a child process.
    import subprocess
    import sys

    script = tmp_path / "run.py"
    script.write_text(
        "import numpy as np, fastopt, fastopt.functional as F\n"
        "from fastopt.reference import conv as ref\n"
        "rng = np.random.default_rng(3)\n"
        "for n, c, h, w, k, pad, g in [(2, 64, 9, 11, 72, 1, 1), (1, 130, 6, 5, 136, 2, 1), (1, 256, 5, 5, 256, 0, 2)]:\n"
        "    x = rng.standard_normal((n, c, h, w)).astype(np.float32)\n"
        "    wt = rng.standard_normal((k, c // g, 3, 3)).astype(np.float32)\n"
        "    y = F.conv2d_forward(x, wt, None, 1, pad, 1, g)\n"
        "    want = ref.conv2d_forward(x, wt, None, 1, pad, 1, g)\n"
        "    dy = rng.standard_normal(want.shape).astype(np.float32)\n"
        "    got = [y, *F.conv2d_backward(dy, x, wt, 1, pad, 1, g, need=(True, True, False))[:2]]\n"
        "    wants = [want, *ref.conv2d_backward(dy, x, wt, 1, pad, 1, g, need=(True, True, False))[:2]]\n"
        "    for a, b in zip(got, wants):\n"
        "        err = np.abs(a - b).max() / np.abs(b).max()\n"
        "        assert err < 1e-5, (n, c, err)\n"
        "print(fastopt.build_info()['simd'])\n"
    )
    out = subprocess.run(
        [sys.executable, str(script)],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "FASTOPT_CPU_ISA": isa},
    ).stdout.split()
    assert out[-1] in (isa, "baseline")  # baseline where the machine or build lacks AVX2


@pytest.mark.parametrize(
    "need",
    [(True, False, False), (False, True, False), (False, False, True), (False, False, False), (True, True, False)],
)
def test_need(backend, rng, need):
    check(backend, rng, 2, 4, 9, 7, 6, 3, 3, 1, 1, 1, 2, True, need=need)


def test_empty_batch(backend):
    x = np.zeros((0, 3, 5, 5), np.float32)
    wt = np.ones((4, 3, 3, 3), np.float32)
    y = fetch(F.conv2d_forward(put(x, backend), put(wt, backend), None, 1, 1))
    assert y.shape == (0, 4, 5, 5)
    dx, dw, db = F.conv2d_backward(put(y, backend), put(x, backend), put(wt, backend), 1, 1)
    assert fetch(dx).shape == (0, 3, 5, 5)
    np.testing.assert_array_equal(fetch(dw), np.zeros((4, 3, 3, 3), np.float32))
    np.testing.assert_array_equal(fetch(db), np.zeros(4, np.float32))


@pytest.mark.parametrize("c,winograd", [(16, "0"), (64, "1")])
def test_deterministic(backend, rng, monkeypatch, c, winograd):
    set_winograd(monkeypatch, winograd)
    x = rng.standard_normal((4, c, 19, 17)).astype(np.float32)
    wt = rng.standard_normal((c + 8, c, 3, 3)).astype(np.float32)
    dy = rng.standard_normal((4, c + 8, 19, 17)).astype(np.float32)
    xd, wd, dyd = put(x, backend), put(wt, backend), put(dy, backend)
    first = [fetch(a) for a in F.conv2d_backward(dyd, xd, wd, 1, 1)] + [fetch(F.conv2d_forward(xd, wd, None, 1, 1))]
    again = [fetch(a) for a in F.conv2d_backward(dyd, xd, wd, 1, 1)] + [fetch(F.conv2d_forward(xd, wd, None, 1, 1))]
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------- the reference itself


@pytest.mark.parametrize(
    "stride,padding,dilation,groups,ksize",
    [(1, 0, 1, 1, 3), (2, 1, 1, 2, 3), (1, 2, 2, 4, 3), (2, 0, 2, 1, 1), ((2, 1), (0, 2), (1, 2), 2, 5)],
)
def test_reference_matches_definition(rng, stride, padding, dilation, groups, ksize):
    x = rng.standard_normal((2, 4, 9, 8))
    w = rng.standard_normal((6 if groups != 4 else 4, 4 // groups, ksize, ksize))
    b = rng.standard_normal(w.shape[0])
    fast = ref.conv2d_forward(x, w, b, stride, padding, dilation, groups)
    np.testing.assert_allclose(
        fast, ref.conv2d_loop(x, w, b, stride, padding, dilation, groups), rtol=1e-12, atol=1e-12
    )


def test_reference_gradients_are_adjoints(rng):
    # <dy, conv(x)> = <dx, x> and <dy, conv_w(x)> = <dw, w> for the bias-free linear map.
    for stride, padding, dilation, groups in itertools.product([1, 2], [0, 2], [1, 2], [1, 2]):
        x = rng.standard_normal((2, 4, 11, 10))
        w = rng.standard_normal((6, 4 // groups, 3, 3))
        y = ref.conv2d_forward(x, w, None, stride, padding, dilation, groups)
        dy = rng.standard_normal(y.shape)
        dx, dw, db = ref.conv2d_backward(dy, x, w, stride, padding, dilation, groups)
        inner = np.vdot(dy, y)
        np.testing.assert_allclose(np.vdot(dx, x), inner, rtol=1e-10)
        np.testing.assert_allclose(np.vdot(dw, w), inner, rtol=1e-10)
        np.testing.assert_allclose(db, dy.sum(axis=(0, 2, 3)), rtol=1e-12)


@pytest.mark.parametrize("stride,padding,dilation,groups", [(1, 1, 1, 1), (2, 2, 2, 2), ((1, 2), (2, 0), (2, 1), 4)])
def test_reference_matches_torch(rng, stride, padding, dilation, groups):
    torch = pytest.importorskip("torch")
    x = rng.standard_normal((2, 4, 10, 9))
    w = rng.standard_normal((8, 4 // groups, 3, 3))
    b = rng.standard_normal(8)
    xt, wt, bt = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    yt = torch.nn.functional.conv2d(xt, wt, bt, stride, padding, dilation, groups)
    dy = rng.standard_normal(tuple(yt.shape))
    yt.backward(torch.tensor(dy))
    np.testing.assert_allclose(
        ref.conv2d_forward(x, w, b, stride, padding, dilation, groups), yt.detach().numpy(), rtol=1e-12, atol=1e-12
    )
    for got, want in zip(ref.conv2d_backward(dy, x, w, stride, padding, dilation, groups), (xt, wt, bt)):
        np.testing.assert_allclose(got, want.grad.numpy(), rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------- bad input


def _args():
    return np.zeros((2, 4, 8, 8), np.float32), np.zeros((6, 2, 3, 3), np.float32)


@pytest.mark.parametrize(
    "call,exc,match",
    [
        (
            lambda x, w: F.conv2d_forward(x, w, groups=3),
            ValueError,
            r"groups: the 4 input channels of x are not divisible",
        ),
        (
            lambda x, w: F.conv2d_forward(x, np.zeros((5, 1, 3, 3), np.float32), groups=4),
            ValueError,
            r"groups: the 5 output channels of w are not divisible",
        ),
        (lambda x, w: F.conv2d_forward(x, w), ValueError, r"w: expected shape \(K, C/groups = 4, R, S\)"),
        (
            lambda x, w: F.conv2d_forward(x, np.zeros((6, 4, 9, 3), np.float32)),
            ValueError,
            r"x: output size would be <= 0",
        ),
        (lambda x, w: F.conv2d_forward(x, w, dilation=5, groups=2), ValueError, r"x: output size would be <= 0"),
        (lambda x, w: F.conv2d_forward(x[0], w, groups=2), ValueError, r"x: expected a 4-D array"),
        (lambda x, w: F.conv2d_forward(x, w[0], groups=2), ValueError, r"w: expected a 4-D array"),
        (
            lambda x, w: F.conv2d_forward(x, np.zeros((0, 2, 3, 3), np.float32), groups=2),
            ValueError,
            r"w: every dimension must be >= 1",
        ),
        (
            lambda x, w: F.conv2d_forward(x, w, np.zeros(5, np.float32), groups=2),
            ValueError,
            r"b: expected shape \(6,\)",
        ),
        (lambda x, w: F.conv2d_forward(x.astype(np.float64), w, groups=2), TypeError, r"x: expected a float32 array"),
        (lambda x, w: F.conv2d_forward(x, w.astype(np.float16), groups=2), TypeError, r"w: unsupported dtype float16"),
        (lambda x, w: F.conv2d_forward(x[:, :, ::2], w, groups=2), ValueError, r"x: array must be C-contiguous"),
        (lambda x, w: F.conv2d_forward(x, w, stride=0, groups=2), ValueError, r"stride: must be >= 1"),
        (lambda x, w: F.conv2d_forward(x, w, padding=(1, -1), groups=2), ValueError, r"padding: must be >= 0"),
        (lambda x, w: F.conv2d_forward(x, w, dilation=0, groups=2), ValueError, r"dilation: must be >= 1"),
        (lambda x, w: F.conv2d_forward(x, w, groups=0), ValueError, r"groups: must be >= 1"),
        (
            lambda x, w: F.conv2d_forward(x, w, stride=(1, 2, 3), groups=2),
            ValueError,
            r"stride: expected an int or a pair",
        ),
        (
            lambda x, w: F.conv2d_forward(x, w, padding=1.5, groups=2),
            TypeError,
            r"padding: expected an integer, got float",
        ),
        (lambda x, w: F.conv2d_forward([[1.0]], w, groups=2), TypeError, r"x: expected a numpy.ndarray"),
        (
            lambda x, w: F.conv2d_backward(np.zeros((2, 6, 6, 7), np.float32), x, w, groups=2),
            ValueError,
            r"dy: expected the output shape \(2, 6, 6, 6\)",
        ),
        (
            lambda x, w: F.conv2d_backward(np.zeros((2, 6, 6, 6), np.float64), x, w, groups=2),
            TypeError,
            r"dy: expected a float32 array",
        ),
        (lambda x, w: F.conv2d_backward(np.zeros((2, 6, 6, 6), np.float32), x, w, groups=3), ValueError, r"groups: "),
        (
            lambda x, w: F.conv2d_backward(np.zeros((2, 6, 6, 6), np.float32), x, w, groups=2, need=(True,)),
            ValueError,
            r"need: expected 3 flags",
        ),
    ],
)
def test_bad_arguments(call, exc, match):
    x, w = _args()
    with pytest.raises(exc, match=match):
        call(x, w)


def test_read_only_inputs_are_fine(rng):
    x = rng.standard_normal((1, 2, 5, 5)).astype(np.float32)
    w = rng.standard_normal((3, 2, 3, 3)).astype(np.float32)
    x.flags.writeable = w.flags.writeable = False
    assert rel_err(F.conv2d_forward(x, w, None, 1, 1), ref.conv2d_forward(x, w, None, 1, 1)) < RTOL


def test_thread_count_does_not_change_bits(tmp_path):
    # Every reduction has a fixed order (fixed image chunks, fixed KC blocks, no atomics), so one
    # thread and many give identical bits. Shapes hit each CPU path: GEMM with several image
    # chunks, col2im data-grad (stride 2), gather data-grad (wide groups), channel-wise, and
    # Winograd (ungrouped with several tile blocks; grouped with rows split).
    assert_bits_independent_of_threads(
        tmp_path,
        (
            "rng = np.random.default_rng(7)\n"
            "for n, c, k, h, st, g in [(6, 16, 24, 19, 1, 1), (4, 8, 16, 17, 2, 2), (2, 64, 48, 9, 1, 2), (3, 8, 16, 11, 1, 8),"
            "                          (9, 64, 72, 15, 1, 1), (2, 128, 256, 7, 1, 2)]:\n"
            "    x = rng.standard_normal((n, c, h, h)).astype(np.float32)\n"
            "    w = rng.standard_normal((k, c // g, 3, 3)).astype(np.float32)\n"
            "    y = F.conv2d_forward(x, w, None, st, 1, 1, g)\n"
            "    dy = rng.standard_normal(y.shape).astype(np.float32)\n"
            "    out += [y, *F.conv2d_backward(dy, x, w, st, 1, 1, g)]\n"
        ),
    )


# TF32 (opt-in): each operand rounded to 10 mantissa bits (unit roundoff 2^-11), so a product is
# off by at most (2 * 2^-11 + 2^-22) |a b| and each output by that times sum |a b| (the reference
# on |x|, |w|, |dy|), plus float32 accumulation over Kd terms. CPU has no TF32: bit-identical.
# On the GPU the GEMM paths must show TF32's rounding; small grouped layers take the exact
# float32 gather kernels (TF32 is allowed, not required).
@pytest.mark.parametrize(
    "n, c, h, k, r, stride, padding, groups, gemm",
    [
        (2, 16, 11, 24, 3, 1, 1, 1, True),  # implicit GEMM
        (3, 32, 9, 40, 1, 1, 0, 1, True),  # 1x1 as a plain GEMM
        (2, 12, 13, 16, 3, 2, 1, 2, False),  # strided, grouped
    ],
)
def test_tf32_is_opt_in_and_within_its_rounding_bound(backend, rng, n, c, h, k, r, stride, padding, groups, gemm):
    x = rng.standard_normal((n, c, h, h)).astype(np.float32)
    wt = rng.standard_normal((k, c // groups, r, r)).astype(np.float32)
    args = (stride, padding, 1, groups)
    y = fetch(F.conv2d_forward(put(x, backend), put(wt, backend), None, *args, allow_tf32=True))
    y32 = fetch(F.conv2d_forward(put(x, backend), put(wt, backend), None, *args))
    dy = rng.standard_normal(y.shape).astype(np.float32)
    grads = F.conv2d_backward(
        put(dy, backend), put(x, backend), put(wt, backend), *args, need=(True, True, False), allow_tf32=True
    )
    grads32 = F.conv2d_backward(put(dy, backend), put(x, backend), put(wt, backend), *args, need=(True, True, False))
    ax, aw, ady = np.abs(x), np.abs(wt), np.abs(dy)
    terms = max(c // groups * r * r, k // groups * r * r, n * y.shape[2] * y.shape[3])
    unit = 2 * 2.0**-11 + 2.0**-22 + terms * 2.0**-24
    cases = [("y", y, y32, ref.conv2d_forward(x, wt, None, *args), ref.conv2d_forward(ax, aw, None, *args))]
    (dx, dw, _), (dx32, dw32, _) = grads, grads32
    want_dx, want_dw, _ = ref.conv2d_backward(dy, x, wt, *args, need=(True, True, False))
    abs_dx, abs_dw, _ = ref.conv2d_backward(ady, ax, aw, *args, need=(True, True, False))
    cases += [("dx", fetch(dx), fetch(dx32), want_dx, abs_dx), ("dw", fetch(dw), fetch(dw32), want_dw, abs_dw)]
    for name, got, got32, want, scale in cases:
        assert np.all(np.abs(got - want) <= unit * scale + 1e-30), name
        if backend == "cpu":
            np.testing.assert_array_equal(got, got32, err_msg=name)
        elif gemm and os.environ.get("FASTOPT_CUDA_CONV2D_GATHER", "0") in (
            "",
            "0",
        ):  # the tensor cores did run: TF32 rounding moves some outputs
            assert not np.array_equal(got, got32), name
