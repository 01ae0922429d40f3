"""The trainer and `fastopt train`: learning on digits, bit-identical resume from a checkpoint,
early stopping, the divergence rules, metrics/curves output, and the search table."""
import json
import os

import numpy as np
import pytest

from fastopt import data as datasets
from fastopt.nn.models import small_cnn
from fastopt.train import Trainer, TrainConfig, TrainingStopped
from fastopt.train_cli import main as train_main

from conftest import BACKENDS


@pytest.fixture(scope="module")
def digits():
    pytest.importorskip("sklearn")  # a dependency; only a hand-made environment lacks it
    return datasets.load_digits(seed=0)


def _small(d, n=400):
    """The first n training images (validation and test kept whole)."""
    return datasets.Dataset(d.name, datasets.Split(d.train.x[:n], d.train.y[:n]), d.val, d.test, d.num_classes,
                            d.mean, d.std)


def _trainer(data, backend="cpu", out_dir=None, widths=(8, 16), **overrides):
    config = TrainConfig(**{"device": backend, "progress": False, "epochs": 4, **overrides})
    return Trainer(small_cnn(1, 10, widths=widths, dropout=0.2), data, config, out_dir=out_dir)


def test_digits_split_is_stratified_and_standardized(digits):
    assert len(digits.train) + len(digits.val) + len(digits.test) == 1797
    assert digits.train.x.shape[1:] == (1, 8, 8) and digits.train.x.dtype == np.float32
    assert digits.train.y.dtype == np.int32
    assert abs(digits.train.x.mean()) < 1e-5 and abs(digits.train.x.std() - 1) < 1e-5
    for split in (digits.val, digits.test):
        counts = np.bincount(split.y, minlength=10)
        assert counts.min() >= 0.8 * counts.mean()
    assert np.all(digits.train.x.min(axis=(1, 2, 3)) == pytest.approx(digits.background))


@pytest.mark.parametrize("backend", BACKENDS)
def test_learns_digits(backend, digits):
    # Every augmentation on; 400 images, 78 steps: ~0.91 validation accuracy on the CPU.
    t = _trainer(_small(digits), backend, widths=(32, 64), epochs=6, batch_size=32, warmup_epochs=1, mixup=0.2,
                 cutout=2, brightness=0.1, contrast=0.1)
    history = t.fit()
    assert not history.stopped
    assert len(history.epochs) == 6
    assert history.epochs[-1]["train_loss"] < history.epochs[0]["train_loss"]
    assert t.evaluate(digits.val)["acc"] > 0.8


def test_resume_continues_bit_identically(digits, tmp_path):
    data = _small(digits, 256)
    straight = _trainer(data, epochs=4, mixup=0.2, cutout=2)
    for _ in range(4):
        straight.train_epoch()
    first = _trainer(data, epochs=4, mixup=0.2, cutout=2)
    first.train_epoch()
    first.train_epoch()
    path = str(tmp_path / "ckpt.npz")
    first.save(path)
    resumed = _trainer(data, epochs=4, mixup=0.2, cutout=2)
    resumed.load(path)
    assert resumed.epoch == 2 and resumed.step == first.step
    resumed.train_epoch()
    resumed.train_epoch()
    assert np.array_equal(resumed.store.data, straight.store.data)
    a, b = resumed.model.state_dict(), straight.model.state_dict()
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert resumed.optimizer.param_groups[0]["lr"] == straight.optimizer.param_groups[0]["lr"]


def test_early_stopping_triggers(digits):
    # Scripted validation losses: the best is epoch 2, then `patience` epochs without a better one.
    t = _trainer(_small(digits, 64), epochs=10, patience=2)
    losses = iter([1.0, 0.9, 0.95, 0.9, 0.5, 0.4])
    t.evaluate = lambda split: {"loss": next(losses), "acc": 0.5, "top5": 0.9}
    history = t.fit()
    assert history.stopped.startswith("early stop: no better validation loss for 2 epochs")
    assert len(history.epochs) == 4 and history.best_epoch == 2


def test_nan_loss_stops_training(digits):
    t = _trainer(_small(digits, 128), epochs=3)
    t.model.layers[0].params["weight"].data[...] = np.nan
    with pytest.raises(TrainingStopped, match="loss is nan"):
        t.train_epoch()


def test_exploding_loss_stops_training(digits):
    t = _trainer(_small(digits, 256), epochs=3, optimizer="sgd", lr=50.0, max_grad_norm=0.0, warmup_epochs=0,
                 check_every=1, label_smoothing=0.0)
    history = t.fit()
    assert "exceeds 3x" in history.stopped or "loss is" in history.stopped
    assert len(history.epochs) < 3


def test_cli_writes_metrics_curves_and_checkpoints(tmp_path, digits):
    pytest.importorskip("matplotlib")
    out = tmp_path / "run"
    rc = train_main(["--device", "cpu", "--epochs", "2", "--width", "8", "16", "--out", str(out), "--quiet"])
    assert rc == 0
    report = json.loads((out / "metrics.json").read_text())
    assert report["epochs_run"] == 2 and 0 <= report["test"]["acc"] <= 1
    assert len(report["history"]) == 2 and {"train_loss", "val_loss", "val_acc"} <= set(report["history"][0])
    for name in ("curves.png", "best.npz", "last.npz"):
        assert os.path.getsize(out / name) > 0


def test_cli_search_prints_a_sorted_table(tmp_path, capsys, digits):
    rc = train_main(["--device", "cpu", "--search", "2", "--search-epochs", "1", "--width", "4", "8",
                     "--out", str(tmp_path)])
    assert rc == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if line.strip()[:1].isdigit()]
    assert len(rows) == 2
    losses = [float(r[4]) for r in rows]
    assert losses == sorted(losses)
    assert len(json.loads((tmp_path / "search.json").read_text())) == 2


def test_cli_refuses_a_missing_gpu(capsys):
    import fastopt

    if fastopt.cuda.is_available():
        pytest.skip("a GPU is usable here")
    with pytest.raises(SystemExit) as e:
        train_main(["--device", "cuda", "--epochs", "1"])
    assert e.value.code == 2 and "no usable CUDA GPU" in capsys.readouterr().err
