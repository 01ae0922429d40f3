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
    return dict(dy=uniform_int(w[0], 2 * max_shift + 1) - max_shift, dx=uniform_int(w[1], 2 * max_shift + 1) - max_shift,
                mirror=bool(flip) and bool(w[2] >> 31),
                bias=np.float32(b * uniform_pm1(w[3])), scale=np.float32(np.float32(1) + c * uniform_pm1(w[4])),
                y0=uniform_int(w[5], height) - cutout // 2, x0=uniform_int(w[6], width) - cutout // 2)


def augment_batch(x, seed, step, max_shift=0, flip=False, cutout=0, brightness=0.0, contrast=0.0, fill=0.0):
    x = np.asarray(x, np.float64)
    n_samples, _, height, width = x.shape
    y = np.empty_like(x)
    for n in range(n_samples):
        p = sample_params(seed, step, n, height, width, max_shift, flip, cutout, brightness, contrast)
        src = x[n, :, :, ::-1] if p["mirror"] else x[n]
        padded = np.pad(src, ((0, 0), (max_shift, max_shift), (max_shift, max_shift)), constant_values=fill)
        top, left = max_shift + p["dy"], max_shift + p["dx"]
        out = padded[:, top:top + height, left:left + width]
        if brightness > 0 or contrast > 0:
            out = float(p["scale"]) * out + float(p["bias"])
        y0, x0 = p["y0"], p["x0"]
        out[:, max(y0, 0):max(y0 + cutout, 0), max(x0, 0):max(x0 + cutout, 0)] = fill
        y[n] = out
    return y


def mixup(x, labels, lam, num_classes):
    """(x_mixed, soft_targets) in float64: sample n mixed with sample N - 1 - n."""
    x = np.asarray(x, np.float64)
    labels = np.asarray(labels)
    onehot = np.zeros((labels.shape[0], num_classes))
    onehot[np.arange(labels.shape[0]), labels] = 1.0
    return lam * x + (1 - lam) * x[::-1], lam * onehot + (1 - lam) * onehot[::-1]
