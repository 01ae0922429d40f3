"""The trainer's data set: scikit-learn's digits (shipped inside the scikit-learn wheel, so
nothing is downloaded).

Images are float32 NCHW standardized with the training set's mean and standard deviation (one
scalar each, so an image stays an image); `Dataset.background` is the standardized value of a
blank pixel, which translation and cutout fill in. Labels are int32.
"""
from dataclasses import dataclass

import numpy as np

from . import _args

__all__ = ["Split", "Dataset", "load_digits"]


@dataclass
class Split:
    x: np.ndarray  # (N, C, H, W) float32
    y: np.ndarray  # (N,) int32

    def __len__(self):
        return len(self.y)


@dataclass
class Dataset:
    name: str
    train: Split
    val: Split
    test: Split
    num_classes: int
    mean: float  # training-set statistics used to standardize every split
    std: float

    @property
    def background(self):
        return float(-self.mean / self.std)

    @property
    def shape(self):
        return self.train.x.shape[1:]


def _stratified(y, fractions, rng):
    """Indices of each part, every class split in the same proportions."""
    parts = [[] for _ in fractions]
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        cuts = np.round(np.cumsum(fractions)[:-1] * len(idx)).astype(int)
        for part, chunk in zip(parts, np.split(idx, cuts)):
            part.append(chunk)
    return [rng.permutation(np.concatenate(p)) for p in parts]


def _standardize(name, images, labels, fractions, seed, num_classes):
    rng = np.random.default_rng(seed)
    train, val, test = _stratified(labels, fractions, rng)
    mean = float(images[train].mean())
    std = float(images[train].std())
    splits = [Split(((images[i] - mean) / std).astype(np.float32), labels[i].astype(np.int32))
              for i in (train, val, test)]
    return Dataset(name, *splits, num_classes, mean, std)


def load_digits(val_fraction=0.1, test_fraction=0.2, seed=0):
    """scikit-learn's 8x8 handwritten digits (1797 images, 10 classes), split stratified into
    train/validation/test with a fixed seed and standardized with the training set's mean and
    standard deviation (one scalar each, so an image stays an image)."""
    val_fraction = _args.finite(val_fraction, "val_fraction", 0.0, 1.0, high_open=True)
    test_fraction = _args.finite(test_fraction, "test_fraction", 0.0, 1.0, high_open=True)
    if val_fraction + test_fraction >= 1.0:
        raise ValueError(f"val_fraction + test_fraction: must be < 1 (no training images left), got "
                         f"{val_fraction} + {test_fraction}")
    _args.integer(seed, "seed", 0)
    try:
        from sklearn.datasets import load_digits as sk_digits
    except ImportError as e:  # pragma: no cover - scikit-learn is a dependency
        raise ImportError("the digits data set ships with scikit-learn: pip install scikit-learn") from e
    d = sk_digits()
    images = d.images.astype(np.float64)[:, None, :, :]
    fractions = [1.0 - val_fraction - test_fraction, val_fraction, test_fraction]
    return _standardize("digits", images, d.target, fractions, seed, 10)

