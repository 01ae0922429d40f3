"""The trainer: mini-batch training of a fastopt.nn network with any fastopt optimizer, a warm-up
plus cosine schedule, fused gradient clipping, device-side augmentation, metrics, early stopping
and checkpoints.

Where time goes and why:
- Batches are gathered in the epoch's shuffled order, preprocessed (a user's raw images) and
  copied to the device by a background thread while the previous step runs (fastopt.loader).
- A step is forward, loss, backward and ONE optimizer call over the model's two flat parameter
  tensors (clipping fused in). On the GPU nothing comes back to the host but the scalar loss, and
  only every `check_every` steps (for the NaN and explosion rules); epoch metrics accumulate on
  the device in a 3-float array read once per epoch.
- Randomness is a function of (seed, epoch, step): shuffles and mixup's lambda from NumPy
  generators seeded by (seed, epoch), augmentation and dropout from Philox counters. A run
  resumed from a checkpoint with the same options therefore continues bit for bit as if it had
  never stopped; with other options see Trainer.load.
- Checkpoints are written atomically (a temporary file, then a rename): an interrupted run keeps
  its last whole checkpoint.
"""

import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field, fields

import numpy as np

from . import _args, _arrays, _options, cuda, functional as F, optim, schedules
from .checkpoint import CheckpointError, read_checkpoint, write_atomically  # noqa: F401 (re-exported)
from .loader import BatchLoader
from .nn import SoftmaxCrossEntropy
from .runlog import Progress

__all__ = ["CheckpointError", "TrainConfig", "Trainer", "TrainingStopped", "make_optimizer", "read_checkpoint"]

OPTIMIZERS = ("adamw", "adam", "amsgrad", "sgd", "momentum", "nesterov", "rmsprop", "adagrad")
PRECISIONS = ("fp32", "bf16")  # bf16: Module.build's mixed precision (fp32 master weights)


@dataclass
class TrainConfig:
    device: str = "auto"  # "auto": the GPU when one is usable, else the CPU
    epochs: int = 30
    batch_size: int = 64
    optimizer: str = "adamw"
    lr: float = 3e-3
    weight_decay: float = 5e-4
    warmup_epochs: float = None  # None: 2, or epochs when the run is shorter
    min_lr_ratio: float = 0.0  # cosine floor, as a fraction of lr
    max_grad_norm: float = 5.0  # 0: no clipping
    label_smoothing: float = 0.05
    max_shift: int = 1  # random translation, pixels
    cutout: int = 0  # square side, pixels
    flip: bool = False  # off for digits: a mirrored digit is another glyph
    brightness: float = 0.0
    contrast: float = 0.0
    mixup: float = 0.0  # Beta(alpha, alpha); 0: off
    cutmix: float = 0.0  # Beta(alpha, alpha) CutMix; with mixup too, one of them per step (timm)
    crop_scale: float = 0.0  # random-resized crop of area fraction U(crop_scale, 1), back to HxW; 0: off
    rotation: float = 0.0  # random rotation within +-degrees
    pca_jitter: float = 0.0  # AlexNet's colour jitter along the training set's channel PCA, sigma; 0: off
    alt_flip: bool = False  # airbench's alternating flip (each image mirrored every other epoch)
    tta: str = ""  # evaluation averages the logits of views: "flip", "five_crop", "ten_crop"
    patience: int = 10  # epochs without a better validation loss before stopping
    seed: int = 0
    check_every: int = 10  # steps between host reads of the loss
    explode_factor: float = 3.0
    topk: int = 5
    accumulate: int = 1  # micro-batches of batch_size per optimizer step
    ema: float = 0.0  # decay of the weights' moving average (warm-up ramp); 0: off
    precision: str = "fp32"  # "bf16": bf16 activations and conv/linear math, fp32 master weights
    snapshots: int = 0  # SGDR cycles, each ending in a snapshot checkpoint; 0: one cosine
    progress: bool = True

    def check(self):
        """Every field's type and range (LIMITS); TypeError or ValueError naming the field."""
        _args.choice(self.optimizer, "optimizer", OPTIMIZERS)
        _args.choice(self.precision, "precision", PRECISIONS)
        for name, rule in LIMITS.items():  # NumPy scalars become Python ones (the checkpoint's JSON)
            if getattr(self, name) is not None or name != "warmup_epochs":
                setattr(self, name, _options.check(name, getattr(self, name), *rule))
        if self.warmup_epochs is None:  # snapshot cycles restart at the peak lr: no warm-up unless asked
            self.warmup_epochs = 0.0 if self.snapshots else min(2.0, float(self.epochs))
        if self.warmup_epochs > self.epochs:
            raise ValueError(f"warmup_epochs: must not exceed epochs ({self.epochs}), got {self.warmup_epochs}")
        if self.snapshots and (self.warmup_epochs % 1 or (self.epochs - self.warmup_epochs) % self.snapshots):
            raise ValueError(
                f"snapshots: the {self.epochs - self.warmup_epochs:g} epochs after warm-up must split into "
                f"{self.snapshots} cycles of whole epochs (epochs {self.epochs}, warmup_epochs "
                f"{self.warmup_epochs:g})"
            )
        if self.precision == "bf16" and self.accumulate > 1:
            raise ValueError(
                "accumulate: gradient accumulation with precision bf16: not yet (the micro-batch "
                "weighting scales float32 gradients only)"
            )
        for name in ("flip", "progress", "alt_flip"):
            _args.boolean(getattr(self, name), name)
        if self.flip and self.alt_flip:
            raise ValueError("alt_flip: replaces the random flip; set flip or alt_flip, not both")
        if self.tta:
            _args.choice(self.tta, "tta", TTA_MODES)
        elif self.tta is None:
            self.tta = ""
        if not isinstance(self.device, str):
            raise TypeError(f"device: expected a str, got {type(self.device).__name__}")
        return self


