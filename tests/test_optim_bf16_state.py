"""Optimizer state in bfloat16 (state_dtype="bfloat16", CPU): the fused step runs the rule in fp32
on the widened state and stores each new state value by stochastic rounding with 16 bits of an
integer hash of (seed, parameter, step, element) (reference.bf16.state_words).

What is checked, and the bounds:
- SGD with momentum: the stored buffer is bit for bit reference.bf16.stochastic_round of the fp32
  buffer the rule computes from the widened old one, and the fp32 parameter moves by that
  unrounded buffer (bound 0), deterministic in (seed, parameter, step, element).
- Adam's second moment with a constant gradient 1: v_t = 0.999 v + 0.001 moves by under half a
  bf16 ulp a step once v > 0.2, so round-to-nearest would freeze it; stochastic rounding keeps
  E[v_t] on the fp32 trajectory. Each step adds a zero-mean rounding error of variance <= h^2 / 4
  (h: the spacing at v, <= 2^-9 below 0.5), carried on multiplied by 0.999, so the error of one
  element has variance <= T h^2 / 4; the mean over N independent elements is within 5 standard
  deviations, 5 h sqrt(T) / (2 sqrt(N)), of the fp32 value.
- Every rule runs on bf16 state and keeps bf16 buffers; checkpoints carry them and resume bit for
  bit; a buffer in the other dtype is converted at the next step; bad values name the option.
"""

import numpy as np
import pytest
from ml_dtypes import bfloat16

from fastopt import optim, reference as R
from fastopt.optim.optimizer import STATE_NAMES

RULES = [
    (optim.SGD, dict(lr=0.05, momentum=0.9, dampening=0.1, weight_decay=0.01)),
    (optim.Adagrad, dict(lr=0.1, lr_decay=0.01, initial_accumulator_value=0.1)),
    (optim.RMSprop, dict(lr=0.01, momentum=0.5, centered=True, weight_decay=0.1)),
    (optim.Adam, dict(lr=0.01, amsgrad=True)),
    (optim.AdamW, dict(lr=0.01, betas=(0.8, 0.99))),
]


def bits(a):
    return np.asarray(a).view(np.uint16 if np.asarray(a).itemsize == 2 else np.uint32)


def test_momentum_buffer_is_the_reference_bit_for_bit_and_deterministic(rng):
    seed = 2**41 + 3
    shapes = [(5,), (70001,)]  # the second spans three 32K-element chunks
    ps = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    twins = [p.copy() for p in ps]
    opt = optim.SGD(ps, lr=0.01, momentum=0.9, seed=seed, state_dtype="bfloat16")
    again = optim.SGD(twins, lr=0.01, momentum=0.9, seed=seed, state_dtype=bfloat16)
    buf = [None, None]
    for step in (1, 2, 3):
        grads = [rng.standard_normal(s).astype(np.float32) for s in shapes]
        before = [p.copy() for p in ps]
        opt.step(grads)
        again.step(grads)
        for i, g in enumerate(grads):
            b = g if step == 1 else np.float32(0.9) * buf[i].astype(np.float32) + g  # the fp32 rule
            want_p = before[i] - np.float32(0.01) * b
            buf[i] = R.bf16.stochastic_round(b, R.bf16.state_words(b.size, seed, i, step, 0))
            got = opt.state[i]["momentum_buffer"]
            assert got.dtype == bfloat16
            assert np.array_equal(bits(got), bits(buf[i])), (step, i)
            assert np.array_equal(bits(ps[i]), bits(want_p)), (step, i)
    assert all(np.array_equal(bits(p), bits(q)) for p, q in zip(ps, twins))


def test_second_moment_is_unbiased_where_nearest_would_freeze():
    n, steps = 4096, 300
    p16, p32 = np.zeros(n, np.float32), np.zeros(n, np.float32)
    o16 = optim.Adam([p16], lr=1e-6, state_dtype="bfloat16", seed=9)
    o32 = optim.Adam([p32], lr=1e-6)
    for _ in range(steps):
        o16.step([np.ones(n, np.float32)])
        o32.step([np.ones(n, np.float32)])
    want = float(o32.state[0]["exp_avg_sq"][0])
    assert abs(want - (1 - 0.999**steps)) < 1e-4  # the fp32 trajectory, 0.26
    h = 2.0**-9
    mean = o16.state[0]["exp_avg_sq"].astype(np.float64).mean()
    assert abs(mean - want) <= 5 * h * np.sqrt(steps) / (2 * np.sqrt(n)), (mean, want)
    # Nearest rounding stops where 0.001 (1 - v) < h / 2: v = 0.02 would take it there.
    assert abs(mean - want) < 0.02


