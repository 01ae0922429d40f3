"""Transfer learning: freeze/unfreeze (no weight-gradient kernel for frozen layers, batch norm on
its running statistics, the optimizer never touching frozen parameters or keeping state for
them, backward stopping below the lowest trainable layer), parameter groups by name with lower
learning rates, and `fastopt transfer` end to end."""

import json

import numpy as np
import pytest

import fastopt.functional as F
from fastopt import nn, optim
from fastopt.train import TrainConfig, Trainer


def _model(seed=0):
    model = nn.models.resnet(8, num_classes=3, in_channels=1, width=4)
    model.build("cpu", seed=seed)
    return model


def _spy(monkeypatch):
    """Records (layer kind, need flags) of every conv/linear backward call."""
    calls = []
    for name in ("conv2d_backward", "linear_backward"):
        real = getattr(F, name)

        def spy(*args, _real=real, _name=name, **kw):
            calls.append((_name, tuple(kw["need"])))
            return _real(*args, **kw)

        monkeypatch.setattr(F, name, spy)
    return calls


def _steps(model, opt, rng, n=3):
    loss = nn.SoftmaxCrossEntropy()
    for _ in range(n):
        x = rng.standard_normal((6, 1, 8, 8)).astype(np.float32)
        loss.forward(model.forward(x, True), rng.integers(0, 3, 6).astype(np.int32))
        model.backward(loss.backward())
        opt.step(model.store.grads_for(opt))


def test_linear_probe_leaves_the_body_untouched(monkeypatch, rng):
    model = _model()
    model.freeze()
    model.layers[-1].unfreeze()
    before = model.state_dict()
    opt = optim.AdamW(model.store.param_groups(0.1), lr=0.1)  # weight decay would move any frozen weight
    calls = _spy(monkeypatch)
    _steps(model, opt, rng)
    after = model.state_dict()
    changed = {k for k in before if not np.array_equal(before[k], after[k])}
    assert changed == {"10.weight", "10.bias"}  # not even a running statistic or a batch count
    # The head's backward only: no d(input), and nothing below it runs at all.
    assert calls == [("linear_backward", (False, True, True))] * 3
    head = model.layers[-1].parameters()
    assert sum(int(np.prod(t.shape)) for g in opt.param_groups for t in g["params"]) == sum(p.size for p in head)
    assert all(not p.grad.any() for p in model.parameters() if not p.requires_grad)


