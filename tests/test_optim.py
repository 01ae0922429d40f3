"""Fused optimizers against the float64 NumPy reference (fastopt.reference.optim) and torch.optim."""

import copy
import inspect

import numpy as np
import pytest
from conftest import fetch, put

from fastopt import optim
from fastopt.reference import optim as ref

# Every rule x option combination, torch's defaults included (empty kwargs).
CASES = [
    ("sgd", optim.SGD, dict(lr=0.1)),
    ("sgd", optim.SGD, dict(lr=0.05, momentum=0.9)),
    ("sgd", optim.SGD, dict(lr=0.05, momentum=0.9, dampening=0.3, weight_decay=0.01)),
    ("sgd", optim.SGD, dict(lr=0.05, momentum=0.8, nesterov=True, weight_decay=0.01)),
    ("sgd", optim.SGD, dict(lr=0.05, momentum=0.9, nesterov=True, maximize=True)),
    ("adagrad", optim.Adagrad, dict()),
    ("adagrad", optim.Adagrad, dict(lr=0.1, lr_decay=0.01, weight_decay=0.1, initial_accumulator_value=0.1, eps=1e-6)),
    ("rmsprop", optim.RMSprop, dict()),
    ("rmsprop", optim.RMSprop, dict(lr=0.01, momentum=0.9)),
    ("rmsprop", optim.RMSprop, dict(lr=0.01, centered=True)),
    ("rmsprop", optim.RMSprop, dict(lr=0.01, alpha=0.9, centered=True, momentum=0.5, weight_decay=0.01, maximize=True)),
    ("adam", optim.Adam, dict()),
    ("adam", optim.Adam, dict(lr=0.01, weight_decay=0.1)),
    ("adam", optim.Adam, dict(lr=0.01, amsgrad=True)),
    ("adam", optim.Adam, dict(lr=0.01, betas=(0.8, 0.99), eps=1e-6, maximize=True)),
    ("adamw", optim.AdamW, dict()),
    ("adamw", optim.AdamW, dict(lr=0.01, weight_decay=0.1, amsgrad=True)),
]
CASE_IDS = [f"{c[0]}-{'-'.join(f'{k}={v}' for k, v in c[2].items()) or 'defaults'}" for c in CASES]

# Shapes: empty, single, primes, sizes that are no multiple of any vector width or chunk.
SHAPES = [(0,), (1,), (7,), (33, 5), (1031,), (3, 4, 5), (40_009,)]
STEPS = 12
# The global norm: the CPU sums squares in double; the GPU in float32 (64 terms per thread, then
# a fixed tree), within a few float32 ulps.
NORM_RTOL = {"cpu": 1e-9, "cuda": 1e-5}

# ------------------------------------------------------------------------------------ tolerance
# Every step is checked on its own: the reference takes exactly the float32 parameters, state and
# step counts fastopt held before the step, so no error accumulates and each element gets its own
# tolerance:
#
#     |p - p_ref| <= 2 ulp(p) + K (cond + u |update|),    |s - s_ref| <= ulp(s) + K (cond_s + u |s|)
#
# - ulp(p): the float32 spacing at the parameter. The result is stored in float32 (one rounding),
#   and AdamW's p (1 - lr wd) rounds once more at the parameter's scale (its factor rounded to
#   float32 too); nothing else in the tolerance scales with the parameter.
# - cond: the first-order change of the reference's update when each float32 input (parameter,
#   gradient, each state buffer, each hyperparameter, the clip coefficient) moves by one rounding,
#   relative u = 2^-24, summed in absolute value over the inputs. It is large exactly where the
#   update is ill-conditioned: on Adam's first step, g + weight_decay * p cancelling to ~eps
#   makes float32 rounding move the update by ~1e-4, which a fixed 3e-5 tolerance turned into a
#   failure about one run in a few hundred (the seeds are fresh every run).
# - u |update|: the roundings inside the rule (products, sqrt, division, bias corrections), each
#   relative to the update.
# - K = 8: a correct kernel rounds a handful of times per element. test_tolerance_sweep runs every
#   case over fixed seeds, first steps of cancelling gradients included, and prints the largest
#   multiple of (cond + u |update|) an element needed: 0.85 there, 1.6 over 40 seeds.
# The tolerance follows the update, not the parameter, so a wrong constant shows: with gradients
# spanning nine decades (per-element scales 10^U(-9, 0)), Adam's eps 1e-6 instead of 1e-8 moves
# the update of an element whose gradient is ~1e-8 by about lr / 2, ~10^4 tolerances.
U = 2.0**-24
K = 8.0


def _reference(rule, params, grads, states, hypers, **kw):
    params = [np.array(p, np.float64) for p in params]
    states = copy.deepcopy(states)
    result = ref.step(rule, params, grads, states, hypers, **kw)
    return params, states, result


