"""Residual networks and named state: Residual, the CIFAR ResNets, torch's parameter and buffer
names, state_dict round trips with torch, and a network of every new layer against torch.

Parity criterion (network with BN, Residual, AvgPool2d, tanh, sigmoid, ELU, GELU): outputs,
input gradients, every parameter gradient and the running statistics, each compared with a
float64 torch twin, must be within 4x torch float32's own distance to that twin (relative L2
norm; floor 1e-6): "as accurate as torch". Measured: at most 1.3x.
"""

import numpy as np
import pytest

from fastopt import nn
from fastopt.train import CheckpointError, read_checkpoint


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30)


def _mixed():
    """Every new layer, a projection shortcut and an identity one, odd sizes."""
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.GELU(),
        nn.Residual(
            nn.Sequential(
                nn.Conv2d(8, 12, 3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(12),
                nn.ELU(0.7),
                nn.Conv2d(12, 12, 3, padding=1, bias=False),
                nn.BatchNorm2d(12),
            ),
            nn.Sequential(nn.Conv2d(8, 12, 1, stride=2, bias=False), nn.BatchNorm2d(12)),
        ),
        nn.Tanh(),
        nn.AvgPool2d(3, stride=2, padding=1),
        nn.Residual(nn.Sequential(nn.Conv2d(12, 12, 3, padding=1), nn.Sigmoid(), nn.BatchNorm2d(12))),
        nn.ReLU(),
        nn.GlobalAvgPool2d(),
        nn.Linear(12, 5),
    )


def _twin(model, torch, dtype=None):
    from fastopt.bench.train import torch_twin

    t = torch_twin(model, torch)
    if dtype is not None:
        t = t.to(dtype)
    t.load_state_dict({k: torch.from_numpy(v) for k, v in model.state_dict().items()})
    return t


def test_network_of_new_layers_matches_torch(rng):
    torch = pytest.importorskip("torch")
    model = _mixed()
    model.build("cpu", seed=int(rng.integers(1 << 31)), input_grad=True)
    t32, t64 = _twin(model, torch), _twin(model, torch, torch.float64)
    for step in range(2):  # the second step sees running statistics updated once
        x = rng.standard_normal((4, 3, 9, 9)).astype(np.float32)
        r = rng.standard_normal((4, 5)).astype(np.float32)
        got = {"y": model.forward(x, True)}
        got["dx"] = model.backward(r)
        got.update({n: p.grad.copy() for n, p in model.named_parameters()})
        peers = []
        for t, dtype in ((t32, torch.float32), (t64, torch.float64)):
            xt = torch.from_numpy(x).to(dtype).requires_grad_()
            yt = t(xt)
            yt.backward(torch.from_numpy(r).to(dtype))
            peers.append(
                {
                    "y": yt.detach().numpy(),
                    "dx": xt.grad.numpy(),
                    **{n: p.grad.numpy().copy() for n, p in t.named_parameters()},
                }
            )
            t.zero_grad()
        assert got.keys() == peers[0].keys()
        for k in got:
            floor = max(_rel(peers[0][k], peers[1][k]), 1e-6)
            assert _rel(got[k], peers[1][k]) <= 4 * floor, (step, k, _rel(got[k], peers[1][k]), floor)
    state, ref = model.state_dict(), t64.state_dict()
    for k in state:
        floor = max(_rel(t32.state_dict()[k].numpy(), ref[k].numpy()), 1e-6)
        assert _rel(state[k], ref[k].numpy()) <= 4 * floor, k
    t32.eval()
    x = rng.standard_normal((3, 3, 9, 9)).astype(np.float32)
    assert _rel(model.forward(x, False), t32(torch.from_numpy(x)).detach().numpy()) < 1e-5


def test_resnet20_structure_and_names():
    model = nn.models.resnet(20)
    model.build("cpu", seed=0)
    names = [n for n, _ in model.named_parameters()]
    assert sum(p.size for p in model.parameters()) == 272474  # 0.27M (option B shortcuts)
    weighted = [m for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear)) and "shortcut" not in n]
    assert len(weighted) == 20  # 6n + 2
    assert names[:4] == ["0.weight", "1.weight", "1.bias", "3.body.0.weight"]
    assert "9.shortcut.0.weight" in names and "15.shortcut.1.bias" in names and names[-2:] == ["22.weight", "22.bias"]
    keys = list(model.state_dict())
    assert keys[1:6] == ["1.weight", "1.bias", "1.running_mean", "1.running_var", "1.num_batches_tracked"]
    assert len(nn.models.resnet(56).parameters()) == 3 + 6 * 27 + 2 * 3 + 2  # stem, blocks, shortcuts, head
    with pytest.raises(ValueError, match=r"^depth: CIFAR ResNets have 6n \+ 2 layers"):
        nn.models.resnet(21)


