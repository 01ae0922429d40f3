"""fastopt.optim with bfloat16 / float16 parameters (CPU): fp32 master weights, stochastic
rounding, nearest rounding, checkpoints, the fused clipping and NaN/Inf skip, and the errors.

What is checked, and the bounds:
- master_weights=True: the fused step reads the low-precision gradient, upcasts it exactly and
  runs the fp32 rule on the fp32 master, so the master's trajectory is the fp32 optimizer's on the
  same (upcast) gradients BIT FOR BIT (bound 0), clipped or not, for every rule and option; the
  parameter is the master rounded to nearest even (bound 0 against ml_dtypes / NumPy's rounding).
- stochastic_rounding=True: the stored value is bit for bit reference.bf16.stochastic_round of
  the fp32 update with reference.bf16.sr_words (Philox4x32-10, counter (i / 4, tensor, step)),
  so it is deterministic in (seed, parameter index, step). Unbiased: each step rounds w to one of
  its two bf16 neighbours, gap h, with mean w and variance <= h^2 / 4. Starting at 1.0 and stepping
  by an exact delta = 2^-10 (w = p - delta exact in fp32) T times, p_T - (1 - T delta) is a sum of
  T martingale increments, variance <= T h^2 / 4; over N elements with independent words the mean
  is within 5 standard deviations, 5 h sqrt(T) / (2 sqrt(N)), of 1 - T delta (a 6e-7 chance to
  fail, and the seed is fixed). Nearest rounding of the same updates never moves (delta < h / 2).
"""

import numpy as np
import pytest
from ml_dtypes import bfloat16

from fastopt import optim, reference as R

LOW = [bfloat16, np.float16]
RULES = [
    (optim.SGD, dict(lr=0.1)),
    (optim.SGD, dict(lr=0.05, momentum=0.9, dampening=0.1, weight_decay=0.01)),
    (optim.SGD, dict(lr=0.05, momentum=0.9, nesterov=True, maximize=True)),
    (optim.Adagrad, dict(lr=0.1, lr_decay=0.01, initial_accumulator_value=0.1)),
    (optim.RMSprop, dict(lr=0.01)),
    (optim.RMSprop, dict(lr=0.01, momentum=0.5, centered=True, weight_decay=0.1)),
    (optim.Adam, dict(lr=0.01, weight_decay=0.1)),
    (optim.Adam, dict(lr=0.01, amsgrad=True)),
    (optim.AdamW, dict(lr=0.01, betas=(0.8, 0.99))),
]
SHAPES = [(1,), (7, 5), (3, 4, 5), (70001,)]  # the last spans three 32K-element chunks


def bits(a):
    return np.asarray(a).view(np.uint16 if np.asarray(a).itemsize == 2 else np.uint32)


def rounded(master, dtype):
    return master.astype(dtype)  # nearest even: ml_dtypes for bf16, NumPy for fp16


@pytest.mark.parametrize("dtype", LOW, ids=["bf16", "fp16"])
@pytest.mark.parametrize("clip", [None, 0.5])
@pytest.mark.parametrize("rule,kw", RULES, ids=[f"{r.__name__}-{'-'.join(k)}" for r, k in RULES])
def test_master_trajectory_is_the_fp32_one(rng, dtype, clip, rule, kw):
    low = [rng.standard_normal(s).astype(dtype) for s in SHAPES]
    full = [p.astype(np.float32) for p in low]
    opt, ref = rule(low, master_weights=True, **kw), rule(full, **kw)
    for _ in range(4):
        grads = [rng.standard_normal(s).astype(dtype) for s in SHAPES]
        got = opt.step(grads, max_grad_norm=clip)
        want = ref.step([g.astype(np.float32) for g in grads], max_grad_norm=clip)
        assert got.norm == want.norm  # the same sum of squares, lane for lane
    for i, (p, q) in enumerate(zip(low, full)):
        master = opt.state[i]["master"]
        assert master.dtype == np.float32 and np.array_equal(bits(master), bits(q)), i
        assert np.array_equal(bits(p), bits(rounded(q, dtype))), i
        for name, buf in ref.state[i].items():
            assert np.array_equal(bits(opt.state[i][name]), bits(buf)), (i, name)


