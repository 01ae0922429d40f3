"""Seeing the run: steps.jsonl, TensorBoard event files read back with tensorboard's own reader
(values against hand computations), and the per-epoch progress line."""

import io
import json
import math
from types import SimpleNamespace

import numpy as np
import pytest

from fastopt.runlog import Progress, RunLog
from fastopt.train_cli import main as train_main


def _events(logdir):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0, "histograms": 0})
    acc.Reload()
    return acc


def _fake_trainer(params):
    named = [(k, SimpleNamespace(data=d, grad=g, requires_grad=True)) for k, (d, g) in params.items()]
    return SimpleNamespace(step=0, epoch=0, model=SimpleNamespace(named_parameters=lambda: named))


def test_per_layer_norms_histograms_and_update_ratio(tmp_path):
    pytest.importorskip("tensorboardX")
    rng = np.random.default_rng(0)
    w, g = rng.normal(size=(4, 3)).astype(np.float32), rng.normal(size=(4, 3)).astype(np.float32)
    b, gb = np.array([3.0, 4.0], np.float32), np.array([0.5, -0.5], np.float32)
    trainer = _fake_trainer({"0.weight": (w, g), "0.bias": (b, gb)})
    log = RunLog(str(tmp_path / "steps.jsonl"), str(tmp_path / "tb"), detail_every=1, flush_every=1)
    old_w = w.copy()
    log.before_step(trainer)
    w -= 0.01 * g  # the "step": known updates
    b[:] = [3.0, 4.3]
    trainer.step = 1
    log.after_step(trainer, np.float32(2.5), np.float32(7.0), 0.01, 32)
    log.close()
    ev = _events(tmp_path / "tb")
    scalar = {t: [(e.step, e.value) for e in ev.Scalars(t)] for t in ev.Tags()["scalars"]}
    r = lambda x: pytest.approx(x, rel=1e-5)
    assert scalar["train/loss"] == [(1, 2.5)] and scalar["train/grad_norm"] == [(1, 7.0)]
    assert scalar["train/lr"] == [(1, r(0.01))]
    assert scalar["weight_norm/0.bias"] == [(1, r(math.hypot(3.0, 4.3)))]
    assert scalar["grad_norm/0.bias"] == [(1, r(math.hypot(0.5, 0.5)))]
    assert scalar["update_ratio/0.bias"] == [(1, r(0.3 / 5.0))]
    want = np.linalg.norm(w.astype(np.float64) - old_w) / np.linalg.norm(old_w.astype(np.float64))
    assert scalar["update_ratio/0.weight"] == [(1, r(want))]
    hist = ev.Histograms("weights/0.weight")[0].histogram_value
    assert hist.num == 12 and hist.min == pytest.approx(w.min()) and hist.max == pytest.approx(w.max())
    assert hist.sum == pytest.approx(float(w.sum()), rel=1e-5, abs=1e-5)
    assert ev.Histograms("grads/0.bias")[0].histogram_value.num == 2
    # The first step has no previous one to be timed against.
    row = json.loads((tmp_path / "steps.jsonl").read_text())
    assert row == {
        "step": 1,
        "epoch": 1,
        "loss": 2.5,
        "lr": 0.01,
        "grad_norm": 7.0,
        "step_time": None,
        "samples_per_s": None,
    }


def test_train_cli_writes_steps_and_event_files(tmp_path, capsys):
    pytest.importorskip("sklearn")
    pytest.importorskip("tensorboardX")
    out, tb = tmp_path / "run", tmp_path / "tb"
    # digits: 1257 training images, batch 256 -> 5 steps per epoch, 10 steps; warm-up 2 epochs = 10 steps.
    rc = train_main(
        [
            "--device",
            "cpu",
            "--epochs",
            "2",
            "--batch-size",
            "256",
            "--width",
            "4",
            "8",
            "--quiet",
            "--out",
            str(out),
            "--tensorboard",
            str(tb),
            "--tensorboard-every",
            "4",
        ]
    )
    assert rc == 0
    rows = [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 11))
    assert [r["epoch"] for r in rows] == [1] * 5 + [2] * 5
    # LinearWarmup over 10 steps: step k (1-based) took lr 3e-3 * (k - 1) / 10.
    assert [r["lr"] for r in rows] == pytest.approx([3e-3 * k / 10 for k in range(10)])
    assert all(r["grad_norm"] > 0 for r in rows)
    timed = [r for r in rows if r["step_time"] is not None]
    assert len(timed) == 8  # the first step of each epoch follows an evaluation: untimed
    full = [r for r in timed if r["step"] % 5 != 0]  # batches of 256; each epoch's last one has 1257 - 1024
    assert all(r["samples_per_s"] * r["step_time"] == pytest.approx(256) for r in full)
    ev = _events(tb)
    tags = ev.Tags()
    assert [e.step for e in ev.Scalars("train/loss")] == list(range(1, 11))
    assert [e.value for e in ev.Scalars("train/loss")] == pytest.approx([r["loss"] for r in rows], rel=1e-6)
    assert [e.step for e in ev.Scalars("epoch/val_acc")] == [1, 2]
    metrics = json.loads((out / "metrics.json").read_text())["history"]
    assert [e.value for e in ev.Scalars("epoch/val_loss")] == pytest.approx([m["val_loss"] for m in metrics])
    # Details every 4 steps: before steps 0, 4, 8 -> logged at steps 1, 5, 9, for every parameter.
    assert [e.step for e in ev.Scalars("update_ratio/0.weight")] == [1, 5, 9]
    assert "weights/0.weight" in tags["histograms"] and "grads/0.weight" in tags["histograms"]
    # The optimizer's global norm is the root of the per-parameter squares (fused pass vs NumPy).
    for step in (1, 5, 9):
        parts = [
            e.value for t in tags["scalars"] if t.startswith("grad_norm/") for e in ev.Scalars(t) if e.step == step
        ]
        assert math.sqrt(sum(v * v for v in parts)) == pytest.approx(rows[step - 1]["grad_norm"], rel=1e-4)


def test_progress_is_a_plain_line_off_a_terminal():
    stream = io.StringIO()
    bar = Progress(True, 10, "epoch   1/3", stream)
    bar.update(5, 100, 0.5)
    bar.close("train loss 0.5000")
    assert stream.getvalue() == "epoch   1/3 train loss 0.5000\n"


def test_progress_draws_tqdm_on_a_terminal():
    pytest.importorskip("tqdm")

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    stream = Terminal()
    bar = Progress(True, 4, "epoch   1/1", stream)
    bar.update(2, 64, 0.25)
    assert "2/4" in stream.getvalue() or bar.bar.n == 2
    bar.close("done")
    assert stream.getvalue().endswith("epoch   1/1 done\n")


def test_tensorboard_without_a_writer_is_a_usage_error(tmp_path, monkeypatch, capsys):
    import fastopt.train_cli as cli

    def missing():
        raise ImportError("TensorBoard logging needs a writer: pip install tensorboardX")

    monkeypatch.setattr(cli, "writer_class", missing)
    with pytest.raises(SystemExit) as e:
        train_main(["--tensorboard", str(tmp_path / "tb"), "--out", str(tmp_path)])
    assert e.value.code == 2
    assert (
        "argument --tensorboard: TensorBoard logging needs a writer: pip install tensorboardX"
        in capsys.readouterr().err
    )
