"""Global norms and clipping against the float64 reference (fastopt.reference.norms)."""

import numpy as np
import pytest
from conftest import fetch, put

import fastopt
from fastopt.reference import norms as ref

SHAPES = [(0,), (1,), (7,), (33, 5), (40_009,), (3, 4, 5)]


def _grads(rng, scale=1.0):
    return [(rng.standard_normal(s) * scale).astype(np.float32) for s in SHAPES]


@pytest.mark.parametrize("norm_type", [2.0, 1.0, 3.0, 0.5, np.inf])
def test_global_norm(norm_type, backend, rng):
    grads = _grads(rng)
    got = float(fetch(fastopt.global_norm([put(g, backend) for g in grads], norm_type)))
    want = ref.global_norm([g.astype(np.float64) for g in grads], norm_type)
    # CPU accumulates in double (1e-12); the GPU in float32 over fixed-order partials (1e-5).
    assert got == pytest.approx(want, rel=1e-12 if backend == "cpu" else 1e-5)


def test_global_norm_empty_and_zero(backend):
    assert float(fetch(fastopt.global_norm([]))) == 0.0
    assert float(fetch(fastopt.global_norm([put(np.zeros(5, np.float32), backend)]))) == 0.0


def test_global_norm_no_overflow_on_cpu():
    # Squares of 1e30 overflow float32; the CPU accumulates in double, so the norm is exact.
    g = np.full(4, 1e30, np.float32)
    assert fastopt.global_norm([g]) == pytest.approx(2e30, rel=1e-6)


@pytest.mark.parametrize("max_norm,norm_type", [(1.0, 2.0), (0.5, np.inf), (3.0, 1.0), (1e9, 2.0)])
def test_clip_grad_norm_(max_norm, norm_type, backend, rng):
    grads = _grads(rng)
    dev = [put(g, backend) for g in grads]
    norm = fastopt.clip_grad_norm_(dev, max_norm, norm_type)
    want_grads, want_norm = ref.clip_grad_norm([g.astype(np.float64) for g in grads], max_norm, norm_type)
    assert float(fetch(norm)) == pytest.approx(want_norm, rel=1e-5)
    for d, w in zip(dev, want_grads):
        np.testing.assert_allclose(fetch(d), w, rtol=1e-6, atol=1e-7)
    if max_norm >= want_norm:  # no scaling at all: untouched bit for bit
        for d, g in zip(dev, grads):
            np.testing.assert_array_equal(fetch(d), g)


def test_clip_grad_norm_nonfinite(backend, rng):
    grads = _grads(rng)
    grads[2][3] = np.nan
    dev = [put(g, backend) for g in grads]
    with pytest.raises(RuntimeError, match="non-finite"):
        fastopt.clip_grad_norm_(dev, 1.0, error_if_nonfinite=True)
    for d, g in zip(dev, grads):  # raised before touching anything
        np.testing.assert_array_equal(fetch(d), g)
    norm = fastopt.clip_grad_norm_(dev, 1.0)  # torch: scales by the NaN coefficient
    assert np.isnan(float(fetch(norm)))
    assert np.isnan(fetch(dev[4])).all()


def test_clip_grad_value_(backend, rng):
    grads = _grads(rng, scale=3.0)
    grads[1][0] = np.nan
    dev = [put(g, backend) for g in grads]
    fastopt.clip_grad_value_(dev, 1.5)
    for d, w in zip(dev, ref.clip_grad_value([g.astype(np.float64) for g in grads], 1.5)):
        np.testing.assert_array_equal(fetch(d), w.astype(np.float32))
    assert np.isnan(fetch(dev[1])[0])


def test_single_array_accepted():
    g = np.full(4, 2.0, np.float32)
    assert fastopt.clip_grad_norm_(g, 1.0) == pytest.approx(4.0)
    np.testing.assert_allclose(g, 0.5, rtol=1e-6)


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda g: fastopt.global_norm(g, 0.0), "norm_type"),
        (lambda g: fastopt.global_norm(g, -1.0), "norm_type"),
        (lambda g: fastopt.clip_grad_norm_(g, -1.0), "max_norm"),
        (lambda g: fastopt.clip_grad_norm_(g, float("nan")), "max_norm"),
        (lambda g: fastopt.clip_grad_value_(g, -1.0), "clip_value"),
    ],
)
def test_bad_arguments(call, match):
    with pytest.raises(ValueError, match=match):
        call([np.ones(3, np.float32)])


def test_matches_torch_when_installed(rng):
    torch = pytest.importorskip("torch")
    grads = [g for g in _grads(rng, scale=2.0) if g.size]  # torch's inf-norm rejects empty tensors
    for norm_type in (2.0, 1.0, np.inf):
        ours = [g.copy() for g in grads]
        theirs = [torch.tensor(g, requires_grad=True) for g in grads]
        for t, g in zip(theirs, grads):
            t.grad = torch.tensor(g)
        n = fastopt.clip_grad_norm_(ours, 1.0, norm_type)
        tn = torch.nn.utils.clip_grad_norm_(theirs, 1.0, norm_type)
        assert n == pytest.approx(float(tn), rel=1e-5)
        for o, t in zip(ours, theirs):
            np.testing.assert_allclose(o, t.grad.numpy(), rtol=1e-5, atol=1e-7)
