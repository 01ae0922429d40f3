"""The trainer's data sets: scikit-learn's digits (shipped inside the scikit-learn wheel, so
nothing is downloaded), the default, or the user's own (`load`: an .npz of arrays or an
ImageFolder of PNG/JPEG files, see fastopt.datafiles).

Digits' images are float32 NCHW standardized with the training set's mean and standard deviation
(one scalar each, so an image stays an image). A user's data set keeps its images raw (uint8 stays
uint8: a quarter of the memory) with a `preprocess` (fastopt.preprocess: per-channel statistics
of the training split, optional whitening) that the loader applies batch by batch and the
checkpoint stores for evaluation. `Dataset.inputs` gives network inputs either way. Labels are
int32.
"""

from dataclasses import dataclass

import numpy as np

from . import _args

__all__ = ["Split", "Dataset", "load_digits", "load"]


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
    mean: float  # training-set statistics used to standardize every split (per channel: tuples)
    std: float
    preprocess: object = None  # fastopt.preprocess.Preprocess of raw splits; None: splits are inputs already
    classes: tuple = None  # class names, when the data has them

    @property
    def background(self):
        """The input value translation and cutout fill in: a blank pixel once standardized. With
        per-channel statistics a blank pixel differs by channel and the kernel takes one value, so
        it is 0, the training set's mean colour."""
        if self.preprocess is not None:
            return 0.0
        return float(-self.mean / self.std)

    def inputs(self, x):
        """Network inputs (float32 NCHW) from a split's images."""
        return x if self.preprocess is None else self.preprocess(x)

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
    splits = [
        Split(((images[i] - mean) / std).astype(np.float32), labels[i].astype(np.int32)) for i in (train, val, test)
    ]
    return Dataset(name, *splits, num_classes, mean, std)


def load_digits(val_fraction=0.1, test_fraction=0.2, seed=0):
    """scikit-learn's 8x8 handwritten digits (1797 images, 10 classes), split stratified into
    train/validation/test with a fixed seed and standardized with the training set's mean and
    standard deviation (one scalar each, so an image stays an image)."""
    val_fraction = _args.finite(val_fraction, "val_fraction", 0.0, 1.0, high_open=True)
    test_fraction = _args.finite(test_fraction, "test_fraction", 0.0, 1.0, high_open=True)
    if val_fraction + test_fraction >= 1.0:
        raise ValueError(
            f"val_fraction + test_fraction: must be < 1 (no training images left), got {val_fraction} + {test_fraction}"
        )
    _args.integer(seed, "seed", 0)
    try:
        from sklearn.datasets import load_digits as sk_digits
    except ImportError as e:  # pragma: no cover - scikit-learn is a dependency
        raise ImportError("the digits data set ships with scikit-learn: pip install scikit-learn") from e
    d = sk_digits()
    images = d.images.astype(np.float64)[:, None, :, :]
    fractions = [1.0 - val_fraction - test_fraction, val_fraction, test_fraction]
    return _standardize("digits", images, d.target, fractions, seed, 10)


def load(
    path,
    image_size=None,
    whiten="",
    whiten_eps=1e-2,
    val_fraction=0.1,
    test_fraction=0.1,
    seed=0,
    layout="auto",
    preprocess=None,
):
    """A user's data set: an .npz file or an ImageFolder (fastopt.datafiles), its missing splits
    drawn stratified from the training images by `seed`, its preprocessing fitted on the training
    split (per-channel mean/std, then `whiten` "pca"/"zca" if asked) unless `preprocess` (a
    checkpoint's, at evaluation) is given."""
    from . import datafiles, preprocess as fitting

    val_fraction = _args.finite(val_fraction, "val_fraction", 0.0, 1.0, high_open=True)
    test_fraction = _args.finite(test_fraction, "test_fraction", 0.0, 1.0, high_open=True)
    _args.integer(seed, "seed", 0)
    name, arrays, classes = datafiles.read(path, image_size=image_size, layout=layout)
    x, y = arrays["train"]
    num_classes = len(classes) if classes is not None else 1 + max(int(v.max()) for _, v in arrays.values() if len(v))
    missing = [s for s in ("val", "test") if s not in arrays]
    fractions = {"val": val_fraction, "test": test_fraction}
    if missing:
        share = {s: fractions[s] for s in missing}
        if sum(share.values()) >= 1.0:
            raise ValueError(
                f"val_fraction + test_fraction: must be < 1 (no training images left), got "
                f"{val_fraction} + {test_fraction}"
            )
        parts = _stratified(y, [1.0 - sum(share.values())] + list(share.values()), np.random.default_rng(seed))
        for split, idx in zip(missing, parts[1:]):
            arrays[split] = (x[idx], y[idx])
        x, y = x[parts[0]], y[parts[0]]
    if len(y) == 0:
        raise ValueError(f"{path}: no training images left after taking the validation and test splits")
    pre = preprocess if preprocess is not None else fitting.fit(x, whiten, whiten_eps, seed)
    splits = [Split(x, y)] + [Split(*arrays[s]) for s in ("val", "test")]
    return Dataset(
        name,
        *splits,
        num_classes,
        tuple(pre.mean.tolist()),
        tuple(pre.std.tolist()),
        pre,
        None if classes is None else tuple(classes),
    )
