"""The trainer and `fastopt train`: learning on digits, bit-identical resume from a checkpoint,
early stopping, the divergence rules, metrics/curves output, and the search table."""

import argparse
import json
import os
import re

import numpy as np
import pytest
from conftest import BACKENDS

from fastopt import data as datasets
from fastopt.nn.models import small_cnn
from fastopt.train import OPTIMIZERS, CheckpointError, TrainConfig, Trainer, TrainingStopped, read_checkpoint
from fastopt.train_cli import add_arguments, main as train_main, train_once


@pytest.fixture(scope="module")
def digits():
    pytest.importorskip("sklearn")  # a dependency; only a hand-made environment lacks it
    return datasets.load_digits(seed=0)


def _small(d, n=400):
    """The first n training images (validation and test kept whole)."""
    return datasets.Dataset(
        d.name, datasets.Split(d.train.x[:n], d.train.y[:n]), d.val, d.test, d.num_classes, d.mean, d.std
    )


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


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        (dict(val_fraction=1.5), ValueError, r"^val_fraction: must lie in \[0, 1\), got 1.5"),
        (dict(test_fraction="0.2"), TypeError, r"^test_fraction: expected a real number, got str"),
        (dict(val_fraction=0.5, test_fraction=0.5), ValueError, r"^val_fraction \+ test_fraction: must be < 1"),
        (dict(seed=-1), ValueError, r"^seed: must be >= 0"),
        (dict(seed=1.0), TypeError, r"^seed: expected an integer, got float"),
    ],
)
def test_load_digits_names_a_bad_argument(kwargs, error, match):
    with pytest.raises(error, match=match):
        datasets.load_digits(**kwargs)


@pytest.mark.parametrize("backend", BACKENDS)
def test_learns_digits(backend, digits):
    # Every augmentation on; 400 images, 78 steps: ~0.91 validation accuracy on the CPU.
    t = _trainer(
        _small(digits),
        backend,
        widths=(32, 64),
        epochs=6,
        batch_size=32,
        warmup_epochs=1,
        mixup=0.2,
        cutout=2,
        brightness=0.1,
        contrast=0.1,
    )
    history = t.fit()
    assert not history.stopped
    assert len(history.epochs) == 6
    assert history.epochs[-1]["train_loss"] < history.epochs[0]["train_loss"]
    assert t.evaluate(digits.val)["acc"] > 0.8


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_resume_continues_bit_identically(optimizer, digits, tmp_path):
    data = _small(digits, 96)
    options = dict(epochs=4, batch_size=32, mixup=0.2, cutout=2, optimizer=optimizer, widths=(4, 8))
    straight = _trainer(data, **options)
    for _ in range(4):
        straight.train_epoch()
    first = _trainer(data, **options)
    first.train_epoch()
    first.train_epoch()
    path = str(tmp_path / "ckpt.npz")
    first.save(path)
    resumed = _trainer(data, **options)
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
    t = _trainer(
        _small(digits, 256),
        epochs=3,
        optimizer="sgd",
        lr=50.0,
        max_grad_norm=0.0,
        warmup_epochs=0,
        check_every=1,
        label_smoothing=0.0,
    )
    history = t.fit()
    assert "exceeds 3x" in history.stopped or "loss is" in history.stopped
    assert len(history.epochs) < 3


