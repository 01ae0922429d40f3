"""`fastopt bench loader` end to end at a tiny size, and the fact it relies on: training from the
raw file (normalized batch by batch in the loader thread) is step for step the training on the
same arrays normalized in memory."""

import json

import numpy as np
import pytest
from conftest import BACKENDS

from fastopt import _arrays, data as datasets
from fastopt.bench import loader as bench
from fastopt.nn.models import small_cnn
from fastopt.train import TrainConfig, Trainer


@pytest.mark.parametrize("backend", BACKENDS)
def test_training_from_the_file_equals_training_in_memory(tmp_path, backend):
    path = str(tmp_path / "d.npz")
    bench.make_npz(path, 96)
    raw = datasets.load(path, val_fraction=0.0, test_fraction=0.0)
    assert raw.train.x.dtype == np.uint8 and raw.train.x.shape == (96, 3, 32, 32)
    # On the GPU the loader thread copies each batch to the device while the step runs.
    config = TrainConfig(device=backend, epochs=2, batch_size=32, progress=False, max_shift=2, tta="flip")
    a = Trainer(small_cnn(3, 10, widths=(4, 8)), raw, config)
    b = Trainer(small_cnn(3, 10, widths=(4, 8)), bench._in_memory(raw), config)
    for _ in range(2):
        ma, _ = a.train_epoch()
        mb, _ = b.train_epoch()
        assert ma["train_loss"] == mb["train_loss"]
    assert np.array_equal(_arrays.to_numpy(a.store.data), _arrays.to_numpy(b.store.data))
    assert a.evaluate(raw.train) == b.evaluate(b.data.train)  # flip TTA on each's own inputs


def test_bench_loader_writes_its_table(tmp_path, capsys):
    assert (
        bench.main(
            [
                "--device",
                "cpu",
                "--images",
                "128",
                "--batch",
                "64",
                "--rounds",
                "1",
                "--keep",
                str(tmp_path / "images.npz"),
                "--out",
                str(tmp_path / "out"),
            ]
        )
        == 0
    )
    row = json.loads((tmp_path / "out" / "results.json").read_text())["row"]
    assert row["images"] == 128 and set(row["samples_per_s"]) == {"data", "memory"}
    assert row["ratio"] == row["samples_per_s"]["data"] / row["samples_per_s"]["memory"]
    assert row["met"] == (row["ratio"] >= 0.9)
    assert "| cpu |" in capsys.readouterr().out and (tmp_path / "images.npz").exists()
