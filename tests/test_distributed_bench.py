"""`fastopt bench distributed`: the on-paper model's numbers, and a smoke run with the smallest
sizes on 2 processes (the timings themselves are not checked: the lead times on an idle machine)."""

import json
import subprocess
import sys

import pytest

pytest.importorskip("torch")

from fastopt.bench import distributed as bench  # noqa: E402


def test_paper_model_ring_bytes():
    rows = {(r["model"], r["ranks"]): r for r in bench.paper_rows()}
    r = rows[("ResNet-50", 8)]
    # Ring all-reduce: each rank sends 2 (P - 1) / P of the 4-byte gradients.
    assert r["allreduce_bytes"] == pytest.approx(2 * 7 / 8 * 25.6e6 * 4)
    assert r["zero1_reduce_scatter_bytes"] + r["zero1_all_gather_bytes"] == pytest.approx(r["allreduce_bytes"])
    assert rows[("1B-parameter model", 64)]["adam_state_bytes_zero1"] == pytest.approx(8e9 / 64)
    assert rows[("1B-parameter model", 64)]["allreduce_bytes"] == pytest.approx(2 * 63 / 64 * 4e9)


def test_bench_distributed_smoke(tmp_path):
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "fastopt.cli",
            "bench",
            "distributed",
            "--model",
            "mlp",
            "--batch",
            "4",
            "--steps",
            "1",
            "--nproc",
            "2",
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    doc = json.loads((tmp_path / "results.json").read_text())
    assert [(r["nproc"], r["mode"]) for r in doc["rows"]] == [(2, "allreduce"), (2, "zero1")]
    assert all(r["step_ms"] > 0 and 0 <= r["comm_share"] <= 1 for r in doc["rows"])
    assert "| ResNet-50 | 64 |" in (tmp_path / "results.md").read_text()