def test_cli_writes_metrics_curves_and_checkpoints(tmp_path, digits):
    pytest.importorskip("matplotlib")
    out = tmp_path / "run"
    rc = train_main(["--device", "cpu", "--epochs", "2", "--width", "8", "16", "--out", str(out), "--quiet"])
    assert rc == 0
    report = json.loads((out / "metrics.json").read_text())
    history = report["history"]
    assert report["epochs_run"] == 2 and [m["epoch"] for m in history] == [1, 2]
    assert report["best_epoch"] == 1 + int(np.argmin([m["val_loss"] for m in history]))
    assert history[-1]["lr"] == 3e-3  # the default warm-up (2 epochs) spans this run: it ends at the peak lr
    assert read_checkpoint(str(out / "last.npz"))[0]["epoch"] == 2
    assert read_checkpoint(str(out / "best.npz"))[0]["epoch"] == report["best_epoch"]
    # The reported metrics are those of the best checkpoint, evaluated again here.
    config = TrainConfig(device="cpu", epochs=2, progress=False)
    again = Trainer(small_cnn(1, 10, widths=(8, 16), dropout=0.25), digits, config)
    again.load(str(out / "best.npz"))
    assert again.evaluate(digits.test) == report["test"] and again.evaluate(digits.val) == report["val"]
    assert report["val"]["loss"] == history[report["best_epoch"] - 1]["val_loss"]
    png = (out / "curves.png").read_bytes()  # figsize 10 x 4 inches at 110 dpi
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert (int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")) == (1100, 440)


def test_cli_search_prints_a_sorted_table(tmp_path, capsys, digits):
    rc = train_main(
        ["--device", "cpu", "--search", "2", "--search-epochs", "1", "--width", "4", "8", "--out", str(tmp_path)]
    )
    assert rc == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if line.strip()[:1].isdigit()]
    assert [r[:2] for r in rows] in ([["1", "coarse"], ["2", "fine"]], [["1", "fine"], ["2", "coarse"]])
    losses = [float(r[4]) for r in rows]
    assert losses == sorted(losses)
    saved = json.loads((tmp_path / "search.json").read_text())  # the same trials, in the table's order
    assert [(f"{t['lr']:.3e}", f"{t['weight_decay']:.3e}", f"{t['val_loss']:.4f}") for t in saved] == [
        (r[2], r[3], r[4]) for r in rows
    ]
    coarse, fine = (next(t for t in saved if t["stage"] == s) for s in ("coarse", "fine"))
    assert 1e-4 <= coarse["lr"] <= 1e-1 and 1e-6 <= coarse["weight_decay"] <= 1e-2  # the full ranges
    for k in ("lr", "weight_decay"):  # then within half a decade of the best so far
        assert coarse[k] / 10**0.5 <= fine[k] <= coarse[k] * 10**0.5


def test_cli_refuses_a_missing_gpu(capsys):
    import fastopt

    if fastopt.cuda.is_available():
        pytest.skip("a GPU is usable here")
    with pytest.raises(SystemExit) as e:
        train_main(["--device", "cuda", "--epochs", "1"])
    assert e.value.code == 2 and "no usable CUDA GPU" in capsys.readouterr().err


# ------------------------------------------------------------------------------------ resume
def _lrs_per_step(trainer, epochs):
    """Train `epochs` epochs, returning the lr each optimizer step ran with."""
    lrs, step = [], trainer.optimizer.step

    def recording(*args, **kwargs):
        lrs.append(trainer.optimizer.param_groups[0]["lr"])
        return step(*args, **kwargs)

    trainer.optimizer.step = recording
    for _ in range(epochs):
        trainer.train_epoch()
    return lrs


@pytest.mark.parametrize(
    "changes",
    [
        {"epochs": 4},
        {"epochs": 5, "lr": 1e-3, "warmup_epochs": 2.5, "min_lr_ratio": 0.1},
    ],
    ids=["epochs", "epochs_lr_warmup_floor"],
)
def test_resume_with_new_options_follows_their_schedule(changes, digits, tmp_path):
    # 64 images in batches of 16: 4 steps per epoch. The first run's schedule (2 epochs, warm-up 1)
    # ends at lr 0; the resumed one must take, at every later step, exactly the lr a fresh run
    # with the new options takes at that step.
    data = _small(digits, 64)
    base = dict(epochs=2, batch_size=16, warmup_epochs=1.0, widths=(4, 8))
    first = _trainer(data, **base)
    first.train_epoch()
    first.train_epoch()
    path = str(tmp_path / "two.npz")
    first.save(path)
    options = {**base, **changes}
    fresh = _lrs_per_step(_trainer(data, **options), options["epochs"])
    resumed = _trainer(data, **options)
    note = resumed.load(path)
    assert f"rebuilt for {options['epochs']} epochs and continued at step 8" in note
    assert all(f"{k} {base.get(k, getattr(TrainConfig().check(), k))} -> {v}" in note for k, v in changes.items())
    later = _lrs_per_step(resumed, options["epochs"] - 2)
    assert later == fresh[8:]
    assert len(later) == 4 * (options["epochs"] - 2) and min(later) > 0  # the old schedule had ended at 0


