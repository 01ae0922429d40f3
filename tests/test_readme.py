"""The README's CPU tour runs as written, and its set-up commands match CI's."""

import re
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _readme():
    path = ROOT / "README.md"
    if not path.exists():
        pytest.skip("not running from a source checkout")
    return path.read_text()


def test_cpu_tour_runs():
    block = re.findall(r"```python\n(.*?)```", _readme(), re.S)[0]
    rng = np.random.default_rng(0)
    ns = {"compute_gradients": lambda ps: [rng.standard_normal(p.shape).astype(np.float32) for p in ps]}
    exec(block, ns)
    opt, result = ns["opt"], ns["result"]
    assert result.norm > 1.0 and result.skipped is False
    # Warm-up then cosine to 0 over the remaining 900 steps.
    assert ns["sched"].get_last_lr() == pytest.approx([0.0, 0.0], abs=1e-12)
    assert opt.state_dict()["state"][0]["step"] == 1000


def test_nn_tour_runs():
    block = [b for b in re.findall(r"```python\n(.*?)```", _readme(), re.S) if "nn.Sequential" in b][0]
    ns = {}
    np.random.seed(0)  # the tour draws its batch from NumPy's global generator
    exec(block, ns)
    trained = ns["store"].data.copy()
    initial = ns["model"].build("cpu", seed=0).data  # the same seed draws the starting point again
    assert np.abs(trained - initial).max() > 1e-3  # 20 AdamW steps moved the weights
    # ... and fitted the batch: its loss fell (to 0.81-0.94 of the first over 30 draws of the batch).
    first = float(ns["loss_fn"](ns["model"].forward(ns["x"], training=True), ns["y"]))
    assert float(ns["loss"]) < first


def test_torch_tour_runs():
    torch = pytest.importorskip("torch")
    block = [b for b in re.findall(r"```python\n(.*?)```", _readme(), re.S) if "fastopt.torch" in b][0]
    # torch.compile wraps lazily; the first call compiles (tens of seconds), which
    # tests/test_torch_ops.py covers, so the tour is run up to the wrapping.
    torch.manual_seed(0)
    ns = {}
    exec(block, ns)
    model, opt = ns["model"], ns["opt"]
    assert type(model[0]).__module__.startswith("fastopt.torch")  # converted in place
    assert isinstance(opt, torch.optim.Optimizer)
    assert opt.grad_norm.shape == () and float(opt.grad_norm) > 0
    assert opt.state_dict()["state"][0]["step"].item() == len(ns["loader"])
    assert ns["sched"].last_epoch == len(ns["loader"])


def test_ci_runs_the_readme_test_command():
    commands = re.findall(r"```bash\n(.*?)\n```", _readme(), re.S)
    test_command = commands[1].strip()
    assert "pytest" in test_command
    assert test_command in (ROOT / ".ci" / "run").read_text()
