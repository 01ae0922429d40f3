"""The float64 reference (fastopt.reference) on closed-form cases, the textbook
momentum identities, step()'s clipping/skip contract, norms, and (when torch is
installed) torch.optim / torch.nn.utils cross-checks."""

import copy
import inspect
import itertools
import math

import numpy as np
import pytest

from fastopt.reference import norms, optim

RNG = np.random.default_rng(1234)


def arr(*xs):
    return np.array(xs, dtype=np.float64)


# --- the two textbook momentum formulations -------------------------------------------


def test_momentum_formulations_agree_and_match_torch_form():
    """Classic:  v = rho v + g, p -= lr v.   Velocity: u = rho u - lr g, p += u.
    With a constant lr, induction from v_0 = u_0 = 0 gives u_t = -lr v_t, so the two
    parameter trajectories are the same. torch's SGD keeps b_1 = g_1,
    b_t = rho b_{t-1} + g_t (dampening 0), which is v_t exactly: sgd(momentum=rho)
    with the same lr is the classic form, and its buffer is -u_t / lr."""
    lr, rho, n = 0.05, 0.9, 300
    p0 = RNG.standard_normal(17)
    grads = RNG.standard_normal((n, 17))
    pc, pv, pt = p0.copy(), p0.copy(), p0.copy()
    vc, vv, state = np.zeros(17), np.zeros(17), {}
    for t in range(n):
        optim.sgd_momentum_classic(pc, grads[t], vc, lr, rho)
        optim.sgd_momentum_velocity(pv, grads[t], vv, lr, rho)
        optim.sgd(pt, grads[t], state, lr=lr, momentum=rho)
        np.testing.assert_allclose(pv, pc, rtol=0, atol=1e-12)
        np.testing.assert_allclose(vv, -lr * vc, rtol=1e-12, atol=1e-14)
    np.testing.assert_array_equal(pt, pc)  # same operations in the same order
    np.testing.assert_array_equal(state["momentum_buffer"], vc)
    assert state["step"] == n
    assert not np.allclose(pc, p0)


def test_dampening_skips_the_first_step():
    """torch starts the buffer at g_1 undamped, then b_t = mu b_{t-1} + (1-d) g_t.
    Subtracting (1-d) times the classic buffer c_t leaves e_t = d mu^(t-1) g_1."""
    mu, d, n = 0.8, 0.3, 25
    grads = RNG.standard_normal((n, 5))
    p, c, state = np.zeros(5), np.zeros(5), {}
    for t in range(n):
        optim.sgd(p, grads[t], state, lr=0.1, momentum=mu, dampening=d)
        c = mu * c + grads[t]
        np.testing.assert_allclose(state["momentum_buffer"], (1 - d) * c + d * mu**t * grads[0], rtol=1e-12, atol=1e-14)


# --- hand-computed steps ---------------------------------------------------------------


def test_sgd_plain_weight_decay_maximize():
    p = arr(1.0, -2.0)
    optim.sgd(p, arr(0.5, 0.25), {}, lr=0.1)
    np.testing.assert_allclose(p, [0.95, -2.025], rtol=1e-15)
    p = arr(1.0, -2.0)
    optim.sgd(p, arr(0.5, 0.25), {}, lr=0.1, weight_decay=0.1)  # g + 0.1 p = (0.6, 0.05)
    np.testing.assert_allclose(p, [0.94, -2.005], rtol=1e-15)
    p = arr(1.0, -2.0)
    optim.sgd(p, arr(0.5, 0.25), {}, lr=0.1, maximize=True)
    np.testing.assert_allclose(p, [1.05, -1.975], rtol=1e-15)


def test_sgd_momentum_and_nesterov_two_steps():
    p, s = arr(0.0), {}
    optim.sgd(p, arr(1.0), s, lr=0.1, momentum=0.9)  # b = 1
    optim.sgd(p, arr(1.0), s, lr=0.1, momentum=0.9)  # b = 1.9
    np.testing.assert_allclose(p, [-0.29], rtol=1e-15)
    p, s = arr(0.0), {}
    optim.sgd(p, arr(1.0), s, lr=0.1, momentum=0.9, nesterov=True)  # d = 1 + 0.9 * 1
    optim.sgd(p, arr(1.0), s, lr=0.1, momentum=0.9, nesterov=True)  # d = 1 + 0.9 * 1.9
    np.testing.assert_allclose(p, [-0.1 * (1.9 + 2.71)], rtol=1e-15)
    assert s["step"] == 2 and set(s) == {"step", "momentum_buffer"}
    with pytest.raises(ValueError):
        optim.sgd(p, arr(1.0), {}, momentum=0.0, nesterov=True)


