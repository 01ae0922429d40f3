"""The lectures' checks before a long run: the learning-rate range test and the sanity checks.

lr_find (Smith, "Cyclical learning rates"; fastai's lr_find): train from the fresh network for
`steps` steps with the lr rising exponentially from `start` to `end`, record the loss smoothed by
a bias-corrected exponential moving average (beta 0.98), stop once the smoothed loss passes 4x
its minimum (diverged). Suggested lr: the lr of the smallest smoothed loss divided by 10, the
usual reading of the plot (the loss still falls fast there, well short of the blow-up).

sanity: with regularization off (no weight decay, dropout, label smoothing or augmentation),
(1) the loss of the untrained network on a batch is close to log(C), the loss of a uniform
guess over C classes; (2) the network drives a small training subset to ~100% accuracy. A
network failing either has a bug (initialization, wiring, gradients) that no tuning will fix.
"""

import math
from dataclasses import replace

import numpy as np

from . import data as datasets
from .train import Trainer, TrainingStopped

__all__ = ["lr_find", "sanity", "plot_lr_find"]

SMOOTHING = 0.9
DIVERGED = 4.0


def _loss(trainer, x, y, rng, indices):
    """One training step's loss at the optimizer's current lr (float, read back)."""
    x, y = trainer._augment(x, y, rng, indices=indices)
    logits = trainer.model.forward(x, training=True)
    loss = trainer.loss_fn.forward(logits, y, training=True)
    trainer.model.backward(trainer.loss_fn.backward())
    trainer.optimizer.step(
        trainer.store.grads_for(trainer.optimizer), max_grad_norm=trainer.config.max_grad_norm or None
    )
    return float(loss)


def lr_find(model, data, config, start=1e-7, end=10.0, steps=100):
    """{"lr": [...], "loss": [...], "smoothed": [...], "suggested_lr": float, "min_loss_lr": float,
    "stopped": str}. `model` is trained (a fresh one: build it for this test only)."""
    if not 0 < start < end:
        raise ValueError(f"lr range: expected 0 < start < end, got {start} and {end}")
    trainer = Trainer(model, data, replace(config, progress=False))
    scales = [g["lr"] / config.lr for g in trainer._fresh_groups]  # lr_scale groups keep their ratios
    rng = np.random.default_rng([config.seed, 2])
    lrs, losses, smoothed = [], [], []
    avg, best, stopped, epoch = 0.0, math.inf, "", 0
    while len(lrs) < steps and not stopped:
        batches = trainer._epoch_batches(epoch)
        for b, (x, y) in enumerate(batches):
            k = len(lrs)
            if k == steps:
                break
            lr = start * (end / start) ** (k / max(steps - 1, 1))
            for group, s in zip(trainer.optimizer.param_groups, scales):
                group["lr"] = lr * s
            loss = _loss(trainer, x, y, rng, batches.order[b * config.batch_size : (b + 1) * config.batch_size])
            trainer.step += 1
            if not math.isfinite(loss):
                stopped = f"loss {loss} at lr {lr:.3g}"
                break
            avg = SMOOTHING * avg + (1 - SMOOTHING) * loss
            value = avg / (1 - SMOOTHING ** (k + 1))
            lrs.append(lr)
            losses.append(loss)
            smoothed.append(value)
            best = min(best, value)
            if value > DIVERGED * best:
                stopped = f"smoothed loss {value:.4g} above {DIVERGED:g}x its minimum {best:.4g} at lr {lr:.3g}"
                break
        epoch += 1
    if not smoothed:
        raise TrainingStopped(f"lr_find: the loss was not finite from the first step ({stopped})")
    at_min = lrs[int(np.argmin(smoothed))]
    return {
        "lr": lrs,
        "loss": losses,
        "smoothed": smoothed,
        "min_loss_lr": at_min,
        "suggested_lr": at_min / 10,
        "stopped": stopped or f"{steps} steps done",
    }


