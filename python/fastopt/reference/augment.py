"""float64 NumPy reference of the augment family, the Philox draws reproduced exactly.

Sample n of step `step` under the 64-bit seed draws 8 words: draw d is word d % 4 of the
Philox4x32-10 block with counter (d // 4, n, low 32 bits of step, high 32 bits of step) and key
(low, high 32 bits of seed) (cpp/include/fastopt/augment.h):
  d = 0, 1  dy, dx  = uniform_int(w, 2 * max_shift + 1) - max_shift
  d = 2     mirror  = flip and the top bit of w is set
  d = 3, 4  b = brightness * r, c = 1 + contrast * r, r = uniform_pm1(w), each in float32 as the
            kernels form them (they are parameters; the pixels are then computed in float64)
  d = 5, 6  cy, cx  = uniform_int(w, H), uniform_int(w, W)
uniform_int(w, m) = (w * m) >> 32; uniform_pm1(w) = (w >> 8) * 2^-23 - 1.
"""

import math

import numpy as np

from .dropout import philox4x32_10


def uniform_int(w, m):
    return (int(w) * int(m)) >> 32


def uniform_pm1(w):
    return np.float32((int(w) >> 8) * 2.0**-23 - 1.0)  # exact in float32


def sample_words(seed, step, n):
    """The 8 words of sample n (uint32 array)."""
    seed, step = int(seed), int(step)
    counters = np.array([[d, n, step & 0xFFFFFFFF, step >> 32] for d in (0, 1)], np.uint64)
    return philox4x32_10(counters, (seed & 0xFFFFFFFF, seed >> 32)).reshape(-1)


def sample_params(seed, step, n, height, width, max_shift=0, flip=False, cutout=0, brightness=0.0, contrast=0.0):
    """dict(dy, dx, mirror, scale, bias, y0, x0) of sample n; (y0, x0) is the cutout square's
    top-left corner (cy - cutout // 2, cx - cutout // 2), possibly outside the image."""
    w = sample_words(seed, step, n)
    b, c = np.float32(brightness), np.float32(contrast)
    return dict(
        dy=uniform_int(w[0], 2 * max_shift + 1) - max_shift,
        dx=uniform_int(w[1], 2 * max_shift + 1) - max_shift,
        mirror=bool(flip) and bool(w[2] >> 31),
        bias=np.float32(b * uniform_pm1(w[3])),
        scale=np.float32(np.float32(1) + c * uniform_pm1(w[4])),
        y0=uniform_int(w[5], height) - cutout // 2,
        x0=uniform_int(w[6], width) - cutout // 2,
    )


def augment_batch(x, seed, step, max_shift=0, flip=False, cutout=0, brightness=0.0, contrast=0.0, fill=0.0):
    x = np.asarray(x, np.float64)
    n_samples, _, height, width = x.shape
    y = np.empty_like(x)
    for n in range(n_samples):
        p = sample_params(seed, step, n, height, width, max_shift, flip, cutout, brightness, contrast)
        src = x[n, :, :, ::-1] if p["mirror"] else x[n]
        padded = np.pad(src, ((0, 0), (max_shift, max_shift), (max_shift, max_shift)), constant_values=fill)
        top, left = max_shift + p["dy"], max_shift + p["dx"]
        out = padded[:, top : top + height, left : left + width]
        if brightness > 0 or contrast > 0:
            out = float(p["scale"]) * out + float(p["bias"])
        y0, x0 = p["y0"], p["x0"]
        out[:, max(y0, 0) : max(y0 + cutout, 0), max(x0, 0) : max(x0 + cutout, 0)] = fill
        y[n] = out
    return y


def mixup(x, labels, lam, num_classes):
    """(x_mixed, soft_targets) in float64: sample n mixed with sample N - 1 - n."""
    x = np.asarray(x, np.float64)
    labels = np.asarray(labels)
    onehot = np.zeros((labels.shape[0], num_classes))
    onehot[np.arange(labels.shape[0]), labels] = 1.0
    return lam * x + (1 - lam) * x[::-1], lam * onehot + (1 - lam) * onehot[::-1]