def _perturbed(params, grads, states, hypers, kw, clip_rel):
    """The inputs with one float32 quantity moved by one rounding, each in turn."""
    up = 1.0 + U
    yield [p * up for p in params], grads, states, hypers, kw
    yield params, [g * up for g in grads], states, hypers, kw
    for name in sorted({k for s in states for k in s if k != "step"}):
        yield params, grads, [{**s, name: s[name] * up} if name in s else s for s in states], hypers, kw
    for key in sorted({k for h in hypers for k, v in h.items() if isinstance(v, float)}):
        yield params, grads, states, [{**h, key: h[key] * up} for h in hypers], kw
    for j in (0, 1):
        if "betas" in hypers[0]:
            yield (
                params,
                grads,
                states,
                [{**h, "betas": tuple(b * up ** (i == j) for i, b in enumerate(h["betas"]))} for h in hypers],
                kw,
            )
    if kw.get("max_grad_norm") is not None:
        yield params, grads, states, hypers, {**kw, "max_grad_norm": kw["max_grad_norm"] * (1.0 + clip_rel)}


def reference_step(rule, params, grads, states, hypers, clip_rel=U, **kw):
    """The reference step from float64 copies of fastopt's inputs, and each output element's
    tolerance: (params, states, tol_params, tol_states, (norm, skipped))."""
    hypers = [{**ref.RULES[rule].__kwdefaults__, **h} for h in hypers]
    want_p, want_s, result = _reference(rule, params, grads, states, hypers, **kw)
    update = [w - p for w, p in zip(want_p, params)]
    cond = [np.zeros_like(p) for p in params]
    cond_s = [{k: np.zeros_like(v) for k, v in s.items() if k != "step"} for s in want_s]
    for pp, gg, ss, hh, kk in _perturbed(params, grads, states, hypers, kw, clip_rel):
        out_p, out_s, _ = _reference(rule, pp, gg, ss, hh, **kk)
        for i in range(len(params)):
            cond[i] += np.abs((out_p[i] - pp[i]) - update[i])
            for k in cond_s[i]:
                cond_s[i][k] += np.abs(out_s[i][k] - want_s[i][k])
    tol_p = [
        2 * _ulp(np.maximum(np.abs(p), np.abs(w))) + K * (c + U * np.abs(d))
        for p, w, c, d in zip(params, want_p, cond, update)
    ]
    tol_s = [{k: _ulp(s[k]) + K * (c[k] + U * np.abs(s[k])) for k in c} for s, c in zip(want_s, cond_s)]
    return want_p, want_s, tol_p, tol_s, result


def _ulp(x):
    return np.spacing(np.abs(x).astype(np.float32)).astype(np.float64)


def assert_within(got, want, tol, what):
    err = np.abs(np.asarray(got, np.float64) - want)
    bad = ~(err <= tol)
    if bad.any():
        i = np.unravel_index(np.argmax(np.where(bad, err / np.maximum(tol, 1e-300), 0)), err.shape)
        pytest.fail(
            f"{what}: {bad.sum()} of {err.size} elements off; worst at {i}: got {got[i]!r}, "
            f"want {want[i]!r}, error {err[i]:.3g} > tolerance {tol[i]:.3g}"
        )


def _inputs(opt, params):
    """fastopt's float32 parameters, states (with step counts) and steps, as float64 copies."""
    steps = [int(t) for t in fetch(opt._steps)]
    states = [{"step": t, **{k: fetch(v).astype(np.float64) for k, v in s.items()}} for s, t in zip(opt.state, steps)]
    return [fetch(p).astype(np.float64) for p in params], states


def checked_step(rule, opt, params, grads32, hypers, backend, clip_rel=U, **step_kwargs):
    """One fastopt step, held elementwise to the reference step from the same float32 inputs."""
    p_in, s_in = _inputs(opt, params)
    res = opt.step([put(g, backend) for g in grads32], **step_kwargs)
    want_p, want_s, tol_p, tol_s, ref_res = reference_step(
        rule, p_in, [g.astype(np.float64) for g in grads32], s_in, hypers, clip_rel, **step_kwargs
    )
    for i, p in enumerate(params):
        assert_within(fetch(p), want_p[i], tol_p[i], f"param {i}")
        assert set(opt.state[i]) == set(want_s[i]) - {"step"}
        for name, buf in opt.state[i].items():
            assert_within(fetch(buf), want_s[i][name], tol_s[i][name], f"state {i} {name}")
    assert [int(t) for t in fetch(opt._steps)] == [s["step"] for s in want_s]
    return res, ref_res


