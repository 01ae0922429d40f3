"""Random-resized crop, rotation, PCA colour jitter, cutmix, alternating flip and the test-time
views on every backend, against fastopt.reference.augment.

Tolerances (u = 2^-24, float32's unit roundoff; M = max |x| (and |fill|); S = max(H, W)):
- Crop boxes, rotation angles, PCA normals and cutmix boxes are drawn from the same Philox words
  as the reference, and the integers (box sides and corners) through the same double-precision
  polynomials, so they match exactly.
- Bilinear crop and rotation: a kernel forms its source coordinate in float32. Crop: the scale
  h / OH and (o + 0.5) scale - 0.5 are three roundings of values <= S, so the coordinate is off
  by <= 3 u S. Rotation: cos and sin rounded to float32, two products, two sums, values <= 1.5 S:
  <= 6 u S. Bilinear interpolation is continuous and |d value / d coordinate| <= 2 M per axis
  (the clamps and the fill border keep it continuous), so the value moves by <= 2 axes * 2 M *
  6 u S = 24 u S M; the interpolation itself (weights 1 - l rounded, 6 products, 3 sums of
  values <= M with weights summing to 1) adds <= 8 u M. Bound: u M (24 S + 8), checked as
  u M (32 S + 16).
- PCA: y = fl(x + fl(shift)): <= u |shift| + u |x + shift| (+ the reference's libm normals,
  ~1e-16 relative): checked as 2 u (|x| + 2 |shift|) elementwise.
- Cutmix, alternating flip and the views move pixels: bit for bit. Cutmix's soft targets hold
  lam' rounded once to float32. tta_mean: a double sum rounded once: u |mean| + 2^-50 mean |y|.
"""

import math
from pathlib import Path

import numpy as np
import pytest
from bf16_checks import ISAS, assert_isa_copy_agrees
from conftest import assert_bits_independent_of_threads, fetch, put

import fastopt
from fastopt import functional as F
from fastopt.reference import augment as R

U = 2.0**-24
SHAPES = [(1, 1, 1, 1), (3, 3, 8, 9), (2, 1, 1, 7), (4, 3, 5, 1), (5, 2, 32, 32), (0, 3, 4, 4), (2, 0, 4, 4)]


def _seeds(rng):
    return int(rng.integers(0, 2**64, dtype=np.uint64)), int(rng.integers(0, 2**40))


def _bilinear_bound(x, fill=0.0):
    m = max(float(np.abs(x).max(initial=0.0)), abs(fill))
    return U * m * (32 * max(x.shape[2:], default=1) + 16)


# ----------------------------------------------------------------------- the double helpers
def test_polynomials_agree_with_the_c_library():
    rng = np.random.default_rng(0)
    for v in np.concatenate([rng.uniform(-20, 20, 2000), [0.0, -0.28768207245178090, 0.28768207245178090]]):
        want = math.exp(v)
        assert abs(R.exp_d(v) - want) <= 2 * math.ulp(want)
    for v in np.concatenate([rng.uniform(2**-32, 1.0, 2000), rng.uniform(1, 1e6, 200), [1.0, 2**-32, 0.75]]):
        assert abs(R.log_d(v) - math.log(v)) <= 2 * math.ulp(max(abs(math.log(v)), 1e-300)) + 1e-300
    for t in np.concatenate([rng.uniform(-0.5, 1.0, 2000), [0.0, 0.125, 0.25, 0.5, -0.25, 0.75]]):
        s, c = R.sincos_turns(t)
        a = 2 * math.pi * t  # itself off by up to one ulp, which math.sin and math.cos inherit
        assert abs(s - math.sin(a)) <= math.ulp(a) + 4e-16 and abs(c - math.cos(a)) <= math.ulp(a) + 4e-16
    assert R.sincos_turns(0.25) == (1.0, -0.0) and R.sincos_turns(0.5)[1] == -1.0  # quadrants exact


