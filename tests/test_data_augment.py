"""The trainer's use of the issue-19 augmentations (random-resized crop, rotation, PCA colour
jitter, CutMix, alternating flip) and test-time augmentation: each option applies the functional
op with the step's key, the composition is reproducible across a resume, and the TTA logits equal
the mean over views computed by hand."""

import json

import numpy as np
import pytest

from fastopt import data as datasets, functional as F
from fastopt.nn.models import small_cnn
from fastopt.train import TrainConfig, Trainer, eval_logits
from fastopt.train_cli import main as train_main


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    rng = np.random.default_rng(5)
    n = 120
    y = np.arange(n) % 3
    x = (rng.integers(0, 100, (n, 3, 9, 7)) + 70 * y[:, None, None, None]).astype(np.uint8)
    path = tmp_path_factory.mktemp("aug") / "d.npz"
    np.savez(path, x_train=x, y_train=y)
    return str(path), datasets.load(str(path))


def _trainer(d, **kw):
    config = TrainConfig(**{"device": "cpu", "progress": False, "epochs": 2, "batch_size": 16, "max_shift": 0, **kw})
    return Trainer(small_cnn(3, 3, widths=(4, 8), dropout=0.0), d, config)


def test_each_option_applies_its_op_with_the_steps_key(images):
    _, d = images
    x = d.inputs(d.train.x[:16])
    y = d.train.y[:16]
    idx = np.arange(16) + 40
    t = _trainer(d, crop_scale=0.3, rotation=15.0, pca_jitter=0.2, alt_flip=True, max_shift=1, cutmix=1.0)
    t.step, t.epoch = 7, 1
    got_x, got_y = t._augment(x, y, np.random.default_rng(3), indices=idx)
    # By hand, in the trainer's order, key = step (no accumulation), seed 0.
    vals, vecs = F.channel_pca(d.inputs(d.train.x))
    want = F.random_resized_crop(x, 0, 7, (9, 7), scale=(0.3, 1.0))
    want = F.random_rotation(want, 0, 7, 15.0, fill=0.0)
    want = F.pca_jitter(want, 0, 7, vals, vecs, sigma=0.2)
    want = F.alternating_flip(want, idx.astype(np.int64), 0, 1)
    want = F.augment_batch(want, 0, 7, max_shift=1, fill=0.0)
    lam = float(np.random.default_rng(3).beta(1.0, 1.0))  # cutmix alone: no switch draw
    want_x, want_y = F.cutmix(want, y, lam, 3, 0, 7)
    # channel_pca on all 96 training images vs the trainer's (the same: fewer than 10,000) -> equal.
    np.testing.assert_array_equal(got_x, want_x)
    np.testing.assert_array_equal(got_y, want_y)
    assert got_y.shape == (16, 3)  # soft targets


def test_alternating_flip_mirrors_each_image_every_other_epoch(images):
    _, d = images
    t = _trainer(d, alt_flip=True)
    x = d.inputs(d.train.x[:32])
    idx = np.arange(32)
    seen = []
    for epoch in (0, 1, 2):
        t.epoch = epoch
        seen.append(t._augment(x, d.train.y[:32], np.random.default_rng(0), indices=idx)[0])
    mirrored = [np.all(s == x[..., ::-1], axis=(1, 2, 3)) & ~np.all(s == x, axis=(1, 2, 3)) for s in seen]
    assert np.array_equal(mirrored[0], ~mirrored[1]) and np.array_equal(mirrored[0], mirrored[2])
    assert 4 <= mirrored[0].sum() <= 28  # about half


def test_resume_is_bit_identical_with_every_augmentation(images, tmp_path):
    _, d = images
    options = dict(
        crop_scale=0.4, rotation=10.0, pca_jitter=0.1, alt_flip=True, cutmix=1.0, mixup=0.4, max_shift=1, epochs=3
    )
    straight = _trainer(d, **options)
    for _ in range(3):
        straight.train_epoch()
    first = _trainer(d, **options)
    first.train_epoch()
    first.save(str(tmp_path / "c.npz"))
    resumed = _trainer(d, **options)
    resumed.load(str(tmp_path / "c.npz"))
    resumed.train_epoch()
    resumed.train_epoch()
    assert np.array_equal(resumed.store.data, straight.store.data)


def test_tta_logits_are_the_mean_over_views_by_hand(images):
    _, d = images
    t = _trainer(d)
    x = d.inputs(d.train.x[:8])
    forward = lambda v: np.asarray(t.model.forward(np.ascontiguousarray(v, np.float32), training=False), np.float64)
    # Conv outputs in float32 (|logit| ~ 1, sums of ~100 terms): views agree with the hand forward
    # to ~1e-6; the mean is rounded once from double.
    flip = (forward(x) + forward(x[..., ::-1])) / 2
    np.testing.assert_allclose(eval_logits(t.model, x, "flip"), flip, rtol=0, atol=1e-5)
    padded = np.pad(x, ((0, 0), (0, 0), (2, 2), (2, 2)), constant_values=-1.5)
    crops = [padded[..., r : r + 9, c : c + 7] for r, c in ((0, 0), (0, 4), (4, 0), (4, 4), (2, 2))]
    five = sum(forward(v) for v in crops) / 5
    np.testing.assert_allclose(eval_logits(t.model, x, "five_crop", pad=2, fill=-1.5), five, rtol=0, atol=1e-5)
    ten = (five * 5 + sum(forward(v[..., ::-1]) for v in crops)) / 10
    np.testing.assert_allclose(eval_logits(t.model, x, "ten_crop", pad=2, fill=-1.5), ten, rtol=0, atol=1e-5)


def test_cli_tta_evaluates_as_the_trainer_reports(images, tmp_path):
    path, _ = images
    out = tmp_path / "run"
    assert (
        train_main(
            [
                "--data",
                path,
                "--device",
                "cpu",
                "--epochs",
                "2",
                "--width",
                "4",
                "8",
                "--max-shift",
                "1",
                "--tta",
                "ten_crop",
                "--alt-flip",
                "--crop-scale",
                "0.5",
                "--quiet",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    from fastopt.cli import main as fastopt_main

    assert (
        fastopt_main(["evaluate", str(out / "best.npz"), "--data", path, "--tta", "ten_crop", "--out", str(tmp_path)])
        == 0
    )
    mine = json.loads((tmp_path / "evaluate.json").read_text())["members"][0]
    assert mine["acc"] == json.loads((out / "metrics.json").read_text())["test"]["acc"]


def test_flip_and_alt_flip_together_are_refused(images, tmp_path, capsys):
    with pytest.raises(SystemExit):
        train_main(["--flip", "--alt-flip", "--out", str(tmp_path)])
    assert "argument --alt-flip: replaces --flip" in capsys.readouterr().err
    with pytest.raises(ValueError, match="alt_flip: replaces the random flip"):
        TrainConfig(flip=True, alt_flip=True).check()
