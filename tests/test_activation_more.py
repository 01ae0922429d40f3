"""The smooth activations (tanh, sigmoid, ELU, GELU), average pooling, the residual add with drop
path and axpby_: each kernel against its float64 reference (fastopt.reference) on fresh random
inputs of several shapes (empty, one element, odd sizes), special values included, on every
backend present; drop-path statistics and determinism.

Tolerances, derived per family:
- smooth activations: libm/CUDA's float functions are within 2 ulps and each further float op
  rounds once, so |got - ref| <= 8 ulp(ref); the derivatives and GELU also cancel (1 - t^2,
  s (1 - s), 1 + erf), which loses up to eps32 * (|x| + 1) * |dy| absolutely: that term is added.
- avg pool: a window's float32 sum of k terms errs by <= k eps32 max|x| before the division (which
  only shrinks it); backward gathers <= ceil(kh/sh) ceil(kw/sw) quotients, each rounded twice.
- residual add: one product and one sum, exactly rounded: 1 ulp of |s| + |b f|.
- axpby: a and b rounded to float32, two products and a sum, each rounding by at most eps32 / 2
  relative: 1.5 eps32 (|a x| + |b y|); 2 eps32 allowed.
"""

import math

import numpy as np
import pytest
from conftest import fetch, put

import fastopt.functional as F
from fastopt.reference import activation as ra, dropout as rd, pooling as rp

EPS32 = float(np.finfo(np.float32).eps)
SHAPES = [(0,), (1,), (7, 5), (3, 4, 9, 11)]
SPECIAL = np.array(
    [np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-30, -1e-30, 30.0, -30.0, 100.0, -100.0, 5.5, -6.0], np.float32
)
SMOOTH = {"tanh": (), "sigmoid": (), "elu": (0.7,), "gelu": ()}


def _inputs(rng, shape):
    x = (rng.standard_normal(shape) * 3).astype(np.float32)
    if x.size >= SPECIAL.size:
        x.reshape(-1)[: SPECIAL.size] = SPECIAL
    return x


def _ulp(v):
    return np.spacing(np.abs(v).astype(np.float32)).astype(np.float64)


def _assert_close(got, ref, tol, what):
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    assert got.shape == ref.shape, what
    nan = np.isnan(ref)
    np.testing.assert_array_equal(np.isnan(got), nan, err_msg=f"{what}: NaN positions")
    inf = np.isinf(ref)
    np.testing.assert_array_equal(got[inf], ref[inf], err_msg=f"{what}: infinities")
    ok = ~(nan | inf)
    err = np.abs(got[ok] - ref[ok])
    bad = err > np.broadcast_to(tol, ref.shape)[ok]
    assert not bad.any(), f"{what}: worst error {err.max():.3g} at {np.flatnonzero(bad)[:5]}"


@pytest.mark.parametrize("name", sorted(SMOOTH))
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_smooth_activation_matches_reference(name, shape, backend, rng):
    args = SMOOTH[name]
    x = _inputs(rng, shape)
    dy = rng.standard_normal(shape).astype(np.float32)
    fwd, bwd = getattr(F, f"{name}_forward"), getattr(F, f"{name}_backward")
    y = fetch(fwd(put(x, backend), *args))
    dx = fetch(bwd(put(dy, backend), put(x, backend), *args))
    assert y.dtype == dx.dtype == np.float32
    with np.errstate(invalid="ignore", over="ignore"):
        ref_y, ref_dx = getattr(ra, f"{name}_forward")(x, *args), getattr(ra, f"{name}_backward")(dy, x, *args)
        cancel = EPS32 * (np.abs(x.astype(np.float64)) + 1)
        cancel = np.where(np.isfinite(cancel), cancel, 0.0)
        _assert_close(y, ref_y, 8 * _ulp(ref_y) + cancel, f"{name} forward")
        _assert_close(dx, ref_dx, 8 * _ulp(ref_dx) + cancel * np.abs(dy), f"{name} backward")