def test_counter_layouts():
    # Op k's block for sample n is Philox at counter (stream k, n, step lo, step hi) (augment.h);
    # the flip's at (15, index lo, index hi, 1).
    seed, step, n = 0x0123456789ABCDEF, 2**33 + 5, 77
    key = [seed & 0xFFFFFFFF, seed >> 32]
    streams = [
        *range(R.STREAM_CROP, R.STREAM_CROP + R.CROP_TRIES),
        R.STREAM_ROTATE,
        R.STREAM_PCA,
        R.STREAM_CUTMIX,
        R.STREAM_FLIP,
    ]
    assert len(set(streams) | {0, 1}) == len(streams) + 2  # disjoint, and from augment_batch's blocks 0 and 1
    for stream in streams[:-1]:
        want = fastopt._C.philox4x32_10([stream, n, step & 0xFFFFFFFF, step >> 32], key)
        assert R.blocks(stream, [n], seed, step)[0].tolist() == list(want)
    index = 2**35 + 3
    top = fastopt._C.philox4x32_10([15, index & 0xFFFFFFFF, index >> 32, 1], key)[0] >> 31
    assert [bool(f) for f in R.alternating_flips(seed, 4, [index])] == [top == 1]
    assert [bool(f) for f in R.alternating_flips(seed, 7, [index])] == [top == 0]


# ------------------------------------------------------------------------ random-resized crop
CROPS = [dict(), dict(scale=(0.5, 1.0), ratio=(0.5, 2.0)), dict(scale=(0.01, 0.05)), dict(scale=(1.5, 2.0))]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("size", [1, 5, (7, 3), 32])
@pytest.mark.parametrize("kw", CROPS)
def test_crop_matches_reference(backend, rng, shape, size, kw):
    seed, step = _seeds(rng)
    x = rng.standard_normal(shape).astype(np.float32)
    y = fetch(F.random_resized_crop(put(x, backend), seed, step, size, **kw))
    want = R.random_resized_crop(x, seed, step, size, **kw)
    assert y.dtype == np.float32 and y.shape == want.shape
    assert np.all(np.abs(y - want) <= _bilinear_bound(x))


def test_crop_is_torch_interpolate_of_the_box(rng):
    torch = pytest.importorskip("torch")
    x = rng.standard_normal((16, 3, 29, 37)).astype(np.float32)
    y = F.random_resized_crop(x, 5, 8, (24, 20))
    for n in range(x.shape[0]):
        top, left, h, w = R.crop_box(5, 8, n, 29, 37)
        box = torch.from_numpy(x[n : n + 1, :, top : top + h, left : left + w].copy())
        want = torch.nn.functional.interpolate(
            box, size=(24, 20), mode="bilinear", align_corners=False, antialias=False
        )[0].numpy()
        np.testing.assert_allclose(y[n], want, rtol=0, atol=_bilinear_bound(x))


def test_crop_fallback_is_torchvisions_center_crop(backend, rng):
    x = rng.standard_normal((6, 2, 12, 12)).astype(np.float32)
    # No box of 1.5x the area fits: the whole image (ratio 1 lies in range), resized to itself: a copy.
    np.testing.assert_array_equal(fetch(F.random_resized_crop(put(x, backend), 1, 2, 12, scale=(1.5, 2.0))), x)
    # Ratio range above the image's: the full width, height rint(12 / 2), centered.
    for n in range(6):
        assert R.crop_box(1, 2, n, 12, 12, (1.5, 2.0), (2.0, 3.0)) == (3, 0, 6, 12)
    y = fetch(F.random_resized_crop(put(x, backend), 1, 2, (6, 12), scale=(1.5, 2.0), ratio=(2.0, 3.0)))
    np.testing.assert_array_equal(y, x[:, :, 3:9, :])
    # Below the range: the full height, width rint(12 * 0.25) = 3, left (12 - 3) // 2 = 4.
    assert R.crop_box(1, 2, 0, 12, 12, (1.5, 2.0), (0.2, 0.25)) == (0, 4, 12, 3)