def test_fp32_and_bf16_params_in_one_optimizer(rng):
    p32, p16 = rng.standard_normal(9).astype(np.float32), rng.standard_normal(9).astype(bfloat16)
    twin32, twin16 = p32.copy(), p16.astype(np.float32)
    opt = optim.Adam([{"params": [p32]}, {"params": [p16], "lr": 0.05}], lr=0.01, master_weights=True)
    ref = optim.Adam([{"params": [twin32]}, {"params": [twin16], "lr": 0.05}], lr=0.01)
    for _ in range(3):
        g32, g16 = rng.standard_normal(9).astype(np.float32), rng.standard_normal(9).astype(bfloat16)
        opt.step([g32, g16], max_grad_norm=1.0)
        ref.step([g32, g16.astype(np.float32)], max_grad_norm=1.0)
    assert np.array_equal(p32, twin32) and "master" not in opt.state[0]
    assert np.array_equal(opt.state[1]["master"], twin16)


def test_checkpoint_carries_the_master_and_resumes_bit_identically(rng):
    make = lambda ps: optim.AdamW(ps, lr=0.01, master_weights=True)  # noqa: E731
    p = [rng.standard_normal(s).astype(bfloat16) for s in SHAPES[:3]]
    grads = [[rng.standard_normal(s).astype(bfloat16) for s in SHAPES[:3]] for _ in range(4)]
    a = make(p)
    for g in grads[:2]:
        a.step(g)
    sd = a.state_dict()
    assert all(sd["state"][i]["master"].dtype == np.float32 for i in range(3))
    assert sd["param_groups"][0]["master_weights"] is True
    p2 = [q.copy() for q in p]
    b = make(p2)
    b.load_state_dict(sd)
    for g in grads[2:]:
        a.step(g)
        b.step(g)
    for i in range(3):
        assert np.array_equal(bits(p[i]), bits(p2[i])) and np.array_equal(a.state[i]["master"], b.state[i]["master"])


def test_nonfinite_gradient_skips_the_step_with_nothing_written(rng):
    p = rng.standard_normal(50).astype(bfloat16)
    opt = optim.Adam([p], lr=0.1, master_weights=True)
    opt.step([rng.standard_normal(50).astype(bfloat16)])
    before = (p.copy(), {k: v.copy() for k, v in opt.state[0].items()})
    g = rng.standard_normal(50).astype(bfloat16)
    g[7] = np.inf
    for kw in (dict(skip_nonfinite=True), dict(max_grad_norm=1.0)):
        result = opt.step([g], **kw)
        assert result.skipped and not np.isfinite(result.norm)
        assert np.array_equal(bits(p), bits(before[0]))
        assert all(np.array_equal(opt.state[0][k], v) for k, v in before[1].items())
    assert opt.state_dict()["state"][0]["step"] == 1


def test_master_is_made_from_the_param_and_dropped_when_switched_off(rng):
    p = rng.standard_normal(5).astype(bfloat16)
    opt = optim.SGD([p], lr=0.1, master_weights=True)
    opt.step([np.zeros(5, bfloat16)])
    assert np.array_equal(opt.state[0]["master"], p.astype(np.float32))
    opt.param_groups[0]["master_weights"] = False
    opt.step([np.ones(5, bfloat16)])
    assert "master" not in opt.state[0]
    p[:] = np.arange(5)  # changed from outside while no master is kept: the next master starts here
    opt.param_groups[0]["master_weights"] = True
    opt.step([np.zeros(5, bfloat16)])
    assert np.array_equal(opt.state[0]["master"], np.arange(5, dtype=np.float32))


