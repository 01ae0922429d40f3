"""The learning-rate range test and the sanity checks: a sane lr on digits, the smoothing against a
hand computation, the checks passing on digits and failing on deliberately broken networks."""

import json
import math

import numpy as np
import pytest

from fastopt import data as datasets
from fastopt.diagnose import SMOOTHING, lr_find, sanity, sanity_report
from fastopt.nn.models import small_cnn
from fastopt.train import TrainConfig
from fastopt.train_cli import main as train_main


@pytest.fixture(scope="module")
def digits():
    pytest.importorskip("sklearn")
    return datasets.load_digits(seed=0)


def _config(**kw):
    return TrainConfig(**{"device": "cpu", "progress": False, **kw})


def test_lr_find_sweeps_exponentially_and_suggests_a_sane_lr(digits):
    r = lr_find(small_cnn(1, 10, widths=(8, 16), dropout=0.25), digits, _config(), steps=100)
    lrs = np.array(r["lr"])
    # start 1e-7, end 10 over 100 steps: a constant ratio 1e8^(1/99) between neighbours.
    np.testing.assert_allclose(lrs[1:] / lrs[:-1], 1e8 ** (1 / 99), rtol=1e-12)
    assert lrs[0] == 1e-7
    avg, want = 0.0, []
    for k, loss in enumerate(r["loss"]):  # the bias-corrected moving average, by hand
        avg = SMOOTHING * avg + (1 - SMOOTHING) * loss
        want.append(avg / (1 - SMOOTHING ** (k + 1)))
    np.testing.assert_allclose(r["smoothed"], want, rtol=1e-12)
    assert r["min_loss_lr"] == r["lr"][int(np.argmin(r["smoothed"]))]
    assert r["suggested_lr"] == r["min_loss_lr"] / 10
    # AdamW on digits trains well from ~1e-3 to ~5e-2 (the default 3e-3); the test finds that band,
    # not the flat start nor the blow-up past lr ~1.
    assert 1e-3 <= r["suggested_lr"] <= 0.1
    assert min(r["smoothed"]) < r["smoothed"][0] - 0.3


def test_cli_lr_find_writes_json_and_png(tmp_path, capsys):
    pytest.importorskip("sklearn")
    pytest.importorskip("matplotlib")
    rc = train_main(
        ["--device", "cpu", "--width", "4", "8", "--lr-find", "--lr-find-steps", "30", "--out", str(tmp_path)]
    )
    assert rc == 0
    saved = json.loads((tmp_path / "lr_find.json").read_text())
    assert len(saved["lr"]) == 30 and saved["lr"][-1] == pytest.approx(10.0)
    assert (tmp_path / "lr_find.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"suggested --lr {saved['suggested_lr']:.3g}" in capsys.readouterr().out


def test_sanity_fails_on_broken_networks(digits):
    def loud():  # a scale bug: logits 30x too large at initialization
        m = small_cnn(1, 10, widths=(8, 16), dropout=0.0)
        forward = m.forward
        m.forward = lambda x, training=True: forward(x, training) * np.float32(30)
        return m

    r = sanity(loud, digits, _config(), steps=5)
    assert not r["initial_ok"] and not r["passed"]
    assert r["initial_loss"] > 2 * math.log(10)

    def deaf():  # a wiring bug: no gradient reaches the weights
        m = small_cnn(1, 10, widths=(8, 16), dropout=0.0)
        backward = m.backward
        m.backward = lambda d, **kw: backward(d * np.float32(0), **kw)
        return m

    r = sanity(deaf, digits, _config(), steps=40)
    assert r["initial_ok"] and not r["overfit_ok"] and not r["passed"]
    assert r["overfit_acc"] < 0.5
    report = sanity_report(r)
    assert report[1].startswith("FAIL overfit 20 training images") and report[-1] == "sanity checks FAILED"


def test_cli_sanity_passes_on_digits(tmp_path, capsys):
    pytest.importorskip("sklearn")
    rc = train_main(["--device", "cpu", "--width", "8", "16", "--sanity", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert rc == 0 and out.splitlines()[-1] == "sanity checks passed"
    r = json.loads((tmp_path / "sanity.json").read_text())
    assert r["initial_ok"] and r["overfit_ok"] and r["passed"]
    assert r["log_classes"] == math.log(10)
    assert abs(r["initial_loss"] - math.log(10)) < 0.25 * math.log(10)
    assert r["overfit_acc"] == 1.0 and r["subset"] == 20 and r["steps"] == 200
    assert f"initial loss {r['initial_loss']:.4f} vs log(C) = 2.3026" in out
