"""Fused optimizers against the float64 NumPy reference (fastopt.reference.optim)."""
import numpy as np
import pytest

from fastopt import optim
from fastopt.reference import optim as ref

from conftest import fetch, put

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

# float32 arithmetic vs float64 over STEPS steps of size ~lr: errors stay at a few ulps of the
# parameters (|p| ~ 1) per step. RMSprop/Adagrad divide by sqrt of small accumulators, so their
# errors are relative to the step; 3e-5 bounds all rules with margin and still catches any
# wrong formula (which is off by >= 1e-3 after one step).
STEPS = 12
ATOL = 3e-5
RTOL = 3e-5
# The global norm: the CPU sums squares in double; the GPU in float32 (64 terms per thread, then
# a fixed tree), within a few float32 ulps.
NORM_RTOL = {"cpu": 1e-9, "cuda": 1e-5}


def _run_pair(rule, cls, kwargs, shapes, backend, rng, steps=STEPS, **step_kwargs):
    init = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    params = [put(p, backend) for p in init]
    opt = cls(params, **kwargs)
    ref_params = [p.astype(np.float64) for p in init]
    ref_states = [{} for _ in init]
    results = []
    for _ in range(steps):
        grads32 = [rng.standard_normal(s).astype(np.float32) for s in shapes]
        res = opt.step([put(g, backend) for g in grads32], **step_kwargs)
        ref_res = ref.step(rule, ref_params, [g.astype(np.float64) for g in grads32], ref_states,
                           [kwargs] * len(init), **step_kwargs)
        results.append((res, ref_res))
    return opt, params, ref_params, ref_states, results


@pytest.mark.parametrize("rule,cls,kwargs", CASES, ids=CASE_IDS)
def test_matches_reference(rule, cls, kwargs, backend, rng):
    opt, params, ref_params, ref_states, _ = _run_pair(rule, cls, kwargs, SHAPES, backend, rng)
    for i, (p, rp) in enumerate(zip(params, ref_params)):
        np.testing.assert_allclose(fetch(p), rp, rtol=RTOL, atol=ATOL, err_msg=f"param {i}")
    for i, (state, rstate) in enumerate(zip(opt.state, ref_states)):
        assert set(state) == set(rstate) - {"step"}
        for name, buf in state.items():
            want = rstate[name]
            scale = max(1.0, float(np.abs(want).max(initial=0)))
            np.testing.assert_allclose(fetch(buf), want, rtol=RTOL, atol=ATOL * scale, err_msg=f"state {i} {name}")
    assert [int(s) for s in fetch(opt._steps)] == [r["step"] for r in ref_states]


@pytest.mark.parametrize("rule,cls,kwargs", [CASES[1], CASES[12], CASES[15]], ids=["momentum", "adam", "adamw"])
def test_clipping_fused(rule, cls, kwargs, backend, rng):
    # Gradients of norm ~ sqrt(n) >> 1: every step is clipped.
    shapes = [(257,), (16, 9), (5,)]
    _, params, ref_params, _, results = _run_pair(rule, cls, kwargs, shapes, backend, rng, max_grad_norm=1.0)
    for p, rp in zip(params, ref_params):
        np.testing.assert_allclose(fetch(p), rp, rtol=RTOL, atol=ATOL)
    for res, (ref_norm, ref_skipped) in results:
        assert float(fetch(res.norm)) == pytest.approx(ref_norm, rel=NORM_RTOL[backend])
        assert not bool(fetch(res.skipped)) and not ref_skipped


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