# ----------------------------------------------------------- the other augmentations
# Each op's draws: one Philox block per sample, counter (stream, n, step lo, step hi) (cutmix:
# n = 0; alternating flip: (15, index lo, index hi, 1)); layout and formulas in augment.h. The
# parameters that decide integers (crop boxes) use exp_d and log_d below, the kernels' double
# polynomials op for op (Python floats round every product and sum, never fuse), so the boxes
# match exactly; the pixel values are then computed in float64 from exact trigonometry.

STREAM_CROP, CROP_TRIES, STREAM_ROTATE, STREAM_PCA, STREAM_CUTMIX, STREAM_FLIP = 2, 10, 12, 13, 14, 15
_LN2_HI, _LN2_LO = 6.93147180369123816490e-01, 1.90821492927058770002e-10


def blocks(stream, ns, seed, step):
    """The Philox blocks (len(ns), 4) of samples ns in `stream` (one, or one per sample) at (seed, step)."""
    seed, step = int(seed), int(step)
    ns = np.asarray(ns, np.uint64).reshape(-1)
    counters = np.zeros((ns.size, 4), np.uint64)
    counters[:, 0], counters[:, 1] = stream, ns & np.uint64(0xFFFFFFFF)
    counters[:, 2], counters[:, 3] = step & 0xFFFFFFFF, step >> 32
    return philox4x32_10(counters, (seed & 0xFFFFFFFF, seed >> 32))


def unit(w):
    return int(w) * 2.0**-32


def _horner(c, t):
    p = c[-1]
    for k in range(len(c) - 2, -1, -1):
        p = p * t + c[k]
    return p


_EXP = [1.0 / math.factorial(k) for k in range(14)]
_LOG = [2.0 / (2 * k + 1) for k in range(11)]
_SIN = [(-1.0) ** k / math.factorial(2 * k + 1) for k in range(9)]
_COS = [(-1.0) ** k / math.factorial(2 * k) for k in range(10)]


def exp_d(x):
    k = float(round(x * 1.4426950408889634))  # round: half to even, as rint
    r = (x - k * _LN2_HI) - k * _LN2_LO
    return math.ldexp(_horner(_EXP, r), int(k))


def log_d(x):
    m, e = math.frexp(x)
    if m < 0.70710678118654752:
        m, e = m * 2.0, e - 1
    s = (m - 1.0) / (m + 1.0)
    return e * _LN2_HI + (e * _LN2_LO + s * _horner(_LOG, s * s))


def sincos_turns(t):
    """(sin, cos) of 2 pi t, the kernels' polynomials."""
    t4 = t * 4.0
    q = float(round(t4))
    phi = (t4 - q) * 1.5707963267948966
    p2 = phi * phi
    s, c = phi * _horner(_SIN, p2), _horner(_COS, p2)
    return [(s, c), (c, -s), (-s, -c), (-c, s)][int(q) & 3]


