"""`fastopt transfer`: does pretraining help when labels are few? The lectures' experiment, measured.

On scikit-learn's digits (shipped with the package): pretrain the small CNN on digits 0-4, then
learn digits 5-9 from K labelled images per class (K = 5, 10, 50 by default) three ways:

- scratch: the same network, freshly initialized, all of it trained at --lr;
- linear probe: the pretrained body frozen (batch norm on its running statistics), a new head
  (the last Linear) trained alone at --head-lr (a linear model on fixed features takes a larger
  step than a deep network); backward stops at the head;
- fine-tune: the pretrained body and a new head trained together, the head at --head-lr and the
  body at a tenth of it (store.param_groups' lr_scale), as the lectures advise.

Every run takes the same number of optimizer steps (--steps), whatever K.

The head is replaced by loading the pretrained state_dict with strict=False after dropping the
head's entries, so the new head keeps its initialization. Each cell of the table is the mean
(and standard deviation) over several seeds of the test accuracy on all test images of 5-9; each
seed draws its own K images per class. Prints the table and writes transfer.json and
transfer.png to --out.
"""

import argparse
import json
import math
import os
import sys
import time

import numpy as np

from . import _options, data as datasets
from .nn.models import small_cnn
from .train import TrainConfig, Trainer, resolve_device, write_atomically

METHODS = ("scratch", "linear probe", "fine-tune")
BODY_LR_SCALE = 0.1


def _classes(split, classes):
    keep = np.isin(split.y, classes)
    return datasets.Split(split.x[keep], (split.y[keep] - classes[0]).astype(np.int32))


def task(data, classes):
    """The digits of `classes` (consecutive), relabelled 0, 1, ..."""
    parts = [_classes(s, classes) for s in (data.train, data.val, data.test)]
    return datasets.Dataset(f"digits {classes[0]}-{classes[-1]}", *parts, len(classes), data.mean, data.std)


def few_shot(data, k, seed):
    """`data` with only k training images per class, drawn with `seed`."""
    rng = np.random.default_rng([seed, k])
    idx = np.concatenate(
        [rng.choice(np.flatnonzero(data.train.y == c), k, replace=False) for c in range(data.num_classes)]
    )
    idx = rng.permutation(idx)
    train = datasets.Split(data.train.x[idx], data.train.y[idx])
    return datasets.Dataset(
        f"{data.name}, {k} per class", train, data.val, data.test, data.num_classes, data.mean, data.std
    )


def _config(args, steps, seed, n_train, lr=None):
    """About `steps` optimizer steps, whatever the training set's size (whole epochs of batches of
    at most batch_size): every method and K gets the same number of updates."""
    batch = min(args.batch_size, n_train)
    epochs = max(1, round(steps / math.ceil(n_train / batch)))
    return TrainConfig(
        device=args.device,
        epochs=epochs,
        batch_size=batch,
        lr=lr or args.lr,
        warmup_epochs=min(epochs / 10, 2.0),
        patience=epochs + 1,
        seed=seed,
        progress=False,
    )


def _network(args, num_classes):
    return small_cnn(1, num_classes, widths=tuple(args.width))


def pretrain(args, source):
    """The small CNN trained on the source task; returns its state_dict and test accuracy."""
    trainer = Trainer(
        _network(args, source.num_classes), source, _config(args, args.pretrain_steps, 0, len(source.train))
    )
    trainer.fit()
    return trainer.model.state_dict(), trainer.evaluate(source.test)["acc"]


def run(args, method, target, pretrained, seed):
    """Test accuracy on the target task after training with `method`."""
    model = _network(args, target.num_classes)
    config = _config(args, args.steps, seed, len(target.train), None if method == "scratch" else args.head_lr)
    lr_scale = None
    if method != "scratch":
        model.build(resolve_device(args.device), seed=seed)
        head = str(len(model.layers) - 1)
        body = {k: v for k, v in pretrained.items() if not k.startswith(head + ".")}
        model.load_state_dict(body, strict=False)  # the new head keeps its initialization
        if method == "linear probe":
            model.freeze()
            model.layers[-1].unfreeze()
            config.max_shift = 0  # the frozen features were not trained to ignore shifts: they only add noise
        else:
            lr_scale = {"": BODY_LR_SCALE, head: 1.0}
    trainer = Trainer(model, target, config, lr_scale=lr_scale)
    trainer.fit()
    return trainer.evaluate(target.test)["acc"]