# ------------------------------------------------------------------- stochastic rounding
def test_stochastic_rounding_is_the_reference_bit_for_bit_and_deterministic(rng):
    seed = 2**40 + 17
    shapes = [(3,), (70001,)]
    ps = [rng.standard_normal(s).astype(bfloat16) for s in shapes]
    twins = [p.copy() for p in ps]
    opt = optim.SGD(ps, lr=0.01, momentum=0.9, stochastic_rounding=True, seed=seed)
    again = optim.SGD(twins, lr=0.01, momentum=0.9, stochastic_rounding=True, seed=seed)
    other = [p.copy() for p in ps]
    other_opt = optim.SGD(other, lr=0.01, momentum=0.9, stochastic_rounding=True, seed=seed + 1)
    buf = [np.zeros(s, np.float64) for s in shapes]
    for step in (1, 2, 3):
        grads = [rng.standard_normal(s).astype(bfloat16) for s in shapes]
        before = [p.astype(np.float32) for p in ps]
        for o in (opt, again, other_opt):
            o.step(grads)
        for i, (p, g) in enumerate(zip(ps, grads)):
            g32 = g.astype(np.float32)
            b = g32 if step == 1 else np.float32(0.9) * buf[i].astype(np.float32) + g32
            buf[i] = b
            w = before[i] - np.float32(0.01) * b  # the fp32 rule, as the kernel evaluates it
            want = R.bf16.stochastic_round(w, R.bf16.sr_words(p.size, seed, i, step))
            assert np.array_equal(bits(p), bits(want)), (step, i)
    assert all(np.array_equal(bits(p), bits(q)) for p, q in zip(ps, twins))  # deterministic
    assert not np.array_equal(bits(ps[1]), bits(other[1]))  # another seed, other draws


def test_stochastic_rounding_is_unbiased_where_nearest_stagnates():
    n, steps, delta = 2**20, 10, 2.0**-10  # lr * grad exact; w = p - delta exact in fp32
    sr, rne = np.ones(n, bfloat16), np.ones(n, bfloat16)
    opt_sr = optim.SGD([sr], lr=delta, stochastic_rounding=True, seed=5)
    opt_rne = optim.SGD([rne], lr=delta)
    for _ in range(steps):
        opt_sr.step([np.ones(n, bfloat16)])
        opt_rne.step([np.ones(n, bfloat16)])
    h = 2.0**-8  # the bf16 spacing just below 1.0, where every value stays
    mean, want = sr.astype(np.float64).mean(), 1.0 - steps * delta
    assert abs(mean - want) <= 5 * h * np.sqrt(steps) / (2 * np.sqrt(n)), (mean, want)
    assert (rne.astype(np.float32) == 1.0).all()  # each update is below half an ulp: all lost


def test_nearest_rounding_without_master_or_stochastic(rng):
    p = rng.standard_normal(100).astype(bfloat16)
    w = p.astype(np.float32)
    g = rng.standard_normal(100).astype(bfloat16)
    optim.SGD([p], lr=0.1).step([g])
    assert np.array_equal(bits(p), bits((w - np.float32(0.1) * g.astype(np.float32)).astype(bfloat16)))