def test_frozen_middle_block_passes_gradients_without_weight_grads(monkeypatch, rng):
    model = _model()
    block = model.layers[3]  # the first residual block; the stem below it trains
    block.freeze()
    frozen = {f"3.{k}": v for k, v in block.state_dict().items()}
    opt = optim.SGD(model.store.param_groups(0.0), lr=0.1, momentum=0.9)
    calls = _spy(monkeypatch)
    _steps(model, opt, rng)
    after = model.state_dict()
    assert all(np.array_equal(after[k], v) for k, v in frozen.items())
    assert not np.array_equal(after["0.weight"], _model().state_dict()["0.weight"])  # the stem did train
    needs = [need for kind, need in calls if kind == "conv2d_backward"]
    # per step, backward order: stage 2 and 3 blocks, the frozen block, then the stem's conv
    per_step = needs[: len(needs) // 3]
    assert per_step.count((True, False, False)) == 2  # the frozen block's two convs: d(input) only
    assert per_step[-1] == (False, True, False)  # the stem: weights only (its input is data)
    block.unfreeze()
    _steps(model, opt, rng, 1)  # the old optimizer's groups do not hold the block
    assert all(
        np.array_equal(model.state_dict()[k], v)
        for k, v in frozen.items()
        if "running" not in k and "num_batches" not in k
    )
    assert model.state_dict()["3.body.1.num_batches_tracked"] == 1  # batch norm trains again


def test_param_groups_by_name():
    model = _model()
    groups = model.store.param_groups(0.01, lr=1.0, lr_scale={"0": 0.1, "5": 0.5, "5.shortcut": 0.2})
    where = {}
    for g in groups:
        for t in g["params"]:
            for name, p in model.named_parameters():
                if np.shares_memory(t, p.data):
                    assert name not in where
                    where[name] = (g["lr"], g["weight_decay"])
    assert set(where) == {n for n, _ in model.named_parameters()}
    for name, p in model.named_parameters():
        lr = (
            0.1
            if name.startswith("0.")
            else 0.2
            if name.startswith("5.shortcut.")
            else 0.5
            if name.startswith("5.")
            else 1.0
        )
        assert where[name] == (lr, 0.01 if p.decay else 0.0), name
    # the default: the store's two flat views, as before
    assert [g["params"][0] is t for g, t in zip(model.store.param_groups(0.01), model.store.tensors)] == [True, True]


def test_freeze_and_group_errors(rng):
    with pytest.raises(RuntimeError, match="^freeze: Sequential is not built yet"):
        nn.models.resnet(8).freeze()
    model = _model()
    opt = optim.AdamW(model.store.param_groups(0.0))
    with pytest.raises(ValueError, match=r"^lr_scale: prefix '3.body.9' matches no parameter"):
        model.store.param_groups(0.0, lr=1.0, lr_scale={"3.body.9": 0.1})
    with pytest.raises(ValueError, match="^lr: lr_scale sets each group's lr"):
        model.store.param_groups(0.0, lr_scale={"0": 0.1})
    with pytest.raises(TypeError, match="^lr_scale: expected a dict"):
        model.store.param_groups(0.0, lr=1.0, lr_scale=[("0", 0.1)])
    with pytest.raises(ValueError, match=r"^lr_scale\['0'\]: must be a finite number >= 0"):
        model.store.param_groups(0.0, lr=1.0, lr_scale={"0": -1.0})
    model.layers[0].freeze()
    with pytest.raises(RuntimeError, match="^grads_for: '0.weight' was frozen after the optimizer's groups"):
        model.store.grads_for(opt)
    with pytest.raises(RuntimeError, match=r"^store.grads: 1 parameters are frozen \(0.weight"):
        model.store.grads
    with pytest.raises(ValueError, match="^grads_for: param_groups\\[0\\] holds a tensor that is not a view"):
        model.store.grads_for([{"params": [np.zeros(3, np.float32)]}])
    model.freeze()
    with pytest.raises(ValueError, match="^param_groups: every parameter is frozen"):
        model.store.param_groups(0.0)
    with pytest.raises(ValueError, match="^model: part of another built network"):
        Trainer(model.layers[-1], None, TrainConfig(device="cpu"))


def test_transfer_cli_quick(tmp_path, capsys):
    from fastopt.transfer import METHODS, main

    assert main(["--quick", "--shots", "3", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "transfer.json").read_text())
    assert report["shots"] == [3] and report["seeds"] == 1 and (tmp_path / "transfer.png").stat().st_size > 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.split()[:1] == ["3"])
    cells = [float(v) for v in row.replace("+-", " ").split()[1::2]]
    assert cells == pytest.approx([np.mean(report["accuracy"][m]["3"]) for m in METHODS], abs=5e-4)
    assert all(0.0 <= a <= 1.0 for m in METHODS for a in report["accuracy"][m]["3"])


def test_readme_recipe_runs():
    import re
    from pathlib import Path

    readme = Path(__file__).resolve().parents[1] / "README.md"
    if not readme.exists():
        pytest.skip("not running from a source checkout")
    block = [b for b in re.findall(r"```python\n(.*?)```", readme.read_text(), re.S) if "optim.EMA" in b][0]
    np.random.seed(0)
    ns = {}
    exec(block, ns)
    model, ema, opt = ns["model"], ns["ema"], ns["opt"]
    assert ns["logits"].shape == (64, 10) and ema.num_updates == 3
    lrs = sorted({g["lr"] for g in opt.param_groups})
    assert lrs == pytest.approx([3e-4, 3e-3])  # body and head
    head = ns["state"]["3.body.0.weight"]
    assert not np.array_equal(model.state_dict()["3.body.0.weight"], head)  # fine-tuned from the pretrained body