def plot_lr_find(result, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(result["lr"], result["loss"], alpha=0.3, label="loss")
    ax.plot(result["lr"], result["smoothed"], label="smoothed")
    ax.axvline(result["suggested_lr"], color="C3", ls="--", label=f"suggested {result['suggested_lr']:.2g}")
    top = min(max(result["smoothed"]), DIVERGED * min(result["smoothed"]))
    ax.set(
        xscale="log",
        xlabel="learning rate",
        ylabel="training loss",
        title="learning-rate range test",
        ylim=(None, top * 1.05),
    )
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def sanity(make_model, data, config, subset=20, steps=200, tolerance=0.25, target_acc=0.99):
    """Both checks; make_model() returns a fresh unbuilt network with its dropout off.

    Returns {"initial_loss", "log_classes", "initial_ok", "overfit_loss", "overfit_acc",
    "overfit_ok", "passed"}. The initial loss passes within `tolerance` x log(C) of log(C): a
    network whose logits start with a spread of order 1 (He-initialized layers, a head of fan-in
    scale) sits within ~0.5 of it; one whose logits start large (a scale bug) is far above."""
    quiet = dict(
        weight_decay=0.0,
        label_smoothing=0.0,
        max_shift=0,
        cutout=0,
        flip=False,
        brightness=0.0,
        contrast=0.0,
        mixup=0.0,
        ema=0.0,
        progress=False,
        snapshots=0,
        cutmix=0.0,
        crop_scale=0.0,
        rotation=0.0,
        pca_jitter=0.0,
        alt_flip=False,
        tta="",
    )
    rng = np.random.default_rng([config.seed, 3])
    first = Trainer(make_model(), data, replace(config, **quiet))
    take = rng.permutation(len(data.train))[: max(subset, config.batch_size)]
    x = first._to_device(data.inputs(data.train.x[take]))
    y = first._to_device(data.train.y[take])
    initial = float(first.loss_fn.forward(first.model.forward(x, training=True), y, training=False))
    log_c = math.log(data.num_classes)

    idx = take[:subset]
    tiny = datasets.Split(data.train.x[idx], data.train.y[idx])
    small = replace(data, train=tiny, val=tiny, test=tiny)
    # Full batches at a constant lr: each "epoch" is one step on the whole subset.
    overfit = Trainer(
        make_model(),
        small,
        replace(config, **quiet, epochs=steps, batch_size=subset, warmup_epochs=0.0, min_lr_ratio=1.0, patience=steps),
    )
    note = ""
    try:
        for _ in range(steps):
            metrics, _ = overfit.train_epoch()
    except TrainingStopped as e:
        note, metrics = str(e), {"train_loss": math.inf, "train_acc": 0.0}
    after = overfit.evaluate(tiny)
    result = {
        "initial_loss": initial,
        "log_classes": log_c,
        "initial_ok": abs(initial - log_c) <= tolerance * log_c,
        "subset": len(idx),
        "steps": steps,
        "overfit_loss": metrics["train_loss"],
        "overfit_acc": metrics["train_acc"],
        "overfit_eval_acc": after["acc"],
        "overfit_ok": metrics["train_acc"] >= target_acc,
        "note": note,
    }
    result["passed"] = result["initial_ok"] and result["overfit_ok"]
    return result


def sanity_report(r):
    """The checks as lines of text, pass/fail with their numbers."""
    mark = lambda ok: "PASS" if ok else "FAIL"
    lines = [
        f"{mark(r['initial_ok'])} initial loss {r['initial_loss']:.4f} vs log(C) = {r['log_classes']:.4f} "
        f"(regularization off; within 25% expected)",
        f"{mark(r['overfit_ok'])} overfit {r['subset']} training images in {r['steps']} full-batch steps: "
        f"train loss {r['overfit_loss']:.4f}, train acc {r['overfit_acc']:.4f} (eval mode "
        f"{r['overfit_eval_acc']:.4f}; ~1.0 expected)",
    ]
    if r["note"]:
        lines.append(f"     stopped: {r['note']}")
    lines.append(f"sanity checks {'passed' if r['passed'] else 'FAILED'}")
    return lines