def _grads(rng, scales):
    return [(rng.standard_normal(s.shape) * s).astype(np.float32) for s in scales]


def _scales(rng, shapes):
    """Fixed per-element gradient scales over nine decades, so that eps matters for some elements."""
    return [10.0 ** rng.uniform(-9.0, 0.0, s) for s in shapes]


def _run(rule, cls, kwargs, shapes, backend, rng, steps=STEPS, clip_rel=U, **step_kwargs):
    params = [put(rng.standard_normal(s).astype(np.float32), backend) for s in shapes]
    opt = cls(params, **kwargs)
    scales = _scales(rng, shapes)
    return [
        checked_step(rule, opt, params, _grads(rng, scales), [kwargs] * len(shapes), backend, clip_rel, **step_kwargs)
        for _ in range(steps)
    ]


@pytest.mark.parametrize("rule,cls,kwargs", CASES, ids=CASE_IDS)
def test_matches_reference(rule, cls, kwargs, backend, rng):
    _run(rule, cls, kwargs, SHAPES, backend, rng)


@pytest.mark.parametrize("rule,cls,kwargs", [CASES[1], CASES[12], CASES[15]], ids=["momentum", "adam", "adamw"])
def test_clipping_fused(rule, cls, kwargs, backend, rng):
    # Gradients of norm ~ sqrt(n) >> 1: every step is clipped. The norm's own rounding enters the
    # tolerance as the clip coefficient's (NORM_RTOL).
    shapes = [(257,), (16, 9), (5,)]
    results = _run(rule, cls, kwargs, shapes, backend, rng, clip_rel=NORM_RTOL[backend], max_grad_norm=1.0)
    for res, (ref_norm, ref_skipped) in results:
        assert float(fetch(res.norm)) == pytest.approx(ref_norm, rel=NORM_RTOL[backend])
        assert not bool(fetch(res.skipped)) and not ref_skipped


def test_tolerance_sweep():
    """Every case over fixed seeds, with a first step whose g + weight_decay * p cancels to ~1e-8
    (the ill-conditioned first Adam step); prints the largest error any element made."""
    worst = {}
    for seed in range(6):
        rng = np.random.default_rng(seed)
        for (rule, cls, kwargs), name in zip(CASES, CASE_IDS):
            shapes = [(1031,), (33, 5)]
            params = [rng.standard_normal(s).astype(np.float32) for s in shapes]
            opt = cls(params, **kwargs)
            wd = kwargs.get("weight_decay", opt.defaults["weight_decay"]) * (rule != "adamw")
            scales = _scales(rng, shapes)
            for t in range(6):
                grads = (
                    _grads(rng, scales)
                    if t
                    else [(-wd * p + 1e-8 * rng.standard_normal(p.shape)).astype(np.float32) for p in params]
                )
                p_in, s_in = _inputs(opt, params)
                opt.step(grads)
                want_p, want_s, tol_p, tol_s, _ = reference_step(
                    rule, p_in, [g.astype(np.float64) for g in grads], s_in, [kwargs] * 2
                )
                for i, p in enumerate(params):
                    pairs = [(p, want_p[i], tol_p[i], 2 * _ulp(np.maximum(np.abs(p_in[i]), np.abs(want_p[i]))))]
                    pairs += [(opt.state[i][k], want_s[i][k], tol_s[i][k], _ulp(want_s[i][k])) for k in opt.state[i]]
                    for got, want, tol, ulps in pairs:
                        share = np.maximum(np.abs(got - want) - ulps, 0) / np.maximum(tol - ulps, 1e-300)
                        worst[name] = max(worst.get(name, 0.0), float(share.max(initial=0.0)))
    print(
        f"largest error beyond the ulps, in units of (cond + u |update|), of the K = {K:g} allowed:",
        {k: round(v * K, 2) for k, v in worst.items()},
    )
    assert max(worst.values()) <= 1.0
    assert max(worst.values()) > 0.0  # the kernels do round: the check is not vacuous


def test_param_groups_with_different_rules(backend, rng):
    # One step call covers groups with different lr, weight decay and even state layout
    # (momentum in one group only), and clipping sees the global norm over all of them.
    shapes = [(50,), (7, 3), (129,), (2,)]
    params = [put(rng.standard_normal(s).astype(np.float32), backend) for s in shapes]
    g0 = dict(lr=0.1)
    g1 = dict(lr=0.01, momentum=0.9, weight_decay=0.1)
    opt = optim.SGD([{"params": params[:2], **g0}, {"params": params[2:], **g1}], lr=0.5)
    scales = _scales(rng, shapes)
    for _ in range(STEPS):
        checked_step(
            "sgd", opt, params, _grads(rng, scales), [g0, g0, g1, g1], backend, NORM_RTOL[backend], max_grad_norm=2.0
        )
    assert set(opt.state[0]) == set() and set(opt.state[2]) == {"momentum_buffer"}


