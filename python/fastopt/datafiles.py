"""Reading a user's images: an .npz of arrays or an ImageFolder of PNG/JPEG files.

read(path) returns (name, {split: (x, y)}, class names or None) with x (N, C, H, W) in the file's
dtype (uint8 stays uint8) and y int32 (N,), checked: anything wrong raises ValueError naming the
file and the array or image.

- .npz: x_train and y_train, optionally x_val/y_val and x_test/y_test, and class_names. Images
  are (N, H, W) (one channel), (N, C, H, W) or (N, H, W, C) (the CIFAR-10 NumPy layout, as
  keras.datasets gives it: uint8 (50000, 32, 32, 3) with labels (50000, 1)), uint8 or float.
  The layout is read from where the channel axis (1, 3 or 4 long) is; `layout` decides when both
  ends could be one.
- a folder: one subfolder per class (sorted names, as torchvision's ImageFolder) of PNG/JPEG/BMP
  files, or train/ (and val/, test/) folders each laid out so. Images are decoded by Pillow in
  threads, as RGB (grayscale when every image is), resized to image_size x image_size when given;
  otherwise every image must have the same size.
"""

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

__all__ = ["read", "LAYOUTS", "IMAGE_EXTENSIONS"]

LAYOUTS = ("auto", "nchw", "nhwc")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp")
SPLITS = ("train", "val", "test")
_CHANNELS = (1, 3, 4)
_GRAY_MODES = ("1", "L", "LA", "I", "I;16", "F")


def read(path, image_size=None, layout="auto"):
    path = os.fspath(path)
    if layout not in LAYOUTS:
        raise ValueError(f"layout: expected one of {', '.join(LAYOUTS)}, got {layout!r}")
    if image_size is not None and (isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1):
        raise ValueError(f"image_size: expected a positive integer, got {image_size!r}")
    if os.path.isdir(path):
        return _read_folder(path, image_size)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file or folder (--data takes an .npz file or an ImageFolder)")
    if image_size is not None:
        raise ValueError(
            f"image_size: resizes an ImageFolder's images; {path} is an array file, its images are used as they are"
        )
    return _read_npz(path, layout)


# ------------------------------------------------------------------------------------- .npz
def _read_npz(path, layout):
    try:
        z = np.load(path, allow_pickle=False)
    except ValueError as e:
        raise ValueError(f"{path}: not a NumPy .npz file ({e})") from None
    except (OSError, EOFError) as e:
        raise ValueError(f"{path}: unreadable ({type(e).__name__}: {e})") from None
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise ValueError(f"{path}: a single array; --data wants an .npz with x_train and y_train")
    with z:
        names = set(z.files)
        for need in ("x_train", "y_train"):
            if need not in names:
                raise ValueError(
                    f"{path}: no {need!r} array (it holds {', '.join(sorted(names)) or 'nothing'}); "
                    "expected x_train, y_train and optionally x_val, y_val, x_test, y_test"
                )
        arrays, shape = {}, None
        for split in SPLITS:
            xn, yn = f"x_{split}", f"y_{split}"
            if (xn in names) != (yn in names):
                have, lack = (xn, yn) if xn in names else (yn, xn)
                raise ValueError(f"{path}: has {have!r} but no {lack!r}")
            if xn not in names:
                continue
            x = _images(path, xn, _array(z, path, xn), layout)
            y = _labels(path, yn, _array(z, path, yn), len(x))
            if shape is not None and x.shape[1:] != shape:
                raise ValueError(f"{path}: {xn} holds {x.shape[1:]} images (C, H, W), x_train {shape}")
            shape = x.shape[1:]
            arrays[split] = (x, y)
        classes = None
        if "class_names" in names:
            classes = [str(c) for c in _array(z, path, "class_names").reshape(-1)]
    _check_label_range(path, arrays, classes)
    return os.path.basename(path), arrays, classes


def _array(z, path, name):
    try:
        return z[name]
    except ValueError as e:  # an object array (images of several sizes, say) needs pickle
        raise ValueError(
            f"{path}: {name!r} is not a plain numeric array ({e}); images of mixed sizes must be "
            "resized to one size first"
        ) from None
    except Exception as e:
        raise ValueError(f"{path}: {name!r} is unreadable ({type(e).__name__}: {e})") from None


def _images(path, name, x, layout):
    if x.dtype.kind not in "uif" or x.dtype == np.float16:
        raise ValueError(f"{path}: {name} has dtype {x.dtype}; expected uint8/integers or float32/float64 images")
    if x.ndim == 3:
        x = x[:, None]
        layout = "nchw"
    if x.ndim != 4:
        raise ValueError(f"{path}: {name} has shape {x.shape}; expected (N, H, W), (N, C, H, W) or (N, H, W, C)")
    if len(x) == 0:
        raise ValueError(f"{path}: {name} holds no images")
    if layout == "auto":
        first, last = x.shape[1] in _CHANNELS, x.shape[3] in _CHANNELS
        if first == last:
            raise ValueError(
                f"{path}: {name} has shape {x.shape}: cannot tell NCHW from NHWC; give --layout nchw or nhwc"
            )
        layout = "nchw" if first else "nhwc"
    if layout == "nhwc":
        x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    if x.dtype.kind == "f" and not np.isfinite(x).all():
        bad = int(np.argwhere(~np.isfinite(x))[0][0])
        raise ValueError(f"{path}: {name}[{bad}] holds NaN or infinite pixels")
    return np.ascontiguousarray(x)


