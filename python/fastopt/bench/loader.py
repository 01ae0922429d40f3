"""Loader benchmark: `fastopt bench loader` — does training from `--data` keep the step fed?

Generates an .npz of --images random uint8 images of 3x32x32 (the CIFAR-10 NumPy layout, NHWC;
50,000 by default, as CIFAR-10's training set) and trains the default `fastopt train` network
(small_cnn, AdamW, warm-up + cosine, clipping, shift augmentation) on it two ways, epoch for
epoch, alternating round by round so a noisy neighbour hits both alike:

- memory: the arrays already in memory as network inputs (normalized float32, one copy made
  before timing), the loader only gathering batches;
- data: `fastopt train --data`'s path, the uint8 images loaded from the file and normalized batch
  by batch by the loader thread while the step runs.

Reports training samples/s (median over rounds) and data / memory, whose target is >= 0.9 (the
loader costs at most 10%). Progress on stderr, a Markdown table on stdout; --out DIR writes
results.json and results.md.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

import numpy as np

import fastopt
from fastopt import data as datasets
from fastopt.nn.models import small_cnn
from fastopt.train import TrainConfig, Trainer

from .report import cpu_model, header, save

TARGET = 0.9


def log(msg):
    print(f"[loader bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="fastopt bench loader", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=["cpu", "cuda", "auto"], default="auto")
    p.add_argument("--images", type=int, default=50000, help="training images in the generated file")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--rounds", type=int, default=3, help="epochs per contender, alternating")
    p.add_argument("--quick", action="store_true", help="2,000 images, 2 rounds")
    p.add_argument("--keep", metavar="PATH", help="write the generated .npz here (and reuse it if present)")
    p.add_argument("--out", metavar="DIR")
    a = p.parse_args(argv)
    if a.quick:
        a.images, a.rounds = 2000, 2
    if a.images < a.batch or a.rounds < 1:
        p.error("--images must be at least --batch, --rounds at least 1")
    return a


def make_npz(path, n, seed=0):
    """n random uint8 images (n, 32, 32, 3) and labels (n,) in 10 classes, as CIFAR-10's arrays."""
    rng = np.random.default_rng(seed)
    np.savez(
        path,
        x_train=rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
        y_train=rng.integers(0, 10, (n, 1), dtype=np.uint8),
    )


def _in_memory(d):
    """The same training images as ready network inputs: no preprocessing left for the loader."""
    train = datasets.Split(d.inputs(d.train.x), d.train.y)
    return datasets.Dataset(d.name, train, d.val, d.test, d.num_classes, 0.0, 1.0)


def run(args):
    device = "cuda:0" if args.device == "cuda" or (args.device == "auto" and fastopt.cuda.has_gpu()) else "cpu"
    with tempfile.TemporaryDirectory() as tmp:
        path = args.keep or os.path.join(tmp, "images.npz")
        if not os.path.exists(path):
            log(f"writing {args.images} images of 32x32x3 to {path}")
            make_npz(path, args.images)
        start = time.perf_counter()
        from_file = datasets.load(path, val_fraction=0.0, test_fraction=0.0)
        load_s = time.perf_counter() - start
    contenders = {"data": from_file, "memory": _in_memory(from_file)}
    config = TrainConfig(device=device, epochs=args.rounds, batch_size=args.batch, progress=False)
    trainers = {k: Trainer(small_cnn(3, 10), d, config) for k, d in contenders.items()}
    rates = {k: [] for k in trainers}
    for r in range(args.rounds):
        for name, t in trainers.items():
            metrics, _ = t.train_epoch()
            rates[name].append(metrics["samples_per_s"])
            log(f"round {r + 1}/{args.rounds} {name}: {metrics['samples_per_s']:.0f} samples/s")
    median = {k: statistics.median(v) for k, v in rates.items()}
    return {
        "device": device,
        "images": args.images,
        "batch": args.batch,
        "load_seconds": load_s,
        "samples_per_s": median,
        "all_samples_per_s": rates,
        "ratio": median["data"] / median["memory"],
        "target": TARGET,
        "met": median["data"] / median["memory"] >= TARGET,
    }


def markdown(doc):
    r = doc["row"]
    return "\n".join(
        [
            f"# fastopt bench loader ({doc['host']['cpu_model']}, {r['device']})",
            "",
            f"{r['images']} images of 32x32x3 uint8, batch {r['batch']}, small_cnn; the .npz loaded and its statistics "
            f"fitted in {r['load_seconds']:.1f} s.",
            "",
            "| device | memory samples/s | --data samples/s | data / memory | target |",
            "|---|---|---|---|---|",
            f"| {r['device']} | {r['samples_per_s']['memory']:.0f} | {r['samples_per_s']['data']:.0f} | "
            f"{r['ratio']:.3f} | >= {r['target']} {'met' if r['met'] else 'NOT met'} |",
        ]
    )


def main(argv=None):
    args = parse_args(argv)
    if args.device == "cuda" and not fastopt.cuda.has_gpu():
        log("no usable GPU")
        return 1
    doc = header(vars(args), {"cpu": cpu_model()})
    doc["row"] = run(args)
    text = markdown(doc)
    print(text)
    if args.out:
        save(args.out, doc, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
