"""The lectures' preprocessing, fitted on the training split and applied to every batch.

Per-channel mean/std normalization (x - mean_c) / std_c, then optionally PCA or ZCA whitening of
the flattened, normalized image: with C = U diag(lam) U^T the covariance of the normalized
training images (each feature centred by its training mean mu), PCA gives
diag(1 / sqrt(lam + eps)) U^T (x - mu) (decorrelated, unit variance, in the eigenbasis) and ZCA
rotates that back, U diag(1 / sqrt(lam + eps)) U^T (x - mu) (the whitened image closest to the
original, so it still looks like an image). eps damps the directions of tiny variance (noise)
that 1 / sqrt(lam) would blow up; the features were normalized to unit variance first, so eps is
relative to 1. Whitening works on C*H*W features: small images only (WHITEN_MAX_FEATURES).

Statistics are accumulated in float64 over chunks (a 50,000-image uint8 set never exists as one
float64 copy); batches are transformed in float32.
"""

from dataclasses import dataclass

import numpy as np

from . import _args

__all__ = ["Preprocess", "fit", "WHITENINGS"]

WHITENINGS = ("pca", "zca")
WHITEN_MAX_FEATURES = 4096  # a (D, D) float64 covariance and its eigendecomposition stay within seconds
WHITEN_MAX_IMAGES = 10000  # the covariance is estimated on at most this many training images
_CHUNK = 2048


@dataclass
class Preprocess:
    """x -> float32 ((x - mean_c) / std_c, then (flat - center) @ matrix when whitening)."""

    mean: np.ndarray  # (C,) float64
    std: np.ndarray  # (C,) float64
    whiten: str = ""  # "", "pca" or "zca"
    eps: float = 0.0
    center: np.ndarray = None  # (D,) float32 per-feature mean of the normalized training images
    matrix: np.ndarray = None  # (D, D) float32: whitened = (flat - center) @ matrix

    def __post_init__(self):
        self._scale = (1.0 / self.std).astype(np.float32)[:, None, None]
        self._shift = (-self.mean / self.std).astype(np.float32)[:, None, None]

    @property
    def channels(self):
        return len(self.mean)

    def __call__(self, x):
        """A float32 C-contiguous (N, C, H, W) batch from raw images of any real dtype and layout."""
        out = np.array(x, np.float32, order="C")
        out *= self._scale
        out += self._shift
        if self.matrix is not None:
            flat = out.reshape(len(out), -1)
            flat -= self.center
            out = (flat @ self.matrix).reshape(out.shape)
        return out

    def arrays(self):
        """The checkpoint's entries: name -> array (fastopt.train stores them under data/)."""
        arrays = {"mean": self.mean, "std": self.std}
        if self.matrix is not None:
            arrays.update(center=self.center, matrix=self.matrix)
        return arrays

    def meta(self):
        return {"whiten": self.whiten, "eps": self.eps}

    @classmethod
    def from_checkpoint(cls, meta, arrays):
        return cls(
            np.asarray(arrays["mean"], np.float64),
            np.asarray(arrays["std"], np.float64),
            meta.get("whiten", ""),
            float(meta.get("eps", 0.0)),
            arrays.get("center"),
            arrays.get("matrix"),
        )


def _channel_stats(x):
    """Per-channel mean and (population) standard deviation of (N, C, H, W) in float64."""
    c = x.shape[1]
    total, squares = np.zeros(c), np.zeros(c)
    for lo in range(0, len(x), _CHUNK):
        chunk = x[lo : lo + _CHUNK].astype(np.float64)
        total += chunk.sum(axis=(0, 2, 3))
        squares += np.einsum("nchw,nchw->c", chunk, chunk)
    count = len(x) * x.shape[2] * x.shape[3]
    mean = total / count
    var = np.maximum(squares / count - mean * mean, 0.0)
    return mean, np.sqrt(var)


def fit(x, whiten="", eps=1e-2, seed=0):
    """The Preprocess of training images x (N, C, H, W); whiten: "", "pca" or "zca"."""
    whiten = "" if whiten in (None, "", "none") else _args.choice(whiten, "whiten", WHITENINGS)
    eps = _args.finite(eps, "whiten_eps", 0.0, low_open=True)
    mean, std = _channel_stats(x)
    flat_channels = [i for i in range(len(std)) if std[i] == 0.0]
    if flat_channels:
        raise ValueError(
            f"x_train: channel {flat_channels[0]} has the same value in every training image "
            f"(standard deviation 0): nothing to normalize by"
        )
    pre = Preprocess(mean, std)
    if not whiten:
        return pre
    d = int(np.prod(x.shape[1:]))
    if d > WHITEN_MAX_FEATURES:
        raise ValueError(
            f"whiten: for small images only (C*H*W <= {WHITEN_MAX_FEATURES}); these have "
            f"{'x'.join(map(str, x.shape[1:]))} = {d} features: use --image-size to shrink them or "
            "drop --whiten"
        )
    pick = np.random.default_rng([seed, 7]).permutation(len(x))[:WHITEN_MAX_IMAGES]
    pick.sort()
    sums, gram = np.zeros(d), np.zeros((d, d))
    for lo in range(0, len(pick), _CHUNK):
        chunk = pre(x[pick[lo : lo + _CHUNK]]).reshape(-1, d).astype(np.float64)
        sums += chunk.sum(axis=0)
        gram += chunk.T @ chunk
    center = sums / len(pick)
    cov = gram / len(pick) - np.outer(center, center)
    lam, u = np.linalg.eigh(cov)
    scaled = u / np.sqrt(np.maximum(lam, 0.0) + eps)  # column k: u_k / sqrt(lam_k + eps)
    matrix = scaled if whiten == "pca" else scaled @ u.T  # row-vector form: flat @ matrix
    return Preprocess(mean, std, whiten, eps, center.astype(np.float32), matrix.astype(np.float32))