def test_sgd_without_momentum_keeps_no_buffer():
    s = {}
    optim.sgd(arr(1.0), arr(1.0), s)
    assert s == {"step": 1}


def test_adagrad_two_steps_and_lr_decay():
    eps = 1e-10
    p, s = arr(1.0), {}
    optim.adagrad(p, arr(2.0), s, lr=0.1)  # sum 4: p -= 0.1 * 2 / 2
    np.testing.assert_allclose(p, [1 - 0.1 * 2 / (2 + eps)], rtol=1e-15)
    optim.adagrad(p, arr(2.0), s, lr=0.1, lr_decay=0.5)  # lr / (1 + 1 * 0.5), sum 8
    np.testing.assert_allclose(p, [1 - 0.1 * 2 / (2 + eps) - (0.1 / 1.5) * 2 / (math.sqrt(8) + eps)], rtol=1e-15)
    np.testing.assert_array_equal(s["sum"], [8.0])
    s2 = {}
    optim.adagrad(arr(0.0), arr(1.0), s2, initial_accumulator_value=3.0)
    np.testing.assert_array_equal(s2["sum"], [4.0])


def test_rmsprop_first_step_plain_centered_momentum():
    eps = 1e-8
    p = arr(1.0)
    optim.rmsprop(p, arr(2.0), {}, lr=0.01)  # v = 0.04: p -= 0.01 * 2 / 0.2
    np.testing.assert_allclose(p, [1 - 0.01 * 2 / (0.2 + eps)], rtol=1e-15)
    p, s = arr(1.0), {}
    optim.rmsprop(p, arr(2.0), s, lr=0.01, centered=True)  # m = 0.02: v - m^2 = 0.0396
    np.testing.assert_allclose(p, [1 - 0.01 * 2 / (math.sqrt(0.0396) + eps)], rtol=1e-14)
    assert set(s) == {"step", "square_avg", "grad_avg"}
    p, s = arr(1.0), {}
    optim.rmsprop(p, arr(2.0), s, lr=0.01, momentum=0.5)  # b = 2 / 0.2 = 10
    optim.rmsprop(p, arr(2.0), s, lr=0.01, momentum=0.5)  # v = 0.0796, b = 5 + 2 / sqrt(v)
    b1 = 2 / (0.2 + eps)
    b2 = 0.5 * b1 + 2 / (math.sqrt(0.0796) + eps)
    np.testing.assert_allclose(p, [1 - 0.01 * b1 - 0.01 * b2], rtol=1e-14)
    assert set(s) == {"step", "square_avg", "momentum_buffer"}


@pytest.mark.parametrize("rule", [optim.adam, optim.adamw])
def test_adam_steps_are_lr_sign_g_for_a_constant_gradient(rule):
    """With g constant, the bias-corrected moments are m^ = g and v^ = g^2 at every
    step, so each step moves p by lr g / (|g| + eps), about lr sign(g)."""
    lr, g = 0.01, arr(3.0, -0.5, 1e-3, -40.0)
    p, s = np.zeros(4), {}
    for t in range(1, 11):
        rule(p, g, s, lr=lr, weight_decay=0.0)
        np.testing.assert_allclose(p, -t * lr * g / (np.abs(g) + 1e-8), rtol=1e-12)
    np.testing.assert_allclose(p, -10 * lr * np.sign(g), rtol=1e-5)
    assert s["step"] == 10 and set(s) == {"step", "exp_avg", "exp_avg_sq"}


def test_adam_l2_versus_adamw_decoupled_decay():
    """g = 0: AdamW only shrinks p by (1 - lr wd); Adam's L2 term wd p = 0.2 becomes the
    gradient and its first step is about lr sign(0.2)."""
    p = arr(2.0)
    optim.adamw(p, arr(0.0), {}, lr=0.01, weight_decay=0.1)
    np.testing.assert_allclose(p, [2.0 * (1 - 0.001)], rtol=1e-15)
    p = arr(2.0)
    optim.adam(p, arr(0.0), {}, lr=0.01, weight_decay=0.1)
    np.testing.assert_allclose(p, [2.0 - 0.01 * 0.2 / (0.2 + 1e-8)], rtol=1e-14)
    assert optim.adamw.__kwdefaults__["weight_decay"] == 1e-2
    assert optim.adam.__kwdefaults__["weight_decay"] == 0.0


