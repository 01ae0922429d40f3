"""`fastopt evaluate CHECKPOINT... [--data PATH]`: test accuracy, top-k, the confusion matrix, and
the ensemble of several checkpoints (their softmax probabilities averaged), e.g. the snapshots of
one SGDR run (`fastopt train --snapshots N` writes snapshot-K.npz).

Each checkpoint rebuilds its own network (the architecture it records; --model/--width/--dropout
for checkpoints that record none) and turns the raw test images into inputs with its own stored
preprocessing (the training split's per-channel statistics, whitening), never statistics of the
test data. A checkpoint that keeps a moving average of its weights (--ema) is evaluated with it,
as the trainer does. Splits the data does not give are drawn by the checkpoint's seed, as in
training, so the test images are the ones training never saw; checkpoints trained with different
seeds on such data are refused (each one's test split holds others' training images).
"""

import argparse
import json
import os
import sys

import numpy as np

from . import _arrays, _options, cuda, data as datasets
from .datafiles import LAYOUTS
from .preprocess import Preprocess
from .train import TTA_MODES, CheckpointError, eval_logits, read_checkpoint, resolve_device, write_atomically
from .train_cli import MODELS, _device, build_model

__all__ = ["Member", "load_member", "predict", "scores", "confusion", "main"]

SPLITS = ("test", "val", "train")


class Member:
    """One checkpoint: its network (built, weights loaded), its preprocessing and its meta."""

    def __init__(self, path, model, preprocess, meta):
        self.path, self.model, self.preprocess, self.meta = path, model, preprocess, meta

    @property
    def seed(self):
        return self.meta["config"].get("seed", 0)


def _spec_of(meta, path, expect):
    spec = meta.get("model_spec")
    if not spec or "mean" not in (meta.get("data_arrays") or {}):
        raise CheckpointError(
            f"{path}: records no architecture or input normalization (written by an older fastopt "
            "train): train again to evaluate it"
        )
    named = {k: v for k, v in (expect or {}).items() if v is not None}
    differ = {k: v for k, v in named.items() if spec.get(k) != v}
    if differ:
        raise CheckpointError(
            f"{path}: a checkpoint of another architecture: it holds {spec['model']} (width "
            f"{spec.get('width')}), not the {', '.join(f'{k} {v}' for k, v in differ.items())} asked for"
        )
    return spec


def load_member(path, device="cpu", expect=None):
    """The checkpoint at `path` as a Member; CheckpointError naming the file when it cannot be one.
    expect: {"model": ..., "width": ...} the network must be (None entries: anything)."""
    meta, state, _ = read_checkpoint(path)
    spec = _spec_of(meta, path, expect)
    try:
        model = build_model(spec)
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: its model_spec {spec!r} does not describe a network ({e})") from None
    model.build(device, seed=0, precision=meta["config"].get("precision", "fp32"))
    weights = meta["ema"] or state
    mine = {k: np.shape(v) for k, v in model.state_dict().items()}
    theirs = {k: np.shape(v) for k, v in weights.items()}
    if mine != theirs:
        wrong = sorted(k for k in mine.keys() | theirs.keys() if mine.get(k) != theirs.get(k))[0]
        raise CheckpointError(
            f"{path}: its weights are of another architecture than the {spec['model']} (width "
            f"{spec.get('width')}) it names ({wrong}: shape {theirs.get(wrong)} in the file, "
            f"{mine.get(wrong)} in the network)"
        )
    model.load_state_dict(weights)
    model.load_extra_state(meta.get("extra_state", {}))
    pre = Preprocess.from_checkpoint((meta.get("data") or {}).get("preprocess", {}), meta["data_arrays"])
    return Member(path, model, pre, meta)


def predict(member, x, batch_size=512, tta=""):
    """Softmax probabilities, float64 (N, C), of member's network on raw images x; with tta, of
    its mean logits over the test-time views (the crops shifted by its training's max_shift)."""
    device = member.model.store.device
    pad = member.meta["config"].get("max_shift", 0)
    fill = (member.meta.get("data") or {}).get("background", 0.0)  # what the trainer padded with
    out = []
    for lo in range(0, len(x), batch_size):
        inputs = member.preprocess(x[lo : lo + batch_size])
        inputs = inputs if device == "cpu" else _arrays.to_device(inputs, device)
        logits = eval_logits(member.model, inputs, tta, pad, fill)
        z = np.asarray(_arrays.to_numpy(logits), np.float64)
        z -= z.max(axis=1, keepdims=True)
        e = np.exp(z)
        out.append(e / e.sum(axis=1, keepdims=True))
    return np.concatenate(out)