def test_param_groups_with_different_rules(backend, rng):
    # One step call covers groups with different lr, weight decay and even state layout
    # (momentum in one group only), and clipping sees the global norm over all of them.
    shapes = [(50,), (7, 3), (129,), (2,)]
    init = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    params = [put(p, backend) for p in init]
    g0 = dict(lr=0.1)
    g1 = dict(lr=0.01, momentum=0.9, weight_decay=0.1)
    opt = optim.SGD([{"params": params[:2], **g0}, {"params": params[2:], **g1}], lr=0.5)
    hypers = [g0, g0, g1, g1]
    ref_params = [p.astype(np.float64) for p in init]
    ref_states = [{} for _ in init]
    for _ in range(STEPS):
        grads = [rng.standard_normal(s).astype(np.float32) for s in shapes]
        opt.step([put(g, backend) for g in grads], max_grad_norm=2.0)
        ref.step("sgd", ref_params, [g.astype(np.float64) for g in grads], ref_states, hypers, max_grad_norm=2.0)
    for p, rp in zip(params, ref_params):
        np.testing.assert_allclose(fetch(p), rp, rtol=RTOL, atol=ATOL)
    assert set(opt.state[0]) == set() and set(opt.state[2]) == {"momentum_buffer"}


def test_group_options_can_change_between_steps(rng):
    # A schedule (or the user) edits lr; turning momentum on creates its buffer, as torch does.
    p = rng.standard_normal(20).astype(np.float32)
    rp = p.astype(np.float64)
    opt = optim.SGD([p], lr=0.1)
    state = {}
    for step in range(6):
        if step == 3:
            opt.param_groups[0]["momentum"] = 0.9
        opt.param_groups[0]["lr"] = 0.1 / (1 + step)
        g = rng.standard_normal(20).astype(np.float32)
        opt.step([g])
        ref.sgd(rp, g.astype(np.float64), state, lr=0.1 / (1 + step), momentum=0.9 if step >= 3 else 0.0)
    np.testing.assert_allclose(p, rp, rtol=RTOL, atol=ATOL)


def test_many_small_tensors(backend, rng):
    sizes = rng.integers(0, 60, size=3000)
    shapes = [(int(n),) for n in sizes]
    _, params, ref_params, _, _ = _run_pair("adamw", optim.AdamW, dict(lr=0.01), shapes, backend, rng, steps=3,
                                            max_grad_norm=5.0)
    for p, rp in zip(params, ref_params):
        np.testing.assert_allclose(fetch(p), rp, rtol=RTOL, atol=ATOL)


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


@pytest.mark.parametrize("rule,cls,kwargs", [CASES[3], CASES[6], CASES[10], CASES[13]],
                         ids=["nesterov", "adagrad", "rmsprop-centered-momentum", "amsgrad"])
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


def test_torch_defaults():
    p = np.zeros(3, np.float32)
    assert optim.SGD([p]).defaults["lr"] == 1e-3
    assert optim.Adagrad([p]).defaults == dict(lr=1e-2, lr_decay=0.0, weight_decay=0.0, initial_accumulator_value=0.0,
                                               eps=1e-10, maximize=False)
    assert optim.RMSprop([p]).defaults == dict(lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0,
                                               centered=False, maximize=False)
    assert optim.Adam([p]).defaults["betas"] == (0.9, 0.999) and optim.Adam([p]).defaults["weight_decay"] == 0.0
    assert optim.AdamW([p]).defaults["weight_decay"] == 1e-2


def test_matches_torch_when_installed(rng):
    torch = pytest.importorskip("torch")
    shapes = [(17,), (5, 6)]
    for rule, cls, kwargs in CASES:
        init = [rng.standard_normal(s).astype(np.float32) for s in shapes]
        params = [p.copy() for p in init]
        tparams = [torch.tensor(p, requires_grad=True) for p in init]
        opt = cls(params, **kwargs)
        tcls = {"sgd": torch.optim.SGD, "adagrad": torch.optim.Adagrad, "rmsprop": torch.optim.RMSprop,
                "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[rule]
        topt = tcls(tparams, **kwargs)
        for _ in range(10):
            grads = [rng.standard_normal(s).astype(np.float32) for s in shapes]
            opt.step(grads)
            for tp, g in zip(tparams, grads):
                tp.grad = torch.tensor(g)
            topt.step()
        for p, tp in zip(params, tparams):
            # Same float32 operations in the same order: equal to a few ulps.
            np.testing.assert_allclose(p, tp.detach().numpy(), rtol=2e-6, atol=2e-6, err_msg=f"{rule} {kwargs}")