def _labels(path, name, y, n):
    if y.dtype == bool or y.dtype.kind not in "iu":
        raise ValueError(f"{path}: {name} has dtype {y.dtype}; expected integer class indices")
    if y.ndim == 2 and y.shape[1] == 1:  # keras' (N, 1) labels
        y = y[:, 0]
    if y.ndim != 1 or len(y) != n:
        raise ValueError(f"{path}: {name} has shape {y.shape}; expected ({n},), one label per image")
    return y.astype(np.int32)


def _check_label_range(path, arrays, classes):
    limit = len(classes) if classes is not None else None
    for split, (_, y) in arrays.items():
        if len(y) and y.min() < 0:
            raise ValueError(f"{path}: y_{split}[{int(np.argmin(y))}] is {int(y.min())}; labels must be >= 0")
        if limit is not None and len(y) and y.max() >= limit:
            raise ValueError(
                f"{path}: y_{split}[{int(np.argmax(y))}] is {int(y.max())}, out of range for the "
                f"{limit} names in class_names"
            )
    if limit is None:
        top = int(arrays["train"][1].max())
        for split, (_, y) in arrays.items():
            if len(y) and y.max() > top:
                raise ValueError(
                    f"{path}: y_{split}[{int(np.argmax(y))}] is {int(y.max())}, a class no training "
                    f"image has (y_train's labels go up to {top})"
                )


# ------------------------------------------------------------------------------ ImageFolder
def _class_folders(root):
    return sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))


def _read_folder(root, image_size):
    subs = _class_folders(root)
    split_roots = {s: os.path.join(root, s) for s in SPLITS if s in subs}
    if "train" not in split_roots:
        split_roots = {"train": root}
    elif set(subs) - set(split_roots):
        raise ValueError(
            f"{root}: has a train/ folder and also {sorted(set(subs) - set(split_roots))[0]}/; either "
            "one folder per class, or train/ (val/, test/) each holding one folder per class"
        )
    classes = _class_folders(split_roots["train"])
    if not classes:
        raise ValueError(
            f"{split_roots['train']}: no class folders (an ImageFolder holds one subfolder of images per class)"
        )
    files = {}
    for split, folder in split_roots.items():
        found = _class_folders(folder)
        unknown = sorted(set(found) - set(classes))
        if unknown:
            raise ValueError(f"{os.path.join(folder, unknown[0])}: a class the training folder does not have")
        listed = []
        for label, name in enumerate(classes):
            cdir = os.path.join(folder, name)
            if not os.path.isdir(cdir):
                continue
            images = sorted(f for f in os.listdir(cdir) if f.lower().endswith(IMAGE_EXTENSIONS))
            if not images and split == "train":
                raise ValueError(f"{cdir}: an empty class folder (no {'/'.join(IMAGE_EXTENSIONS)} files)")
            listed += [(os.path.join(cdir, f), label) for f in images]
        files[split] = listed
    arrays = _decode(files, image_size)
    return os.path.basename(os.path.normpath(root)), arrays, classes


def _decode(files, image_size):
    from PIL import Image, UnidentifiedImageError

    everything = [f for listed in files.values() for f, _ in listed]

    def header(f):
        try:
            with Image.open(f) as im:
                return im.mode, im.size
        except (UnidentifiedImageError, OSError, ValueError) as e:
            raise ValueError(f"{f}: not a readable image ({e})") from None

    with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
        headers = list(pool.map(header, everything))
        gray = all(mode in _GRAY_MODES for mode, _ in headers)
        if image_size is None:
            sizes = {}
            for f, (_, size) in zip(everything, headers):
                sizes.setdefault(size, f)
            if len(sizes) > 1:
                (a, fa), (b, fb) = list(sizes.items())[:2]
                raise ValueError(
                    f"images of mixed sizes: {fa} is {a[0]}x{a[1]}, {fb} is {b[0]}x{b[1]}; give "
                    "--image-size to resize them all"
                )
        mode = "L" if gray else "RGB"

        def load(f):
            try:
                with Image.open(f) as im:
                    im = im.convert(mode)
                    if image_size is not None and im.size != (image_size, image_size):
                        im = im.resize((image_size, image_size), Image.BILINEAR)
                    pixels = np.asarray(im, np.uint8)
            except (UnidentifiedImageError, OSError, ValueError) as e:
                raise ValueError(f"{f}: not a readable image ({e})") from None
            return pixels[None] if pixels.ndim == 2 else np.ascontiguousarray(pixels.transpose(2, 0, 1))

        arrays = {}
        for split, listed in files.items():
            if not listed:
                continue
            x = np.stack(list(pool.map(load, [f for f, _ in listed])))
            arrays[split] = (x, np.array([label for _, label in listed], np.int32))
    return arrays