def test_resnet_state_dict_round_trip_with_torch():
    torch = pytest.importorskip("torch")
    model = nn.models.resnet(20, num_classes=7, in_channels=1, width=4)
    model.build("cpu", seed=3)
    torch.manual_seed(0)
    peer = _twin(model, torch)
    for p in peer.parameters():  # torch's own values, not fastopt's
        torch.nn.init.normal_(p)
    peer.train()
    with torch.no_grad():
        for _ in range(3):  # running statistics and counts of its own
            peer(torch.randn(5, 1, 8, 8))
    theirs = {k: v.numpy().copy() for k, v in peer.state_dict().items()}
    assert model.load_state_dict(theirs) == ([], [])
    mine = model.state_dict()
    assert list(mine) == list(theirs)
    for k in theirs:
        assert mine[k].dtype == theirs[k].dtype and np.array_equal(mine[k], theirs[k]), k
    back = _twin(nn.models.resnet(20, num_classes=7, in_channels=1, width=4).build("cpu").root, torch)
    back.load_state_dict({k: torch.from_numpy(v) for k, v in mine.items()}, strict=True)
    for k, v in back.state_dict().items():
        assert torch.equal(v, peer.state_dict()[k]), k
    peer.eval()
    x = np.random.default_rng(0).standard_normal((2, 1, 8, 8)).astype(np.float32)
    assert _rel(model.forward(x, False), peer(torch.from_numpy(x)).detach().numpy()) < 1e-5


def test_load_state_dict_errors_change_nothing():
    model = nn.models.resnet(8, num_classes=3, width=2)
    model.build("cpu", seed=0)
    before = model.state_dict()
    other = nn.models.small_cnn(3, 3, widths=(2, 2))
    other.build("cpu")
    with pytest.raises(RuntimeError, match=r"(?s)Missing key\(s\) in state_dict: \"3.body.0.weight\".*Unexpected key"):
        model.load_state_dict(other.state_dict())
    head = nn.models.resnet(8, num_classes=4, width=2)
    head.build("cpu", seed=1)
    for strict in (True, False):  # a shape that differs is an error either way, as in torch
        with pytest.raises(RuntimeError, match=r"size mismatch for 10.weight: copying a param with shape \(4, 8\)"):
            model.load_state_dict(head.state_dict(), strict=strict)
    bad = dict(before, **{"1.running_var": np.array(["x"] * 2)})
    with pytest.raises(RuntimeError, match=r"1.running_var: expected a real-valued array"):
        model.load_state_dict(bad)
    with pytest.raises(RuntimeError, match=r"1.num_batches_tracked: expected a count >= 0"):
        model.load_state_dict(dict(before, **{"1.num_batches_tracked": np.array(-2)}))
    with pytest.raises(TypeError, match="^state_dict: expected a dict"):
        model.load_state_dict([1, 2])
    after = model.state_dict()
    assert all(np.array_equal(after[k], before[k]) for k in before)
    with pytest.raises(RuntimeError, match=r"^load_state_dict: Sequential is not built yet"):
        nn.models.resnet(8).load_state_dict(before)


def test_new_head_keeps_its_init_with_strict_false():
    body = nn.models.resnet(8, num_classes=5, width=2)
    body.build("cpu", seed=0)
    model = nn.models.resnet(8, num_classes=3, width=2)
    model.build("cpu", seed=1)
    head = model.layers[-1].params["weight"].data.copy()
    state = {k: v for k, v in body.state_dict().items() if not k.startswith("10.")}
    assert model.load_state_dict(state, strict=False) == (["10.weight", "10.bias"], [])
    assert np.array_equal(model.layers[-1].params["weight"].data, head)
    assert all(np.array_equal(model.state_dict()[k], v) for k, v in state.items())


