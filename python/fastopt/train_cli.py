"""`fastopt train`: the small CNN (or a CIFAR ResNet: --model resnet20) on digits or the user's own
data (--data: an .npz or an ImageFolder), curves as PNG, metrics as JSON, a per-step log
(steps.jsonl, TensorBoard with --tensorboard), and the lectures' tools: `--search N` (a
coarse-to-fine random search over lr and weight decay), `--lr-find`, `--sanity`, `--snapshots`."""

import argparse
import json
import math
import os
import re
import shutil
import sys
import time

import numpy as np

from . import _arrays, _options, cuda, data as datasets, diagnose
from .datafiles import LAYOUTS
from .distributed import launch
from .nn.models import resnet, small_cnn
from .preprocess import WHITENINGS
from .runlog import RunLog, writer_class
from .train import (
    LIMITS,
    OPTIMIZERS,
    PRECISIONS,
    TTA_MODES,
    CheckpointError,
    TrainConfig,
    Trainer,
    config_from,
    read_checkpoint,
    write_atomically,
)

DEFAULTS = TrainConfig()


def _device(text):
    """auto, cpu, cuda or cuda:N: anything else is a usage error."""
    if text in ("auto", "cpu"):
        return text
    if not re.fullmatch(r"cuda(:\d+)?", text):
        raise argparse.ArgumentTypeError(f"expected auto, cpu, cuda or cuda:N, got {text!r}")
    return _arrays.canonical_device(text)