def test_smooth_activation_values_torch_states():
    # A few values torch documents or computes, as plain numbers: ELU's tails, GELU's exact form.
    x = np.array([-1.0, 0.0, 2.0], np.float32)
    np.testing.assert_allclose(F.elu_forward(x, 1.0), [math.expm1(-1.0), 0.0, 2.0], rtol=1e-6)
    np.testing.assert_allclose(F.gelu_forward(x), [-0.15865525, 0.0, 1.9544997], rtol=1e-6)
    np.testing.assert_allclose(F.sigmoid_forward(x), [0.26894143, 0.5, 0.8807971], rtol=1e-6)
    # elu tests x <= 0 as torch does: a NaN input passes dy backward, and -0.0 takes the exp branch
    dx = F.elu_backward(np.array([3.0, 3.0], np.float32), np.array([np.nan, -0.0], np.float32), 2.0)
    np.testing.assert_array_equal(dx, [3.0, 6.0])


def test_smooth_activation_bad_input():
    x = np.zeros((2, 3), np.float32)
    with pytest.raises(ValueError, match="^dy: expected the shape"):
        F.tanh_backward(np.zeros((3, 2), np.float32), x)
    with pytest.raises(TypeError, match="^x"):
        F.gelu_forward(x.astype(np.float64))
    with pytest.raises(TypeError, match="^alpha"):
        F.elu_forward(x, "1")


POOLS = [  # (input shape, kernel_size, stride, padding)
    ((2, 3, 8, 8), 2, None, 0),
    ((1, 2, 9, 7), 3, 2, 1),
    ((3, 1, 5, 11), (3, 2), (1, 2), (1, 0)),
    ((2, 2, 1, 1), 1, 1, 0),
    ((0, 3, 4, 4), 2, None, 0),
]


@pytest.mark.parametrize("shape, k, s, p", POOLS, ids=[str(c[0]) + f"-k{c[1]}" for c in POOLS])
@pytest.mark.parametrize("count_include_pad", [True, False])
def test_avg_pool_matches_reference(shape, k, s, p, count_include_pad, backend, rng):
    x = rng.standard_normal(shape).astype(np.float32)
    hyper = dict(kernel_size=k, stride=s, padding=p, count_include_pad=count_include_pad)
    y = fetch(F.avg_pool2d_forward(put(x, backend), **hyper))
    ref_y = rp.avg_pool2d_forward(x, **hyper)
    kh, kw = (k, k) if isinstance(k, int) else k
    sh, sw = (kh, kw) if s is None else ((s, s) if isinstance(s, int) else s)
    big = float(np.abs(x).max()) if x.size else 0.0
    _assert_close(y, ref_y, kh * kw * EPS32 * big, "avg_pool2d forward")
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx = fetch(F.avg_pool2d_backward(put(dy, backend), shape, **hyper))
    covers = math.ceil(kh / sh) * math.ceil(kw / sw)
    _assert_close(
        dx,
        rp.avg_pool2d_backward(dy, shape, **hyper),
        2 * covers * EPS32 * (float(np.abs(dy).max()) if dy.size else 0.0),
        "avg_pool2d backward",
    )


def test_avg_pool_divisor_rules():
    # A 3x3 window at the corner of a padded 3x3 plane covers 4 real pixels.
    x = np.ones((1, 1, 3, 3), np.float32)
    assert F.avg_pool2d_forward(x, 3, 2, 1)[0, 0, 0, 0] == np.float32(4 / 9)  # count_include_pad: / 9
    assert F.avg_pool2d_forward(x, 3, 2, 1, count_include_pad=False)[0, 0, 0, 0] == 1.0  # / 4
    with pytest.raises(ValueError, match="^padding: should be at most half"):
        F.avg_pool2d_forward(x, 2, 1, 2)
    with pytest.raises(ValueError, match="^dy: expected the output shape"):
        F.avg_pool2d_backward(np.zeros((1, 1, 3, 3), np.float32), (1, 1, 3, 3), 3, 2, 1)


@pytest.mark.parametrize("p", [0.0, 0.25, 1.0])
@pytest.mark.parametrize("shape", [(0, 3), (1,), (6, 5, 3), (33, 7)], ids=str)
def test_residual_add_matches_reference(p, shape, backend, rng):
    b, s = (rng.standard_normal(shape).astype(np.float32) for _ in range(2))
    seed, offset = int(rng.integers(2**63)), int(rng.integers(5))
    for shortcut in (s, None):
        got = fetch(
            F.residual_add(put(b, backend), None if shortcut is None else put(shortcut, backend), p, seed, offset)
        )
        ref = ra.residual_add(b, shortcut, p, seed, offset)
        scale = np.abs(b) * float(rd.scale(p)) + (0 if shortcut is None else np.abs(shortcut))
        _assert_close(got, ref, EPS32 * scale, f"residual_add p={p}")
        if shortcut is not None and p == 1.0:  # every body dropped: the shortcut, bit for bit
            np.testing.assert_array_equal(got, shortcut)