def scores(probs, y, k=5):
    """{"acc", f"top{k}", "nll"} of probabilities (N, C) against labels y (N,)."""
    k = min(k, probs.shape[1])
    topk = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    n = len(y)
    return {
        "acc": float(np.mean(topk[:, 0] == y)),
        f"top{k}": float(np.mean((topk == y[:, None]).any(axis=1))),
        "nll": float(-np.mean(np.log(np.maximum(probs[np.arange(n), y], 1e-300)))),
    }


def confusion(pred, y, num_classes):
    """Counts (C, C): row = true class, column = predicted class."""
    m = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(m, (y, pred), 1)
    return m


def plot_confusion(matrix, classes, path, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    c = len(matrix)
    size = min(max(4.0, 0.45 * c + 2), 16.0)
    fig, ax = plt.subplots(figsize=(size, size))
    rates = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    if c <= 30:
        for i in range(c):
            for j in range(c):
                if matrix[i, j]:
                    ax.text(
                        j,
                        i,
                        str(matrix[i, j]),
                        ha="center",
                        va="center",
                        fontsize=8,
                        color="white" if rates[i, j] > 0.5 else "black",
                    )
        ax.set_xticks(range(c), classes, rotation=90)
        ax.set_yticks(range(c), classes)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _given(path, split):
    """Whether the data file or folder provides `split` itself (else training drew it by seed)."""
    if path is None:
        return False
    if os.path.isdir(path):
        return os.path.isdir(os.path.join(path, split))
    with np.load(path, allow_pickle=False) as z:
        return f"x_{split}" in z.files


def load_split(members, path, split, image_size=None, layout="auto"):
    """(raw images, labels, class names, data name) of `split`, drawn as the members' training drew it."""
    first = members[0]
    seeds = sorted({m.seed for m in members})
    if len(seeds) > 1 and (split == "train" or not _given(path, split)):
        raise ValueError(
            f"checkpoints trained with seeds {seeds}: the {split} split is drawn by the seed, so each "
            f"one's {split} images differ (some are others' training images); ensemble runs of one seed, "
            "or data with its own x_test / test folder"
        )
    shape = tuple((first.meta.get("data") or {}).get("shape") or ())
    if path is None:
        d = datasets.load_digits(seed=first.seed)
        raw = {"train": d.train, "val": d.val, "test": d.test}[split]
        # digits' splits are standardized already; undo it so every member applies its own statistics
        x = raw.x * np.float32(d.std) + np.float32(d.mean)
        return x, raw.y, [str(i) for i in range(10)], d.name
    if image_size is None and os.path.isdir(path) and len(shape) == 3 and shape[1] == shape[2]:
        image_size = shape[1]  # as trained
    d = datasets.load(path, image_size=image_size, seed=first.seed, layout=layout, preprocess=first.preprocess)
    s = {"train": d.train, "val": d.val, "test": d.test}[split]
    classes = list(d.classes) if d.classes else [str(i) for i in range(d.num_classes)]
    return s.x, s.y, classes, d.name


def _check_fit(member, x, num_classes):
    spec = member.meta.get("model_spec") or {}
    trained = tuple((member.meta.get("data") or {}).get("shape") or ())
    if trained and tuple(x.shape[1:]) != trained:
        raise CheckpointError(
            f"{member.path}: trained on {'x'.join(map(str, trained))} images (C x H x W), the data's "
            f"are {'x'.join(map(str, x.shape[1:]))}"
        )
    classes = (member.meta.get("data") or {}).get("num_classes", spec.get("num_classes"))
    if classes is not None and classes != num_classes:
        raise CheckpointError(f"{member.path}: trained for {classes} classes, the data has {num_classes}")


def evaluate(members, x, y, num_classes, topk=5, batch_size=512, tta=""):
    """Per member and (for several) the ensemble: scores; plus the ensemble's mean probabilities."""
    for m in members:
        _check_fit(m, x, num_classes)
    probs = [predict(m, x, batch_size, tta) for m in members]
    results = [{"checkpoint": m.path, **scores(p, y, topk)} for m, p in zip(members, probs)]
    mean = np.mean(probs, axis=0)
    ensemble = scores(mean, y, topk)
    return results, ensemble, mean


def main(argv=None):
    p = argparse.ArgumentParser(
        prog="fastopt evaluate",
        description="Accuracy, top-k and the confusion matrix of "
        "checkpoints from fastopt train, alone and as an ensemble (averaged probabilities).",
    )
    p.add_argument("checkpoints", nargs="+", metavar="CHECKPOINT")
    p.add_argument("--data", metavar="PATH", help="the .npz or ImageFolder trained on (default: digits)")
    p.add_argument("--split", choices=SPLITS, default="test")
    p.add_argument(
        "--image-size",
        type=_options.arg_type("int", 1),
        metavar="S",
        help="resize an ImageFolder's images (default: the size trained on)",
    )
    p.add_argument("--layout", choices=LAYOUTS, default="auto")
    p.add_argument("--device", type=_device, default="auto")
    p.add_argument("--batch-size", type=_options.arg_type("int", 1), default=512)
    p.add_argument("--topk", type=_options.arg_type("int", 1), default=5)
    p.add_argument("--tta", choices=TTA_MODES, help="average each network's logits over test-time views")
    p.add_argument("--out", default="fastopt-evaluate", help="folder for evaluate.json and confusion.png")
    g = p.add_argument_group("checks (checkpoints record their network; these refuse any other)")
    g.add_argument("--model", choices=MODELS)
    g.add_argument("--width", type=_options.arg_type("int", 1), nargs=2, metavar=("C1", "C2"))
    args = p.parse_args(argv)
    unwritable = _options.unwritable(args.out)
    if unwritable:
        p.error(f"argument --out: {unwritable}")
    if args.device.startswith("cuda") and not cuda.is_available():
        p.error(f"argument --device: {args.device}, but no usable CUDA GPU here")
    device = resolve_device(args.device)
    expect = {"model": args.model, "width": list(args.width) if args.width else None}
    try:
        members = [load_member(path, device, expect) for path in args.checkpoints]
    except CheckpointError as e:
        p.error(f"argument CHECKPOINT: {e}")
    try:
        x, y, classes, name = load_split(members, args.data, args.split, args.image_size, args.layout)
    except (ValueError, OSError) as e:
        p.error(f"argument --data: {e}")
    try:
        results, ensemble, probs = evaluate(members, x, y, len(classes), args.topk, args.batch_size, args.tta or "")
    except CheckpointError as e:
        p.error(f"argument CHECKPOINT: {e}")
    k = min(args.topk, len(classes))
    for r in results:
        print(f"{r['checkpoint']}: acc {r['acc']:.4f}, top-{k} {r[f'top{k}']:.4f}, nll {r['nll']:.4f}")
    if len(members) > 1:
        print(
            f"ensemble of {len(members)} (mean probabilities): acc {ensemble['acc']:.4f}, top-{k} "
            f"{ensemble[f'top{k}']:.4f}, nll {ensemble['nll']:.4f}"
        )
    matrix = confusion(np.argmax(probs, axis=1), y, len(classes))
    report = {
        "data": name,
        "split": args.split,
        "tta": args.tta,
        "images": int(len(y)),
        "classes": classes,
        "members": results,
        "ensemble": ensemble if len(members) > 1 else None,
        "confusion": matrix.tolist(),
        "per_class_acc": (np.diag(matrix) / np.maximum(matrix.sum(axis=1), 1)).tolist(),
    }
    write_atomically(os.path.join(args.out, "evaluate.json"), lambda f: f.write(json.dumps(report, indent=2).encode()))
    written = ["evaluate.json"]
    try:
        title = f"{name} {args.split}" + (f", ensemble of {len(members)}" if len(members) > 1 else "")
        plot_confusion(matrix, classes, os.path.join(args.out, "confusion.png"), title)
        written.append("confusion.png")
    except ImportError as e:
        print(f"no confusion.png ({e}; pip install matplotlib)", file=sys.stderr)
    print(f"wrote {args.out}/: {', '.join(written)}")
    return 0
