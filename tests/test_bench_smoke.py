"""`fastopt bench` and its suites run end to end and write their three files."""
import json
import subprocess
import sys

import pytest


def test_optimizer_bench_tiny(tmp_path):
    run = subprocess.run([sys.executable, "-m", "fastopt.cli", "bench", "--device", "cpu", "--sizes", "1e4",
                          "--optimizers", "adamw,clip+adamw", "--repeat", "3", "--budget", "0.5", "--no-chart",
                          "--out", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    doc = json.loads((tmp_path / "results.json").read_text())
    rows = [r for r in doc["rows"] if r.get("backend") == "fastopt-cpu"]
    assert {r["case"] for r in rows} == {"adamw", "clip+adamw"}
    assert all(r["median_ms"] > 0 for r in rows)
    assert "fastopt-cpu" in (tmp_path / "results.md").read_text()


@pytest.mark.parametrize("suite", ["normalization", "dropout", "conv2d", "train"])
def test_suite_help(suite):
    run = subprocess.run([sys.executable, "-m", "fastopt.cli", "bench", suite, "--help"], capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 0 and "--quick" in run.stdout


def test_train_bench_quick(tmp_path):
    run = subprocess.run([sys.executable, "-m", "fastopt.cli", "bench", "train", "--device", "cpu", "--quick",
                          "--batch", "8", "--out", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    row = json.loads((tmp_path / "results.json").read_text())["rows"][0]
    assert row["device"] == "cpu" and row["ms_per_step"]["fastopt"] > 0
    assert {"conv2d", "batchnorm", "optimizer", "loss"} <= set(row["split_ms"])
    assert "Split of the step time by op family" in (tmp_path / "results.md").read_text()