def test_group_options_can_change_between_steps(rng):
    # A schedule (or the user) edits lr; turning momentum on creates its buffer, as torch does.
    p = rng.standard_normal(20).astype(np.float32)
    opt = optim.SGD([p], lr=0.1)
    scales = _scales(rng, [(20,)])
    for step in range(6):
        if step == 3:
            opt.param_groups[0]["momentum"] = 0.9
        opt.param_groups[0]["lr"] = 0.1 / (1 + step)
        hyper = dict(lr=0.1 / (1 + step), momentum=0.9 if step >= 3 else 0.0)
        checked_step("sgd", opt, [p], _grads(rng, scales), [hyper], "cpu")
    assert set(opt.state[0]) == {"momentum_buffer"}


def test_many_small_tensors(backend, rng):
    shapes = [(int(n),) for n in rng.integers(0, 60, size=3000)]
    _run(
        "adamw",
        optim.AdamW,
        dict(lr=0.01),
        shapes,
        backend,
        rng,
        steps=3,
        clip_rel=NORM_RTOL[backend],
        max_grad_norm=5.0,
    )


def test_clipping_inactive_below_max_norm(backend, rng):
    # With max_norm far above the norm, a clipped step equals an unclipped one bit for bit.
    init = rng.standard_normal(1000).astype(np.float32)
    grads = [rng.standard_normal(1000).astype(np.float32) * 1e-3 for _ in range(5)]
    a, b = put(init, backend), put(init, backend)
    oa, ob = optim.AdamW([a], lr=0.01), optim.AdamW([b], lr=0.01)
    for g in grads:
        oa.step([put(g, backend)])
        res = ob.step([put(g, backend)], max_grad_norm=1e6)
        assert float(fetch(res.norm)) == pytest.approx(np.linalg.norm(g.astype(np.float64)), rel=NORM_RTOL[backend])
    np.testing.assert_array_equal(fetch(a), fetch(b))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("how", [dict(max_grad_norm=1.0), dict(skip_nonfinite=True)])
def test_nonfinite_gradient_skips_step(bad, how, backend, rng):
    init = [rng.standard_normal(s).astype(np.float32) for s in [(100,), (31,)]]
    params = [put(p, backend) for p in init]
    opt = optim.Adam(params, lr=0.01)
    opt.step([put(rng.standard_normal(p.shape).astype(np.float32), backend) for p in init])
    before = [fetch(p) for p in params]
    state_before = [{k: fetch(v) for k, v in s.items()} for s in opt.state]
    grads = [rng.standard_normal(p.shape).astype(np.float32) for p in init]
    grads[1][17] = bad
    res = opt.step([put(g, backend) for g in grads], **how)
    assert bool(fetch(res.skipped))
    assert not np.isfinite(float(fetch(res.norm)))
    for p, b in zip(params, before):
        np.testing.assert_array_equal(fetch(p), b)
    for s, sb in zip(opt.state, state_before):
        for k in s:
            np.testing.assert_array_equal(fetch(s[k]), sb[k])
    assert list(fetch(opt._steps)) == [1, 1]
    # The next finite step proceeds as step 2.
    res = opt.step([put(rng.standard_normal(p.shape).astype(np.float32), backend) for p in init], **how)
    assert not bool(fetch(res.skipped))
    assert list(fetch(opt._steps)) == [2, 2]


def test_nonfinite_without_check_propagates(rng):
    # torch semantics when the user asks for no check: NaN flows into the parameters.
    p = rng.standard_normal(10).astype(np.float32)
    g = np.zeros(10, np.float32)
    g[3] = np.nan
    res = optim.SGD([p], lr=0.1).step([g])
    assert res.norm is None and res.skipped is False
    assert np.isnan(p[3]) and np.isfinite(np.delete(p, 3)).all()


def test_bitwise_deterministic(backend, rng):
    init = rng.standard_normal(300_001).astype(np.float32)
    grads = [rng.standard_normal(300_001).astype(np.float32) for _ in range(3)]
    runs = []
    for _ in range(2):
        p = put(init, backend)
        opt = optim.Adam([p], lr=0.01)
        norms = [float(fetch(opt.step([put(g, backend)], max_grad_norm=100.0).norm)) for g in grads]
        runs.append((fetch(p), norms))
    np.testing.assert_array_equal(runs[0][0], runs[1][0])
    assert runs[0][1] == runs[1][1]


