"""Weight averaging (optim.EMA) against its formula, parameters and running statistics alike, on
every backend; gradient accumulation against the large batch; the trainer's --ema and
--accumulate.

Tolerances: an EMA update rounds two products and a sum, so the float32 average stays within
3 eps32 max|w| per update of the float64 recurrence (after n updates: 3 n eps32 max|w|).
Accumulated gradients sum the same terms in another order: relative L2 error < 1e-5 (float32
sums over a few hundred terms; measured ~1e-7).
"""

import json

import numpy as np
import pytest
from conftest import fetch

from fastopt import _arrays, nn, optim
from fastopt.data import Dataset, Split
from fastopt.train import TrainConfig, Trainer, read_checkpoint

EPS32 = float(np.finfo(np.float32).eps)


def _bn_model(backend):
    model = nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.GlobalAvgPool2d(), nn.Linear(3, 2)
    )
    model.build(backend, seed=0)
    return model


def _reference(decay, warmup, n):
    """The decays of updates 0 .. n-1."""
    if decay is None:
        return [(k + 1) / (k + 2) for k in range(n)]
    return [min(decay, (1 + k) / (10 + k)) if warmup else decay for k in range(n)]


@pytest.mark.parametrize("decay, warmup", [(0.9, False), (0.999, True), (None, False)])
def test_ema_follows_its_formula(decay, warmup, backend, rng):
    model = _bn_model(backend)
    store = model.store
    ema = optim.EMA(model, decay, warmup=warmup)
    live = [store.data, store.buffers]
    avg = [fetch(t).astype(np.float64) for t in live]
    snapshots = [[a.copy()] for a in avg]
    for d in _reference(decay, warmup, 5):
        for t in live:  # new weights and statistics
            _arrays.copy_(t, rng.standard_normal(tuple(t.shape)).astype(np.float32))
        assert ema.update() == d
        for i, t in enumerate(live):
            w = fetch(t).astype(np.float64)
            avg[i] = d * avg[i] + (1 - d) * w
            snapshots[i].append(w)
    for i, a in enumerate(ema.average):
        np.testing.assert_allclose(fetch(a), avg[i], rtol=0, atol=3 * 5 * EPS32 * 5.0)
        if decay is None:  # the running mean of the 6 snapshots
            np.testing.assert_allclose(fetch(a), np.mean(snapshots[i], axis=0), rtol=0, atol=3 * 5 * EPS32 * 5.0)
    before = [fetch(t) for t in live]
    with ema.applied():
        for t, a in zip(live, ema.average):
            np.testing.assert_array_equal(fetch(t), fetch(a))
    for t, b in zip(live, before):
        np.testing.assert_array_equal(fetch(t), b)


def test_ema_state_and_errors():
    model = _bn_model("cpu")
    ema = optim.EMA(model.store, 0.5)
    model.store.data[...] = 1.0
    ema.update()
    state = ema.state_dict()
    other = optim.EMA(_bn_model("cpu"), 0.5)
    other.load_state_dict(state)
    assert other.num_updates == 1 and all(np.array_equal(a, b) for a, b in zip(other.average, ema.average))
    with pytest.raises(ValueError, match=r"state\['average'\]\[0\]: float32 \(71,\) expected"):
        other.load_state_dict({"num_updates": 1, "average": [np.zeros(3, np.float32), state["average"][1]]})
    with pytest.raises(ValueError, match="^decay: must lie in"):
        optim.EMA(model, 1.5)
    with pytest.raises(TypeError, match="^decay: expected a real number"):
        optim.EMA(model, "0.9")
    with pytest.raises(ValueError, match="^warmup: ramps an exponential decay"):
        optim.EMA(model, None, warmup=True)
    with pytest.raises(TypeError, match="^store: expected a built network"):
        optim.EMA([np.zeros(3, np.float32)])


def _no_bn(seed=0):
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Tanh(), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(64, 3))
    model.build("cpu", seed=seed)
    return model


def test_accumulated_gradients_equal_the_large_batch(rng):
    x = rng.standard_normal((12, 1, 8, 8)).astype(np.float32)
    y = rng.integers(0, 3, 12).astype(np.int32)
    loss = nn.SoftmaxCrossEntropy()
    big = _no_bn()
    loss.forward(big.forward(x), y)
    big.backward(loss.backward())
    small = _no_bn()
    with pytest.raises(RuntimeError, match=r"^backward\(accumulate=True\): the gradients were never zeroed"):
        small.forward(x[:4])
        small.backward(np.zeros((4, 3), np.float32), accumulate=True)
    small.zero_grad()
    assert not small.store.grad.any()
    for part in range(3):
        s = slice(4 * part, 4 * part + 4)
        loss.forward(small.forward(x[s]), y[s])
        small.backward(loss.backward() / 3, accumulate=True)  # the large batch's mean
    rel = np.linalg.norm(small.store.grad - big.store.grad) / np.linalg.norm(big.store.grad)
    assert rel < 1e-5
    with pytest.raises(ValueError, match="^accumulate: only the root"):
        nn.Sequential(nn.Linear(2, 2)).backward(np.zeros((1, 2), np.float32), accumulate=True)