def add_arguments(p):
    def a(*names, **kw):
        """An option; a config field's range (train.LIMITS) becomes its argparse type."""
        field = names[0][2:].replace("-", "_")
        if field in LIMITS:
            kw["type"] = _options.arg_type(*LIMITS[field])
            kw.setdefault("default", getattr(DEFAULTS, field))
        return (kw.pop("group", None) or p).add_argument(*names, **kw)

    a("--device", type=_device, default=DEFAULTS.device, help="auto (GPU if usable, else CPU), cpu, cuda, cuda:N")
    a("--epochs", help="total epochs (with --resume: of the whole run, the checkpoint's included)")
    a("--batch-size")
    a("--optimizer", choices=OPTIMIZERS, default=DEFAULTS.optimizer)
    a(
        "--precision",
        choices=PRECISIONS,
        default=DEFAULTS.precision,
        help="bf16: bfloat16 activations and conv/linear math with float32 master weights (CPU)",
    )
    a("--lr", help="peak learning rate (after warm-up)")
    a("--weight-decay", help="on conv/linear weights only")
    a("--warmup-epochs", help="linear warm-up, at most --epochs (default: 2, or --epochs when fewer)")
    a("--max-grad-norm", help="global-norm clipping; 0 disables")
    a("--label-smoothing", help="in [0, 1]")
    a("--patience", help="early stopping on validation loss")
    a("--seed")
    a(
        "--accumulate",
        help="micro-batches of --batch-size per optimizer step (gradient accumulation: for a network "
        "without batch norm the same step as one batch N times larger)",
    )
    a(
        "--ema",
        help="keep a moving average of the weights with this decay (e.g. 0.999, ramped up early on) and "
        "evaluate and checkpoint it; 0 disables",
    )
    g = p.add_argument_group("augmentation (on the device)")
    a("--max-shift", group=g, help="random translation in pixels")
    a("--cutout", group=g, help="side of the zeroed square; 0 disables")
    a("--flip", group=g, action="store_true", help="random horizontal flips (off for digits)")
    a("--brightness", group=g)
    a("--contrast", group=g, help="in [0, 1]")
    a("--mixup", group=g, help="Beta(alpha, alpha) mixing; 0 disables")
    a("--cutmix", group=g, help="Beta(alpha, alpha) CutMix; 0 disables; with --mixup, one of the two per step")
    a(
        "--crop-scale",
        group=g,
        metavar="S",
        help="random-resized crop of a fraction U(S, 1) of the area (aspect 3/4 to 4/3), resized back; 0 disables",
    )
    a("--rotation", group=g, metavar="DEG", help="random rotation within +-DEG degrees")
    a(
        "--pca-jitter",
        group=g,
        metavar="SIGMA",
        help="AlexNet's colour jitter along the training set's channel PCA (0.1 in the paper); 0 disables",
    )
    a(
        "--alt-flip",
        group=g,
        action="store_true",
        help="alternating flip: each image mirrored every other epoch (instead of --flip)",
    )
    a(
        "--tta",
        group=g,
        choices=TTA_MODES,
        help="evaluate on the mean logits of test-time views: flip, five_crop or "
        "ten_crop (crops shifted by --max-shift)",
    )
    g = p.add_argument_group("data (default: scikit-learn's digits)")
    a(
        "--data",
        group=g,
        metavar="PATH",
        help="an .npz (x_train, y_train; optional x_val, y_val, x_test, y_test; NCHW or NHWC, uint8 or float) or an "
        "ImageFolder (one subfolder of PNG/JPEG images per class, or train/ val/ test/ folders of those); splits "
        "missing are drawn from the training images by --seed",
    )
    a(
        "--image-size",
        group=g,
        type=_options.arg_type("int", 1),
        metavar="S",
        help="resize an ImageFolder's images to S x S (required when their sizes differ)",
    )
    a("--layout", group=g, choices=LAYOUTS, default="auto", help="an .npz's image layout (auto: by the channel axis)")
    a(
        "--whiten",
        group=g,
        choices=("none",) + WHITENINGS,
        default="none",
        help="after per-channel normalization, PCA or ZCA whitening of the training images (small images only)",
    )
    a(
        "--whiten-eps",
        group=g,
        type=_options.arg_type("real", 0.0, None, True),
        default=1e-2,
        help="added to the covariance's eigenvalues (the features have unit variance)",
    )
    a(
        "--model",
        choices=MODELS,
        default="cnn",
        help="cnn: the small CNN (--width, --dropout); resnetN: the CIFAR ResNet of depth N (He et al.)",
    )
    a(
        "--width",
        type=_options.arg_type("int", 1),
        nargs=2,
        default=(32, 64),
        metavar=("C1", "C2"),
        help="channels of the small CNN's two stages",
    )
    a("--dropout", type=_options.arg_type("real", 0.0, 1.0), default=0.25)
    a("--out", default="fastopt-train", help="folder for checkpoints, metrics.json and curves.png")
    a(
        "--resume",
        help="a checkpoint (.npz) to continue from; --epochs counts the whole run, and the schedule "
        "follows the options given now from the checkpoint's step on",
    )
    a(
        "--snapshots",
        metavar="N",
        help="SGDR: N cosine cycles of whole epochs (no warm-up unless given), a snapshot-K.npz "
        "at the end of each, for fastopt evaluate's snapshot ensemble; 0: one cosine",
    )
    a(
        "--search",
        type=_options.arg_type("int", 0),
        default=0,
        metavar="N",
        help="N short trials sampling lr and weight decay log-uniformly (coarse, then fine), as a table",
    )
    a("--search-epochs", type=_options.arg_type("int", 1), default=8)
    a(
        "--lr-find",
        action="store_true",
        help="instead of training: the learning-rate range test (exponential sweep "
        "1e-7 to 10), lr_find.png and lr_find.json in --out, a suggested --lr",
    )
    a("--lr-find-steps", type=_options.arg_type("int", 2), default=100, metavar="N")
    a(
        "--sanity",
        action="store_true",
        help="instead of training: initial loss ~ log(C) with regularization off, "
        "and overfitting 20 training images; pass/fail with the numbers",
    )
    a("--quiet", action="store_true", help="no progress bars")
    a(
        "--nproc",
        type=_options.arg_type("int", 1),
        default=1,
        metavar="N",
        help="N local processes training one model (data parallel: gloo on the CPU, NCCL on GPUs); --batch-size is "
        "per process; rank 0 alone writes --out. Under torchrun (several machines) leave it out",
    )
    a("--sync-bn", action="store_true", help="in a data-parallel run: batch norm statistics over every process's batch")
    g = p.add_argument_group("watching the run (every run writes --out/steps.jsonl, one JSON line per step)")
    a(
        "--tensorboard",
        group=g,
        metavar="DIR",
        help="also write TensorBoard event files under DIR: scalars, per-layer "
        "weight/gradient norms and histograms, update/weight ratios",
    )
    a(
        "--tensorboard-every",
        group=g,
        type=_options.arg_type("int", 1),
        default=20,
        metavar="N",
        help="steps between the per-layer norms, histograms and update ratios",
    )