def test_residual_forward_backward_and_bad_input(rng):
    conv = nn.Conv2d(3, 3, 3, padding=1)
    block = nn.Residual(nn.Sequential(conv, nn.ReLU()))
    block.build("cpu", seed=0, input_grad=True)
    x = rng.standard_normal((2, 3, 5, 5)).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    z = conv.forward(x, False)
    conv.forward(x)  # d(body) by hand: through the ReLU, then the conv alone
    body_dx = conv.backward(np.where(z > 0, dy, 0).astype(np.float32))
    y = block.forward(x)
    np.testing.assert_allclose(y, np.maximum(z, 0) + x, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(block.backward(dy), body_dx + dy, rtol=1e-5, atol=1e-6)
    wide = nn.Residual(nn.Conv2d(3, 4, 3, padding=1))
    wide.build("cpu")
    with pytest.raises(
        ValueError,
        match=r"^Residual: the body maps x \(2, 3, 5, 5\) to \(2, 4, 5, 5\) but the "
        r"identity shortcut passes \(2, 3, 5, 5\); a projection shortcut",
    ):
        wide.forward(x)
    with pytest.raises(TypeError, match="^body: expected a fastopt.nn.Module"):
        nn.Residual(lambda v: v)
    with pytest.raises(TypeError, match="^shortcut: expected a fastopt.nn.Module or None"):
        nn.Residual(nn.ReLU(), "identity")
    relu = nn.ReLU()
    with pytest.raises(ValueError, match=r"^build: module '1' also appears as '0'"):
        nn.Sequential(relu, relu).build("cpu")
    with pytest.raises(RuntimeError, match="^build: this Sequential is part of a built network"):
        block.body.build("cpu")


def test_drop_path_in_a_block(rng):
    block = nn.Residual(nn.Sequential(nn.Conv2d(2, 2, 3, padding=1, bias=False)), drop_path=0.5)
    block.build("cpu", seed=7, input_grad=True)
    x = rng.standard_normal((64, 2, 4, 4)).astype(np.float32)
    body = block.body.forward(x, False)
    y = block.forward(x, True)
    dropped = np.all(y == x, axis=(1, 2, 3))
    assert 0 < dropped.sum() < 64
    np.testing.assert_allclose(y[~dropped], x[~dropped] + 2 * body[~dropped], rtol=1e-6, atol=1e-6)
    dy = np.ones_like(y)
    block.backward(dy)
    dw = block.body.layers[0].params["weight"].grad.copy()
    # The weight gradient sees only the kept samples (scaled by 2): the same masks, regenerated.
    kept = block.body.layers[0]
    kept.forward(x[~dropped])
    kept.backward(2 * dy[~dropped])
    np.testing.assert_allclose(dw, kept.params["weight"].grad, rtol=1e-5, atol=1e-5)
    assert block.offset == 64  # the next call draws fresh decisions
    np.testing.assert_array_equal(block.forward(x, False), x + body)  # eval: identity scaling, no draws
    assert block.offset == 64


def test_older_flat_checkpoint_is_refused(tmp_path):
    path = tmp_path / "old.npz"
    meta = {
        "config": {},
        "param_groups": [],
        "epoch": 1,
        "step": 1,
        "history": {"epochs": [], "best_epoch": 1, "best_val_loss": 1.0, "stopped": ""},
    }
    import json

    np.savez(path, meta=np.frombuffer(json.dumps(meta).encode(), np.uint8), **{"model/params": np.ones(3)})
    with pytest.raises(CheckpointError, match="written by an older fastopt"):
        read_checkpoint(str(path))


def test_train_cli_resnet20_and_resume_guard(tmp_path, capsys):
    from fastopt.train_cli import main

    out = str(tmp_path / "r20")
    assert main(["--model", "resnet20", "--epochs", "1", "--quiet", "--out", out]) == 0
    report = __import__("json").loads((tmp_path / "r20" / "metrics.json").read_text())
    assert report["config"]["model"] == "resnet20" and report["test"]["acc"] > 0.2  # ten classes: chance is 0.1
    meta, state, _ = read_checkpoint(str(tmp_path / "r20" / "last.npz"))
    assert "3.body.0.weight" in state and "22.weight" in state
    with pytest.raises(SystemExit):  # a checkpoint of another network is refused by name
        main(
            ["--epochs", "2", "--quiet", "--out", str(tmp_path / "cnn"), "--resume", str(tmp_path / "r20" / "last.npz")]
        )
    assert "written for another model" in capsys.readouterr().err


def test_bench_train_resnet20_smoke(tmp_path):
    pytest.importorskip("torch")
    from fastopt.bench.train import main

    assert (
        main(
            [
                "--device",
                "cpu",
                "--model",
                "resnet20",
                "--quick",
                "--batch",
                "2",
                "--steps",
                "1",
                "--rounds",
                "1",
                "--out",
                str(tmp_path),
            ]
        )
        == 0
    )
    row = __import__("json").loads((tmp_path / "results.json").read_text())["rows"][0]
    assert row["model"] == "resnet20" and set(row["ms_per_step"]) == {"fastopt", "torch"}
    assert row["fastopt_speedup_vs"]["torch"] == pytest.approx(
        row["ms_per_step"]["torch"] / row["ms_per_step"]["fastopt"]
    )
    assert {"conv2d", "batchnorm", "residual add", "optimizer"} <= set(row["split_ms"])


@pytest.mark.gpu
def test_resnet_on_the_gpu_matches_the_cpu(rng):
    from conftest import fetch, put

    from fastopt import optim

    models = []
    for device in ("cpu", "cuda"):
        m = nn.models.resnet(8, num_classes=3, in_channels=1, width=4, drop_path=0.5)
        m.build(device, seed=5, input_grad=True)
        models.append(m)
    x = rng.standard_normal((6, 1, 8, 8)).astype(np.float32)
    dy = rng.standard_normal((6, 3)).astype(np.float32)
    out = []
    for m, device in zip(models, ("cpu", "cuda")):
        y = fetch(m.forward(put(x, device)))
        dx = fetch(m.backward(put(dy, device)))
        m.forward(put(x, device))
        m.backward(put(dy, device), accumulate=True)  # the next drop-path draws, added on
        ema = optim.EMA(m, 0.5)
        ema.update()
        with ema.applied():
            state = {k: fetch(v) for k, v in m.state_dict().items()}
        out.append((y, dx, fetch(m.store.grad), state))
    (yc, dxc, gc, sc), (yg, dxg, gg, sg) = out
    for a, b, what in ((yc, yg, "y"), (dxc, dxg, "dx"), (gc, gg, "grads")):
        assert _rel(b, a) < 1e-5, what
    for k in sc:
        assert _rel(sg[k], sc[k]) < 1e-5, k