@pytest.mark.parametrize(
    "rule,cls,kwargs",
    [CASES[3], CASES[6], CASES[10], CASES[13]],
    ids=["nesterov", "adagrad", "rmsprop-centered-momentum", "amsgrad"],
)
def test_state_dict_resume_is_bit_identical(rule, cls, kwargs, backend, rng):
    shapes = [(33,), (4, 9)]
    init = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    grads = [[rng.standard_normal(s).astype(np.float32) for s in shapes] for _ in range(8)]
    params = [put(p, backend) for p in init]
    opt = cls(params, **kwargs)
    for g in grads[:4]:
        opt.step([put(x, backend) for x in g])
    checkpoint = opt.state_dict()
    saved_params = [fetch(p) for p in params]
    for g in grads[4:]:
        opt.step([put(x, backend) for x in g])
    # A fresh optimizer over restored parameters, with a different lr that the checkpoint overrides.
    params2 = [put(p, backend) for p in saved_params]
    opt2 = cls(params2, **{**kwargs, "lr": 123.0})
    opt2.load_state_dict(checkpoint)
    for g in grads[4:]:
        opt2.step([put(x, backend) for x in g])
    for a, b in zip(params, params2):
        np.testing.assert_array_equal(fetch(a), fetch(b))
    assert opt2.param_groups[0]["lr"] == kwargs.get("lr", opt.defaults["lr"])
    assert checkpoint["state"][0]["step"] == 4


def test_state_dict_layout_and_npz_round_trip(tmp_path, rng):
    p = rng.standard_normal(10).astype(np.float32)
    opt = optim.AdamW([p])
    opt.step([rng.standard_normal(10).astype(np.float32)])
    sd = opt.state_dict()
    assert set(sd["state"][0]) == {"step", "exp_avg", "exp_avg_sq"}
    assert sd["param_groups"][0]["params"] == [0]
    assert sd["param_groups"][0]["weight_decay"] == 0.01  # AdamW's torch default
    # The checkpoint must not alias live state.
    sd["state"][0]["exp_avg"][:] = 7
    assert not np.any(opt.state[0]["exp_avg"] == 7)
    np.savez(tmp_path / "ckpt.npz", **{f"s{k}": v for k, v in sd["state"][0].items()})
    loaded = np.load(tmp_path / "ckpt.npz")
    assert loaded["sstep"] == 1


# ------------------------------------------------------------------- load_state_dict checks
def _corrupt(path, value):
    """sd -> sd with the entry at `path` (keys, outermost first) set to value(old)."""

    def apply(sd):
        node = sd
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value(node.get(path[-1]) if isinstance(node, dict) else node[path[-1]])
        return sd

    return apply


def _drop(key):
    return lambda sd: {k: v for k, v in sd.items() if k != key}


