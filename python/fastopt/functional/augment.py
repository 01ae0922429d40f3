"""Seeded batch data augmentation, mixup and cutmix, and test-time views, float32 NCHW, on the
CPU or the GPU.

Every random op draws each sample's parameters from Philox4x32-10 keyed by the 64-bit seed, with
counters made of (op, sample index, step) (layout: cpp/include/fastopt/augment.h; every op has its
own stream, so one seed serves them all), so the CPU, the GPU, every CPU instruction-set copy and
fastopt.reference.augment draw the same parameters for any thread count. Outputs are new arrays
on x's device; `stream` (a CUDA stream handle) is ignored on the CPU.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike

from .. import _C
from .._args import boolean, choice, finite, integer, pair, real, stream as _stream, uint64
from .._types import Array, IntPair, Stream

# Here Python checks the kinds of the arguments (a bool is not an integer), the native layer their ranges.

__all__ = [
    "augment_batch",
    "mixup",
    "cutmix",
    "random_resized_crop",
    "random_rotation",
    "pca_jitter",
    "channel_pca",
    "alternating_flip",
    "tta_views",
    "tta_mean",
    "tta_num_views",
]


def augment_batch(
    x: Array,
    seed: int,
    step: int,
    max_shift: int = 0,
    flip: bool = False,
    cutout: int = 0,
    brightness: float = 0.0,
    contrast: float = 0.0,
    fill: float = 0.0,
    stream: Stream = 0,
) -> Array:
    """y = augmented x, x float32 (N, C, H, W); all channels of a sample share its parameters.

    Per sample: a shift (dy, dx), each uniform in [-max_shift, max_shift] (zero-pad by max_shift,
    then crop: y[h, w] = x[h + dy, w + dx], fill outside); with flip, a horizontal mirror with
    probability 1/2, applied to the source before the shift; brightness b uniform in
    [-brightness, brightness) and contrast c uniform in [1 - contrast, 1 + contrast), y = c * v + b
    (padded pixels too: c * fill + b; data are standardized, so contrast scales about the mean 0);
    then a cutout x cutout square centered at a uniform pixel (cy, cx), clipped to the image, set
    to fill. fill is the value of a blank pixel: 0 for raw images, -mean / std once standardized.
    seed, step: integers in [0, 2^64); the same (seed, step) reproduces a batch exactly.
    max_shift, cutout: integers >= 0; brightness >= 0; contrast in [0, 1].
    """
    return _C.augment_batch(
        x,
        uint64(seed, "seed"),
        uint64(step, "step"),
        integer(max_shift, "max_shift"),
        boolean(flip, "flip"),
        integer(cutout, "cutout"),
        real(brightness, "brightness"),
        real(contrast, "contrast"),
        real(fill, "fill"),
        _stream(stream),
    )


def mixup(x: Array, labels: Array, lam: float, num_classes: int, stream: Stream = 0) -> tuple[Array, Array]:
    """(x_mixed, soft_targets): sample n mixed with sample N - 1 - n (the batch flipped, as timm
    does; batches are already shuffled, so no permutation is needed).

    x float32 (N, ...), labels int32/int64 (N,) in [0, num_classes), lam in [0, 1] (drawn by the
    caller, e.g. from Beta(alpha, alpha)). x_mixed[n] = lam * x[n] + (1 - lam) * x[N - 1 - n];
    soft_targets[n] = lam * onehot(labels[n]) + (1 - lam) * onehot(labels[N - 1 - n]), float32
    (N, num_classes), ready for softmax_cross_entropy. A label out of range raises ValueError on
    the CPU; on the GPU its soft-target rows (the sample's and its partner's) are NaN, which makes
    the loss NaN.
    """
    return _C.mixup(x, labels, real(lam, "lam"), integer(num_classes, "num_classes"), _stream(stream))


def cutmix(
    x: Array, labels: Array, lam: float, num_classes: int, seed: int, step: int, stream: Stream = 0
) -> tuple[Array, Array]:
    """(x_mixed, soft_targets): CutMix as timm does it, beside mixup (same pairing and targets).

    x float32 (N, C, H, W), labels int32/int64 (N,) in [0, num_classes), lam in [0, 1] (drawn by
    the caller, e.g. from Beta(alpha, alpha), as for mixup). One box per batch: side fractions
    sqrt(1 - lam) (cut_h = int(H sqrt(1 - lam)), likewise W), centered at a uniform pixel drawn
    from (seed, step), clipped to the image. Inside it sample n takes sample N - 1 - n's pixels.
    soft_targets[n] = lam' onehot(labels[n]) + (1 - lam') onehot(labels[N - 1 - n]) with lam' =
    1 - box area / (H W), the exact share of the sample's own pixels (timm's correct_lam). Label
    errors behave as in mixup.
    """
    return _C.cutmix(
        x,
        labels,
        real(lam, "lam"),
        integer(num_classes, "num_classes"),
        uint64(seed, "seed"),
        uint64(step, "step"),
        _stream(stream),
    )


def _bounds(v, name):
    if not isinstance(v, (tuple, list)) or len(v) != 2:
        raise TypeError(f"{name}: expected a pair (low, high) of real numbers, got {type(v).__name__}")
    return real(v[0], f"{name}[0]"), real(v[1], f"{name}[1]")


def random_resized_crop(
    x: Array,
    seed: int,
    step: int,
    size: IntPair,
    scale: Sequence[float] = (0.08, 1.0),
    ratio: Sequence[float] = (3 / 4, 4 / 3),
    stream: Stream = 0,
) -> Array:
    """y (N, C, size_h, size_w): torchvision's RandomResizedCrop per sample, drawn from (seed, step).

    A box of area H W * U(scale) and aspect ratio exp(U(log ratio)) (width / height), sides
    rounded half to even, placed uniformly; 10 tries, then torchvision's fallback: the central
    crop of the whole image clamped to the ratio range. The box is resized to size (an int or
    (h, w)) bilinearly as torch's interpolate(mode='bilinear', align_corners=False,
    antialias=False) does (no antialiasing when shrinking). All channels share the box.
    scale: 0 < low <= high; ratio: 0 < low <= high.
    """
    size = pair(size, "size")
    return _C.random_resized_crop(
        x,
        uint64(seed, "seed"),
        uint64(step, "step"),
        size[0],
        size[1],
        *_bounds(scale, "scale"),
        *_bounds(ratio, "ratio"),
        _stream(stream),
    )


def random_rotation(
    x: Array, seed: int, step: int, degrees: float | Sequence[float], fill: float = 0.0, stream: Stream = 0
) -> Array:
    """y: each sample rotated counter-clockwise about its center by an angle uniform in
    [-degrees, degrees) (or [low, high) for a pair, within [-360, 360]), drawn from (seed, step);
    torchvision's rotate with bilinear interpolation, expand=False, the pixels from outside the
    image = fill (blend: bilinear over the image extended by fill)."""
    if isinstance(degrees, (tuple, list)):
        lo, hi = _bounds(degrees, "degrees")
    else:
        hi = finite(degrees, "degrees", 0)
        lo = -hi
    return _C.random_rotation(
        x, uint64(seed, "seed"), uint64(step, "step"), lo, hi, real(fill, "fill"), _stream(stream)
    )


def _float64(v, name, ndim):
    try:
        a = np.asarray(v, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"{name}: expected real numbers, got {type(v).__name__}") from None
    if a.ndim != ndim or (ndim == 2 and a.shape[0] != a.shape[1]):
        raise ValueError(f"{name}: expected {'a vector' if ndim == 1 else 'a square matrix'}, got shape {a.shape}")
    return a


def pca_jitter(
    x: Array, seed: int, step: int, eigvals: ArrayLike, eigvecs: ArrayLike, sigma: float = 0.1, stream: Stream = 0
) -> Array:
    """y = x + eigvecs @ (alpha * eigvals) per sample (AlexNet's "fancy PCA" colour jitter), the
    shift added to every pixel of the channel; alpha_k ~ N(0, sigma) drawn from (seed, step) by
    Box-Muller. eigvals (C,) >= 0 and eigvecs (C, C) (eigenvector k in column k, as
    numpy.linalg.eigh returns them) of the per-channel covariance of the training set in x's
    representation (channel_pca computes them); 1 <= C <= 4. sigma >= 0 (AlexNet: 0.1)."""
    vals, vecs = _float64(eigvals, "eigvals", 1), _float64(eigvecs, "eigvecs", 2)
    return _C.pca_jitter(
        x,
        uint64(seed, "seed"),
        uint64(step, "step"),
        vals.tolist(),
        vecs.reshape(-1).tolist(),
        real(sigma, "sigma"),
        _stream(stream),
    )


def channel_pca(x: Array, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """(eigvals, eigvecs) of the per-channel covariance of x (N, C, H, W) over all pixels, float64,
    eigenvalues in ascending order (numpy.linalg.eigh's), negative rounding noise clipped to 0:
    the inputs of pca_jitter. x: a NumPy array on the host (the training split)."""
    if not isinstance(x, np.ndarray) or x.ndim != 4:
        raise ValueError("x: expected a NumPy array of shape (N, C, H, W)")
    chunk = integer(chunk, "chunk", 1)
    channels, count = x.shape[1], x.shape[0] * x.shape[2] * x.shape[3]
    if count == 0:
        raise ValueError("x: no pixels")
    total, outer = np.zeros(channels), np.zeros((channels, channels))
    for lo in range(0, x.shape[0], chunk):  # in chunks: a float64 copy of all pixels may not fit
        v = np.moveaxis(np.asarray(x[lo : lo + chunk], np.float64), 1, 0).reshape(channels, -1)
        total += v.sum(axis=1)
        outer += v @ v.T
    mean = total / count
    vals, vecs = np.linalg.eigh(outer / count - np.outer(mean, mean))
    return np.maximum(vals, 0.0), vecs


def alternating_flip(x: Array, indices: Array, seed: int, epoch: int, stream: Stream = 0) -> Array:
    """y: airbench's alternating flip. Sample n is mirrored iff epoch + b(indices[n]) is odd,
    b(i) a fixed random bit of data-set index i (Philox under seed), so every image is seen
    mirrored every other epoch, half of them each epoch, without any per-epoch randomness.
    indices: int32/int64 (N,) on x's device, the samples' indices in the data set (not in the batch)."""
    return _C.alternating_flip(x, indices, uint64(seed, "seed"), uint64(epoch, "epoch"), _stream(stream))


_TTA_VIEWS = {"flip": 2, "five_crop": 5, "ten_crop": 10}


def tta_num_views(mode: str) -> int:
    """How many views tta_views(x, mode) makes per sample."""
    return _TTA_VIEWS[choice(mode, "mode", tuple(_TTA_VIEWS))]


def tta_views(
    x: Array, mode: str = "flip", size: IntPair | None = None, pad: int = 0, fill: float = 0.0, stream: Stream = 0
) -> Array:
    """The test-time augmentation views of a batch, stacked view-major: y ((V N), C, h, w) with view
    v of sample n at v N + n, V = tta_num_views(mode).

    Views are windows of size (h, w) (size: an int or (h, w); default (H, W)) of the image padded
    by pad on every side with fill:
      "flip":      the center window and its mirror (airbench's flip TTA);
      "five_crop": torchvision's FiveCrop order (top-left, top-right, bottom-left, bottom-right,
                   center); with pad > 0 and the default size these are the image shifted by
                   (+-pad, +-pad) and itself, the crops of pad-and-crop training;
      "ten_crop":  torchvision's TenCrop: the five, then the five of the mirrored image.
    Average a model's outputs over the views with tta_mean(outputs, V): e.g. logits =
    model(tta_views(x, "flip")); tta_mean(logits, 2) (torchvision averages softmax outputs the
    same way: pass probabilities instead).
    """
    tta_num_views(mode)  # checks mode
    if not hasattr(x, "shape"):
        raise TypeError(f"x: expected an array, got {type(x).__name__}")
    if len(x.shape) != 4:
        raise ValueError(f"x: expected shape (N, C, H, W), got {tuple(x.shape)}")
    height, width = int(x.shape[2]), int(x.shape[3])
    pad = integer(pad, "pad", 0, 2**24)
    oh, ow = (height, width) if size is None else pair(size, "size", 1)
    if oh > height + 2 * pad or ow > width + 2 * pad:
        raise ValueError(
            f"size: the views ({oh}, {ow}) are larger than the padded image ({height + 2 * pad}, {width + 2 * pad})"
        )
    ph, pw = height + 2 * pad, width + 2 * pad
    center = (int(round((ph - oh) / 2.0)), int(round((pw - ow) / 2.0)))  # torchvision's center_crop
    five = [(0, 0), (0, pw - ow), (ph - oh, 0), (ph - oh, pw - ow), center]
    wins = {
        "flip": [(*center, False), (*center, True)],
        "five_crop": [(t, l, False) for t, l in five],
        # the crop at (t, l) of the mirrored image is the mirror of the crop at (t, pw - ow - l)
        "ten_crop": [(t, l, False) for t, l in five] + [(t, pw - ow - l, True) for t, l in five],
    }[mode]
    return _C.tta_views(
        x,
        [t - pad for t, _, _ in wins],
        [l - pad for _, l, _ in wins],
        [m for _, _, m in wins],
        oh,
        ow,
        real(fill, "fill"),
        _stream(stream),
    )


def tta_mean(y: Array, views: int, stream: Stream = 0) -> Array:
    """out (N, ...): the mean over the views of y ((views N), ...) stacked as tta_views stacks
    them, summed in view order in double and rounded once (the same bits on every backend)."""
    return _C.tta_mean(y, integer(views, "views"), _stream(stream))