def test_crop_box_statistics():
    boxes = np.array([R.crop_box(3, 4, n, 64, 64) for n in range(3000)])
    top, left, h, w = boxes.T
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 64).all() and (left + w <= 64).all()
    # Sides of an area >= 0.08 * 64^2 and ratio in [3/4, 4/3] are >= 15.6 before rounding, so
    # rounding each by <= 1/2 moves the ratio by a factor within (1 +- 1 / 31.2)^2.
    assert (w / h >= 3 / 4 * (1 - 1 / 31.2) ** 2).all() and (w / h <= 4 / 3 * (1 + 1 / 31.2) ** 2).all()
    # The distribution is torchvision's: its algorithm on NumPy's generator gives the same means.
    sim = np.random.default_rng(0)
    areas, logs = [], []
    for _ in range(6000):
        for _ in range(10):
            a = 64**2 * sim.uniform(0.08, 1.0)
            r = math.exp(sim.uniform(math.log(3 / 4), math.log(4 / 3)))
            sw, sh = round(math.sqrt(a * r)), round(math.sqrt(a / r))
            if 0 < sw <= 64 and 0 < sh <= 64:
                areas.append(sw * sh / 64**2)
                logs.append(math.log(sw / sh))
                break
    area = h * w / 64**2
    for ours, theirs in [(area, np.array(areas)), (np.log(w / h), np.array(logs))]:
        sd = math.sqrt(ours.var() / ours.size + theirs.var() / theirs.size)
        assert abs(ours.mean() - theirs.mean()) < 6 * sd
    # placed uniformly: top / (64 - h) has mean 1/2 (variance <= 1/4 each)
    for pos, side in [(top, h), (left, w)]:
        free = side < 64
        assert abs(np.mean(pos[free] / (64 - side[free])) - 0.5) < 6 * math.sqrt(0.25 / free.sum())


# ------------------------------------------------------------------------------- rotation
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("degrees", [30, 180, (-10, 45), (90, 90)])
@pytest.mark.parametrize("fill", [0.0, -0.75])
def test_rotation_matches_reference(backend, rng, shape, degrees, fill):
    seed, step = _seeds(rng)
    x = rng.standard_normal(shape).astype(np.float32)
    y = fetch(F.random_rotation(put(x, backend), seed, step, degrees, fill=fill))
    lo, hi = (-degrees, degrees) if np.isscalar(degrees) else degrees
    want = R.random_rotation(x, seed, step, lo, hi, fill)
    assert y.dtype == np.float32 and y.shape == shape
    assert np.all(np.abs(y - want) <= _bilinear_bound(x, fill))


@pytest.mark.parametrize("shape", [(3, 2, 7, 7), (2, 1, 8, 8), (1, 3, 1, 1)])
def test_right_angles_are_exact(backend, rng, shape):
    # Counter-clockwise like torchvision.rotate: 90 degrees is numpy/torch rot90 with k = 1.
    x = rng.standard_normal(shape).astype(np.float32)
    for angle, k in [(90, 1), (-90, -1), (180, 2), (0, 0)]:
        y = fetch(F.random_rotation(put(x, backend), 3, 4, (angle, angle)))
        np.testing.assert_array_equal(y, np.rot90(x, k, axes=(2, 3)))
    x = rng.standard_normal((2, 3, 5, 8)).astype(np.float32)  # not square: 180 degrees is both flips
    np.testing.assert_array_equal(fetch(F.random_rotation(put(x, backend), 3, 4, (180, 180))), x[:, :, ::-1, ::-1])


def test_rotation_reference_is_grid_sample_with_fill(rng):
    torch = pytest.importorskip("torch")
    x = rng.standard_normal((6, 2, 9, 13))
    fill = 0.5
    want = R.random_rotation(x, 7, 1, -40, 40, fill)
    cy, cx = 4.0, 6.0
    oy, ox = np.meshgrid(np.arange(9.0), np.arange(13.0), indexing="ij")
    for n in range(6):
        a = math.radians(R.rotation_angle(7, 1, n, -40, 40))
        sx = cx + math.cos(a) * (ox - cx) - math.sin(a) * (oy - cy)
        sy = cy + math.sin(a) * (ox - cx) + math.cos(a) * (oy - cy)
        grid = torch.from_numpy(np.stack([(2 * sx + 1) / 13 - 1, (2 * sy + 1) / 9 - 1], -1)[None])
        img = torch.from_numpy(x[n : n + 1])
        sample = torch.nn.functional.grid_sample(img, grid, "bilinear", "zeros", align_corners=False)
        mask = torch.nn.functional.grid_sample(torch.ones_like(img), grid, "bilinear", "zeros", align_corners=False)
        np.testing.assert_allclose(want[n], (sample + (1 - mask) * fill)[0].numpy(), atol=1e-12)  # torchvision's fill