S1 = ("state", 1)  # the last parameter's entry: a loader that wrote as it checked has written entry 0 by then
G0 = ("param_groups", 0)
ADAMW, AMSGRAD = (optim.AdamW, {}), (optim.AdamW, dict(amsgrad=True))
CORRUPT = [
    ("not-a-dict", ADAMW, lambda sd: [sd], TypeError, r"^state_dict: expected a dict, got list"),
    ("no-state", ADAMW, _drop("state"), ValueError, r"^state_dict: missing the 'state' entry"),
    ("no-param-groups", ADAMW, _drop("param_groups"), ValueError, r"^state_dict: missing the 'param_groups' entry"),
    (
        "negative-step",
        ADAMW,
        _corrupt(S1 + ("step",), lambda v: -3),
        ValueError,
        r"^state_dict\['state'\]\[1\]\['step'\]: must lie in \[0, 9223372036854775807\], got -3",
    ),
    (
        "0d-negative-step",
        ADAMW,
        _corrupt(S1 + ("step",), lambda v: np.array(-1)),
        ValueError,
        r"\['step'\]: must lie in \[0, ",
    ),
    (
        "float-step",
        ADAMW,
        _corrupt(S1 + ("step",), lambda v: 3.0),
        ValueError,
        r"\[1\]\['step'\]: expected an integer, got float",
    ),
    (
        "bool-step",
        ADAMW,
        _corrupt(S1 + ("step",), lambda v: True),
        ValueError,
        r"\['step'\]: expected an integer, got bool",
    ),
    (
        "str-step",
        ADAMW,
        _corrupt(S1 + ("step",), lambda v: "3"),
        ValueError,
        r"\['step'\]: expected an integer, got str",
    ),
    ("huge-step", ADAMW, _corrupt(S1 + ("step",), lambda v: 2**63), ValueError, r"\['step'\]: must lie in"),
    (
        "wrong-shape",
        ADAMW,
        _corrupt(S1 + ("exp_avg",), lambda v: v.ravel()),
        ValueError,
        r"\[1\]\['exp_avg'\]: has shape \(6,\), parameter \(2, 3\)",
    ),
    (
        "float64-buffer",
        ADAMW,
        _corrupt(S1 + ("exp_avg",), lambda v: v.astype(np.float64)),
        ValueError,
        r"\['exp_avg'\]: expected float32 or bfloat16, got float64",
    ),
    (
        "list-buffer",
        ADAMW,
        _corrupt(S1 + ("exp_avg",), lambda v: v.tolist()),
        ValueError,
        r"\['exp_avg'\]: expected a float32 or bfloat16 NumPy array, got list",
    ),
    (
        "nan-buffer",
        ADAMW,
        _corrupt(S1 + ("exp_avg",), lambda v: np.where(v == v.flat[4], np.nan, v)),
        ValueError,
        r"\['exp_avg'\]: holds NaN or Inf",
    ),
    ("inf-buffer", ADAMW, _corrupt(S1 + ("exp_avg_sq",), lambda v: v + np.inf), ValueError, r"holds NaN or Inf"),
    (
        "negative-exp_avg_sq",
        ADAMW,
        _corrupt(S1 + ("exp_avg_sq",), lambda v: -v),
        ValueError,
        r"\['exp_avg_sq'\]: holds negative values",
    ),
    (
        "negative-max_exp_avg_sq",
        AMSGRAD,
        _corrupt(S1 + ("max_exp_avg_sq",), lambda v: v - 1),
        ValueError,
        r"\['max_exp_avg_sq'\]: holds negative values",
    ),
    (
        "negative-sum",
        (optim.Adagrad, {}),
        _corrupt(S1 + ("sum",), lambda v: v - 100),
        ValueError,
        r"\['sum'\]: holds negative values",
    ),
    (
        "negative-square_avg",
        (optim.RMSprop, {}),
        _corrupt(S1 + ("square_avg",), lambda v: -v),
        ValueError,
        r"\['square_avg'\]: holds negative values",
    ),
    (
        "sgd-buffer-under-adamw",
        ADAMW,
        _corrupt(S1 + ("momentum_buffer",), lambda v: np.zeros((2, 3), np.float32)),
        ValueError,
        r"^state_dict\['state'\]\[1\]\['momentum_buffer'\]: AdamW keeps no such state",
    ),
    (
        "sgd-state-under-adamw",
        ADAMW,
        _corrupt(S1, lambda v: {"step": 3, "momentum_buffer": np.zeros((2, 3), np.float32)}),
        ValueError,
        r"'momentum_buffer'\]: AdamW keeps no such state",
    ),
    (
        "sgd-option-in-adamw-group",
        ADAMW,
        _corrupt(G0 + ("momentum",), lambda v: 0.9),
        ValueError,
        r"^state_dict\['param_groups'\]\[0\]: unknown option\(s\) \['momentum'\] for AdamW",
    ),
    (
        "adamw-buffer-under-sgd",
        (optim.SGD, dict(momentum=0.9)),
        _corrupt(S1 + ("exp_avg",), lambda v: np.zeros((2, 3), np.float32)),
        ValueError,
        r"'exp_avg'\]: SGD keeps no such state",
    ),
    (
        "negative-lr",
        ADAMW,
        _corrupt(G0 + ("lr",), lambda v: -1.0),
        ValueError,
        r"^state_dict\['param_groups'\]\[0\]\['lr'\]: must be a finite number >= 0, got -1.0",
    ),
    (
        "str-lr",
        ADAMW,
        _corrupt(G0 + ("lr",), lambda v: "0.1"),
        ValueError,
        r"\['lr'\]: expected a real number, got str",
    ),
    (
        "none-eps",
        ADAMW,
        _corrupt(G0 + ("eps",), lambda v: None),
        ValueError,
        r"\['eps'\]: expected a real number, got NoneType",
    ),
    (
        "beta-one",
        ADAMW,
        _corrupt(G0 + ("betas",), lambda v: (0.9, 1.0)),
        ValueError,
        r"\['betas'\]\[1\]: must lie in \[0, 1\)",
    ),
    (
        "negative-rmsprop-momentum",
        (optim.RMSprop, dict(momentum=0.5)),
        _corrupt(G0 + ("momentum",), lambda v: -0.5),
        ValueError,
        r"\['momentum'\]: must be a finite number >= 0",
    ),
    (
        "unknown-index",
        ADAMW,
        _corrupt(("state", 7), lambda v: {"step": 1}),
        ValueError,
        r"^state_dict\['state'\]: key 7 names no parameter \(this optimizer has 2",
    ),
    ("str-index", ADAMW, _corrupt(("state", "w"), lambda v: {"step": 1}), ValueError, r"key 'w' names no parameter"),
    ("index-twice", ADAMW, _corrupt(("state", "1"), lambda v: {"step": 1}), ValueError, r"parameter 1 has two entries"),
    (
        "entry-not-a-dict",
        ADAMW,
        _corrupt(S1, lambda v: 3),
        ValueError,
        r"^state_dict\['state'\]\[1\]: expected a dict, got int",
    ),
    (
        "group-count",
        ADAMW,
        lambda sd: {**sd, "param_groups": sd["param_groups"] * 2},
        ValueError,
        r"state_dict: has 2 parameter groups, this optimizer 1",
    ),
    (
        "group-size",
        ADAMW,
        _corrupt(G0 + ("params",), lambda v: v[:1]),
        ValueError,
        r"state_dict: group 0 has 1 parameters, expected 2",
    ),
    (
        "group-without-params",
        ADAMW,
        lambda sd: {**sd, "param_groups": [{"lr": 0.1}]},
        ValueError,
        r"^state_dict\['param_groups'\]\[0\]: expected a dict with a 'params' list",
    ),
]