def experiment(args, log=print):
    digits = datasets.load_digits(seed=0)
    source, target = task(digits, list(range(0, 5))), task(digits, list(range(5, 10)))
    start = time.perf_counter()
    pretrained, source_acc = pretrain(args, source)
    log(
        f"pretrained on {source.name} ({len(source.train)} images, {args.pretrain_steps} steps): test acc "
        f"{source_acc:.3f} ({time.perf_counter() - start:.1f} s)"
    )
    results = {m: {} for m in METHODS}
    for k in args.shots:
        for method in METHODS:
            accs = [run(args, method, few_shot(target, k, seed), pretrained, seed) for seed in range(args.seeds)]
            results[method][k] = accs
            log(f"K={k:3d} {method:>13}: {np.mean(accs):.3f} +- {np.std(accs):.3f} over {args.seeds} seeds")
    return {
        "source": source.name,
        "target": target.name,
        "source_test_acc": source_acc,
        "shots": list(args.shots),
        "seeds": args.seeds,
        "steps": args.steps,
        "pretrain_steps": args.pretrain_steps,
        "lr": args.lr,
        "head_lr": args.head_lr,
        "body_lr_scale": BODY_LR_SCALE,
        "test_images": len(target.test),
        "seconds": time.perf_counter() - start,
        "accuracy": {m: {str(k): v for k, v in r.items()} for m, r in results.items()},
    }


def table(report):
    lines = [
        f"test accuracy on {report['target']} ({report['test_images']} images), mean +- std over "
        f"{report['seeds']} seeds; pretrained on {report['source']} (test acc {report['source_test_acc']:.3f})",
        f"{'K per class':>11} " + " ".join(f"{m:>15}" for m in METHODS),
    ]
    for k in report["shots"]:
        cells = [report["accuracy"][m][str(k)] for m in METHODS]
        lines.append(f"{k:>11} " + " ".join(f"{np.mean(c):>8.3f} +-{np.std(c):.3f}" for c in cells))
    return "\n".join(lines)


def plot(report, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ks = report["shots"]
    for m in METHODS:
        accs = [report["accuracy"][m][str(k)] for k in ks]
        ax.errorbar(ks, [np.mean(a) for a in accs], yerr=[np.std(a) for a in accs], marker="o", capsize=3, label=m)
    ax.set(
        xscale="log",
        xticks=ks,
        xticklabels=[str(k) for k in ks],
        xlabel="labelled images per class (K)",
        ylabel="test accuracy",
        title=f"{report['target']} after pretraining on {report['source']}",
    )
    ax.minorticks_off()
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="fastopt transfer", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="fastopt-transfer", help="folder for transfer.json and transfer.png")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    p.add_argument(
        "--shots",
        type=_options.arg_type("int", 1),
        nargs="+",
        metavar="K",
        help="labelled images per class of the target task (default: 5 10 50)",
    )
    p.add_argument("--seeds", type=_options.arg_type("int", 1), default=3, help="runs per cell (their mean)")
    p.add_argument(
        "--steps",
        type=_options.arg_type("int", 1),
        default=200,
        help="optimizer steps on the target task, for every K and method",
    )
    p.add_argument("--pretrain-steps", type=_options.arg_type("int", 1), default=400)
    p.add_argument("--lr", type=_options.arg_type("real", 0.0), default=3e-3, help="peak lr from scratch")
    p.add_argument(
        "--head-lr",
        type=_options.arg_type("real", 0.0),
        default=3e-2,
        help="peak lr of a new head (fine-tuning: the body's is a tenth of it)",
    )
    p.add_argument("--batch-size", type=_options.arg_type("int", 1), default=32)
    p.add_argument("--width", type=_options.arg_type("int", 1), nargs=2, default=(32, 64), metavar=("C1", "C2"))
    p.add_argument("--quick", action="store_true", help="a smoke run: 1 seed, K = 5 and 10, few epochs, narrow net")
    args = p.parse_args(argv)
    if args.quick:
        args.seeds, args.steps, args.pretrain_steps, args.width = 1, 10, 20, (8, 16)
    args.shots = args.shots or ([5, 10] if args.quick else [5, 10, 50])
    scarcest = int(np.bincount(datasets.load_digits(seed=0).train.y).min())
    if max(args.shots) > scarcest:
        p.error(
            f"argument --shots: the training split has {scarcest} images of its scarcest digit, got "
            f"{max(args.shots)} per class"
        )
    unwritable = _options.unwritable(args.out)
    if unwritable:
        p.error(f"argument --out: {unwritable}")
    try:
        resolve_device(args.device)
    except ValueError as e:
        p.error(f"argument --device: {e}")
    return args


def main(argv=None):
    args = parse_args(argv)
    report = experiment(args, log=lambda msg: print(msg, file=sys.stderr, flush=True))
    text = table(report)
    print(text)
    os.makedirs(args.out, exist_ok=True)
    write_atomically(os.path.join(args.out, "transfer.json"), lambda f: f.write(json.dumps(report, indent=2).encode()))
    try:
        plot(report, os.path.join(args.out, "transfer.png"))
    except ImportError as e:
        print(f"no transfer.png ({e}; pip install matplotlib)", file=sys.stderr)
    print(f"wrote {args.out}/: transfer.json, transfer.png")
    return 0