def test_rotation_angles_are_uniform():
    angles = np.array([R.rotation_angle(9, 2, n, -30, 30) for n in range(4000)])
    assert -30 <= angles.min() < -29.9 and 29.9 < angles.max() < 30
    assert abs(angles.mean()) < 6 * 60 / math.sqrt(12 * 4000)


# ------------------------------------------------------------------------------ PCA jitter
@pytest.mark.parametrize(
    "shape", [(1, 1, 1, 1), (3, 3, 8, 9), (2, 2, 1, 7), (4, 4, 5, 1), (0, 3, 4, 4), (6, 3, 32, 32)]
)
@pytest.mark.parametrize("sigma", [0.0, 0.1, 1.0])
def test_pca_matches_reference(backend, rng, shape, sigma):
    seed, step = _seeds(rng)
    x = rng.standard_normal(shape).astype(np.float32)
    c = shape[1]
    vals, vecs = np.linalg.eigh(np.cov(rng.standard_normal((c, 50))) + np.eye(c))
    y = fetch(F.pca_jitter(put(x, backend), seed, step, vals, vecs, sigma))
    want = R.pca_jitter(x, seed, step, vals, vecs, sigma)
    assert y.dtype == np.float32 and y.shape == shape
    assert np.all(np.abs(y - want) <= 2 * U * (np.abs(x) + 2 * np.abs(want - x)) + 1e-30)
    if sigma == 0:
        np.testing.assert_array_equal(y, x)


def test_pca_normals_are_standard_normal(backend):
    # Identity eigenvectors, unit eigenvalues, sigma 1: each channel's shift is one normal z_k.
    n = 4000
    y = fetch(F.pca_jitter(put(np.zeros((n, 4, 1, 1), np.float32), backend), 21, 5, np.ones(4), np.eye(4), 1.0))
    z = y.reshape(n, 4)
    want = np.stack([R.normals(21, 5, i) for i in range(n)])
    assert np.all(np.abs(z - want) <= 2 * U * np.abs(want) + 1e-15)  # float32 of the same Box-Muller draws
    assert np.all(np.abs(z.mean(axis=0)) < 6 / math.sqrt(n))
    assert np.all(np.abs(z.std(axis=0) - 1) < 6 * math.sqrt(0.5 / n))
    assert np.all(np.abs(np.mean(np.abs(z) < 1, axis=0) - 0.6827) < 6 * math.sqrt(0.22 / n))
    corr = np.corrcoef(z.T)
    assert np.all(np.abs(corr - np.eye(4)) < 6 / math.sqrt(n))


def test_channel_pca(rng):
    mix = np.array([[1.0, 0.5, 0.0], [0.0, 1.0, 0.2], [0.3, 0.0, 1.0]])
    x = np.einsum("ck,nkhw->nchw", mix, rng.standard_normal((50, 3, 6, 7))).astype(np.float32) + 2
    vals, vecs = F.channel_pca(x, chunk=7)
    pixels = np.moveaxis(x.astype(np.float64), 1, 0).reshape(3, -1)
    cov = np.cov(pixels, bias=True)
    np.testing.assert_allclose(vecs @ np.diag(vals) @ vecs.T, cov, atol=1e-9)
    assert (vals >= 0).all()