def test_drop_path_statistics_and_determinism():
    n, p, seed = 20000, 0.3, 12345
    b, s = np.ones((n, 2), np.float32), np.zeros((n, 2), np.float32)
    y = F.residual_add(b, s, p, seed, 0)
    kept = y[:, 0] != 0
    assert (y[:, 0] == y[:, 1]).all()  # one decision per sample
    # binomial(n, 0.7): 4.5 standard deviations either side
    assert abs(kept.mean() - 0.7) < 4.5 * math.sqrt(0.7 * 0.3 / n)
    assert (y[kept, 0] == np.float32(1) / np.float32(0.7)).all()  # dropout's float32 scale
    np.testing.assert_array_equal(kept, rd.dropout_mask((n,), p, seed, 0))
    np.testing.assert_array_equal(F.residual_add(b, s, p, seed, 0), y)  # same (seed, offset): same draws
    again = F.residual_add(b, s, p, seed, n)  # the next call's offset: fresh draws
    assert (again[:, 0] != 0).mean() == pytest.approx(0.7, abs=0.02) and (again != y).any()


def test_residual_add_bad_input():
    a = np.zeros((2, 3), np.float32)
    with pytest.raises(ValueError, match=r"^shortcut: its output shape \(3, 2\) differs"):
        F.residual_add(a, np.zeros((3, 2), np.float32))
    with pytest.raises(ValueError, match="^p: must lie in"):
        F.residual_add(a, a, 1.5)
    with pytest.raises(ValueError, match="^offset: offset"):
        F.residual_add(a, a, 0.5, 1, 2**64 - 1)
    with pytest.raises(ValueError, match="^body: expected at least 1 dimension"):
        F.residual_add(np.zeros((), np.float32), None)


@pytest.mark.parametrize("a, b", [(0.3, 0.7), (1.0, 1.0), (0.25, 0.0), (0.0, 0.5), (0.0, 0.0)])
def test_axpby_matches_reference(a, b, backend, rng):
    ys = [rng.standard_normal(n).astype(np.float32) for n in (0, 1, 1001)]
    xs = [rng.standard_normal(n).astype(np.float32) for n in (0, 1, 1001)]
    if b == 0.0:
        ys[2][::7] = np.nan  # not read when its coefficient is 0
    if a == 0.0:
        xs[2][::5] = np.nan
    dev_y = [put(y, backend) for y in ys]
    F.axpby_(dev_y, [put(x, backend) for x in xs], a, b)
    for y, x, got in zip(ys, xs, dev_y):
        ref = ra.axpby(y, x, a, b)
        with np.errstate(invalid="ignore"):
            tol = 2 * EPS32 * (np.abs(a * np.nan_to_num(x)) + np.abs(b * np.nan_to_num(y)))
        _assert_close(fetch(got), ref, tol, f"axpby a={a} b={b}")


def test_axpby_in_place_and_bad_input():
    y = np.arange(5, dtype=np.float32)
    F.axpby_(y, y, 0.5, 0.0)  # x may be y itself: a scale in place
    np.testing.assert_array_equal(y, np.arange(5) * 0.5)
    with pytest.raises(ValueError, match=r"share memory"):
        F.axpby_(y[1:], y[:-1], 1.0, 1.0)
    with pytest.raises(ValueError, match=r"^xs: expected 2 arrays"):
        F.axpby_([y, y.copy()], [y], 1.0, 1.0)
    with pytest.raises(ValueError, match=r"^xs\[0\]: expected 5 elements"):
        F.axpby_(y, np.zeros(4, np.float32), 1.0, 1.0)
    with pytest.raises(ValueError, match=r"^ys\[0\]"):
        F.axpby_(np.zeros(5, np.float32)[::-1], y, 1.0, 1.0)