# Each numeric field's kind and range (fastopt._options.check); `fastopt train` parses its options
# with the same rules.
LIMITS = {
    "epochs": ("int", 1),
    "batch_size": ("int", 1),
    "patience": ("int", 1),
    "check_every": ("int", 1),
    "topk": ("int", 1),
    "seed": ("int", 0, 2**64 - 1),
    "max_shift": ("int", 0),
    "cutout": ("int", 0),
    "lr": ("real", 0.0),
    "weight_decay": ("real", 0.0),
    "warmup_epochs": ("real", 0.0),
    "max_grad_norm": ("real", 0.0),
    "brightness": ("real", 0.0),
    "mixup": ("real", 0.0),
    "contrast": ("real", 0.0, 1.0),
    "label_smoothing": ("real", 0.0, 1.0),
    "min_lr_ratio": ("real", 0.0, 1.0),
    "explode_factor": ("real", 1.0, None, True),
    "accumulate": ("int", 1),
    "ema": ("real", 0.0, 1.0),
    "snapshots": ("int", 0),
    "cutmix": ("real", 0.0),
    "crop_scale": ("real", 0.0, 1.0),
    "rotation": ("real", 0.0, 360.0),
    "pca_jitter": ("real", 0.0),
}
TTA_MODES = ("flip", "five_crop", "ten_crop")


class TrainingStopped(RuntimeError):
    """Training diverged (NaN loss, or loss above explode_factor x its first value)."""


def resolve_device(device):
    if device == "auto":
        return "cuda:0" if cuda.has_gpu() else "cpu"
    return _arrays.canonical_device(device)