# ---------------------------------------------------------------------------------- cutmix
@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (2, 3, 8, 9), (5, 2, 32, 32), (7, 1, 5, 1), (0, 3, 4, 4)])
@pytest.mark.parametrize("lam", [0.0, 0.3, 0.5, 1.0])
@pytest.mark.parametrize("dtype", [np.int32, np.int64])
def test_cutmix_matches_reference(backend, rng, shape, lam, dtype):
    seed, step = _seeds(rng)
    k = 10
    x = rng.standard_normal(shape).astype(np.float32)
    labels = rng.integers(0, k, shape[0]).astype(dtype)
    y, soft = (fetch(v) for v in F.cutmix(put(x, backend), put(labels, backend), lam, k, seed, step))
    want_y, want_soft = R.cutmix(x, labels, lam, k, seed, step)
    assert y.dtype == np.float32 and y.shape == shape and soft.shape == (shape[0], k)
    np.testing.assert_array_equal(y, want_y)
    np.testing.assert_allclose(soft, want_soft, rtol=0, atol=U)
    same = labels == labels[::-1]
    np.testing.assert_array_equal(soft[same, labels[same]], 1.0)


def test_cutmix_box_is_timms(backend):
    # Sample n holds the value n: the pasted box reads N - 1 - n, which reveals it.
    n, h, w = 6, 20, 30
    x = np.broadcast_to(np.arange(n, dtype=np.float32)[:, None, None, None], (n, 2, h, w)).copy()
    labels = np.arange(n)
    for step in range(20):
        lam = (step + 0.5) / 20
        y, soft = (fetch(v) for v in F.cutmix(put(x, backend), put(labels, backend), lam, n, 11, step))
        y0, y1, x0, x1, lam_c = R.cutmix_box(11, step, lam, h, w)
        inside = np.zeros((h, w), bool)
        inside[y0:y1, x0:x1] = True
        np.testing.assert_array_equal(y[0, 0] == n - 1, inside)
        cut_h, cut_w = int(h * math.sqrt(1 - lam)), int(w * math.sqrt(1 - lam))
        assert y1 - y0 <= cut_h and x1 - x0 <= cut_w  # clipped at the border, else 2 (cut // 2)
        assert soft[0, 0] == np.float32(lam_c) and soft[0, n - 1] == np.float32(1 - lam_c)
        assert lam_c == 1 - inside.mean()


def test_cutmix_rejects_out_of_range_labels():
    with pytest.raises(ValueError, match=r"^labels: class index 5 at row 1 is outside \[0, 3\)"):
        F.cutmix(np.zeros((2, 1, 4, 4), np.float32), np.array([0, 5]), 0.5, 3, 1, 2)


@pytest.mark.gpu
def test_gpu_cutmix_out_of_range_label_gives_nan_rows():
    _, soft = F.cutmix(
        fastopt.to_device(np.zeros((4, 1, 3, 3), np.float32)), fastopt.to_device(np.array([0, 1, 3, 2])), 0.5, 3, 1, 2
    )
    assert np.isnan(fetch(soft)[[1, 2]]).all() and not np.isnan(fetch(soft)[[0, 3]]).any()


# ------------------------------------------------------------------------ alternating flip
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [np.int32, np.int64])
def test_alternating_flip_matches_reference(backend, rng, shape, dtype):
    seed, epoch = _seeds(rng)
    x = rng.standard_normal(shape).astype(np.float32)
    indices = rng.integers(0, 2**31 - 1, shape[0]).astype(dtype)
    y = fetch(F.alternating_flip(put(x, backend), put(indices, backend), seed, epoch))
    np.testing.assert_array_equal(y, R.alternating_flip(x, indices, seed, epoch))


def test_alternating_flip_alternates_per_sample(backend):
    n = 4000
    x = np.arange(5, dtype=np.float32).reshape(1, 1, 1, 5).repeat(n, axis=0)
    indices = np.arange(10**9, 10**9 + n, dtype=np.int64)
    mirrored = []
    for epoch in range(4):
        y = fetch(F.alternating_flip(put(x, backend), put(indices, backend), 8, epoch))
        flipped = (y == x[..., ::-1]).all(axis=(1, 2, 3))
        assert (flipped | (y == x).all(axis=(1, 2, 3))).all()
        mirrored.append(flipped)
    assert abs(mirrored[0].mean() - 0.5) < 6 * math.sqrt(0.25 / n)
    assert (
        (mirrored[0] != mirrored[1]).all() and (mirrored[0] == mirrored[2]).all() and (mirrored[1] == mirrored[3]).all()
    )
    # The decision belongs to the data-set index, not the batch position.
    order = np.random.default_rng(0).permutation(n)
    y = fetch(F.alternating_flip(put(x, backend), put(indices[order], backend), 8, 0))
    np.testing.assert_array_equal((y == x[..., ::-1]).all(axis=(1, 2, 3)), mirrored[0][order])


