"""`fastopt train`: the small CNN on digits by default, curves as PNG, metrics as JSON, and
`--search N`, a coarse-to-fine random search over lr and weight decay."""
import argparse
import json
import math
import os
import sys
import time

import numpy as np

from . import cuda, data as datasets
from .nn.models import small_cnn
from .train import OPTIMIZERS, Trainer, TrainConfig, config_from

DEFAULTS = TrainConfig()


def add_arguments(p):
    a = p.add_argument
    a("--device", default=DEFAULTS.device, help="auto (GPU if usable, else CPU), cpu, cuda, cuda:N")
    a("--epochs", type=int, default=DEFAULTS.epochs)
    a("--batch-size", type=int, default=DEFAULTS.batch_size)
    a("--optimizer", choices=OPTIMIZERS, default=DEFAULTS.optimizer)
    a("--lr", type=float, default=DEFAULTS.lr, help="peak learning rate (after warm-up)")
    a("--weight-decay", type=float, default=DEFAULTS.weight_decay, help="on conv/linear weights only")
    a("--warmup-epochs", type=float, default=DEFAULTS.warmup_epochs)
    a("--max-grad-norm", type=float, default=DEFAULTS.max_grad_norm, help="global-norm clipping; 0 disables")
    a("--label-smoothing", type=float, default=DEFAULTS.label_smoothing)
    a("--patience", type=int, default=DEFAULTS.patience, help="early stopping on validation loss")
    a("--seed", type=int, default=DEFAULTS.seed)
    g = p.add_argument_group("augmentation (on the device)")
    g.add_argument("--max-shift", type=int, default=DEFAULTS.max_shift, help="random translation in pixels")
    g.add_argument("--cutout", type=int, default=DEFAULTS.cutout, help="side of the zeroed square; 0 disables")
    g.add_argument("--flip", action="store_true", help="random horizontal flips (off for digits)")
    g.add_argument("--brightness", type=float, default=DEFAULTS.brightness)
    g.add_argument("--contrast", type=float, default=DEFAULTS.contrast)
    g.add_argument("--mixup", type=float, default=DEFAULTS.mixup, help="Beta(alpha, alpha) mixing; 0 disables")
    a("--width", type=int, nargs=2, default=(32, 64), metavar=("C1", "C2"), help="channels of the two stages")
    a("--dropout", type=float, default=0.25)
    a("--out", default="fastopt-train", help="folder for checkpoints, metrics.json and curves.png")
    a("--resume", help="a checkpoint (.npz) to continue from")
    a("--search", type=int, default=0, metavar="N",
      help="N short trials sampling lr and weight decay log-uniformly (coarse, then fine), as a table")
    a("--search-epochs", type=int, default=8)
    a("--quiet", action="store_true", help="no progress bars")


def _model(args, data):
    return small_cnn(data.shape[0], data.num_classes, widths=tuple(args.width), dropout=args.dropout)