def test_amsgrad_keeps_the_largest_second_moment():
    # g = 10 then 0: v_2 = 0.999 * 0.1 < v_1 = 0.1, so step 2 divides by sqrt(v_1).
    p, s = arr(0.0), {}
    optim.adam(p, arr(10.0), s, lr=0.01, amsgrad=True)
    p1 = p.copy()
    optim.adam(p, arr(0.0), s, lr=0.01, amsgrad=True)
    np.testing.assert_allclose(s["max_exp_avg_sq"], [0.1], rtol=1e-15)
    np.testing.assert_allclose(s["exp_avg_sq"], [0.0999], rtol=1e-13)
    bc1, bc2 = 1 - 0.9**2, 1 - 0.999**2
    expected = p1 - 0.01 / bc1 * 0.9 / (math.sqrt(0.1) / math.sqrt(bc2) + 1e-8)
    np.testing.assert_allclose(p, expected, rtol=1e-13)


HYPERS = {
    "sgd": dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.1, maximize=True),
    "adagrad": dict(lr=0.1, weight_decay=0.1, maximize=True),
    "rmsprop": dict(lr=0.01, momentum=0.5, centered=True, weight_decay=0.1, maximize=True),
    "adam": dict(lr=0.01, weight_decay=0.1, amsgrad=True, maximize=True),
    "adamw": dict(lr=0.01, weight_decay=0.1, amsgrad=True, maximize=True),
}


@pytest.mark.parametrize("name", sorted(optim.RULES))
def test_rules_leave_the_gradient_alone(name):
    g = RNG.standard_normal(9)
    g0 = g.copy()
    p, s = RNG.standard_normal(9), {}
    for _ in range(3):
        optim.RULES[name](p, g, s, **HYPERS[name])
    np.testing.assert_array_equal(g, g0)
    assert s["step"] == 3


# --- step(): clipping and skipping -----------------------------------------------------


def _problem(n=3):
    shapes = [(3,), (2, 5), (1,)]
    params = [RNG.standard_normal(sh) for sh in shapes[:n]]
    grads = [RNG.standard_normal(sh) for sh in shapes[:n]]
    return params, grads


def test_step_without_clipping_is_the_rule_per_tensor():
    params, grads = _problem()
    hypers = [dict(lr=0.1), dict(lr=0.2, momentum=0.9), dict(lr=0.3, weight_decay=0.5)]
    expect = [p.copy() for p in params]
    for p, g, h in zip(expect, grads, hypers):
        optim.sgd(p, g, {}, **h)
    states = [{} for _ in params]
    assert optim.step("sgd", params, grads, states, hypers) == (None, False)
    for p, e in zip(params, expect):
        np.testing.assert_array_equal(p, e)
    assert [s["step"] for s in states] == [1, 1, 1]


def test_step_clips_by_the_global_norm():
    params = [np.zeros(2), np.zeros(1)]
    grads = [arr(3.0, 4.0), arr(12.0)]  # ||g|| = 13
    states, hypers = [{}, {}], [dict(lr=1.0)] * 2
    norm, skipped = optim.step(optim.sgd, params, grads, states, hypers, max_grad_norm=6.5)
    assert (norm, skipped) == (13.0, False)
    coef = 6.5 / (13.0 + 1e-6)
    np.testing.assert_allclose(params[0], [-3 * coef, -4 * coef], rtol=1e-15)
    np.testing.assert_allclose(params[1], [-12 * coef], rtol=1e-15)
    np.testing.assert_array_equal(grads[1], [12.0])  # inputs untouched
    # max_grad_norm above the norm: coef = 1, the same as no clipping, bit for bit.
    params2 = [np.zeros(2), np.zeros(1)]
    norm, _ = optim.step("sgd", params2, grads, [{}, {}], hypers, max_grad_norm=100.0)
    assert norm == 13.0
    np.testing.assert_array_equal(np.concatenate(params2), [-3.0, -4.0, -12.0])


def test_step_reports_the_norm_when_only_skipping():
    params, grads = _problem()
    norm, skipped = optim.step("adam", params, grads, [{}, {}, {}], [{}] * 3, skip_nonfinite=True)
    assert not skipped
    assert norm == pytest.approx(math.sqrt(sum(float((g**2).sum()) for g in grads)), rel=1e-14)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_step_skips_nonfinite_and_changes_nothing(bad):
    params, grads = _problem()
    states, hypers = [{} for _ in params], [dict(lr=0.01, amsgrad=True)] * 3
    optim.step("adamw", params, grads, states, hypers)  # states now hold step 1
    before_p, before_s = copy.deepcopy(params), copy.deepcopy(states)
    grads[1][1, 3] = bad
    norm, skipped = optim.step("adamw", params, grads, states, hypers, max_grad_norm=1.0, skip_nonfinite=True)
    assert skipped
    assert math.isnan(norm) if math.isnan(bad) else norm == math.inf
    for p, q in zip(params, before_p):
        np.testing.assert_array_equal(p, q)
    for s, t in zip(states, before_s):
        assert s.keys() == t.keys() and s["step"] == 1
        for k in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
            np.testing.assert_array_equal(s[k], t[k])