# ------------------------------------------------------------------------ test-time views
@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (3, 3, 8, 9), (2, 2, 5, 1), (4, 3, 32, 32), (0, 3, 4, 4)])
@pytest.mark.parametrize("mode", ["flip", "five_crop", "ten_crop"])
@pytest.mark.parametrize("size,pad", [(None, 0), (None, 2), (1, 0), ((1, 1), 1)])
def test_views_match_reference(backend, rng, shape, mode, size, pad):
    x = rng.standard_normal(shape).astype(np.float32)
    y = fetch(F.tta_views(put(x, backend), mode, size=size, pad=pad, fill=-0.5))
    v = F.tta_num_views(mode)
    np.testing.assert_array_equal(y, R.tta_views(x, mode, size, pad, -0.5).astype(np.float32))
    assert y.shape[0] == v * shape[0]
    out = rng.standard_normal((y.shape[0], 7)).astype(np.float32)
    mean = fetch(F.tta_mean(put(out, backend), v))
    want = R.tta_mean(out, v)
    assert mean.shape == (shape[0], 7)
    assert np.all(np.abs(mean - want) <= U * np.abs(want) + 2**-50 * np.abs(out).max(initial=0))


def test_views_are_torchvisions_crops():
    x = np.arange(2 * 1 * 6 * 7, dtype=np.float32).reshape(2, 1, 6, 7)
    y = F.tta_views(x, "ten_crop", size=(3, 4))
    tl, tr, bl, br, center = (
        x[..., :3, :4],
        x[..., :3, 3:],
        x[..., 3:, :4],
        x[..., 3:, 3:],
        x[..., 2:5, 2:6],
    )  # round(1.5) = 2, round(1.5) = 2
    m = x[..., ::-1]
    # the mirrored image's center crop starts at column 2 too, so it is not the center crop mirrored
    want = [tl, tr, bl, br, center, m[..., :3, :4], m[..., :3, 3:], m[..., 3:, :4], m[..., 3:, 3:], m[..., 2:5, 2:6]]
    np.testing.assert_array_equal(y, np.concatenate(want))
    # pad-and-crop shifts: five_crop with pad 1 holds the image shifted by one pixel diagonally
    z = F.tta_views(x, "five_crop", pad=1)
    np.testing.assert_array_equal(z[0, 0, 1:, 1:], x[0, 0, :-1, :-1])
    np.testing.assert_array_equal(z[8:], x)  # the center view of pad-and-crop is the image


def test_flip_tta_averages_logits():
    x = np.random.default_rng(1).standard_normal((5, 2, 4, 4)).astype(np.float32)
    views = F.tta_views(x, "flip")
    np.testing.assert_array_equal(views[5:], x[..., ::-1])
    mean = F.tta_mean(views, 2)
    np.testing.assert_allclose(mean, (x.astype(np.float64) + x[..., ::-1]) / 2, rtol=U, atol=0)


# --------------------------------------------------------------------------- determinism
def _all_ops(backend, seed=5, step=9):
    rng = np.random.default_rng(17)
    x = put(rng.standard_normal((9, 3, 21, 26)).astype(np.float32), backend)
    labels = put(rng.integers(0, 10, 9), backend)
    vals, vecs = np.linalg.eigh(np.cov(rng.standard_normal((3, 40))))
    return [
        F.random_resized_crop(x, seed, step, (17, 19)),
        F.random_rotation(x, seed, step, 35, fill=0.25),
        F.pca_jitter(x, seed, step, vals, vecs, 0.3),
        *F.cutmix(x, labels, 0.6, 10, seed, step),
        F.alternating_flip(x, put(np.arange(100, 109), backend), seed, step),
        F.tta_views(x, "ten_crop", size=18, pad=2),
        F.tta_mean(F.tta_views(x, "five_crop", pad=1), 5),
    ]


