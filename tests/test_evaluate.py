"""`fastopt evaluate`: single checkpoints and ensembles against a hand computation (the networks
run again by hand on hand-normalized images), SGDR snapshots, and the refusals."""

import json
import math

import numpy as np
import pytest

from fastopt.cli import main as fastopt_main
from fastopt.evaluate import confusion, scores
from fastopt.nn.models import small_cnn
from fastopt.train import read_checkpoint


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One --snapshots 2 run on a generated NHWC npz with its own test split."""
    root = tmp_path_factory.mktemp("eval")
    rng = np.random.default_rng(4)
    n = 260
    y = np.arange(n) % 3
    x = rng.integers(0, 120, (n, 8, 8, 3)) + 60 * y[:, None, None, None]
    x[..., 0] = 255 - x[..., 0]
    data = root / "d.npz"
    np.savez(
        data,
        x_train=x[:200].astype(np.uint8),
        y_train=y[:200],
        x_test=x[200:].astype(np.uint8),
        y_test=y[200:],
        class_names=np.array(["r", "g", "b"]),
    )
    out = root / "run"
    assert (
        fastopt_main(
            [
                "train",
                "--data",
                str(data),
                "--device",
                "cpu",
                "--epochs",
                "2",
                "--snapshots",
                "2",
                "--width",
                "4",
                "8",
                "--batch-size",
                "32",
                "--quiet",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    return data, out


def _by_hand(ckpt, data):
    """Softmax probabilities of a checkpoint on the test images, normalized here in float64."""
    meta, state, _ = read_checkpoint(str(ckpt))
    model = small_cnn(3, 3, widths=(4, 8), dropout=0.25)
    model.build("cpu")
    model.load_state_dict(state)
    with np.load(data) as z:
        x = z["x_test"].transpose(0, 3, 1, 2).astype(np.float64)
    mean, std = meta["data_arrays"]["mean"], meta["data_arrays"]["std"]
    inputs = np.ascontiguousarray((x - mean[:, None, None]) / std[:, None, None], np.float32)
    z = np.asarray(model.forward(inputs, training=False), np.float64)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_scores_and_confusion_by_hand():
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6], [0.5, 0.4, 0.1], [0.2, 0.2, 0.6]])
    y = np.array([0, 1, 1, 2])
    s = scores(probs, y, k=2)
    assert s["acc"] == 0.5 and s["top2"] == 1.0
    assert s["nll"] == pytest.approx(-(math.log(0.7) + math.log(0.3) + math.log(0.4) + math.log(0.6)) / 4, rel=1e-12)
    assert scores(probs, y, k=5)["top3"] == 1.0  # k capped at the number of classes
    assert confusion(probs.argmax(axis=1), y, 3).tolist() == [[1, 0, 0], [1, 0, 1], [0, 0, 1]]


def test_ensemble_of_snapshots_equals_a_hand_computation(run, tmp_path, capsys):
    data, out = run
    snaps = [out / "snapshot-1.npz", out / "snapshot-2.npz"]
    assert fastopt_main(["evaluate", *map(str, snaps), "--data", str(data), "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "evaluate.json").read_text())
    with np.load(data) as z:
        y = z["y_test"]
    probs = [_by_hand(s, data) for s in snaps]
    for member, p in zip(report["members"], probs):
        assert member["acc"] == np.mean(p.argmax(axis=1) == y)
        assert member["nll"] == pytest.approx(-np.mean(np.log(p[np.arange(60), y])), rel=1e-5)
    mean = (probs[0] + probs[1]) / 2
    assert report["ensemble"]["acc"] == np.mean(mean.argmax(axis=1) == y)
    assert report["ensemble"]["nll"] == pytest.approx(-np.mean(np.log(mean[np.arange(60), y])), rel=1e-5)
    want = np.zeros((3, 3), int)
    for t, pr in zip(y, mean.argmax(axis=1)):
        want[t, pr] += 1
    assert report["confusion"] == want.tolist() and report["classes"] == ["r", "g", "b"]
    assert report["per_class_acc"] == [want[c, c] / want[c].sum() for c in range(3)]
    assert (tmp_path / "confusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "ensemble of 2 (mean probabilities)" in capsys.readouterr().out


def test_evaluate_matches_the_trainers_test_report(run, tmp_path):
    data, out = run
    assert fastopt_main(["evaluate", str(out / "best.npz"), "--data", str(data), "--out", str(tmp_path)]) == 0
    mine = json.loads((tmp_path / "evaluate.json").read_text())["members"][0]
    trainer = json.loads((out / "metrics.json").read_text())["test"]
    assert mine["acc"] == trainer["acc"] and mine["top3"] == trainer["top5"]  # top-5 of 3 classes: all
    assert mine["nll"] == pytest.approx(trainer["loss"], abs=0.05)  # the trainer's loss has label smoothing 0.05


def test_snapshots_restart_the_lr_each_cycle(run):
    _, out = run
    rows = [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines()]
    per_epoch = math.ceil(180 / 32)  # 200 training images less 10% validation
    lrs = [r["lr"] for r in rows]
    assert len(lrs) == 2 * per_epoch
    assert lrs[0] == lrs[per_epoch] == 3e-3  # SGDR: each cycle starts at the peak, no warm-up
    assert lrs[per_epoch - 1] < 3e-3 * 0.1  # near the floor at the end of the cycle
    assert read_checkpoint(str(out / "snapshot-1.npz"))[0]["epoch"] == 1


def _usage_error(argv, capsys):
    with pytest.raises(SystemExit) as e:
        fastopt_main(argv)
    assert e.value.code == 2
    return capsys.readouterr().err


def test_refusals_name_the_checkpoint(run, tmp_path, capsys):
    data, out = run
    snap = str(out / "snapshot-1.npz")
    err = _usage_error(["evaluate", snap, "--model", "resnet20", "--out", str(tmp_path)], capsys)
    assert f"{snap}: a checkpoint of another architecture: it holds cnn (width [4, 8]), not the model resnet20" in err
    err = _usage_error(["evaluate", snap, "--out", str(tmp_path)], capsys)  # digits, not its data
    assert f"{snap}: trained on 3x8x8 images (C x H x W), the data's are 1x8x8" in err
    # A file whose weights are not those of the network it names.
    with np.load(snap) as z:
        arrays = dict(z)
    meta = json.loads(arrays["meta"].tobytes())
    meta["model_spec"]["width"] = [4, 16]
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    forged = str(tmp_path / "forged.npz")
    np.savez(forged, **arrays)
    err = _usage_error(["evaluate", forged, "--data", str(data), "--out", str(tmp_path)], capsys)
    assert f"{forged}: its weights are of another architecture than the cnn (width [4, 16])" in err
    # Two seeds on data whose validation split is drawn: refused for that split.
    meta["model_spec"]["width"] = [4, 8]
    meta["config"]["seed"] = 9
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    other = str(tmp_path / "seed9.npz")
    np.savez(other, **arrays)
    err = _usage_error(["evaluate", snap, other, "--data", str(data), "--split", "val", "--out", str(tmp_path)], capsys)
    assert "checkpoints trained with seeds [0, 9]: the val split is drawn by the seed" in err
    assert fastopt_main(["evaluate", snap, other, "--data", str(data), "--out", str(tmp_path)]) == 0  # x_test given


def test_digits_checkpoint_evaluates_without_data(tmp_path):
    pytest.importorskip("sklearn")
    out = tmp_path / "run"
    assert (
        fastopt_main(["train", "--device", "cpu", "--epochs", "1", "--width", "4", "8", "--quiet", "--out", str(out)])
        == 0
    )
    assert fastopt_main(["evaluate", str(out / "best.npz"), "--out", str(tmp_path)]) == 0
    mine = json.loads((tmp_path / "evaluate.json").read_text())
    trainer = json.loads((out / "metrics.json").read_text())["test"]
    from fastopt.data import load_digits

    n = len(load_digits(seed=0).test)
    assert mine["images"] == n and mine["data"] == "digits"
    assert mine["members"][0]["acc"] == trainer["acc"] and mine["members"][0]["top5"] == trainer["top5"]
    assert np.sum(mine["confusion"]) == n
