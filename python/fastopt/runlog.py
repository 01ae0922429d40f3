"""Seeing the run: a JSON-lines log of every optimizer step and, with a TensorBoard directory,
event files a TensorBoard server reads (tensorboardX's writer, else torch's).

steps.jsonl holds one object per step: step, epoch, loss (the step's last micro-batch), lr (the
lr the step took), grad_norm (the global gradient norm before clipping, as the optimizer returns
it; null when clipping is off, for then no norm pass runs), step_time (host seconds since the
previous step ended, waiting for data included) and samples_per_s. Device scalars are read back
in bunches of `flush_every` steps, so on the GPU the log adds no per-step synchronization (step
times there are those of the host's queue, exact over a bunch).

TensorBoard gets the same scalars (train/...), the epoch metrics (epoch/...), and every
`detail_every` steps, per parameter: the weight and gradient L2 norms, their histograms, and the
update/weight ratio ||w_after - w_before|| / ||w_before|| of that step, which the lectures say
should sit near 1e-3 (much lower: the lr is too small; much higher: too large).

Progress is the epoch's bar on a terminal (tqdm) and its one summary line.
"""

import json
import math
import os
import sys
import time

import numpy as np

from . import _arrays

__all__ = ["Progress", "RunLog", "summary_writer"]


def writer_class():
    """tensorboardX's SummaryWriter, else torch's (which needs the tensorboard package); ImportError
    saying what to install when neither is there."""
    try:
        from tensorboardX import SummaryWriter
    except ImportError:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ImportError(
                "TensorBoard logging needs a writer: pip install tensorboardX (or fastopt[logging])"
            ) from None
    return SummaryWriter


def summary_writer(logdir):
    """A TensorBoard SummaryWriter writing events.out.tfevents.* under logdir."""
    return writer_class()(logdir)


def _norm(a):
    a = np.asarray(a, np.float64).ravel()
    return float(math.sqrt(a @ a))


class RunLog:
    """The trainer's monitor (Trainer(monitor=...)): before_step, after_step, after_epoch, close."""

    def __init__(self, path=None, tensorboard=None, detail_every=20, flush_every=10, append=False):
        self.path, self.detail_every, self.flush_every = path, max(int(detail_every), 1), max(int(flush_every), 1)
        self.file = None
        if path is not None:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            self.file = open(path, "a" if append else "w", encoding="utf-8")  # a resumed run appends
        self.writer = summary_writer(tensorboard) if tensorboard else None
        self.pending = []
        self.before = None
        self.last = None

    # ------------------------------------------------------------------------ hooks
    def before_step(self, trainer):
        if self.writer is not None and trainer.step % self.detail_every == 0:
            self.before = {
                name: _arrays.to_numpy(p.data).astype(np.float64)
                for name, p in trainer.model.named_parameters()
                if p.requires_grad
            }

    def after_step(self, trainer, loss, grad_norm, lr, samples):
        now = time.perf_counter()
        seconds = now - self.last if self.last is not None else None
        self.last = now
        self.pending.append((trainer.step, trainer.epoch + 1, loss, grad_norm, lr, seconds, samples))
        if self.before is not None:
            self._details(trainer)
        if len(self.pending) >= self.flush_every:
            self.flush()

    def after_epoch(self, trainer, metrics):
        self.flush()
        self.last = None  # evaluation runs between epochs: the next step's time would include it
        if self.writer is not None:
            for key, value in metrics.items():
                if key != "epoch" and isinstance(value, (int, float)):
                    self.writer.add_scalar(f"epoch/{key}", value, metrics["epoch"])
            self.writer.flush()

    # ----------------------------------------------------------------------- output
    def flush(self):
        for step, epoch, loss, norm, lr, seconds, samples in self.pending:
            row = {
                "step": step,
                "epoch": epoch,
                "loss": float(loss),
                "lr": float(lr),
                "grad_norm": None if norm is None else float(norm),
                "step_time": seconds,
                "samples_per_s": None if not seconds else samples / seconds,
            }
            if self.file is not None:
                self.file.write(json.dumps(row) + "\n")
            if self.writer is not None:
                for key in ("loss", "lr", "grad_norm", "samples_per_s"):
                    if row[key] is not None:
                        self.writer.add_scalar(f"train/{key}", row[key], step)
        self.pending = []
        if self.file is not None:
            self.file.flush()

    def _details(self, trainer):
        w = self.writer
        for name, p in trainer.model.named_parameters():
            if name not in self.before:
                continue
            old, new = self.before[name], _arrays.to_numpy(p.data).astype(np.float64)
            grad = _arrays.to_numpy(p.grad)
            w.add_scalar(f"weight_norm/{name}", _norm(new), trainer.step)
            w.add_scalar(f"grad_norm/{name}", _norm(grad), trainer.step)
            base = _norm(old)
            if base > 0:
                w.add_scalar(f"update_ratio/{name}", _norm(new - old) / base, trainer.step)
            w.add_histogram(f"weights/{name}", new.astype(np.float32), trainer.step)
            w.add_histogram(f"grads/{name}", np.asarray(grad, np.float32), trainer.step)
        self.before = None

    def close(self):
        self.flush()
        if self.file is not None:
            self.file.close()
            self.file = None
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class Progress:
    """A tqdm bar per epoch on a terminal (when tqdm is installed: the `logging` extra), then one
    plain summary line per epoch; only the line when the stream is not a terminal."""

    def __init__(self, enabled, total, title, stream=sys.stderr):
        self.enabled, self.title, self.stream = enabled, title, stream
        self.bar = None
        if enabled and stream.isatty():
            try:
                from tqdm import tqdm
            except ImportError:
                tqdm = None
            if tqdm is not None:
                self.bar = tqdm(total=total, desc=title, file=stream, leave=False, unit="batch", dynamic_ncols=True)

    def update(self, done, samples, loss):
        if self.bar is not None:
            self.bar.update(done - self.bar.n)
            if loss is not None:
                self.bar.set_postfix(loss=f"{loss:.4f}", refresh=False)

    def close(self, summary):
        if self.bar is not None:
            self.bar.close()
        if self.enabled:
            self.stream.write(f"{self.title} {summary}\n")
            self.stream.flush()