def test_same_draws_reproduce_and_other_seeds_and_steps_differ(backend):
    a = [fetch(v) for v in _all_ops(backend)]
    for u, v in zip(a, _all_ops(backend)):
        np.testing.assert_array_equal(u, fetch(v))
    for seed, step in [(6, 9), (5, 10), (5 + 2**32, 9), (5, 9 + 2**32)]:
        b = [fetch(v) for v in _all_ops(backend, seed, step)]
        for i in range(4):  # the random ops: crop, rotation, PCA, cutmix
            assert (a[i] != b[i]).any(), (i, seed, step)


def test_independent_of_thread_count(tmp_path):
    here = str(Path(__file__).resolve().parent)
    assert_bits_independent_of_threads(
        tmp_path,
        f"sys.path.insert(0, {here!r})\n"
        "from test_augment_planes import _all_ops\n"
        "out = [np.asarray(v) for v in _all_ops('cpu')]\n",
    )


@pytest.mark.parametrize("isa", ISAS)
def test_every_isa_copy_gives_the_same_bits(tmp_path, isa):
    assert_isa_copy_agrees(tmp_path, isa, "test_augment_planes", "_all_ops", "cpu")


@pytest.mark.gpu
def test_gpu_equals_cpu_bit_for_bit():
    for i, (g, c) in enumerate(zip(_all_ops("cuda"), _all_ops("cpu"))):
        np.testing.assert_array_equal(fetch(g), c, err_msg=str(i))


# ---------------------------------------------------------------------------- bad input
X = np.zeros((2, 3, 4, 4), np.float32)
L = np.array([0, 1])