def check_arguments(args, error):
    """What one option's type cannot see: options against each other, and the output folder.
    `error` is the parser's error method (a one-line usage error, exit code 2)."""
    epochs, which = (args.search_epochs, "--search-epochs") if args.search else (args.epochs, "--epochs")
    if args.warmup_epochs is not None and args.warmup_epochs > epochs:
        error(f"argument --warmup-epochs: must not exceed {which} ({epochs}), got {args.warmup_epochs:g}")
    if args.snapshots:
        warmup = args.warmup_epochs or 0.0
        if warmup % 1 or (epochs - warmup) % args.snapshots:
            error(
                f"argument --snapshots: the {epochs - warmup:g} epochs after warm-up must split into {args.snapshots} "
                f"cycles of whole epochs"
            )
    if sum(map(bool, (args.search, args.lr_find, args.sanity))) > 1:
        error("argument --search/--lr-find/--sanity: one at a time")
    if args.flip and args.alt_flip:
        error("argument --alt-flip: replaces --flip; give one of them")
    if args.search and args.resume:
        error("argument --resume: not allowed with --search (every trial starts afresh)")
    if args.precision == "bf16" and args.accumulate > 1:
        error("argument --precision: bf16 with --accumulate above 1: not yet")
    if args.tensorboard:
        try:
            writer_class()
        except ImportError as e:
            error(f"argument --tensorboard: {e}")
        if _options.unwritable(args.tensorboard):
            error(f"argument --tensorboard: {_options.unwritable(args.tensorboard)}")
    unwritable = _options.unwritable(args.out)
    if unwritable:
        error(f"argument --out: {unwritable}")


MODELS = ("cnn", "resnet20", "resnet32", "resnet44", "resnet56")


def model_spec(args, data):
    """What rebuilds the network (stored in checkpoints for fastopt evaluate)."""
    return {
        "model": getattr(args, "model", "cnn"),
        "width": list(args.width),
        "dropout": args.dropout,
        "in_channels": int(data.shape[0]),
        "num_classes": int(data.num_classes),
    }


def build_model(spec):
    if spec["model"].startswith("resnet"):
        return resnet(int(spec["model"][6:]), spec["num_classes"], in_channels=spec["in_channels"])
    return small_cnn(spec["in_channels"], spec["num_classes"], widths=tuple(spec["width"]), dropout=spec["dropout"])


def _model(args, data):
    return launch.wrap(build_model(model_spec(args, data)), args)  # DataParallel in a distributed run


def load_data(args):
    """The data set the options name: digits, or --data's (ValueError/OSError naming the problem)."""
    if not getattr(args, "data", None):
        return datasets.load_digits(seed=args.seed)
    return datasets.load(
        args.data,
        image_size=args.image_size,
        whiten=args.whiten,
        whiten_eps=args.whiten_eps,
        seed=args.seed,
        layout=args.layout,
    )


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


def _is_best(path, history):
    """Whether `path` is the checkpoint of this run's best epoch (not a stale or foreign file)."""
    try:
        meta = read_checkpoint(path)[0]
    except CheckpointError:
        return False
    return meta["epoch"] == history.best_epoch and meta["history"]["best_val_loss"] == history.best_val_loss