def crop_box(seed, step, n, height, width, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
    """(top, left, h, w) of sample n: torchvision's RandomResizedCrop.get_params on these draws."""
    area = float(height * width)
    (s0, s1), (r0, r1) = (float(v) for v in scale), (float(v) for v in ratio)
    l0, l1 = log_d(r0), log_d(r1)
    for w in blocks(STREAM_CROP + np.arange(CROP_TRIES), [n] * CROP_TRIES, seed, step):
        target = area * (s0 + (s1 - s0) * unit(w[0]))
        aspect = exp_d(l0 + (l1 - l0) * unit(w[1]))
        cw, ch = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < cw <= width and 0 < ch <= height:
            return uniform_int(w[2], height - ch + 1), uniform_int(w[3], width - cw + 1), ch, cw
    ch, cw = height, width
    if width / height < r0:
        ch = round(width / r0)
    elif width / height > r1:
        cw = round(height * r1)
    ch, cw = max(ch, 1), max(cw, 1)
    return (height - ch) // 2, (width - cw) // 2, ch, cw


def _resize_bilinear(img, out_h, out_w):
    """img (C, h, w) resized like torch's interpolate(mode='bilinear', align_corners=False)."""

    def taps(size, out):
        src = np.maximum((np.arange(out) + 0.5) * (size / out) - 0.5, 0.0)
        i0 = np.floor(src).astype(np.int64)
        return i0, np.minimum(i0 + 1, size - 1), src - i0

    y0, y1, ly = taps(img.shape[1], out_h)
    x0, x1, lx = taps(img.shape[2], out_w)
    ly, lx = ly[:, None], lx[None, :]
    top = img[:, y0][:, :, x0] * (1 - lx) + img[:, y0][:, :, x1] * lx
    bottom = img[:, y1][:, :, x0] * (1 - lx) + img[:, y1][:, :, x1] * lx
    return top * (1 - ly) + bottom * ly


def random_resized_crop(x, seed, step, size, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
    x = np.asarray(x, np.float64)
    n_samples, channels, height, width = x.shape
    out_h, out_w = (size, size) if np.isscalar(size) else size
    y = np.empty((n_samples, channels, out_h, out_w))
    for n in range(n_samples):
        top, left, h, w = crop_box(seed, step, n, height, width, scale, ratio)
        y[n] = _resize_bilinear(x[n, :, top : top + h, left : left + w], out_h, out_w)
    return y


def rotation_angle(seed, step, n, lo, hi):
    """Sample n's angle in degrees, uniform in [lo, hi)."""
    return lo + (hi - lo) * unit(blocks(STREAM_ROTATE, [n], seed, step)[0, 0])


def random_rotation(x, seed, step, lo, hi, fill=0.0):
    """Each sample rotated counter-clockwise about its center ((W - 1) / 2, (H - 1) / 2), bilinear
    over the image extended by fill (torchvision's rotate with a fill value)."""
    x = np.asarray(x, np.float64)
    n_samples, channels, height, width = x.shape
    oy, ox = np.meshgrid(np.arange(height, dtype=np.float64), np.arange(width, dtype=np.float64), indexing="ij")
    cy, cx = (height - 1) / 2, (width - 1) / 2
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=fill)  # index + 1
    y = np.empty_like(x)
    for n in range(n_samples):
        a = math.radians(rotation_angle(seed, step, n, lo, hi))
        c, s = math.cos(a), math.sin(a)
        sx = cx + c * (ox - cx) - s * (oy - cy)
        sy = cy + s * (ox - cx) + c * (oy - cy)
        y0, x0 = np.floor(sy), np.floor(sx)
        ly, lx = sy - y0, sx - x0
        # Taps beyond the 1-pixel border read fill: clip them onto it.
        iy = [np.clip(y0 + d + 1, 0, height + 1).astype(np.int64) for d in (0, 1)]
        ix = [np.clip(x0 + d + 1, 0, width + 1).astype(np.int64) for d in (0, 1)]
        p = padded[n]
        y[n] = (1 - ly) * ((1 - lx) * p[:, iy[0], ix[0]] + lx * p[:, iy[0], ix[1]]) + ly * (
            (1 - lx) * p[:, iy[1], ix[0]] + lx * p[:, iy[1], ix[1]]
        )
    return y


def normals(seed, step, n):
    """Sample n's 4 standard normals (Box-Muller on its pca block), float64 from the C library."""
    w = blocks(STREAM_PCA, [n], seed, step)[0]
    z = []
    for a, b in ((w[0], w[1]), (w[2], w[3])):
        r = math.sqrt(-2.0 * math.log((int(a) + 1) * 2.0**-32))
        z += [r * math.cos(2 * math.pi * unit(b)), r * math.sin(2 * math.pi * unit(b))]
    return np.array(z)


def pca_shift(seed, step, n, eigvals, eigvecs, sigma):
    """AlexNet's per-channel shift of sample n: eigvecs @ (alpha * eigvals), alpha = sigma z."""
    eigvals = np.asarray(eigvals, np.float64)
    return np.asarray(eigvecs, np.float64) @ (sigma * normals(seed, step, n)[: eigvals.size] * eigvals)


def pca_jitter(x, seed, step, eigvals, eigvecs, sigma=0.1):
    x = np.asarray(x, np.float64)
    shifts = (
        np.stack([pca_shift(seed, step, n, eigvals, eigvecs, sigma) for n in range(x.shape[0])])
        if x.shape[0]
        else np.zeros((0, x.shape[1]))
    )
    return x + shifts[:, :, None, None]


def cutmix_box(seed, step, lam, height, width):
    """timm's rand_bbox: (y0, y1, x0, x1) and the area-corrected lam."""
    w = blocks(STREAM_CUTMIX, [0], seed, step)[0]
    cut = math.sqrt(1.0 - lam)
    ch, cw = int(height * cut), int(width * cut)
    cy, cx = uniform_int(w[0], height), uniform_int(w[1], width)
    y0, y1 = np.clip([cy - ch // 2, cy + ch // 2], 0, height)
    x0, x1 = np.clip([cx - cw // 2, cx + cw // 2], 0, width)
    return int(y0), int(y1), int(x0), int(x1), 1.0 - (y1 - y0) * (x1 - x0) / (height * width)


def cutmix(x, labels, lam, num_classes, seed, step):
    """(x_mixed, soft_targets): the box of the flipped batch pasted into every sample."""
    x = np.asarray(x, np.float64)
    y0, y1, x0, x1, lam = cutmix_box(seed, step, lam, x.shape[2], x.shape[3])
    y = x.copy()
    y[:, :, y0:y1, x0:x1] = x[::-1, :, y0:y1, x0:x1]
    return y, mixup(x, labels, lam, num_classes)[1]


def alternating_flips(seed, epoch, indices):
    """Whether each data-set index is mirrored at `epoch` (bool array)."""
    i = np.asarray(indices, np.int64).astype(np.uint64).reshape(-1)
    counters = np.stack(
        [np.full_like(i, STREAM_FLIP), i & np.uint64(0xFFFFFFFF), i >> np.uint64(32), np.ones_like(i)], axis=-1
    )
    seed = int(seed)
    top = philox4x32_10(counters, (seed & 0xFFFFFFFF, seed >> 32))[:, 0] >> 31
    return (top.astype(np.uint64) + np.uint64(int(epoch) & 1)) % 2 == 1


def alternating_flip(x, indices, seed, epoch):
    x = np.asarray(x, np.float64)
    flip = alternating_flips(seed, epoch, indices)
    return np.where(flip[:, None, None, None], x[..., ::-1], x)


def _five_crop(img, oh, ow):
    """torchvision's FiveCrop of img (..., H, W): top-left, top-right, bottom-left, bottom-right, center."""
    height, width = img.shape[-2:]
    top, left = int(round((height - oh) / 2.0)), int(round((width - ow) / 2.0))
    return [
        img[..., :oh, :ow],
        img[..., :oh, width - ow :],
        img[..., height - oh :, :ow],
        img[..., height - oh :, width - ow :],
        img[..., top : top + oh, left : left + ow],
    ]


def tta_views(x, mode="flip", size=None, pad=0, fill=0.0):
    """The views stacked view-major, from the image padded by pad with fill."""
    x = np.asarray(x, np.float64)
    img = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)), constant_values=fill)
    oh, ow = x.shape[2:] if size is None else ((size, size) if np.isscalar(size) else tuple(size))
    if mode == "flip":
        center = _five_crop(img, oh, ow)[4]
        views = [center, center[..., ::-1]]
    elif mode == "five_crop":
        views = _five_crop(img, oh, ow)
    else:
        views = _five_crop(img, oh, ow) + _five_crop(img[..., ::-1], oh, ow)
    return np.concatenate(views)


def tta_mean(y, views):
    y = np.asarray(y, np.float64)
    return y.reshape(views, y.shape[0] // views, *y.shape[1:]).mean(axis=0)