@pytest.mark.parametrize(
    "call,exc,match",
    [
        (lambda: F.random_resized_crop(X.astype(np.float64), 1, 0, 4), TypeError, r"^x: expected a float32 array"),
        (lambda: F.random_resized_crop(X[0], 1, 0, 4), ValueError, r"^x: expected shape \(N, C, H, W\)"),
        (lambda: F.random_resized_crop(X, -1, 0, 4), ValueError, r"^seed: "),
        (lambda: F.random_resized_crop(X, 1, 0, 0), ValueError, r"^size: must be an integer in \[1, 2\^24\]"),
        (lambda: F.random_resized_crop(X, 1, 0, 4.0), TypeError, r"^size: expected an integer"),
        (lambda: F.random_resized_crop(X, 1, 0, 4, scale=(0.0, 1.0)), ValueError, r"^scale: expected finite bounds"),
        (lambda: F.random_resized_crop(X, 1, 0, 4, scale=(0.9, 0.5)), ValueError, r"^scale: "),
        (lambda: F.random_resized_crop(X, 1, 0, 4, scale=0.5), TypeError, r"^scale: expected a pair"),
        (lambda: F.random_resized_crop(X, 1, 0, 4, ratio=(1.0, float("inf"))), ValueError, r"^ratio: "),
        (lambda: F.random_resized_crop(X, 1, 0, 4, ratio=(True, 2.0)), TypeError, r"^ratio\[0\]: expected a real"),
        (lambda: F.random_resized_crop(np.zeros((1, 1, 0, 3), np.float32), 1, 0, 4), ValueError, r"^x: cannot crop"),
        (lambda: F.random_rotation(X, 1, 0, -5), ValueError, r"^degrees: must be"),
        (lambda: F.random_rotation(X, 1, 0, (10, 5)), ValueError, r"^degrees: expected -360 <= low <= high <= 360"),
        (lambda: F.random_rotation(X, 1, 0, 400), ValueError, r"^degrees: "),
        (lambda: F.random_rotation(X, 1, 0, "5"), TypeError, r"^degrees: expected a real"),
        (lambda: F.random_rotation(X, 1, 0, 5, fill=float("nan")), ValueError, r"^fill: must be a finite"),
        (lambda: F.pca_jitter(X, 1, 0, np.ones(2), np.eye(2)), ValueError, r"^eigvals: expected 3 values"),
        (lambda: F.pca_jitter(X, 1, 0, np.ones(3), np.eye(2)), ValueError, r"^eigvecs: expected a \(3, 3\) matrix"),
        (lambda: F.pca_jitter(X, 1, 0, np.ones(3), np.ones(9)), ValueError, r"^eigvecs: expected a square matrix"),
        (lambda: F.pca_jitter(X, 1, 0, [1, -1, 1], np.eye(3)), ValueError, r"^eigvals: must be finite and >= 0"),
        (lambda: F.pca_jitter(X, 1, 0, ["a", 1, 1], np.eye(3)), TypeError, r"^eigvals: expected real numbers"),
        (lambda: F.pca_jitter(X, 1, 0, np.ones(3), np.eye(3), sigma=-1), ValueError, r"^sigma: must be finite"),
        (
            lambda: F.pca_jitter(np.zeros((1, 5, 2, 2), np.float32), 1, 0, np.ones(5), np.eye(5)),
            ValueError,
            r"^x: pca_jitter takes 1 to 4 channels",
        ),
        (lambda: F.cutmix(X, L, 1.5, 2, 1, 0), ValueError, r"^lam: must lie in \[0, 1\]"),
        (lambda: F.cutmix(X, L.astype(np.float32), 0.5, 2, 1, 0), TypeError, r"^labels: expected an int32 or int64"),
        (lambda: F.cutmix(X, np.array([0, 1, 1]), 0.5, 2, 1, 0), ValueError, r"^labels: expected shape \(2,\)"),
        (lambda: F.cutmix(X, L, 0.5, 0, 1, 0), ValueError, r"^num_classes: must be >= 1"),
        (lambda: F.cutmix(X, L, 0.5, 2, 1, -1), ValueError, r"^step: "),
        (lambda: F.alternating_flip(X, L.astype(np.float64), 1, 0), TypeError, r"^indices: expected an int32 or int64"),
        (lambda: F.alternating_flip(X, np.arange(3), 1, 0), ValueError, r"^indices: expected shape \(2,\)"),
        (lambda: F.alternating_flip(X, L, 1, True), TypeError, r"^epoch: expected an integer, got bool"),
        (lambda: F.tta_views(X, "six_crop"), ValueError, r"^mode: expected one of 'flip', 'five_crop', 'ten_crop'"),
        (lambda: F.tta_views(X, 3), TypeError, r"^mode: "),
        (lambda: F.tta_views(X, "five_crop", size=5), ValueError, r"^size: the views \(5, 5\) are larger"),
        (lambda: F.tta_views(X, "flip", pad=-1), ValueError, r"^pad: "),
        (lambda: F.tta_views(X[0], "flip"), ValueError, r"^x: expected shape \(N, C, H, W\)"),
        (lambda: F.tta_views(X.tolist(), "flip"), TypeError, r"^x: expected an array, got list"),
        (
            lambda: F.tta_mean(np.zeros((5, 3), np.float32), 2),
            ValueError,
            r"^views: 2 does not divide y's first dimension 5",
        ),
        (lambda: F.tta_mean(np.zeros((4, 3), np.float32), 0), ValueError, r"^views: must be an integer in \[1, 10\]"),
        (lambda: F.tta_mean(np.zeros((4, 3), np.float32), 2.0), TypeError, r"^views: expected an integer"),
    ],
)
def test_bad_arguments(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


@pytest.mark.gpu
def test_mixed_devices_are_an_error():
    with pytest.raises(ValueError, match=r"^indices is on cpu but x is on cuda:0"):
        F.alternating_flip(fastopt.to_device(X), L, 1, 0)
    with pytest.raises(ValueError, match=r"^labels is on cpu but x is on cuda:0"):
        F.cutmix(fastopt.to_device(X), L, 0.5, 2, 1, 0)