def _carry_best(trainer, resume, out_dir):
    """Resuming into another folder: bring the best checkpoint so far along (the one beside the
    resumed file, or the resumed state itself when that is the best), so that out_dir/best.npz is
    this run's best even if no later epoch beats it."""
    history, best = trainer.history, os.path.join(out_dir, "best.npz")
    if history.best_epoch < 1 or _is_best(best, history):
        return
    if history.best_epoch == trainer.epoch:
        trainer.save(best)
        return
    source = os.path.join(os.path.dirname(os.path.abspath(resume)), "best.npz")
    if _is_best(source, history):
        with open(source, "rb") as f:
            write_atomically(best, lambda out: shutil.copyfileobj(f, out))
    else:
        print(
            f"note: the best checkpoint so far (epoch {history.best_epoch}) is not beside {resume}; "
            f"{best} will be written only if a later epoch beats it",
            file=sys.stderr,
        )


def train_once(args, data, progress=True, out_dir=None):
    config = config_from(vars(args))
    config.progress = progress
    monitor = None
    if out_dir:
        monitor = RunLog(
            os.path.join(out_dir, "steps.jsonl"),
            getattr(args, "tensorboard", None),
            getattr(args, "tensorboard_every", 20),
            config.check_every,
            append=bool(getattr(args, "resume", None)),
        )
    trainer = Trainer(
        _model(args, data), data, config, out_dir=out_dir, model_spec=model_spec(args, data), monitor=monitor
    )
    if getattr(args, "resume", None):
        print(trainer.load(args.resume), file=sys.stderr)
        if out_dir:
            _carry_best(trainer, args.resume, out_dir)
    start = time.perf_counter()
    try:
        history = trainer.fit()
    finally:
        if monitor is not None:
            monitor.close()
    seconds = time.perf_counter() - start
    if out_dir and history.best_epoch > 0:
        best = os.path.join(out_dir, "best.npz")
        if _is_best(best, history):
            trainer.load(best)  # report the best model, not the last
        else:
            print(
                f"note: no best.npz of epoch {history.best_epoch} in {out_dir}; reporting the last model",
                file=sys.stderr,
            )
    return trainer, history, seconds


def _write_json(path, value):
    write_atomically(path, lambda f: f.write(json.dumps(value, indent=2).encode()))


def _lr_find(args, data):
    result = diagnose.lr_find(_model(args, data), data, config_from(vars(args)), steps=args.lr_find_steps)
    _write_json(os.path.join(args.out, "lr_find.json"), result)
    try:
        diagnose.plot_lr_find(result, os.path.join(args.out, "lr_find.png"))
    except ImportError as e:
        print(f"no lr_find.png ({e}; pip install matplotlib)", file=sys.stderr)
    print(
        f"lr range test ({len(result['lr'])} steps, {result['stopped']}): smallest smoothed loss "
        f"{min(result['smoothed']):.4f} at lr {result['min_loss_lr']:.3g}; suggested --lr {result['suggested_lr']:.3g}"
    )
    print(f"wrote {args.out}/: lr_find.json, lr_find.png")
    return 0


def _sanity(args, data):
    spec = {**model_spec(args, data), "dropout": 0.0}
    result = diagnose.sanity(lambda: build_model(spec), data, config_from(vars(args)))
    print("\n".join(diagnose.sanity_report(result)))
    _write_json(os.path.join(args.out, "sanity.json"), result)
    return 0 if result["passed"] else 1


