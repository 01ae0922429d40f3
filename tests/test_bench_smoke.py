"""`fastopt bench` and its suites run end to end and write their three files."""

import json
import os
import subprocess
import sys

import pytest


def test_optimizer_bench_tiny(tmp_path):
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "fastopt.cli",
            "bench",
            "--device",
            "cpu",
            "--sizes",
            "1e4",
            "--optimizers",
            "adamw,clip+adamw",
            "--repeat",
            "3",
            "--budget",
            "0.5",
            "--no-chart",
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    doc = json.loads((tmp_path / "results.json").read_text())
    rows = [r for r in doc["rows"] if r.get("backend") == "fastopt-cpu"]
    assert {r["case"] for r in rows} == {"adamw", "clip+adamw"}
    for r in rows:  # the derived columns follow from the timings by their definitions
        assert r["n"] == 10**4 and r["bytes_per_param"] == {"adamw": 28, "clip+adamw": 32}[r["case"]]
        assert r["gbs"] == pytest.approx(r["n"] * r["bytes_per_param"] / r["median_ms"] / 1e6)
        assert r["pct_copy"] == pytest.approx(100 * r["gbs"] / r["copy_gbs"])
        others = {o["backend"]: o["median_ms"] for o in doc["rows"] if o["case"] == r["case"] and o["median_ms"]}
        assert r["speedup_vs"] and all(
            s == pytest.approx(others[b] / r["median_ms"]) for b, s in r["speedup_vs"].items()
        )
    assert "fastopt-cpu" in (tmp_path / "results.md").read_text()


def test_torch_optimizer_bench_tiny(tmp_path):
    """The optimizer step on a (shrunk) ResNet-18's 62 tensors: fastopt.torch vs torch's two."""
    pytest.importorskip("torch")
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "fastopt.bench.torch_optim",
            "--device",
            "cpu",
            "--scale",
            "1e-3",
            "--optimizers",
            "clip+adamw",
            "--repeat",
            "3",
            "--budget",
            "0.2",
            "--no-chart",
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        # one thread: torch's per-tensor OpenMP regions crawl on a busy 2-core runner
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    timed = {r["backend"]: r for r in rows if r["median_ms"]}
    assert {"fastopt.torch", "torch-clip+foreach", "torch-clip+fused"} <= set(timed)
    ours = timed["fastopt.torch"]
    assert ours["tensors"] == 62 and ours["bytes_per_param"] == 32 and ours["floor_ms"] > 0
    assert ours["speedup_vs"]["torch-clip+fused"] > 0
    assert "| clip+adamw | fastopt.torch | 32 |" in (tmp_path / "results.md").read_text()


def test_train_bench_bf16_quick(tmp_path):
    from fastopt.bench.train import main

    contenders = "fastopt,torch bf16+CL" if _has_torch() else "fastopt"
    assert (
        main(
            [
                "--device",
                "cpu",
                "--quick",
                "--batch",
                "4",
                "--steps",
                "1",
                "--rounds",
                "1",
                "--precision",
                "bf16",
                "--contenders",
                contenders,
                "--out",
                str(tmp_path),
            ]
        )
        == 0
    )
    row = json.loads((tmp_path / "results.json").read_text())["rows"][0]
    assert row["reference"] == "fastopt bf16" and row["ms_per_step"]["fastopt bf16"] > 0
    assert row["fastopt_speedup_vs"]["fastopt"] == pytest.approx(
        row["ms_per_step"]["fastopt"] / row["ms_per_step"]["fastopt bf16"]
    )
    if _has_torch():
        assert row["bf16_speedup_vs_torch_bf16"] > 0
        assert "fastopt bf16 vs torch bf16 autocast" in (tmp_path / "results.md").read_text()


def _has_torch():
    try:
        import torch  # noqa: F401

        return True
    except ImportError:
        return False