def _digits_like(rng, n=48):
    x = rng.standard_normal((n, 1, 8, 8)).astype(np.float32)
    y = rng.integers(0, 3, n).astype(np.int32)
    split = Split(x, y)
    return Dataset("random", split, Split(x[:16], y[:16]), Split(x[:16], y[:16]), 3, 0.0, 1.0)


def test_trainer_accumulate_matches_the_large_batch(rng):
    data = _digits_like(rng)
    common = dict(device="cpu", epochs=2, max_shift=0, label_smoothing=0.0, progress=False, lr=1e-2)
    big = Trainer(_no_bn(), data, TrainConfig(batch_size=12, **common))
    small = Trainer(_no_bn(), data, TrainConfig(batch_size=4, accumulate=3, **common))
    big.fit()
    small.fit()
    assert small.step == big.step == 8 and small.steps_per_epoch == 4
    rel = np.linalg.norm(small.store.data - big.store.data) / np.linalg.norm(big.store.data)
    assert rel < 1e-5


def test_trainer_ema_evaluates_and_checkpoints_the_average(rng, tmp_path):
    data = _digits_like(rng)
    config = TrainConfig(device="cpu", epochs=2, batch_size=8, ema=0.9, progress=False)
    trainer = Trainer(_bn_model_1ch(), data, config, out_dir=str(tmp_path))
    trainer.fit()
    assert trainer.ema.num_updates == trainer.step == 12
    with trainer.ema.applied():
        averaged = trainer.model.state_dict()
        expected = trainer._evaluate(data.val, 512)
    assert trainer.evaluate(data.val) == expected != trainer._evaluate(data.val, 512)
    meta, model, _ = read_checkpoint(str(tmp_path / "last.npz"))
    assert meta["ema_updates"] == 12 and meta["ema"].keys() == model.keys()
    assert all(np.array_equal(meta["ema"][k], v) for k, v in averaged.items())
    again = Trainer(_bn_model_1ch(), data, config)
    again.load(str(tmp_path / "last.npz"))  # resumes the average too
    assert again.ema.num_updates == 12 and again.evaluate(data.val) == expected
    report = json.dumps(trainer.history.epochs)
    assert "val_loss" in report


def _bn_model_1ch():
    return nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.GlobalAvgPool2d(), nn.Linear(3, 3)
    )


@pytest.mark.parametrize(
    "cls, rule, kw",
    [
        (optim.SGD, "sgd", dict(lr=0.1, momentum=0.9, weight_decay=0.01)),
        (optim.Adam, "adam", dict(lr=1e-2, maximize=True)),
        (optim.AdamW, "adamw", dict(lr=1e-2)),
        (optim.RMSprop, "rmsprop", dict(lr=1e-2, centered=True)),
    ],
    ids=["sgd", "adam-max", "adamw", "rmsprop"],
)
def test_l1_inside_the_fused_update(cls, rule, kw, backend, rng):
    from conftest import put

    from fastopt.reference import optim as ref

    p = rng.standard_normal(101).astype(np.float32)
    p[:4] = 0.0  # sign(0) = 0: no pull either way
    dev = put(p, backend)
    opt = cls([{"params": [dev], "l1": 0.05}], **kw)
    expected, state = p.astype(np.float64), {}
    for _ in range(3):
        g = rng.standard_normal(101).astype(np.float32)
        opt.step([put(g, backend)])
        ref.step(rule, [expected], [g], [state], [dict(kw, l1=0.05)])
    # a few float32 roundings per step of values O(1): 1e-5 leaves a wide margin, and l1 = 0.05
    # moves each weight by far more over three steps (checked below)
    np.testing.assert_allclose(fetch(dev), expected, rtol=1e-5, atol=1e-6)
    plain = p.astype(np.float64)
    ref.step(rule, [plain], [np.zeros(101, np.float32)], [{}], [kw])
    assert np.abs(fetch(dev) - plain).max() > 1e-3


def test_l1_group_option_checks_and_store_groups():
    with pytest.raises(ValueError, match=r"^param_groups\[0\]\['l1'\]: must be a finite number >= 0"):
        optim.SGD([{"params": [np.zeros(3, np.float32)], "l1": -0.1}], lr=0.1)
    with pytest.raises(TypeError, match=r"^param_groups\[0\]\['l1'\]: expected a real number"):
        optim.SGD([{"params": [np.zeros(3, np.float32)], "l1": "0.1"}], lr=0.1)
    model = _no_bn()
    groups = model.store.param_groups(1e-4, l1=1e-3)
    assert [g.get("l1") for g in groups] == [1e-3, None]  # weights only, as weight decay
    assert optim.AdamW(groups).state_dict()["param_groups"][0]["l1"] == 1e-3