@pytest.mark.parametrize(
    "change,message",
    [
        ({"batch_size": 32}, "written with batch_size 16; it cannot resume with batch_size 32"),
        ({"optimizer": "sgd"}, "written with optimizer 'adamw'; it cannot resume with optimizer 'sgd'"),
        ({"seed": 1}, "written with seed 0; it cannot resume with seed 1"),
        ({"epochs": 1, "warmup_epochs": 0.0}, "2 epochs already done, more than epochs=1"),
        ({"widths": (4, 4)}, "written for another model"),
    ],
)
def test_resume_refuses_options_it_cannot_continue(change, message, digits, tmp_path):
    data = _small(digits, 64)
    base = dict(epochs=2, batch_size=16, widths=(4, 8))
    first = _trainer(data, **base)
    first.train_epoch()
    first.train_epoch()
    path = str(tmp_path / "ckpt.npz")
    first.save(path)
    with pytest.raises(CheckpointError, match=f"^{re.escape(path)}: {re.escape(message)}"):
        _trainer(data, **{**base, **change}).load(path)


def _corrupt(kind, good, path):
    """Write a bad checkpoint of one kind at `path` (good: the bytes of a real one)."""
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        path.write_bytes(good[: len(good) // 2])
    elif kind == "flipped_bytes":  # the zip directory intact, a member's bytes not: its CRC fails
        bad = bytearray(good)
        bad[len(bad) // 3 : len(bad) // 3 + 64] = bytes(64)
        path.write_bytes(bytes(bad))
    elif kind == "foreign_npz":
        np.savez(path, weights=np.ones(3))
    elif kind == "single_array":
        with open(path, "wb") as f:
            np.save(f, np.ones(3))
    elif kind == "text":
        path.write_text("epoch 3\n")
    elif kind == "meta_not_json":
        np.savez(path, meta=np.frombuffer(b"{not json", np.uint8), **{"model/params": np.ones(3)})
    elif kind == "meta_missing_step":
        meta = {"config": {}, "param_groups": [], "epoch": 1, "history": {}}
        np.savez(path, meta=np.frombuffer(json.dumps(meta).encode(), np.uint8))
    elif kind == "folder":
        path.mkdir()


BAD_FILES = {
    "empty": "empty, not a checkpoint",
    "truncated": "truncated or corrupt",
    "flipped_bytes": "truncated or corrupt",
    "foreign_npz": "not a training checkpoint (no 'meta' entry; it holds weights)",
    "single_array": "a single NumPy array, not a training checkpoint",
    "text": "not a NumPy .npz file",
    "meta_not_json": "unreadable, not a checkpoint written by fastopt train (JSONDecodeError",
    "meta_missing_step": "not a usable training checkpoint (its meta has no 'step')",
    "folder": "a folder, not a checkpoint file",
    "missing": "no such file",
}


@pytest.fixture(scope="module")
def good_checkpoint(digits, tmp_path_factory):
    t = _trainer(_small(digits, 64), epochs=1, batch_size=16, widths=(4, 8))
    t.train_epoch()
    path = tmp_path_factory.mktemp("good") / "last.npz"
    t.save(str(path))
    return path.read_bytes()


@pytest.mark.parametrize("kind", sorted(BAD_FILES))
def test_bad_checkpoint_files_get_one_clear_line(kind, good_checkpoint, digits, tmp_path, capsys):
    path = tmp_path / "bad.npz"
    _corrupt(kind, good_checkpoint, path)
    with pytest.raises(CheckpointError) as e:
        _trainer(_small(digits, 64), epochs=2, batch_size=16, widths=(4, 8)).load(str(path))
    assert str(e.value).startswith(f"{path}: {BAD_FILES[kind]}")
    # The command line: one usage error naming the option and the file, exit code 2, no traceback.
    with pytest.raises(SystemExit) as exit_:
        train_main(
            [
                "--device",
                "cpu",
                "--epochs",
                "2",
                "--width",
                "4",
                "8",
                "--quiet",
                "--resume",
                str(path),
                "--out",
                str(tmp_path / "out"),
            ]
        )
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "Traceback" not in err
    assert err.splitlines()[-1] == f"fastopt train: error: argument --resume: {e.value}"


def test_interrupted_save_keeps_the_previous_checkpoint(digits, tmp_path, monkeypatch):
    t = _trainer(_small(digits, 64), epochs=2, batch_size=16, widths=(4, 8))
    path = tmp_path / "last.npz"
    t.save(str(path))
    before = path.read_bytes()
    t.train_epoch()

    def interrupted(f, **arrays):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez", interrupted)
    with pytest.raises(KeyboardInterrupt):
        t.save(str(path))
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["last.npz"]
    monkeypatch.undo()
    t.save(str(path))
    assert read_checkpoint(str(path))[0]["epoch"] == 1


def _scripted_validation(monkeypatch, losses):
    """Trainer.evaluate returns these validation losses, one per epoch (test evaluations unscripted)."""
    losses, real = iter(losses), Trainer.evaluate
    monkeypatch.setattr(
        Trainer,
        "evaluate",
        lambda self, split, batch_size=512: (
            {"loss": next(losses), "acc": 0.5, "top5": 0.9} if split is self.data.val else real(self, split, batch_size)
        ),
    )


def _args(*argv):
    p = argparse.ArgumentParser()
    add_arguments(p)
    return p.parse_args(
        ["--device", "cpu", "--width", "4", "8", "--batch-size", "16", "--warmup-epochs", "1", "--quiet", *argv]
    )


@pytest.mark.parametrize("source_best", ["kept", "deleted"])
def test_resume_into_another_out_without_a_new_best(source_best, digits, tmp_path, monkeypatch, capsys):
    # The best epoch (2) lies before the checkpoint (3), and the resumed epoch 4 does not beat it.
    data = _small(digits, 64)
    first, second = str(tmp_path / "first"), str(tmp_path / "second")
    _scripted_validation(monkeypatch, [1.0, 0.5, 0.9, 0.95])
    train_once(_args("--epochs", "3", "--out", first), data, progress=False, out_dir=first)
    if source_best == "deleted":
        os.remove(os.path.join(first, "best.npz"))
    resume = _args("--epochs", "4", "--out", second, "--resume", os.path.join(first, "last.npz"))
    trainer, history, _ = train_once(resume, data, progress=False, out_dir=second)
    assert len(history.epochs) == 4 and history.best_epoch == 2
    err = capsys.readouterr().err
    if source_best == "kept":  # carried over, and the reported model is epoch 2's
        best = read_checkpoint(os.path.join(second, "best.npz"))
        assert best[0]["epoch"] == 2 and all(
            np.array_equal(v, best[1][k]) for k, v in trainer.model.state_dict().items()
        )
    else:  # nothing to carry: said so, and the last model is reported
        assert not os.path.exists(os.path.join(second, "best.npz"))
        assert "not beside" in err and "reporting the last model" in err
        last = read_checkpoint(os.path.join(second, "last.npz"))
        assert last[0]["epoch"] == 4 and all(
            np.array_equal(v, last[1][k]) for k, v in trainer.model.state_dict().items()
        )


def test_cli_resume_continues_to_the_new_epochs(tmp_path, digits, capsys):
    out = tmp_path / "run"
    common = ["--device", "cpu", "--width", "4", "8", "--warmup-epochs", "1", "--out", str(out), "--quiet"]
    assert train_main(["--epochs", "1", *common]) == 0
    assert train_main(["--epochs", "2", "--resume", str(out / "last.npz"), *common]) == 0
    report = json.loads((out / "metrics.json").read_text())
    assert report["epochs_run"] == 2 and [m["epoch"] for m in report["history"]] == [1, 2]
    assert "changed: epochs 1 -> 2; the warm-up + cosine schedule is rebuilt for 2 epochs" in capsys.readouterr().err


# ------------------------------------------------------------------------- command-line errors
# Every option that takes a value, with values it must refuse: each a one-line usage error that
# names the option (exit code 2, as argparse gives its own type errors), never a traceback.
BAD_OPTIONS = {
    "--device": [["foo"], ["cuda:x"], ["CPU"]],
    "--epochs": [["0"], ["-1"], ["1.5"], ["x"]],
    "--batch-size": [["0"], ["-3"]],
    "--optimizer": [["lion"]],
    "--precision": [["fp16"], ["bf16", "--accumulate", "2"]],
    "--lr": [["nan"], ["inf"], ["-1"], ["0.1x"]],
    "--weight-decay": [["-1e-3"], ["nan"]],
    "--warmup-epochs": [["-1"], ["nan"], ["100", "--epochs", "2"], ["3", "--search", "2", "--search-epochs", "2"]],
    "--max-grad-norm": [["-1"], ["inf"]],
    "--label-smoothing": [["1.5"], ["-0.1"], ["nan"]],
    "--patience": [["0"]],
    "--seed": [["-1"], [str(2**64)]],
    "--accumulate": [["0"], ["1.5"]],
    "--ema": [["1.5"], ["-0.1"], ["nan"]],
    "--max-shift": [["-1"]],
    "--cutout": [["-1"]],
    "--brightness": [["-0.5"], ["nan"]],
    "--contrast": [["2"], ["-0.1"]],
    "--mixup": [["-1"], ["inf"]],
    "--model": [["resnet18"], ["resnet"]],
    "--width": [["0", "16"], ["16", "-1"], ["8"]],
    "--dropout": [["1.5"], ["-0.1"], ["nan"]],
    "--out": [["{file}/sub"]],
    "--resume": [["{file}", "--search", "2"]],
    "--search": [["-1"], ["two"], ["2", "--lr-find"]],
    "--search-epochs": [["0"]],
    "--data": [["{file}"], ["{file}/missing.npz"]],
    "--image-size": [["0"], ["x"]],
    "--layout": [["nwhc"]],
    "--whiten": [["svd"]],
    "--whiten-eps": [["0"], ["nan"]],
    "--snapshots": [["-1"], ["3", "--epochs", "4"]],
    "--tensorboard": [["{file}/tb"]],
    "--tensorboard-every": [["0"]],
    "--lr-find-steps": [["1"]],
    "--cutmix": [["-1"], ["nan"]],
    "--crop-scale": [["1.5"], ["-0.1"]],
    "--rotation": [["-5"], ["400"]],
    "--pca-jitter": [["-0.1"], ["inf"]],
    "--tta": [["hflip"]],
    "--nproc": [["0"], ["x"]],
}


def _usage_error(main, argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and "Traceback" not in err, err
    errors = [line for line in err.splitlines() if ": error: " in line]
    assert len(errors) == 1 and errors[0] == err.splitlines()[-1], err
    return errors[0]


def test_bad_options_table_covers_every_option():
    p = argparse.ArgumentParser()
    add_arguments(p)
    takes_value = {a.option_strings[0] for a in p._actions if a.option_strings and a.nargs != 0}
    assert takes_value == set(BAD_OPTIONS)


@pytest.mark.parametrize(
    "option,values",
    [(o, v) for o, vs in BAD_OPTIONS.items() for v in vs],
    ids=lambda x: x if isinstance(x, str) else "_".join(x),
)
def test_cli_bad_values_are_one_line_usage_errors(option, values, tmp_path, capsys):
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    values = [v.replace("{file}", str(a_file)) for v in values]
    line = _usage_error(train_main, ["--out", str(tmp_path / "out"), option, *values], capsys)
    assert line.startswith(f"fastopt train: error: argument {option}")


@pytest.mark.parametrize(
    "field,value,error",
    [
        ("epochs", True, TypeError),
        ("epochs", 2.0, TypeError),
        ("lr", "0.1", TypeError),
        ("lr", None, TypeError),
        ("lr", float("inf"), ValueError),
        ("contrast", 1.5, ValueError),
        ("seed", -1, ValueError),
        ("explode_factor", 1.0, ValueError),
        ("warmup_epochs", 31.0, ValueError),
        ("flip", 1, TypeError),
    ],
)
def test_config_rejects_wrong_types_and_ranges(field, value, error):
    with pytest.raises(error, match=f"^{field}: "):
        TrainConfig(**{field: value}).check()


# `fastopt bench` (the optimizer suite's options.py): the same standard.
BAD_BENCH_OPTIONS = [
    ["--device", "gpu"],
    ["--optimizers", "lion"],
    ["--optimizers", ","],
    ["--sizes", "abc"],
    ["--sizes", "1e5,0"],
    ["--sizes", "1e400"],
    ["--repeat", "0"],
    ["--repeat", "x"],
    ["--budget", "-1"],
    ["--budget", "nan"],
    ["--budget", "0"],
    ["--ref-max", "x"],
    ["--ref-max", "0"],
    ["--out", "{file}/sub"],
    ["--append"],
]


@pytest.mark.parametrize("argv", BAD_BENCH_OPTIONS, ids="_".join)
def test_bench_bad_values_are_one_line_usage_errors(argv, tmp_path, capsys):
    from fastopt.cli import main as fastopt_main

    a_file = tmp_path / "a_file"
    a_file.write_text("")
    line = _usage_error(fastopt_main, ["bench", *(v.replace("{file}", str(a_file)) for v in argv)], capsys)
    assert line.startswith(f"fastopt bench: error: argument {argv[0]}")