@pytest.mark.parametrize("rule,kw", RULES, ids=[r.__name__ for r, _ in RULES])
def test_every_rule_keeps_bf16_state_and_checkpoints_resume(rng, rule, kw):
    p = rng.standard_normal((7, 300)).astype(np.float32)
    q = rng.standard_normal(50).astype(bfloat16)  # with a master: its state is bf16 all the same
    opt = rule([p, q], **kw, master_weights=True, state_dtype="bfloat16")
    for _ in range(3):
        opt.step([rng.standard_normal(p.shape).astype(np.float32), rng.standard_normal(50).astype(bfloat16)])
    names = [k for k in opt.state[0] if k != "master"]
    assert names and all(opt.state[i][k].dtype == bfloat16 for i in (0, 1) for k in names)
    assert opt.state[1]["master"].dtype == np.float32
    sd = opt.state_dict()
    p2, q2 = p.copy(), q.copy()
    resumed = rule([p2, q2], **kw, master_weights=True, state_dtype="bfloat16")
    resumed.load_state_dict(sd)
    for _ in range(2):
        grads = [rng.standard_normal(p.shape).astype(np.float32), rng.standard_normal(50).astype(bfloat16)]
        opt.step(grads)
        resumed.step(grads)
    assert np.array_equal(bits(p), bits(p2)) and np.array_equal(bits(q), bits(q2))
    # The checkpoint carries the option (as torch's carry theirs); switched back to float32, the
    # buffers are widened, exactly, at the next step.
    wide = rule([p.copy(), q.copy()], **kw, master_weights=True)
    wide.load_state_dict(sd)
    assert wide.param_groups[0]["state_dtype"] == "bfloat16"
    loaded = {k: wide.state[0][k].copy() for k in names}
    wide.param_groups[0]["state_dtype"] = "float32"
    wide._buffers(0, wide._hyper(wide.param_groups[0], "").kind)
    assert all(wide.state[0][k].dtype == np.float32 for k in names)
    assert all(np.array_equal(wide.state[0][k], loaded[k].astype(np.float32)) for k in names)


def test_bad_state_dtype_is_named(rng):
    p = rng.standard_normal(4).astype(np.float32)
    for bad, error in (("float16", ValueError), (np.float64, ValueError), (3, TypeError), (None, TypeError)):
        with pytest.raises(error, match="state_dtype"):
            optim.AdamW([p], state_dtype=bad)
    opt = optim.AdamW([p])
    opt.param_groups[0]["state_dtype"] = "int8"
    with pytest.raises(ValueError, match=r"state_dtype.*'int8'"):
        opt.step([np.ones(4, np.float32)])


def test_torch_front_keeps_bf16_state_and_matches_fastopt_optim(rng):
    torch = pytest.importorskip("torch")
    import fastopt.torch as ft

    values = rng.standard_normal((3, 1000)).astype(np.float32)
    tp = torch.nn.Parameter(torch.from_numpy(values.copy()))
    npp = values.copy()
    topt = ft.optim.AdamW([tp], lr=0.01, state_dtype=torch.bfloat16, seed=4)
    nopt = optim.AdamW([npp], lr=0.01, state_dtype="bfloat16", seed=4)
    for _ in range(4):
        g = rng.standard_normal(values.shape).astype(np.float32)
        tp.grad = torch.from_numpy(g.copy())
        topt.step()
        nopt.step([g])
    assert topt.state[tp]["exp_avg"].dtype == torch.bfloat16
    assert np.array_equal(bits(tp.detach().numpy()), bits(npp))  # one kernel behind both fronts
    # torch's own AdamW reads the checkpoint (its load casts the state to the parameter's dtype).
    twin = torch.nn.Parameter(tp.detach().clone())
    torch.optim.AdamW([twin], lr=0.01).load_state_dict(topt.state_dict())


@pytest.mark.parametrize("rule,kw", RULES, ids=[r.__name__ for r, _ in RULES])
def test_every_state_is_its_fp32_value_rounded_with_its_own_bits(rng, rule, kw):
    # The oracle for states 1 and 2 too: a float32-state twin started from the widened bf16 state
    # computes the same fp32 values (the rule is the same code), which the bf16 step must store
    # as reference.bf16.stochastic_round with state_words(..., j), bit for bit.
    seed = 77
    p = rng.standard_normal(1000).astype(np.float32)
    opt = rule([p], **kw, seed=seed, state_dtype="bfloat16")
    for _ in range(3):
        opt.step([rng.standard_normal(1000).astype(np.float32)])
    twin_p = p.copy()
    twin = rule([twin_p], **kw, seed=seed)
    sd = opt.state_dict()
    sd["param_groups"][0]["state_dtype"] = "float32"
    twin.load_state_dict(sd)
    g = rng.standard_normal(1000).astype(np.float32)
    opt.step([g])
    twin.step([g])
    assert np.array_equal(bits(p), bits(twin_p))  # the parameter saw the same unrounded state
    names = STATE_NAMES[opt._hyper(opt.param_groups[0], "").kind]  # the rule's order: state j
    assert names and all(opt.state[0][n].dtype == bfloat16 for n in names)
    for j, name in enumerate(names):
        want = R.bf16.stochastic_round(twin.state[0][name], R.bf16.state_words(1000, seed, 0, 4, j))
        assert np.array_equal(bits(opt.state[0][name]), bits(want)), name


@pytest.mark.gpu
def test_gpu_refuses_bf16_state_by_name(rng):
    import fastopt

    p = fastopt.to_device(rng.standard_normal(8).astype(np.float32))
    opt = optim.AdamW([p], state_dtype="bfloat16")
    with pytest.raises(ValueError, match=r"param_groups\[0\]\['state_dtype'\]: bfloat16 state on the GPU"):
        opt.step([fastopt.to_device(np.ones(8, np.float32))])
    opt.param_groups[0]["state_dtype"] = "float32"  # and with float32 state the step runs
    opt.step([fastopt.to_device(np.ones(8, np.float32))])
    assert opt.state[0]["exp_avg"].dtype == np.float32