def _trained(cls, kwargs, rng, steps=3):
    params = [rng.standard_normal(s).astype(np.float32) for s in [(6,), (2, 3)]]
    opt = cls(params, **kwargs)
    for _ in range(steps):
        opt.step([rng.standard_normal(p.shape).astype(np.float32) for p in params])
    return opt, params


def _assert_same_checkpoint(a, b):
    assert a["param_groups"] == b["param_groups"]
    assert a["state"].keys() == b["state"].keys()
    for i in a["state"]:
        assert a["state"][i].keys() == b["state"][i].keys()
        for k, v in a["state"][i].items():
            np.testing.assert_array_equal(v, b["state"][i][k], err_msg=f"state {i} {k}")


@pytest.mark.parametrize("name,opt_cls,corrupt,exc,match", CORRUPT, ids=[c[0] for c in CORRUPT])
def test_load_state_dict_refuses_corrupt_checkpoints_and_changes_nothing(name, opt_cls, corrupt, exc, match, rng):
    cls, kwargs = opt_cls
    opt, params = _trained(cls, dict(kwargs, lr=0.01), rng)
    checkpoint = corrupt(copy.deepcopy(opt.state_dict()))
    # Move on, so that the checkpoint differs from the live state in every entry.
    opt.step([rng.standard_normal(p.shape).astype(np.float32) for p in params])
    opt.param_groups[0]["lr"] = 0.02
    before = copy.deepcopy(opt.state_dict())
    with pytest.raises(exc, match=match):
        opt.load_state_dict(checkpoint)
    _assert_same_checkpoint(opt.state_dict(), before)


@pytest.mark.parametrize("how", ["str-keys", "npz-scalars", "missing-entry"])
def test_load_state_dict_accepts_checkpoint_spellings(how, rng):
    opt, params = _trained(optim.Adam, dict(lr=0.01, amsgrad=True), rng)
    sd = opt.state_dict()
    if how == "str-keys":  # JSON keys
        sd["state"] = {str(k): v for k, v in sd["state"].items()}
    elif how == "npz-scalars":  # np.savez / np.load turn Python scalars into 0-d arrays
        sd["state"] = {k: {n: np.asarray(v) for n, v in e.items()} for k, e in sd["state"].items()}
    else:  # torch omits parameters that have no state yet
        del sd["state"][1]
    opt2 = optim.Adam([p.copy() for p in params], lr=1.0)
    opt2.load_state_dict(sd)
    assert [int(t) for t in opt2._steps] == [3, 0 if how == "missing-entry" else 3]
    assert opt2.param_groups[0]["lr"] == 0.01
    np.testing.assert_array_equal(opt2.state[0]["exp_avg_sq"], opt.state[0]["exp_avg_sq"])


def test_load_state_dict_keeps_a_buffer_the_current_rule_does_not_use(rng):
    # Momentum switched off after some steps leaves its buffer (torch keeps it too): it round-trips.
    opt, params = _trained(optim.RMSprop, dict(lr=0.01, momentum=0.9), rng)
    opt.param_groups[0]["momentum"] = 0.0
    sd = opt.state_dict()
    opt2 = optim.RMSprop([p.copy() for p in params])
    opt2.load_state_dict(sd)
    _assert_same_checkpoint(opt2.state_dict(), sd)


def test_rmsprop_refuses_a_negative_momentum(rng):
    p = rng.standard_normal(3).astype(np.float32)
    with pytest.raises(ValueError, match=r"^momentum: must be a finite number >= 0, got -0.5"):
        optim.RMSprop([p], momentum=-0.5)
    with pytest.raises(ValueError, match=r"^param_groups\[1\]\['momentum'\]: must be a finite number >= 0, got -0.1"):
        optim.RMSprop([{"params": [p]}, {"params": [p.copy()], "momentum": -0.1}])
    opt = optim.RMSprop([p], momentum=0.5)
    opt.param_groups[0]["momentum"] = -0.5  # a group edit is checked at the next step, before anything moves
    before = p.copy()
    with pytest.raises(ValueError, match=r"^param_groups\[0\]\['momentum'\]: must be a finite number >= 0"):
        opt.step([np.ones(3, np.float32)])
    np.testing.assert_array_equal(p, before)
    assert opt.state == [{}] and list(opt._steps) == [0]