# --------------------------------------------------------------------------------- errors
def test_errors_are_named(rng):
    p = np.zeros(4, bfloat16)
    with pytest.raises(ValueError, match=r"stochastic_rounding: .*master"):
        optim.SGD([p], master_weights=True, stochastic_rounding=True)
    with pytest.raises(ValueError, match=r"param_groups\[1\]\['stochastic_rounding'\]"):
        optim.SGD(
            [{"params": [p]}, {"params": [np.zeros(2, bfloat16)], "stochastic_rounding": True}], master_weights=True
        )
    with pytest.raises(TypeError, match=r"params\[0\]: stochastic rounding stores bfloat16.*master weights"):
        optim.SGD([np.zeros(4, np.float16)], stochastic_rounding=True).step([np.zeros(4, np.float16)])
    with pytest.raises(TypeError, match=r"grads\[0\]: expected a bfloat16 array, got float32"):
        optim.SGD([p]).step([np.zeros(4, np.float32)])
    with pytest.raises(TypeError, match=r"params\[0\]: expected float32, bfloat16 or float16"):
        optim.SGD([np.zeros(4, np.float64)])
    with pytest.raises(TypeError, match=r"seed: expected an integer"):
        optim.SGD([p], seed=1.5)
    with pytest.raises(ValueError, match=r"seed: must be an integer in \[0, 2\^64\)"):
        optim.Adam([p], seed=-1)


def test_checkpoint_masters_are_checked(rng):
    p, q = np.zeros(4, bfloat16), np.zeros(4, np.float32)
    opt = optim.SGD([p, q], lr=0.1, master_weights=True)
    opt.step([np.ones(4, bfloat16), np.ones(4, np.float32)])
    sd = opt.state_dict()
    for entry, message in [
        ({1: {"master": np.zeros(4, np.float32)}}, r"parameter 1 is float32, which keeps no master"),
        ({0: {"master": np.zeros(4, bfloat16)}}, r"\['master'\]: expected float32"),
        ({0: {"master": np.zeros(5, np.float32)}}, r"\['master'\]: has shape"),
        ({0: {"master": np.full(4, np.nan, np.float32)}}, r"\['master'\]: holds NaN"),
    ]:
        with pytest.raises(ValueError, match=message):
            opt.load_state_dict({**sd, "state": entry})
    assert np.array_equal(opt.state[0]["master"], sd["state"][0]["master"])  # nothing changed


# ------------------------------------------------------------------- the PyTorch front
def test_torch_front_master_weights_and_fp32_state_through_checkpoints(rng):
    torch = pytest.importorskip("torch")
    from fastopt import torch as ft

    shapes = [(5, 7), (3, 4, 5, 6)]
    low = [torch.tensor(rng.standard_normal(s), dtype=torch.float32).to(torch.bfloat16) for s in shapes]
    low[1] = low[1].contiguous(memory_format=torch.channels_last)  # stepped through its memory order
    low = [p.requires_grad_() for p in low]
    full = [p.detach().float().requires_grad_() for p in low]
    make = lambda ps, **kw: ft.optim.AdamW(ps, lr=0.01, max_grad_norm=1.0, **kw)  # noqa: E731
    opt, ref = make(low, master_weights=True), make(full)
    grads = [
        [torch.tensor(rng.standard_normal(s), dtype=torch.float32).to(torch.bfloat16) for s in shapes] for _ in range(5)
    ]

    def step(o, params, gs, up=False):
        for p, g in zip(params, gs):
            p.grad = g.float() if up else g
        o.step()

    for gs in grads[:3]:
        step(opt, low, gs)
        step(ref, full, gs, up=True)
    for p, q in zip(low, full):
        state = opt.state[p]
        assert state["master"].dtype == state["exp_avg"].dtype == torch.float32
        assert torch.equal(state["master"], q.detach())  # the fp32 trajectory, bit for bit
        assert torch.equal(p.detach(), q.detach().to(torch.bfloat16))
    # torch's load_state_dict casts state to the parameter's dtype; fastopt's keeps it float32
    twins = [p.detach().clone().requires_grad_() for p in low]
    again = make(twins, master_weights=True)
    again.load_state_dict(opt.state_dict())
    for p, t in zip(low, twins):
        for name in ("master", "exp_avg", "exp_avg_sq"):
            assert again.state[t][name].dtype == torch.float32 and torch.equal(again.state[t][name], opt.state[p][name])
    for gs in grads[3:]:
        step(opt, low, gs)
        step(again, twins, gs)
    assert all(torch.equal(p, t) for p, t in zip(low, twins))