def make_optimizer(name, groups, lr):
    """torch.optim's rules by name; the groups carry their own weight decay."""
    if name == "adamw":
        return optim.AdamW(groups, lr=lr)
    if name == "amsgrad":
        return optim.AdamW(groups, lr=lr, amsgrad=True)
    if name == "adam":
        return optim.Adam(groups, lr=lr)
    if name == "sgd":
        return optim.SGD(groups, lr=lr)
    if name in ("momentum", "nesterov"):
        return optim.SGD(groups, lr=lr, momentum=0.9, nesterov=name == "nesterov")
    if name == "rmsprop":
        return optim.RMSprop(groups, lr=lr)
    if name == "adagrad":
        return optim.Adagrad(groups, lr=lr)
    raise ValueError(f"optimizer: unknown {name!r}")


@dataclass
class History:
    epochs: list = field(default_factory=list)  # one dict of metrics per epoch
    best_epoch: int = -1
    best_val_loss: float = math.inf
    stopped: str = ""  # why training ended early, if it did


class Trainer:
    """Trains `model` (a fastopt.nn network) on `data` (fastopt.data.Dataset).

    An unbuilt model is built here from the config's seed. A model built already (pretrained
    weights loaded, parts frozen) is trained as it is: the optimizer gets the store's groups of its
    trainable parameters, `lr_scale` ({name prefix: factor}) setting lower learning rates for
    some (fine-tuning a body under a new head)."""

    def __init__(self, model, data, config=None, out_dir=None, lr_scale=None, model_spec=None, monitor=None):
        self.config = (config or TrainConfig()).check()
        self.model_spec = model_spec  # how to rebuild the model (fastopt evaluate), stored in checkpoints
        self.monitor = monitor  # fastopt.runlog.RunLog or anything with its hooks
        self.model, self.data = model, data
        self.device = resolve_device(self.config.device)
        self.out_dir = out_dir
        c = self.config
        if model.store is None:
            self.store = model.build(self.device, seed=c.seed, precision=c.precision)
        elif model.store.root is not model:
            raise ValueError("model: part of another built network; train the network it was built in")
        elif model.store.device != self.device:
            raise ValueError(f"model: built on {model.store.device}, but this trainer runs on {self.device}")
        elif model.store.precision != c.precision:
            raise ValueError(
                f"model: built with precision {model.store.precision}, but this trainer's is {c.precision}"
            )
        else:
            self.store = model.store
        groups = self.store.param_groups(c.weight_decay, lr=c.lr if lr_scale else None, lr_scale=lr_scale)
        self.optimizer = make_optimizer(c.optimizer, groups, c.lr)
        # The groups' options as built (lr = the peak lr): a resumed run keeps these, not the checkpoint's.
        self._fresh_groups = [{k: v for k, v in g.items() if k != "params"} for g in self.optimizer.param_groups]
        self.ema = optim.EMA(self.store, c.ema, warmup=True) if c.ema else None
        self.batches_per_epoch = math.ceil(len(data.train) / c.batch_size)
        self.steps_per_epoch = math.ceil(self.batches_per_epoch / c.accumulate)
        self.schedule = self._schedule()
        self.loss_fn = SoftmaxCrossEntropy(c.label_smoothing, topk=c.topk)
        self.history = History()
        self.epoch = 0  # epochs completed
        self.step = 0  # optimizer steps taken
        self.initial_loss = None
        self._eval_cache = {}
        self._pca = None

    def _schedule(self, step=0):
        """Linear warm-up over warmup_epochs, then cosine down to lr * min_lr_ratio at the end of
        `epochs`, standing at `step` (the lr of step `step` set in the optimizer)."""
        c = self.config
        total = c.epochs * self.steps_per_epoch
        warmup = min(int(round(c.warmup_epochs * self.steps_per_epoch)), total)
        if c.snapshots:  # SGDR: cycles of whole epochs, each one restarting at the peak lr
            cycle = (total - warmup) // c.snapshots
            cosine = schedules.CosineAnnealingWarmRestarts(
                self.optimizer, T_0=max(cycle, 1), eta_min=c.lr * c.min_lr_ratio
            )
        else:
            cosine = schedules.CosineAnnealingLR(
                self.optimizer, T_max=max(total - warmup, 1), eta_min=c.lr * c.min_lr_ratio
            )
        return schedules.LinearWarmup(self.optimizer, warmup, after=cosine, last_epoch=step - 1)

    # ------------------------------------------------------------------------- data
    def _to_device(self, array):
        return array if self.device == "cpu" else _arrays.to_device(array, self.device)

    def _epoch_batches(self, epoch):
        order = np.random.default_rng([self.config.seed, epoch]).permutation(len(self.data.train))
        return BatchLoader(self.data, self.data.train, order, self.config.batch_size, self.device)

    def _channel_pca(self):
        """pca_jitter's eigenvalues and eigenvectors: the channel covariance of the training inputs
        (of up to 10,000 images, enough for a C x C matrix)."""
        if self._pca is None:
            x = self.data.train.x[:10000]
            self._pca = F.channel_pca(np.asarray(self.data.inputs(x), np.float32))
        return self._pca

    def _augment(self, x, y, rng, micro=0, indices=None):
        """Every augmentation keyed by (seed, micro-batch); each op draws from its own Philox stream."""
        c = self.config
        key = self.step * c.accumulate + micro
        if c.crop_scale:
            x = F.random_resized_crop(x, c.seed, key, tuple(x.shape[2:]), scale=(c.crop_scale, 1.0))
        if c.rotation:
            x = F.random_rotation(x, c.seed, key, c.rotation, fill=self.data.background)
        if c.pca_jitter:
            x = F.pca_jitter(x, c.seed, key, *self._channel_pca(), sigma=c.pca_jitter)
        if c.alt_flip:
            x = F.alternating_flip(x, self._to_device(np.asarray(indices, np.int64)), c.seed, self.epoch)
        if c.max_shift or c.cutout or c.flip or c.brightness or c.contrast:
            x = F.augment_batch(
                x,
                c.seed,
                key,
                max_shift=c.max_shift,
                flip=c.flip,
                cutout=c.cutout,
                brightness=c.brightness,
                contrast=c.contrast,
                fill=self.data.background,
            )
        mix = c.mixup > 0
        if c.cutmix > 0 and (not mix or rng.random() < 0.5):  # both: one of them per step, as timm switches
            lam = float(rng.beta(c.cutmix, c.cutmix))
            return F.cutmix(x, y, lam, self.data.num_classes, c.seed, key)
        if mix:
            lam = float(rng.beta(c.mixup, c.mixup))
            x, y = F.mixup(x, y, lam, self.data.num_classes)
        return x, y

    # ----------------------------------------------------------------------- loops
    def _check_loss(self, loss):
        value = getattr(self.model, "mean_over_ranks", float)(loss)  # data parallel: the global batch's loss
        if not math.isfinite(value):
            raise TrainingStopped(
                f"loss is {value} at step {self.step} (epoch {self.epoch + 1}): training diverged; "
                "try a lower --lr or stronger clipping"
            )
        if self.initial_loss is None:
            self.initial_loss = value
        elif value > self.config.explode_factor * self.initial_loss:
            raise TrainingStopped(
                f"loss {value:.4g} at step {self.step} exceeds {self.config.explode_factor:g}x its "
                f"initial value {self.initial_loss:.4g}: training is exploding; try a lower --lr"
            )
        return value

    def train_epoch(self):
        c = self.config
        batches = self._epoch_batches(self.epoch)
        rng = np.random.default_rng([c.seed, self.epoch, 1])
        stats = _arrays.zeros((3,), np.float32, self.device)
        n = len(self.data.train)
        bar = Progress(c.progress, self.batches_per_epoch, f"epoch {self.epoch + 1:3d}/{c.epochs}")
        start, last = time.perf_counter(), None
        window = c.accumulate * c.batch_size
        monitor = self.monitor
        for b, (x, y) in enumerate(batches):
            lo, hi = b * c.batch_size, min((b + 1) * c.batch_size, n)
            micro = b % c.accumulate
            x, y = self._augment(x, y, rng, micro, batches.order[lo:hi])
            logits = self.model.forward(x, training=True)
            loss = self.loss_fn.forward(logits, y, training=True, stats=stats)
            dlogits = self.loss_fn.backward()
            if c.accumulate == 1:
                self.model.backward(dlogits)
            else:  # the window's mean loss: each micro-batch weighs by its share of the window
                w0 = (b - micro) * c.batch_size
                F.axpby_(dlogits, dlogits, (hi - lo) / (min(w0 + window, n) - w0), 0.0)
                self.model.backward(dlogits, accumulate=micro > 0)
            if micro == c.accumulate - 1 or b == self.batches_per_epoch - 1:
                if monitor is not None:
                    monitor.before_step(self)
                lr = self.optimizer.param_groups[0]["lr"]
                result = self.optimizer.step(
                    self.store.grads_for(self.optimizer), max_grad_norm=c.max_grad_norm or None
                )
                self.schedule.step()
                self.step += 1
                if self.ema is not None:
                    self.ema.update()
                if monitor is not None:
                    monitor.after_step(self, loss, result.norm, lr, hi - (b - micro) * c.batch_size)
            if self.initial_loss is None or b % c.check_every == c.check_every - 1 or b == self.batches_per_epoch - 1:
                last = self._check_loss(loss)
            bar.update(b + 1, hi, last)
        seconds = time.perf_counter() - start
        loss_sum, top1, topk = (float(v) for v in _arrays.to_numpy(stats))
        self.epoch += 1
        return {
            "train_loss": loss_sum / n,
            "train_acc": top1 / n,
            f"train_top{c.topk}": topk / n,
            "train_seconds": seconds,
            "samples_per_s": n / seconds,
            "lr": self.optimizer.param_groups[0]["lr"],
        }, bar

    def evaluate(self, split, batch_size=512):
        """Mean loss and top-1 / top-k accuracy on a split (eval mode: running statistics, no
        dropout), of the weights' moving average when the config keeps one."""
        if self.ema is not None:
            with self.ema.applied():
                return self._evaluate(split, batch_size)
        return self._evaluate(split, batch_size)

    def _evaluate(self, split, batch_size):
        key = id(split)
        if key not in self._eval_cache:
            self._eval_cache = {key: (self._to_device(self.data.inputs(split.x)), self._to_device(split.y))}
        xs, ys = self._eval_cache[key]
        stats = _arrays.zeros((3,), np.float32, self.device)
        n = len(split)
        for lo in range(0, n, batch_size):
            logits = eval_logits(
                self.model, xs[lo : lo + batch_size], self.config.tta, self.config.max_shift, self.data.background
            )
            self.loss_fn.forward(logits, ys[lo : lo + batch_size], training=False, stats=stats)
        loss_sum, top1, topk = (float(v) for v in _arrays.to_numpy(stats))
        return {"loss": loss_sum / n, "acc": top1 / n, f"top{self.config.topk}": topk / n}

    def fit(self):
        """Train until `epochs`, early stopping or divergence; returns the History. With an
        out_dir it keeps last.npz (every epoch) and best.npz (lowest validation loss)."""
        c = self.config
        while self.epoch < c.epochs:
            try:
                metrics, bar = self.train_epoch()
            except TrainingStopped as stop:
                self.history.stopped = str(stop)
                print(f"\nstopped: {stop}", file=sys.stderr)
                break
            val = self.evaluate(self.data.val)
            metrics.update({f"val_{k}": v for k, v in val.items()})
            metrics["epoch"] = self.epoch
            self.history.epochs.append(metrics)
            if self.monitor is not None:
                self.monitor.after_epoch(self, metrics)
            cycle = (c.epochs - int(c.warmup_epochs)) // c.snapshots if c.snapshots else 0
            if cycle and self.epoch > c.warmup_epochs and (self.epoch - int(c.warmup_epochs)) % cycle == 0:
                self.save(self._path(f"snapshot-{(self.epoch - int(c.warmup_epochs)) // cycle}.npz"))
            improved = val["loss"] < self.history.best_val_loss
            if improved:
                self.history.best_val_loss, self.history.best_epoch = val["loss"], self.epoch
                self.save(self._path("best.npz"))
            bar.close(
                f"train loss {metrics['train_loss']:.4f} acc {metrics['train_acc']:.4f} | val loss "
                f"{val['loss']:.4f} acc {val['acc']:.4f} | {metrics['samples_per_s']:.0f} samples/s"
                + (" *" if improved else "")
            )
            self.save(self._path("last.npz"))
            if self.epoch - self.history.best_epoch >= c.patience:
                self.history.stopped = (
                    f"early stop: no better validation loss for {c.patience} epochs "
                    f"(best {self.history.best_val_loss:.4f} at epoch {self.history.best_epoch})"
                )
                if c.progress:
                    print(self.history.stopped, file=sys.stderr)
                break
        return self.history

    # ------------------------------------------------------------------ checkpoints
    def _path(self, name):
        return None if self.out_dir is None else os.path.join(self.out_dir, name)

    def save(self, path):
        """Parameters, layer state, optimizer state and progress, as one .npz, written atomically:
        an interrupted save leaves the previous checkpoint whole."""
        if path is None:
            return
        arrays = {f"model/{k}": np.asarray(v) for k, v in self.model.state_dict().items()}  # torch's names
        opt = self.optimizer.state_dict()
        for i, entry in opt["state"].items():
            for name, value in entry.items():
                arrays[f"optim/{i}/{name}"] = np.asarray(value)
        meta = {
            "config": asdict(self.config),
            "param_groups": opt["param_groups"],
            "epoch": self.epoch,
            "step": self.step,
            "initial_loss": self.initial_loss,
            "history": asdict(self.history),
            "extra_state": self.model.extra_state(),
            "model_spec": self.model_spec,
            "data": self._data_meta(),
        }
        arrays.update({f"data/{k}": np.asarray(v) for k, v in self._preprocess_arrays().items()})
        if self.ema is not None:  # the averaged network under the same names: loadable as it is
            with self.ema.applied():
                arrays.update({f"ema/{k}": np.asarray(v) for k, v in self.model.state_dict().items()})
            meta["ema_updates"] = self.ema.num_updates
        arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
        write_atomically(path, lambda f: np.savez(f, **arrays))

    def _data_meta(self):
        d = self.data
        meta = {
            "name": d.name,
            "shape": list(d.shape),
            "num_classes": d.num_classes,
            "classes": None if d.classes is None else list(d.classes),
            "background": d.background,
        }
        if d.preprocess is not None:
            meta["preprocess"] = d.preprocess.meta()
        return meta

    def _preprocess_arrays(self):
        """What turns this data set's images into inputs at evaluation: the per-channel statistics
        (digits': its one mean and std) and the whitening, if any."""
        d = self.data
        if d.preprocess is not None:
            return d.preprocess.arrays()
        return {"mean": np.atleast_1d(np.float64(d.mean)), "std": np.atleast_1d(np.float64(d.std))}

    def load(self, path):
        """Restore a checkpoint written by save(); returns a one-line summary of the resume.

        With the same config, training continues bit-identically. The config may change: the
        schedule is rebuilt from this trainer's epochs, lr, warmup_epochs and min_lr_ratio and
        continued at the checkpoint's step, so every later step takes the lr a run started with
        this config takes at that step; the group options (weight decay) and the per-step
        options (augmentation, clipping, smoothing, patience) are this config's from the next
        step on. batch_size, optimizer and seed must match (the checkpoint's step count, state
        and random streams depend on them), and epochs cannot drop below those completed.
        Anything else wrong with the file raises CheckpointError naming it."""
        meta, model, state = read_checkpoint(path)
        c, saved = self.config, meta["config"]
        for name in RESUME_FIXED:
            if saved.get(name) != getattr(c, name):
                raise CheckpointError(
                    f"{path}: written with {name} {saved.get(name)!r}; it cannot resume with "
                    f"{name} {getattr(c, name)!r} (its steps, state and random streams follow "
                    f"{name}): use {saved.get(name)!r} or start afresh"
                )
        epoch, step = meta["epoch"], meta["step"]
        if step != epoch * self.steps_per_epoch:
            raise CheckpointError(
                f"{path}: {step} steps in {epoch} epochs, but this run takes {self.steps_per_epoch} "
                "steps per epoch (another training set?)"
            )
        if epoch > c.epochs:
            raise CheckpointError(f"{path}: {epoch} epochs already done, more than epochs={c.epochs}")
        mine = {k: np.shape(v) for k, v in self.model.state_dict().items()}
        theirs = {k: np.shape(v) for k, v in model.items()}
        if mine != theirs:
            wrong = sorted(k for k in mine.keys() | theirs.keys() if mine.get(k) != theirs.get(k))
            raise CheckpointError(
                f"{path}: written for another model ({wrong[0]}: shape {theirs.get(wrong[0])} there, "
                f"{mine.get(wrong[0])} here; another --width?)"
            )
        if meta["ema"] and {k: np.shape(v) for k, v in meta["ema"].items()} != mine:
            raise CheckpointError(f"{path}: its weight average (ema/ entries) does not fit this model")
        try:
            self.optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
        except (ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"{path}: its optimizer state does not fit ({e})") from None
        for group, fresh in zip(self.optimizer.param_groups, self._fresh_groups):
            group.update(fresh)
            group["initial_lr"] = fresh["lr"]
        if self.ema is not None:  # the average (a checkpoint without one: from the weights it holds)
            self.model.load_state_dict(meta["ema"] if meta["ema"] else model)
            self.ema.copy_from_model(meta.get("ema_updates", 0) if meta["ema"] else 0)
        self.model.load_state_dict(model)
        self.model.load_extra_state(meta.get("extra_state", {}))
        self.schedule = self._schedule(step)
        self.epoch, self.step, self.initial_loss = epoch, step, meta["initial_loss"]
        h = meta["history"]
        self.history = History(h["epochs"], h["best_epoch"], h["best_val_loss"], h["stopped"])
        changed = [
            f"{k} {saved.get(k)} -> {v}"
            for k, v in asdict(c).items()
            if k not in ("device", "progress") and saved.get(k) != v
        ]
        note = f"resumed {path} at epoch {epoch} (step {step})"
        if changed:
            note += f"; changed: {', '.join(changed)}"
        if any(saved.get(k) != getattr(c, k) for k in SCHEDULE_FIELDS):
            note += (
                f"; the warm-up + cosine schedule is rebuilt for {c.epochs} epochs and continued at step {step}: "
                "every later step takes the lr a run started with these options takes at that step"
            )
        return note


def eval_logits(model, x, tta="", pad=0, fill=0.0):
    """model's eval-mode logits for x; with tta ("flip", "five_crop", "ten_crop") the mean of its
    logits over the test-time views (five_crop and ten_crop: the image shifted by +-pad, the crops
    of shift-by-pad training, padded with fill)."""
    if not tta:
        return model.forward(x, training=False)
    views = F.tta_num_views(tta)
    logits = model.forward(F.tta_views(x, tta, pad=pad if tta != "flip" else 0, fill=fill), training=False)
    return F.tta_mean(logits, views)


# Options a resumed run must share with its checkpoint, and those the schedule is built from.
RESUME_FIXED = ("batch_size", "accumulate", "optimizer", "seed")
SCHEDULE_FIELDS = ("epochs", "lr", "warmup_epochs", "min_lr_ratio")


def config_from(values):
    """A TrainConfig from a dict, ignoring keys it does not have (argparse namespaces carry more)."""
    names = {f.name for f in fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in values.items() if k in names and v is not None})