def plot_curves(history, path):
    """Training and validation loss and accuracy per epoch, one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [m["epoch"] for m in history.epochs]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(ep, [m["train_loss"] for m in history.epochs], label="train")
    ax1.plot(ep, [m["val_loss"] for m in history.epochs], label="validation")
    ax1.set(xlabel="epoch", ylabel="cross-entropy", title="loss", yscale="log")
    ax2.plot(ep, [m["train_acc"] for m in history.epochs], label="train")
    ax2.plot(ep, [m["val_acc"] for m in history.epochs], label="validation")
    ax2.set(xlabel="epoch", ylabel="top-1 accuracy", title="accuracy")
    for ax in (ax1, ax2):
        if history.best_epoch > 0:
            ax.axvline(history.best_epoch, color="grey", ls=":", lw=1, label="best")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def train_once(args, data, progress=True, out_dir=None):
    config = config_from(vars(args))
    config.progress = progress
    trainer = Trainer(_model(args, data), data, config, out_dir=out_dir)
    if getattr(args, "resume", None):
        trainer.load(args.resume)
    start = time.perf_counter()
    history = trainer.fit()
    seconds = time.perf_counter() - start
    if out_dir and history.best_epoch > 0:
        trainer.load(os.path.join(out_dir, "best.npz"))  # report the best model, not the last
    return trainer, history, seconds


def _run(args):
    data = datasets.load_digits(seed=args.seed)
    if args.search:
        return _search(args, data)
    os.makedirs(args.out, exist_ok=True)
    trainer, history, seconds = train_once(args, data, progress=not args.quiet, out_dir=args.out)
    if not history.epochs:
        print(f"no epoch completed: {history.stopped}", file=sys.stderr)
        return 1
    test = trainer.evaluate(data.test)
    val = trainer.evaluate(data.val)
    k = trainer.config.topk
    report = {
        "data": {"name": data.name, "train": len(data.train), "val": len(data.val), "test": len(data.test)},
        "device": trainer.device, "config": vars(args), "seconds": seconds, "epochs_run": len(history.epochs),
        "best_epoch": history.best_epoch, "stopped": history.stopped, "val": val, "test": test,
        "history": history.epochs,
    }
    with open(os.path.join(args.out, "metrics.json"), "w") as f:
        json.dump(report, f, indent=2)
    try:
        plot_curves(history, os.path.join(args.out, "curves.png"))
    except ImportError as e:
        print(f"no curves.png ({e}; pip install matplotlib)", file=sys.stderr)
    print(f"{data.name} on {trainer.device}: {len(history.epochs)} epochs in {seconds:.1f} s; best epoch "
          f"{history.best_epoch}: val acc {val['acc']:.4f}; test loss {test['loss']:.4f}, test acc "
          f"{test['acc']:.4f}, top-{k} {test[f'top{k}']:.4f}")
    print(f"wrote {args.out}/: metrics.json, curves.png, best.npz (lowest validation loss), last.npz")
    return 0 if not history.stopped or history.stopped.startswith("early stop") else 2


def _search(args, data):
    """Random search: the first half of the trials sample lr in [1e-4, 1e-1] and weight decay in
    [1e-6, 1e-2] log-uniformly; the second half sample within half a decade of the best so far."""
    rng = np.random.default_rng(args.seed)
    ranges = {"lr": (1e-4, 1e-1), "weight_decay": (1e-6, 1e-2)}
    results = []
    base = vars(args).copy()
    base.update(epochs=args.search_epochs, patience=args.search_epochs, resume=None)
    for trial in range(args.search):
        if trial == (args.search + 1) // 2 and results:
            best = min(results, key=lambda r: r["val_loss"])
            ranges = {k: (best[k] / 10 ** 0.5, best[k] * 10 ** 0.5) for k in ranges}
        sample = {k: float(math.exp(rng.uniform(math.log(lo), math.log(hi)))) for k, (lo, hi) in ranges.items()}
        trial_args = argparse.Namespace(**{**base, **sample})
        trainer, history, seconds = train_once(trial_args, data, progress=False)
        val = trainer.evaluate(data.val) if history.epochs else {"loss": math.inf, "acc": 0.0}
        results.append({**sample, "val_loss": val["loss"], "val_acc": val["acc"], "seconds": seconds,
                        "stage": "coarse" if trial < (args.search + 1) // 2 else "fine",
                        "note": history.stopped if history.stopped and not history.stopped.startswith("early") else ""})
        r = results[-1]
        print(f"trial {trial + 1}/{args.search} ({r['stage']}): lr {r['lr']:.2e} wd {r['weight_decay']:.2e} -> "
              f"val loss {r['val_loss']:.4f} acc {r['val_acc']:.4f} ({seconds:.1f} s)", file=sys.stderr)
    results.sort(key=lambda r: r["val_loss"])
    print(f"\n{'rank':>4} {'stage':>6} {'lr':>10} {'weight_decay':>12} {'val_loss':>9} {'val_acc':>8}  note")
    for i, r in enumerate(results):
        print(f"{i + 1:>4} {r['stage']:>6} {r['lr']:>10.3e} {r['weight_decay']:>12.3e} {r['val_loss']:>9.4f} "
              f"{r['val_acc']:>8.4f}  {r['note'][:40]}")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "search.json"), "w") as f:
        json.dump(results, f, indent=2)
    return 0


def main(argv=None):
    p = argparse.ArgumentParser(prog="fastopt train", description="Train a small CNN on scikit-learn's digits with "
                                "fastopt's kernels (AdamW, warm-up + cosine, clipping, augmentation on the device).")
    add_arguments(p)
    args = p.parse_args(argv)
    if args.device.startswith("cuda") and not cuda.is_available():
        p.error(f"--device {args.device}: no usable CUDA GPU here (fastopt.cuda.is_available() is False); "
                "use --device cpu or auto")
    if args.device.startswith("cuda") and cuda.is_emulated():
        print("note: this build's CUDA device is the host emulation (FASTOPT_CUDA=EMULATE): right, but slow",
              file=sys.stderr)
    return _run(args)