def test_step_without_skip_lets_nan_spread_through_the_clip():
    # torch semantics: coef = clamp(max_norm / (NaN + eps), max=1) = NaN multiplies every grad.
    params, grads = _problem()
    grads[0][0] = math.nan
    norm, skipped = optim.step("sgd", params, grads, [{}, {}, {}], [{}] * 3, max_grad_norm=1.0)
    assert math.isnan(norm) and not skipped
    assert all(np.isnan(p).all() for p in params)


def test_step_checks_lengths():
    with pytest.raises(ValueError):
        optim.step("sgd", [np.zeros(1)], [], [{}], [{}])


# --- norms and clipping ------------------------------------------------------------------

GRADS = [arr(3.0, -4.0), arr(-12.0), np.zeros((0,))]


@pytest.mark.parametrize(
    "p, expected",
    [
        (2.0, 13.0),
        (1.0, 19.0),
        (3.0, (27 + 64 + 1728) ** (1 / 3)),
        (math.inf, 12.0),
    ],
)
def test_global_norm(p, expected):
    assert norms.global_norm(GRADS, p) == pytest.approx(expected, rel=1e-15)


def test_global_norm_empty_and_zero_size():
    assert norms.global_norm([]) == 0.0
    assert norms.global_norm([], math.inf) == 0.0
    assert norms.global_norm([np.zeros(0), np.zeros((3, 0))], 2.0) == 0.0


def test_global_norm_matches_one_flat_vector():
    gs = [RNG.standard_normal(s) for s in [(7,), (3, 4), (1,), (0,)]]
    flat = np.concatenate([g.ravel() for g in gs])
    for p in (1.0, 2.0, 3.0, 0.5, math.inf):
        assert norms.global_norm(gs, p) == pytest.approx(np.linalg.norm(flat, p), rel=1e-13)


def test_clip_grad_norm_scales_copies():
    clipped, total = norms.clip_grad_norm(GRADS, 6.5)
    assert total == 13.0
    coef = 6.5 / (13.0 + 1e-6)
    np.testing.assert_allclose(clipped[0], [3 * coef, -4 * coef], rtol=1e-15)
    assert norms.global_norm(clipped) == pytest.approx(6.5, abs=1e-6)
    np.testing.assert_array_equal(GRADS[0], [3.0, -4.0])
    unclipped, _ = norms.clip_grad_norm(GRADS, 20.0)
    for a, b in zip(unclipped, GRADS):
        np.testing.assert_array_equal(a, b)
        assert a is not b
    by_max, total_inf = norms.clip_grad_norm(GRADS, 6.0, math.inf)
    assert total_inf == 12.0
    np.testing.assert_allclose(by_max[1], [-12.0 * 6.0 / (12.0 + 1e-6)], rtol=1e-15)


def test_clip_grad_value():
    g32 = np.array([-3.0, -0.5, 0.0, 0.5, 3.0], dtype=np.float32)
    (out,) = norms.clip_grad_value([g32], 1.0)
    assert out.dtype == np.float64
    np.testing.assert_array_equal(out, [-1.0, -0.5, 0.0, 0.5, 1.0])
    assert g32[0] == -3.0
    assert norms.clip_grad_value([], 1.0) == []


# --- cross-checks against torch (optional) -------------------------------------------------


def _configs():
    out = []
    for m, nest, damp, wd, mx in itertools.product((0.0, 0.9), (False, True), (0.0, 0.3), (0.0, 0.05), (False, True)):
        if nest and (m == 0.0 or damp != 0.0):
            continue
        out.append(("sgd", dict(lr=0.1, momentum=m, nesterov=nest, dampening=damp, weight_decay=wd, maximize=mx)))
    for dec, wd, acc, mx in itertools.product((0.0, 0.1), (0.0, 0.05), (0.0, 0.5), (False, True)):
        out.append(("adagrad", dict(lr=0.1, lr_decay=dec, weight_decay=wd, initial_accumulator_value=acc, maximize=mx)))
    for m, c, wd, mx in itertools.product((0.0, 0.5), (False, True), (0.0, 0.05), (False, True)):
        out.append(("rmsprop", dict(lr=0.01, alpha=0.9, momentum=m, centered=c, weight_decay=wd, maximize=mx)))
    for name in ("adam", "adamw"):
        for ams, wd, mx in itertools.product((False, True), (0.0, 0.05), (False, True)):
            out.append((name, dict(lr=0.01, betas=(0.8, 0.99), amsgrad=ams, weight_decay=wd, maximize=mx)))
    return out