# ---------------------------------------------------------------------------- torch's defaults
TORCH_DEFAULTS = {  # torch.optim's documented defaults
    optim.SGD: dict(lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False, maximize=False),
    optim.Adagrad: dict(
        lr=1e-2, lr_decay=0.0, weight_decay=0.0, initial_accumulator_value=0.0, eps=1e-10, maximize=False
    ),
    optim.RMSprop: dict(lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0, centered=False, maximize=False),
    optim.Adam: dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False, maximize=False),
    optim.AdamW: dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False, maximize=False),
}


@pytest.mark.parametrize("cls", list(TORCH_DEFAULTS), ids=lambda c: c.__name__)
def test_torch_defaults(cls):
    # torch's, plus fastopt's options for bf16/fp16 parameters (tests/test_optim_bf16.py)
    precision = dict(master_weights=False, stochastic_rounding=False, seed=0, state_dtype="float32")
    assert cls([np.zeros(3, np.float32)]).defaults == {**TORCH_DEFAULTS[cls], **precision}
    assert ref.RULES[cls.__name__.lower()].__kwdefaults__ == TORCH_DEFAULTS[cls]  # the oracle's too


@pytest.mark.parametrize("cls", list(TORCH_DEFAULTS), ids=lambda c: c.__name__)
def test_defaults_are_the_installed_torchs(cls):
    torch = pytest.importorskip("torch")
    sig = inspect.signature(getattr(torch.optim, cls.__name__))
    assert {k: sig.parameters[k].default for k in TORCH_DEFAULTS[cls]} == TORCH_DEFAULTS[cls]


def _torch_step(torch, rule, kwargs, params, grads, states, steps):
    """torch.optim's step from the same float32 parameters, state and step counts."""
    tparams = [torch.tensor(p, requires_grad=True) for p in params]
    cls = {"sgd": "SGD", "adagrad": "Adagrad", "rmsprop": "RMSprop", "adam": "Adam", "adamw": "AdamW"}[rule]
    topt = getattr(torch.optim, cls)(tparams, foreach=False, **kwargs)
    for tp, g, state, t in zip(tparams, grads, states, steps):
        tp.grad = torch.tensor(g)
        if state:  # else torch's own first-step state (Adagrad's initial accumulator included)
            topt.state[tp] = {
                **{k: torch.tensor(v) for k, v in state.items()},
                **({"step": torch.tensor(float(t))} if rule != "sgd" else {}),
            }
    topt.step()
    return (
        [tp.detach().numpy() for tp in tparams],
        [{k: v.numpy() for k, v in topt.state[tp].items() if k != "step" and v is not None} for tp in tparams],
    )


@pytest.mark.parametrize("rule,cls,kwargs", CASES, ids=CASE_IDS)
def test_matches_torch_when_installed(rule, cls, kwargs, rng):
    # Each step from the same float32 inputs; fastopt and torch each lie within the reference's
    # tolerance, so within two of each other. kwargs {} compares the two libraries' defaults.
    torch = pytest.importorskip("torch")
    shapes = [(17,), (5, 6), (301,)]
    params = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    opt = cls(params, **kwargs)
    scales = _scales(rng, shapes)
    for _ in range(10):
        grads = _grads(rng, scales)
        p_in = [p.copy() for p in params]
        s_in = [{k: v.copy() for k, v in s.items()} for s in opt.state]
        steps = [int(t) for t in opt._steps]
        want_p, want_s, tol_p, tol_s, _ = reference_step(
            rule,
            [p.astype(np.float64) for p in p_in],
            [g.astype(np.float64) for g in grads],
            [{"step": t, **{k: v.astype(np.float64) for k, v in s.items()}} for s, t in zip(s_in, steps)],
            [kwargs] * len(shapes),
        )
        t_p, t_s = _torch_step(torch, rule, kwargs, p_in, grads, s_in, steps)
        opt.step(grads)
        for i, p in enumerate(params):
            assert_within(p, t_p[i], 2 * tol_p[i], f"param {i} vs torch")
            assert set(opt.state[i]) == set(t_s[i])
            for k, v in opt.state[i].items():
                assert_within(v, t_s[i][k], 2 * tol_s[i][k], f"state {i} {k} vs torch")
