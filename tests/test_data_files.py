"""A user's data: .npz in both layouts, an ImageFolder of generated PNGs, the training split's
per-channel normalization and whitening (against float64 hand computations), the bad inputs'
errors, and the background loader."""

import json
import math
import threading

import numpy as np
import pytest

from fastopt import data as datasets, preprocess
from fastopt.loader import BatchLoader


def _images(n=60, h=6, w=5, c=3, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    x = rng.integers(0, 256, (n, c, h, w), dtype=np.uint8)
    return x, y.astype(np.int64)


def _npz(path, **arrays):
    np.savez(path, **arrays)
    return str(path)


def test_npz_nchw_and_nhwc_give_the_same_data(tmp_path):
    x, y = _images()
    a = datasets.load(_npz(tmp_path / "a.npz", x_train=x, y_train=y), seed=3)
    # The CIFAR-10 NumPy layout: NHWC uint8, labels (N, 1).
    b = datasets.load(_npz(tmp_path / "b.npz", x_train=x.transpose(0, 2, 3, 1), y_train=y[:, None]), seed=3)
    for s in ("train", "val", "test"):
        sa, sb = getattr(a, s), getattr(b, s)
        assert sa.x.dtype == np.uint8 and sa.x.shape[1:] == (3, 6, 5)
        assert np.array_equal(sa.x, sb.x) and np.array_equal(sa.y, sb.y) and sa.y.dtype == np.int32
    # 60 images, 20 per class: 10% validation and 10% test per class, drawn stratified.
    assert (len(a.train), len(a.val), len(a.test)) == (48, 6, 6)
    assert np.bincount(a.val.y).tolist() == [2, 2, 2]
    assert a.num_classes == 3 and a.shape == (3, 6, 5)
    # Every image lands in exactly one split.
    together = np.concatenate([a.train.x, a.val.x, a.test.x]).reshape(60, -1)
    assert sorted(map(bytes, together)) == sorted(map(bytes, x.reshape(60, -1)))


def test_given_splits_are_kept_and_missing_ones_drawn(tmp_path):
    x, y = _images(90)
    path = _npz(
        tmp_path / "d.npz",
        x_train=x[:60],
        y_train=y[:60],
        x_test=x[60:],
        y_test=y[60:],
        class_names=np.array(["cat", "dog", "owl"]),
    )
    d = datasets.load(path, seed=0)
    assert np.array_equal(d.test.x, x[60:]) and np.array_equal(d.test.y, y[60:])
    assert len(d.val) == 6 and len(d.train) == 54  # val drawn from x_train only
    assert d.classes == ("cat", "dog", "owl")


def test_per_channel_normalization_matches_a_hand_computation(tmp_path):
    x, y = _images(40, c=3)
    d = datasets.load(_npz(tmp_path / "d.npz", x_train=x, y_train=y), val_fraction=0.0, test_fraction=0.25)
    raw = d.train.x.astype(np.float64)
    mean, std = raw.mean(axis=(0, 2, 3)), raw.std(axis=(0, 2, 3))
    np.testing.assert_allclose(d.preprocess.mean, mean, rtol=1e-12)
    np.testing.assert_allclose(d.preprocess.std, std, rtol=1e-12)
    for split in (d.train, d.test):  # the training split's statistics for every split
        got = d.inputs(split.x)
        want = (split.x - mean[:, None, None]) / std[:, None, None]
        assert got.dtype == np.float32
        # float32 of |want| <= ~2 after one multiply-add in float32: within a few ulp of 2.
        np.testing.assert_allclose(got, want, rtol=0, atol=2e-6)
    assert d.background == 0.0


@pytest.mark.parametrize("kind", ["pca", "zca"])
def test_whitening_decorrelates_the_training_images(tmp_path, kind):
    rng = np.random.default_rng(1)
    mixing = rng.normal(size=(12, 12))
    x = (rng.normal(size=(3000, 12)) @ mixing).reshape(3000, 3, 2, 2) * 20 + 100  # strongly correlated pixels
    y = np.arange(3000) % 2
    d = datasets.load(
        _npz(tmp_path / "w.npz", x_train=x, y_train=y),
        whiten=kind,
        whiten_eps=1e-9,
        val_fraction=0.0,
        test_fraction=0.0,
    )
    flat = d.inputs(d.train.x).reshape(3000, -1).astype(np.float64)
    # eps 1e-9 against eigenvalues >= ~1e-3: the whitened covariance is the identity to ~1e-5
    # (float32 transform of 12 features).
    np.testing.assert_allclose(np.cov(flat, rowvar=False, bias=True), np.eye(12), atol=1e-4)
    np.testing.assert_allclose(flat.mean(axis=0), 0.0, atol=1e-4)
    m = d.preprocess.matrix.astype(np.float64)
    if kind == "zca":  # U diag U^T: symmetric
        np.testing.assert_allclose(m, m.T, atol=1e-5 * np.abs(m).max())
    # The transform from the stored arrays alone (as evaluation rebuilds it) is the same.
    again = preprocess.Preprocess.from_checkpoint(d.preprocess.meta(), d.preprocess.arrays())
    assert np.array_equal(again(d.train.x[:5]), d.inputs(d.train.x[:5]))


def test_whitening_refuses_large_images(tmp_path):
    x, y = _images(10, h=40, w=40, c=3)
    with pytest.raises(ValueError, match=r"whiten: for small images only .* 3x40x40 = 4800 features"):
        datasets.load(_npz(tmp_path / "big.npz", x_train=x, y_train=y), whiten="zca")


def _png_folder(root, sizes=None, classes=("ant", "bee"), per_class=5, mode="RGB"):
    from PIL import Image

    rng = np.random.default_rng(2)
    pixels = {}
    for ci, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            h, w = (sizes or {}).get((name, i), (4, 6))
            arr = rng.integers(0, 256, (h, w, 3) if mode == "RGB" else (h, w), dtype=np.uint8)
            Image.fromarray(arr, mode).save(root / name / f"{i}.png")
            pixels[(ci, i)] = arr
    return pixels


def test_image_folder_reads_the_pngs_exactly(tmp_path):
    pixels = _png_folder(tmp_path / "imgs")
    (tmp_path / "imgs" / "bee" / "notes.txt").write_text("not an image: ignored")
    d = datasets.load(str(tmp_path / "imgs"), val_fraction=0.2, test_fraction=0.2, seed=5)
    assert d.classes == ("ant", "bee") and d.num_classes == 2 and d.shape == (3, 4, 6)
    assert (len(d.train), len(d.val), len(d.test)) == (6, 2, 2)
    got = {bytes(x.tobytes()): int(y) for s in (d.train, d.val, d.test) for x, y in zip(s.x, s.y)}
    want = {bytes(a.transpose(2, 0, 1).tobytes()): ci for (ci, _), a in pixels.items()}
    assert got == want
    again = datasets.load(str(tmp_path / "imgs"), val_fraction=0.2, test_fraction=0.2, seed=5)
    assert np.array_equal(again.val.x, d.val.x)  # the split is a function of the seed


def test_image_folder_grayscale_resized_and_presplit(tmp_path):
    from PIL import Image

    _png_folder(tmp_path / "f" / "train", mode="L", sizes={("ant", 0): (9, 7)})
    _png_folder(tmp_path / "f" / "test", mode="L", per_class=2)
    d = datasets.load(str(tmp_path / "f"), image_size=3, val_fraction=0.2)
    assert d.shape == (1, 3, 3) and len(d.test) == 4 and len(d.train) + len(d.val) == 10
    src = Image.open(tmp_path / "f" / "train" / "ant" / "0.png")
    want = np.asarray(src.resize((3, 3), Image.BILINEAR))
    stacked = np.concatenate([d.train.x, d.val.x])[:, 0]
    assert any(np.array_equal(want, img) for img in stacked)


@pytest.mark.parametrize(
    "case,match",
    [
        ("missing", r"no 'y_train' array \(it holds x_train\)"),
        ("half_split", r"has 'x_val' but no 'y_val'"),
        ("float_labels", r"y_train has dtype float64; expected integer class indices"),
        ("negative", r"y_train\[3\] is -1; labels must be >= 0"),
        ("names", r"y_train\[0\] is 5, out of range for the 3 names in class_names"),
        ("unseen", r"y_test\[1\] is 7, a class no training image has"),
        ("shape", r"x_test holds \(3, 6, 6\) images \(C, H, W\), x_train \(3, 6, 5\)"),
        ("ambiguous", r"cannot tell NCHW from NHWC; give --layout"),
        ("label_count", r"y_train has shape \(59,\); expected \(60,\)"),
        ("nan", r"x_train\[2\] holds NaN"),
    ],
)
def test_bad_npz_names_the_array(tmp_path, case, match):
    x, y = _images()
    arrays = {"x_train": x, "y_train": y}
    if case == "missing":
        del arrays["y_train"]
    elif case == "half_split":
        arrays["x_val"] = x[:5]
    elif case == "float_labels":
        arrays["y_train"] = y.astype(np.float64)
    elif case == "negative":
        arrays["y_train"] = np.where(np.arange(60) == 3, -1, y)
    elif case == "names":
        arrays["y_train"] = np.where(np.arange(60) == 0, 5, y)
        arrays["class_names"] = np.array(["a", "b", "c"])
    elif case == "unseen":
        arrays.update(x_test=x[:3], y_test=np.array([0, 7, 1]))
    elif case == "shape":
        arrays.update(x_test=np.zeros((3, 3, 6, 6), np.uint8), y_test=np.zeros(3, np.int64))
    elif case == "ambiguous":
        arrays["x_train"] = np.zeros((60, 3, 5, 3), np.uint8)
    elif case == "label_count":
        arrays["y_train"] = y[:59]
    elif case == "nan":
        bad = x.astype(np.float32)
        bad[2, 0, 0, 0] = np.nan
        arrays["x_train"] = bad
    path = _npz(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ValueError, match=match) as e:
        datasets.load(path)
    assert "bad.npz" in str(e.value)


def test_bad_image_folder_names_the_file(tmp_path):
    _png_folder(tmp_path / "mixed", sizes={("bee", 2): (5, 6)})
    with pytest.raises(
        ValueError,
        match=r"images of mixed sizes: .*ant/0.png is 6x4, .*bee/2.png is 6x5; give "
        r"--image-size",
    ):
        datasets.load(str(tmp_path / "mixed"))
    _png_folder(tmp_path / "empty")
    (tmp_path / "empty" / "cow").mkdir()
    with pytest.raises(ValueError, match=r"empty/cow: an empty class folder"):
        datasets.load(str(tmp_path / "empty"))
    _png_folder(tmp_path / "corrupt")
    (tmp_path / "corrupt" / "ant" / "9.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(ValueError, match=r"corrupt/ant/9.png: not a readable image"):
        datasets.load(str(tmp_path / "corrupt"))
    with pytest.raises(FileNotFoundError, match=r"nowhere.npz: no such file or folder"):
        datasets.load(str(tmp_path / "nowhere.npz"))


def test_loader_yields_the_epochs_batches_in_order(tmp_path):
    x, y = _images(50)
    d = datasets.load(_npz(tmp_path / "d.npz", x_train=x, y_train=y), val_fraction=0.0, test_fraction=0.0)
    order = np.random.default_rng(0).permutation(50)
    batches = list(BatchLoader(d, d.train, order, 16, "cpu"))
    assert [len(b[1]) for b in batches] == [16, 16, 16, 2]
    assert np.array_equal(np.concatenate([b[0] for b in batches]), d.inputs(d.train.x[order]))
    assert np.array_equal(np.concatenate([b[1] for b in batches]), d.train.y[order])


def test_loader_hands_on_errors_and_stops_its_thread(tmp_path):
    x, y = _images(50)
    d = datasets.load(_npz(tmp_path / "d.npz", x_train=x, y_train=y), val_fraction=0.0, test_fraction=0.0)
    calls = []

    def inputs(images):
        calls.append(len(images))
        if len(calls) == 3:
            raise RuntimeError("decoding failed")
        return images.astype(np.float32)

    d.inputs = inputs
    with pytest.raises(RuntimeError, match="decoding failed"):
        for _ in BatchLoader(d, d.train, np.arange(50), 10, "cpu", ahead=1):
            pass
    before = threading.active_count()
    it = iter(BatchLoader(d, d.train, np.arange(50), 10, "cpu", ahead=1))
    next(it)
    it.close()  # the consumer stops early: the worker thread ends
    assert threading.active_count() <= before


def test_train_cli_on_an_npz_stores_its_normalization(tmp_path, capsys):
    from fastopt.train import read_checkpoint
    from fastopt.train_cli import main as train_main

    x, y = _images(80, h=8, w=8)
    path = _npz(tmp_path / "d.npz", x_train=x.transpose(0, 2, 3, 1), y_train=y)
    out = tmp_path / "run"
    assert (
        train_main(
            ["--data", path, "--device", "cpu", "--epochs", "1", "--width", "4", "8", "--quiet", "--out", str(out)]
        )
        == 0
    )
    meta, model, _ = read_checkpoint(str(out / "last.npz"))
    d = datasets.load(path)  # the same seed (0): the same training split, the same statistics
    np.testing.assert_array_equal(meta["data_arrays"]["mean"], d.preprocess.mean)
    np.testing.assert_array_equal(meta["data_arrays"]["std"], d.preprocess.std)
    assert meta["model_spec"] == {"model": "cnn", "width": [4, 8], "dropout": 0.25, "in_channels": 3, "num_classes": 3}
    assert meta["data"]["shape"] == [3, 8, 8] and model["0.weight"].shape[1] == 3
    with pytest.raises(SystemExit) as e:
        train_main(["--data", str(tmp_path / "missing.npz"), "--out", str(out)])
    assert e.value.code == 2
    assert "argument --data: " in capsys.readouterr().err


def test_search_trains_on_the_given_data(tmp_path, capsys):
    from fastopt.train_cli import main as train_main

    x, y = _images(80, h=8, w=8, c=1)
    path = _npz(tmp_path / "g.npz", x_train=x[:, 0], y_train=y)  # (N, H, W): one channel
    assert (
        train_main(
            [
                "--data",
                path,
                "--device",
                "cpu",
                "--search",
                "2",
                "--search-epochs",
                "1",
                "--width",
                "4",
                "8",
                "--out",
                str(tmp_path),
            ]
        )
        == 0
    )
    trials = json.loads((tmp_path / "search.json").read_text())
    assert len(trials) == 2 and all(math.isfinite(t["val_loss"]) for t in trials)
    assert "trial 2/2" in capsys.readouterr().err


def test_train_and_evaluate_cli_on_an_image_folder(tmp_path, capsys):
    from fastopt.cli import main as fastopt_main

    _png_folder(
        tmp_path / "imgs", classes=("ant", "bee", "cow"), per_class=10, sizes={("bee", 3): (9, 5), ("cow", 0): (3, 8)}
    )
    out = tmp_path / "run"
    assert (
        fastopt_main(
            [
                "train",
                "--data",
                str(tmp_path / "imgs"),
                "--image-size",
                "6",
                "--device",
                "cpu",
                "--epochs",
                "2",
                "--batch-size",
                "8",
                "--width",
                "4",
                "8",
                "--quiet",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert (
        fastopt_main(
            ["evaluate", str(out / "best.npz"), "--data", str(tmp_path / "imgs"), "--out", str(tmp_path / "ev")]
        )
        == 0
    )  # resized to the 6x6 it was trained on
    report = json.loads((tmp_path / "ev" / "evaluate.json").read_text())
    assert report["classes"] == ["ant", "bee", "cow"] and report["images"] == 3  # 10% of each class
    trained = json.loads((out / "metrics.json").read_text())
    assert report["members"][0]["acc"] == trained["test"]["acc"]
    d = datasets.load(str(tmp_path / "imgs"), image_size=6)
    assert d.train.x.flags["C_CONTIGUOUS"] and d.inputs(d.train.x[::2]).flags["C_CONTIGUOUS"]
