"""Seeded batch data augmentation and mixup, float32, on the CPU or the GPU.

augment_batch draws every sample's parameters from Philox4x32-10 keyed by the 64-bit seed, with
counters made of (step, sample index, draw index) (layout: cpp/include/fastopt/augment.h), so
the CPU, the GPU and fastopt.reference.augment agree bit for bit for any thread count. Outputs
are new arrays on x's device; `stream` (a CUDA stream handle) is ignored on the CPU.
"""
from .. import _C
from .._args import boolean, integer, real, stream as _stream, uint64

# Here Python checks the kinds of the arguments (a bool is not an integer), the native layer their ranges.

__all__ = ["augment_batch", "mixup"]


def augment_batch(x, seed, step, max_shift=0, flip=False, cutout=0, brightness=0.0, contrast=0.0, fill=0.0, stream=0):
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
    return _C.augment_batch(x, uint64(seed, "seed"), uint64(step, "step"), integer(max_shift, "max_shift"),
                            boolean(flip, "flip"), integer(cutout, "cutout"), real(brightness, "brightness"),
                            real(contrast, "contrast"), real(fill, "fill"), _stream(stream))


def mixup(x, labels, lam, num_classes, stream=0):
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