def test_torch_training_step_bench_tiny(tmp_path):
    """Training steps of a torch model: eager, converted + fastopt's optimizer, bf16 autocast +
    channels_last (the compiled contenders cost a minute of compilation; the lead's run has them)."""
    pytest.importorskip("torch")
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "fastopt.bench.torch_train",
            "--device",
            "cpu",
            "--models",
            "small_cnn",
            "--contenders",
            "torch,fastopt,torch bf16+CL,fastopt bf16,fastopt bf16+CL",
            "--batch",
            "4",
            "--rounds",
            "1",
            "--steps",
            "2",
            "--malloc",
            "steady",
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    doc = json.loads((tmp_path / "results.json").read_text())
    # glibc (every Linux CI machine): the thresholds were set, and the report says so.
    assert doc["devices"]["malloc"].startswith("steady") or "no glibc" in doc["devices"]["malloc"]
    row = doc["rows"][0]
    assert row["model"] == "small_cnn" and set(row["ms_per_step"]) == {
        "torch",
        "fastopt",
        "torch bf16+CL",
        "fastopt bf16",
        "fastopt bf16+CL",
    }
    assert set(row["bf16_speedup_vs_torch_bf16"]) == {"fastopt bf16", "fastopt bf16+CL"}
    assert all(v > 0 for v in row["bf16_speedup_vs_torch_bf16"].values())
    assert all(v > 0 for v in row["ms_per_step"].values()) and row["fastopt_speedup_vs"]["torch"] > 0
    assert "| cpu | small_cnn | 4 |" in (tmp_path / "results.md").read_text() and (tmp_path / "chart.png").exists()


@pytest.mark.parametrize("suite", ["normalization", "dropout", "conv2d", "train"])
def test_suite_help(suite):
    run = subprocess.run(
        [sys.executable, "-m", "fastopt.cli", "bench", suite, "--help"], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0 and "--quick" in run.stdout


def test_train_bench_quick(tmp_path):
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "fastopt.cli",
            "bench",
            "train",
            "--device",
            "cpu",
            "--quick",
            "--batch",
            "8",
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    row = json.loads((tmp_path / "results.json").read_text())["rows"][0]
    assert row["device"] == "cpu" and row["ms_per_step"]["fastopt"] > 0
    assert {"conv2d", "batchnorm", "optimizer", "loss"} <= set(row["split_ms"])
    assert "Split of the step time by op family" in (tmp_path / "results.md").read_text()


# Every suite's GPU path, at the smallest settings each offers: on a GPU, and in CI on the CUDA
# emulation, where the benchmarks otherwise refuse the device (its timings mean nothing), so that
# a lent GPU's few minutes are not lost to a bug in the benchmark code.
RUN_ON_ANY_CUDA = (
    "import sys\n"
    "sys.meta_path = [f for f in sys.meta_path if 'ScikitBuild' not in type(f).__name__]\n"
    "import fastopt\n"
    "fastopt.cuda.has_gpu = fastopt.cuda.is_available\n"
    "from fastopt.cli import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)


@pytest.mark.gpu
@pytest.mark.parametrize(
    "suite, args",
    [
        ([], ["--sizes", "1e4", "--optimizers", "adamw,clip+adamw", "--repeat", "2", "--budget", "0.2", "--no-chart"]),
        (["normalization"], ["--quick", "--repeat", "1"]),
        (["dropout"], ["--quick", "--repeat", "1"]),
        (["conv2d"], ["--batch", "1", "--repeat", "1"]),
        (["train"], ["--quick", "--batch", "8", "--steps", "1", "--rounds", "1"]),
    ],
    ids=["optim", "normalization", "dropout", "conv2d", "train"],
)
def test_suite_runs_on_cuda(tmp_path, suite, args):
    run = subprocess.run(
        [sys.executable, "-c", RUN_ON_ANY_CUDA, "bench", *suite, "--device", "cuda", *args, "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    rows = [r for r in json.loads((tmp_path / "results.json").read_text())["rows"] if r["device"] == "cuda"]
    times = [r["ms_per_step"]["fastopt"] for r in rows if "ms_per_step" in r] + [
        r["median_ms"] for r in rows if str(r.get("backend", "")).startswith("fastopt")
    ]
    assert times and all(t > 0 for t in times), rows[:3]
    if suite == ["conv2d"]:  # the opt-in Winograd and strips kernels are timed beside the defaults
        assert {r["layer"] for r in rows if r["backend"] == "fastopt-winograd"} == {
            "3x3 64@56",
            "3x3 128@28",
            "3x3 256@14",
            "3x3 512@7",
        }, rows[:3]
        assert {
            (r["layer"], r["pass"])
            for r in rows
            if r["backend"] in ("fastopt-strips", "fastopt-dw-loads", "fastopt-dw-taps")
        } == {
            ("7x7/2 3>64@224", "data-grad"),
            ("dw3x3 64@56", "forward"),
            ("dw3x3 64@56", "data-grad"),
            ("dw3x3 64@56", "weight-grad"),
        }, rows[:3]
        verdicts = (tmp_path / "results.md").read_text().split("Opt-in kernels")[1]
        assert "| cuda | 7x7/2 3>64@224 | data-grad | fastopt-strips |" in verdicts