_TORCH_CLASS = {"sgd": "SGD", "adagrad": "Adagrad", "rmsprop": "RMSprop", "adam": "Adam", "adamw": "AdamW"}


@pytest.mark.parametrize(
    "name, hyper",
    _configs(),
    ids=lambda v: v if isinstance(v, str) else "-".join(f"{k}={v[k]}" for k in sorted(v) if k != "lr"),
)
def test_rules_match_torch(name, hyper):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(7)
    shapes = [(5, 3), (7,)]
    params = [rng.standard_normal(s) for s in shapes]
    tparams = [torch.tensor(p, requires_grad=True) for p in params]
    topt = getattr(torch.optim, _TORCH_CLASS[name])(tparams, **hyper)
    states = [{} for _ in params]
    for _ in range(20):
        grads = [rng.standard_normal(s) for s in shapes]
        for tp, g in zip(tparams, grads):
            tp.grad = torch.tensor(g)
        topt.step()
        for p, g, s in zip(params, grads, states):
            optim.RULES[name](p, g, s, **hyper)
    for p, tp, s in zip(params, tparams, states):
        np.testing.assert_allclose(p, tp.detach().numpy(), rtol=1e-10, atol=1e-12)
        ts = topt.state[tp]
        for key, value in s.items():
            if key == "step":
                assert int(ts.get("step", 20)) == value == 20  # torch's SGD keeps no step
            else:
                np.testing.assert_allclose(value, ts[key].numpy(), rtol=1e-10, atol=1e-12)
        assert set(s) - {"step"} == {k for k, v in ts.items() if v is not None} - {"step"}


@pytest.mark.parametrize("name", sorted(optim.RULES))
def test_rule_defaults_are_torchs(name):
    torch = pytest.importorskip("torch")
    sig = inspect.signature(getattr(torch.optim, _TORCH_CLASS[name]))
    defaults = optim.RULES[name].__kwdefaults__
    assert defaults == {k: sig.parameters[k].default for k in defaults}


def test_clipped_step_matches_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(8)
    shapes = [(4, 4), (3,)]
    params = [rng.standard_normal(s) for s in shapes]
    tparams = [torch.tensor(p, requires_grad=True) for p in params]
    hyper = dict(lr=0.01, weight_decay=0.1)
    topt = torch.optim.AdamW(tparams, **hyper)
    states = [{}, {}]
    for _ in range(20):
        grads = [3.0 * rng.standard_normal(s) for s in shapes]
        for tp, g in zip(tparams, grads):
            tp.grad = torch.tensor(g)
        tnorm = torch.nn.utils.clip_grad_norm_(tparams, 2.0)
        topt.step()
        norm, skipped = optim.step("adamw", params, grads, states, [hyper] * 2, max_grad_norm=2.0)
        assert not skipped and norm == pytest.approx(float(tnorm), rel=1e-13)
    for p, tp in zip(params, tparams):
        np.testing.assert_allclose(p, tp.detach().numpy(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("p", [1.0, 2.0, 3.0, math.inf])
def test_norms_match_torch(p):
    torch = pytest.importorskip("torch")
    gs = [RNG.standard_normal(s) for s in [(7,), (3, 4), (1,)]]
    ts = [torch.zeros(g.shape, dtype=torch.float64, requires_grad=True) for g in gs]
    for t, g in zip(ts, gs):
        t.grad = torch.tensor(g)
    ref_clipped, ref_total = norms.clip_grad_norm(gs, 1.5, p)
    total = torch.nn.utils.clip_grad_norm_(ts, 1.5, norm_type=p)
    assert ref_total == pytest.approx(float(total), rel=1e-13)
    for a, t in zip(ref_clipped, ts):
        np.testing.assert_allclose(a, t.grad.numpy(), rtol=1e-13)
    for t, g in zip(ts, gs):
        t.grad = torch.tensor(g)
    torch.nn.utils.clip_grad_value_(ts, 0.7)
    for a, t in zip(norms.clip_grad_value(gs, 0.7), ts):
        np.testing.assert_array_equal(a, t.grad.numpy())