def _run(args, data):
    if args.search:
        return _search(args, data)
    if args.lr_find:
        return _lr_find(args, data)
    if args.sanity:
        return _sanity(args, data)
    trainer, history, seconds = train_once(args, data, progress=not args.quiet, out_dir=args.out)
    if not history.epochs:
        print(f"no epoch completed: {history.stopped}", file=sys.stderr)
        return 1
    test = trainer.evaluate(data.test)
    val = trainer.evaluate(data.val)
    k = trainer.config.topk
    report = {
        "data": {"name": data.name, "train": len(data.train), "val": len(data.val), "test": len(data.test)},
        "device": trainer.device,
        "config": vars(args),
        "seconds": seconds,
        "epochs_run": len(history.epochs),
        "best_epoch": history.best_epoch,
        "stopped": history.stopped,
        "val": val,
        "test": test,
        "history": history.epochs,
    }
    _write_json(os.path.join(args.out, "metrics.json"), report)
    try:
        plot_curves(history, os.path.join(args.out, "curves.png"))
    except ImportError as e:
        print(f"no curves.png ({e}; pip install matplotlib)", file=sys.stderr)
    print(
        f"{data.name} on {trainer.device}: {len(history.epochs)} epochs in {seconds:.1f} s; best epoch "
        f"{history.best_epoch}: val acc {val['acc']:.4f}; test loss {test['loss']:.4f}, test acc "
        f"{test['acc']:.4f}, top-{k} {test[f'top{k}']:.4f}"
    )
    written = [
        n for n in ("metrics.json", "curves.png", "best.npz", "last.npz") if os.path.exists(os.path.join(args.out, n))
    ]
    print(f"wrote {args.out}/: {', '.join(written)} (best.npz: lowest validation loss)")
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
            ranges = {k: (best[k] / 10**0.5, best[k] * 10**0.5) for k in ranges}
        sample = {k: float(math.exp(rng.uniform(math.log(lo), math.log(hi)))) for k, (lo, hi) in ranges.items()}
        trial_args = argparse.Namespace(**{**base, **sample})
        trainer, history, seconds = train_once(trial_args, data, progress=False)
        val = trainer.evaluate(data.val) if history.epochs else {"loss": math.inf, "acc": 0.0}
        results.append(
            {
                **sample,
                "val_loss": val["loss"],
                "val_acc": val["acc"],
                "seconds": seconds,
                "stage": "coarse" if trial < (args.search + 1) // 2 else "fine",
                "note": history.stopped if history.stopped and not history.stopped.startswith("early") else "",
            }
        )
        r = results[-1]
        print(
            f"trial {trial + 1}/{args.search} ({r['stage']}): lr {r['lr']:.2e} wd {r['weight_decay']:.2e} -> "
            f"val loss {r['val_loss']:.4f} acc {r['val_acc']:.4f} ({seconds:.1f} s)",
            file=sys.stderr,
        )
    results.sort(key=lambda r: r["val_loss"])
    print(f"\n{'rank':>4} {'stage':>6} {'lr':>10} {'weight_decay':>12} {'val_loss':>9} {'val_acc':>8}  note")
    for i, r in enumerate(results):
        print(
            f"{i + 1:>4} {r['stage']:>6} {r['lr']:>10.3e} {r['weight_decay']:>12.3e} {r['val_loss']:>9.4f} "
            f"{r['val_acc']:>8.4f}  {r['note'][:40]}"
        )
    _write_json(os.path.join(args.out, "search.json"), results)
    return 0


def main(argv=None):
    p = argparse.ArgumentParser(
        prog="fastopt train",
        description="Train a small CNN on scikit-learn's digits or your "
        "own images (--data) with fastopt's kernels (AdamW, warm-up + cosine, clipping, "
        "augmentation on the device).",
    )
    add_arguments(p)
    args = p.parse_args(argv)
    check_arguments(args, p.error)
    if args.nproc > 1 and not launch.in_distributed_run():
        try:
            return launch.spawn(args, sys.argv[1:] if argv is None else list(argv))
        except ValueError as e:
            p.error(f"argument {e}")
    if args.device.startswith("cuda") and not cuda.is_available():
        p.error(
            f"argument --device: {args.device}, but no usable CUDA GPU here (fastopt.cuda.is_available() is "
            "False); use --device cpu or auto"
        )
    if args.device.startswith("cuda") and int(args.device[5:]) >= cuda.device_count():
        p.error(f"argument --device: {args.device}, but this machine has {cuda.device_count()} GPU(s)")
    if args.device.startswith("cuda") and cuda.is_emulated():
        print(
            "note: this build's CUDA device is the host emulation (FASTOPT_CUDA=EMULATE): right, but slow",
            file=sys.stderr,
        )
    try:
        data = load_data(args)
    except (ValueError, OSError) as e:
        p.error(f"argument --data: {e}")
    if launch.in_distributed_run():
        try:
            data = launch.setup(args, data)
        except ValueError as e:
            p.error(f"argument {e}")
    try:
        return _run(args, data)
    except CheckpointError as e:
        p.error(f"argument --resume: {e}")
