"""Learning-rate schedules (fastopt.schedules) against the reference closed forms
(fastopt.reference.schedules), hand-computed values, checkpoint round trips, and
torch.optim.lr_scheduler when torch is installed."""

import math
import pickle
import warnings

import numpy as np
import pytest

from fastopt import schedules as S
from fastopt.reference import schedules as R

LRS = [0.1, 0.03, 2.5]  # three param groups with different initial lrs


class Opt:
    """All a schedule may assume about an optimizer: param_groups with an 'lr'."""

    def __init__(self, lrs=LRS):
        self.param_groups = [{"lr": lr, "params": []} for lr in lrs]


def trace(sched, n):
    """The lrs after t = 0..n steps; checks the groups and get_last_lr agree."""
    out = []
    for t in range(n + 1):
        if t:
            sched.step()
        assert sched.last_epoch == t
        lrs = sched.get_last_lr()
        assert lrs == [g["lr"] for g in sched.optimizer.param_groups]
        out.append(lrs)
    return np.array(out)


# name -> (build on an optimizer, reference lr(t, base_lr))
CASES = {
    "step": (lambda o: S.StepLR(o, 7, gamma=0.5), lambda t, b: R.step_lr(t, b, 7, 0.5)),
    "multistep": (lambda o: S.MultiStepLR(o, [30, 10, 10, 45]), lambda t, b: R.multistep_lr(t, b, [10, 10, 30, 45])),
    "exponential": (lambda o: S.ExponentialLR(o, 0.97), lambda t, b: R.exponential_lr(t, b, 0.97)),
    "cosine": (lambda o: S.CosineAnnealingLR(o, 40, eta_min=1e-3), lambda t, b: R.cosine_annealing_lr(t, b, 40, 1e-3)),
    "linear": (lambda o: S.LinearLR(o), lambda t, b: R.linear_lr(t, b)),
    "linear-down": (lambda o: S.LinearLR(o, 1.0, 0.1, 30), lambda t, b: R.linear_lr(t, b, 1.0, 0.1, 30)),
    "sgdr": (
        lambda o: S.CosineAnnealingWarmRestarts(o, 10, eta_min=1e-4),
        lambda t, b: R.cosine_warm_restarts_lr(t, b, 10, 1, 1e-4),
    ),
    "sgdr-x2": (
        lambda o: S.CosineAnnealingWarmRestarts(o, 3, T_mult=2),
        lambda t, b: R.cosine_warm_restarts_lr(t, b, 3, 2),
    ),
    "sgdr-x3": (
        lambda o: S.CosineAnnealingWarmRestarts(o, 2, T_mult=3, eta_min=0.01),
        lambda t, b: R.cosine_warm_restarts_lr(t, b, 2, 3, 0.01),
    ),
    "inverse-time": (lambda o: S.InverseTimeLR(o, 0.5, decay_steps=10), lambda t, b: R.inverse_time_lr(t, b, 0.5, 10)),
    "inverse-sqrt": (lambda o: S.InverseSqrtLR(o, 16), lambda t, b: R.inverse_sqrt_lr(t, b, 16)),
    "warmup": (lambda o: S.LinearWarmup(o, 8), lambda t, b: R.linear_warmup_lr(t, b, 8)),
    "warmup-cosine": (
        lambda o: S.LinearWarmup(o, 10, after=S.CosineAnnealingLR(o, 50), start_factor=0.1),
        lambda t, b: R.linear_warmup_lr(t, b, 10, lambda s: R.cosine_annealing_lr(s, b, 50), 0.1),
    ),
    "warmup-step": (
        lambda o: S.LinearWarmup(o, 5, after=S.StepLR(o, 4, 0.5)),
        lambda t, b: R.linear_warmup_lr(t, b, 5, lambda s: R.step_lr(s, b, 4, 0.5)),
    ),
    "warmup-sgdr": (
        lambda o: S.LinearWarmup(o, 6, after=S.CosineAnnealingWarmRestarts(o, 4, 2)),
        lambda t, b: R.linear_warmup_lr(t, b, 6, lambda s: R.cosine_warm_restarts_lr(s, b, 4, 2)),
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_matches_reference_closed_form(name):
    build, ref = CASES[name]
    opt = Opt()
    got = trace(build(opt), 200)
    expect = np.array([[ref(t, b) for b in LRS] for t in range(201)])
    np.testing.assert_allclose(got, expect, rtol=1e-13, atol=1e-16)
    assert [g["initial_lr"] for g in opt.param_groups] == LRS


CYCLIC = [
    dict(step_size_up=4),
    dict(step_size_up=3, step_size_down=7),
    dict(step_size_up=5, mode="triangular2"),
    dict(step_size_up=2, step_size_down=5, mode="exp_range", gamma=0.99),
]


@pytest.mark.parametrize("kw", CYCLIC, ids=lambda kw: "-".join(map(str, kw.values())))
def test_cyclic_matches_reference(kw):
    base, top = [0.01, 0.02, 0.5], [0.1, 0.05, 1.0]
    opt = Opt()
    got = trace(S.CyclicLR(opt, base, top, **kw), 300)
    expect = np.array([[R.cyclic_lr(t, b, m, **kw) for b, m in zip(base, top)] for t in range(301)])
    # the reference follows torch's x = 1 + t/L - floor(1 + t/L), which cancels digits
    np.testing.assert_allclose(got, expect, rtol=1e-12, atol=1e-14)
    assert [g["initial_lr"] for g in opt.param_groups] == base


def _decay(x):
    return 0.97**x


@pytest.mark.parametrize("scale_mode", ["cycle", "iterations"])
def test_cyclic_scale_fn_matches_reference(scale_mode):
    base, top = [0.01, 0.02, 0.5], [0.1, 0.05, 1.0]
    kw = dict(step_size_up=3, step_size_down=5, scale_fn=_decay, scale_mode=scale_mode)
    got = trace(S.CyclicLR(Opt(), base, top, **kw), 300)
    expect = np.array([[R.cyclic_lr(t, b, m, **kw) for b, m in zip(base, top)] for t in range(301)])
    np.testing.assert_allclose(got, expect, rtol=1e-12, atol=1e-14)


def test_cyclic_scale_mode_iterations_by_hand():
    # up 2, down 2, amplitude 4 scaled by 2^-t ('iterations') or 2^-cycle ('cycle'): heights 0, .5, 1, .5, 0, ...
    it = trace(S.CyclicLR(Opt([9.0]), 1.0, 5.0, step_size_up=2, scale_fn=lambda x: 0.5**x, scale_mode="iterations"), 6)[
        :, 0
    ]
    np.testing.assert_allclose(it, [1, 1 + 2 * 0.5, 1 + 4 * 0.25, 1 + 2 * 0.125, 1, 1 + 2 / 32, 1 + 4 / 64], rtol=1e-15)
    cyc = trace(S.CyclicLR(Opt([9.0]), 1.0, 5.0, step_size_up=2, scale_fn=lambda x: 0.5**x), 6)[:, 0]
    np.testing.assert_allclose(cyc, [1, 2, 3, 2, 1, 1.5, 2], rtol=1e-15)


# --- hand-computed values ------------------------------------------------------------


def lrs_at(sched, ts, group=0):
    values = dict(enumerate(trace(sched, max(ts))[:, group]))
    return [values[t] for t in ts]


def test_step_lr_by_hand():
    # t = 0, step_size - 1, step_size, 3 step_size
    assert lrs_at(S.StepLR(Opt([1.0]), 3, gamma=0.5), [0, 2, 3, 9]) == [1.0, 1.0, 0.5, 0.125]
    assert lrs_at(S.StepLR(Opt([1.0]), 3), [5, 6]) == pytest.approx([0.1, 0.01], rel=1e-15)


def test_multistep_lr_by_hand_repeated_milestone_counts_twice():
    got = lrs_at(S.MultiStepLR(Opt([1.0]), [5, 2, 5], gamma=0.5), [0, 1, 2, 4, 5, 50])
    assert got == [1.0, 1.0, 0.5, 0.5, 0.125, 0.125]


def test_exponential_and_inverse_time_by_hand():
    assert lrs_at(S.ExponentialLR(Opt([1.0]), 0.5), [0, 3]) == [1.0, 0.125]
    assert lrs_at(S.InverseTimeLR(Opt([3.0]), 0.5, decay_steps=10), [0, 20, 40]) == [3.0, 1.5, 1.0]


def test_cosine_by_hand_continues_past_t_max():
    got = lrs_at(S.CosineAnnealingLR(Opt([1.1]), 4, eta_min=0.1), [0, 2, 4, 6, 8])
    assert got == pytest.approx([1.1, 0.6, 0.1, 0.6, 1.1], rel=1e-15)


def test_linear_lr_by_hand():
    got = lrs_at(S.LinearLR(Opt([0.3])), [0, 2, 5, 10])
    assert got == pytest.approx([0.1, 0.18, 0.3, 0.3], rel=1e-15)


def test_sgdr_restarts_with_t_mult_2():
    """T_0 = 2, T_mult = 2: periods of 2, 4, 8, 16 steps, restarts at t = 2, 6, 14, 30."""
    base, eta = 1.0, 0.2
    got = trace(S.CosineAnnealingWarmRestarts(Opt([base]), 2, T_mult=2, eta_min=eta), 40)[:, 0]
    mid = (base + eta) / 2
    for restart in (0, 2, 6, 14, 30):
        assert got[restart] == base
    for start, last in ((0, 1), (2, 5), (6, 13), (14, 29)):  # one step before a restart
        assert eta < got[last] == got[start : last + 1].min()  # ... is the period's lowest lr
        assert np.all(np.diff(got[start : last + 1]) < 0)
    # halfway through each period: cos(pi / 2) = 0
    assert got[[1, 4, 10, 22]] == pytest.approx([mid] * 4, rel=1e-15)
    assert got[5] == pytest.approx(eta + (base - eta) * (1 + math.cos(3 * math.pi / 4)) / 2, rel=1e-15)
    assert got[29] == pytest.approx(eta + (base - eta) * (1 + math.cos(15 * math.pi / 16)) / 2, rel=1e-15)


def test_sgdr_t_mult_1_is_periodic():
    got = trace(S.CosineAnnealingWarmRestarts(Opt([1.0]), 5), 30)[:, 0]
    np.testing.assert_array_equal(got[:5], got[5:10])
    np.testing.assert_array_equal(got[:5], got[25:30])
    assert got[5] == 1.0 and got[4] < got[3]


def test_cyclic_modes_by_hand():
    # up 2, down 4: 1 3 5 | 4 3 2 | 1 (cycle 2) 3 5 ...
    tri = trace(S.CyclicLR(Opt([9.0]), 1.0, 5.0, step_size_up=2, step_size_down=4), 12)[:, 0]
    np.testing.assert_allclose(tri, [1, 3, 5, 4, 3, 2, 1, 3, 5, 4, 3, 2, 1], rtol=1e-15)
    tri2 = trace(S.CyclicLR(Opt([9.0]), 1.0, 5.0, step_size_up=2, mode="triangular2"), 12)[:, 0]
    np.testing.assert_allclose(tri2, [1, 3, 5, 3, 1, 2, 3, 2, 1, 1.5, 2, 1.5, 1], rtol=1e-15)
    exp = trace(S.CyclicLR(Opt([9.0]), 1.0, 5.0, step_size_up=2, mode="exp_range", gamma=0.9), 6)[:, 0]
    np.testing.assert_allclose(
        exp, [1, 1 + 2 * 0.9, 1 + 4 * 0.81, 1 + 2 * 0.729, 1, 1 + 2 * 0.9**5, 1 + 4 * 0.9**6], rtol=1e-15
    )
    custom = S.CyclicLR(Opt([9.0]), 1.0, 5.0, step_size_up=2, scale_fn=lambda c: 1.0 / c)
    np.testing.assert_allclose(trace(custom, 6)[:, 0], [1, 3, 5, 3, 1, 2, 3], rtol=1e-15)


def test_inverse_sqrt_by_hand():
    got = lrs_at(S.InverseSqrtLR(Opt([0.8]), 4), [0, 1, 4, 16, 64])
    assert got == pytest.approx([0.8, 0.8, 0.8, 0.4, 0.2], rel=1e-15)


def test_linear_warmup_by_hand_and_handover():
    assert lrs_at(S.LinearWarmup(Opt([2.0]), 4), [0, 1, 3, 4, 100]) == [0.0, 0.5, 1.5, 2.0, 2.0]
    assert lrs_at(S.LinearWarmup(Opt([2.0]), 4, start_factor=0.5), [0, 2]) == [1.0, 1.5]
    opt = Opt([2.0])
    w = S.LinearWarmup(opt, 4, after=S.StepLR(opt, 2, gamma=0.5))
    # the StepLR sees t - 4: full lr for its first two steps, then halves
    assert lrs_at(w, [3, 4, 5, 6, 8]) == [1.5, 2.0, 2.0, 1.0, 0.5]
    opt = Opt([1.0])
    w = S.LinearWarmup(opt, 5, after=S.CosineAnnealingLR(opt, 10))
    assert lrs_at(w, [5, 10, 15]) == pytest.approx([1.0, 0.5, 0.0], abs=1e-15)
    opt = Opt([1.0])
    got = trace(S.LinearWarmup(opt, 0, after=S.ExponentialLR(opt, 0.5)), 3)[:, 0]
    np.testing.assert_array_equal(got, [1.0, 0.5, 0.25, 0.125])


def test_linear_warmup_refuses_foreign_or_stateful_after():
    a, b = Opt(), Opt()
    with pytest.raises(ValueError):
        S.LinearWarmup(a, 3, after=S.StepLR(b, 2))
    with pytest.raises(TypeError):
        S.LinearWarmup(a, 3, after=S.ReduceLROnPlateau(a))


# --- ReduceLROnPlateau ------------------------------------------------------------------


def plateau_trace(sched, metrics):
    out = []
    for m in metrics:
        sched.step(m)
        assert sched.get_last_lr() == [g["lr"] for g in sched.optimizer.param_groups]
        out.append(sched.get_last_lr())
    return np.array(out)


def test_plateau_patience():
    got = plateau_trace(S.ReduceLROnPlateau(Opt([1.0]), patience=2, factor=0.5), [10] * 8)[:, 0]
    # step 1 sets best; steps 2, 3, 4 are bad; the third bad one (> patience) reduces
    np.testing.assert_array_equal(got, [1, 1, 1, 0.5, 0.5, 0.5, 0.25, 0.25])


def test_plateau_cooldown_ignores_bad_steps():
    s = S.ReduceLROnPlateau(Opt([1.0]), patience=2, factor=0.5, cooldown=2)
    got = plateau_trace(s, [10] * 10)[:, 0]
    # reduction at step 4; steps 5-6 are cooldown; then 3 more bad steps: reduction at 9
    np.testing.assert_array_equal(got, [1, 1, 1, 0.5, 0.5, 0.5, 0.5, 0.5, 0.25, 0.25])


def test_plateau_min_lr_and_eps():
    got = plateau_trace(S.ReduceLROnPlateau(Opt([1.0]), patience=0, min_lr=0.05), [1] * 5)[:, 0]
    np.testing.assert_allclose(got, [1, 0.1, 0.05, 0.05, 0.05], rtol=1e-15)
    # a reduction smaller than eps is not applied
    got = plateau_trace(S.ReduceLROnPlateau(Opt([1e-8]), patience=0, factor=0.5), [1] * 3)[:, 0]
    np.testing.assert_array_equal(got, [1e-8] * 3)


def test_plateau_threshold_modes():
    rel = S.ReduceLROnPlateau(Opt(), threshold=0.1)  # needs < best * 0.9
    abs_ = S.ReduceLROnPlateau(Opt(), threshold=0.1, threshold_mode="abs")  # < best - 0.1
    for s in (rel, abs_):
        s.step(10.0)
        s.step(9.5)
    assert (rel.best, rel.num_bad_epochs) == (10.0, 1)
    assert (abs_.best, abs_.num_bad_epochs) == (9.5, 0)
    up = S.ReduceLROnPlateau(Opt(), mode="max", threshold=0.1)  # needs > best * 1.1
    for m in (10.0, 10.5, 11.5):
        up.step(m)
    assert (up.best, up.num_bad_epochs) == (11.5, 0)
    up.step(12.0)
    assert (up.best, up.num_bad_epochs) == (11.5, 1)


def test_plateau_rel_threshold_with_negative_metric_is_torchs_rule():
    # best * (1 - threshold) is above a negative best: a worse metric counts as better.
    s = S.ReduceLROnPlateau(Opt(), threshold=0.1)
    s.step(-10.0)
    s.step(-9.5)
    assert (s.best, s.num_bad_epochs) == (-9.5, 0)


def test_plateau_groups_and_min_lr_list():
    s = S.ReduceLROnPlateau(Opt([1.0, 0.5]), patience=0, factor=0.5, min_lr=[0.0, 0.4])
    got = plateau_trace(s, [3, 3, 3])
    np.testing.assert_array_equal(got, [[1.0, 0.5], [0.5, 0.4], [0.25, 0.4]])
    with pytest.raises(ValueError):
        S.ReduceLROnPlateau(Opt([1.0, 0.5]), min_lr=[0.1])


PLATEAU_CONFIGS = [
    dict(),
    dict(patience=3, cooldown=2, factor=0.5),
    dict(mode="max", patience=2, threshold=0.05),
    dict(threshold_mode="abs", threshold=0.01, patience=1, min_lr=1e-3),
    dict(mode="max", threshold_mode="abs", patience=0, cooldown=3, factor=0.7),
]


def _metrics(n=200, seed=3):
    rng = np.random.default_rng(seed)
    return list(np.round(1.0 / np.sqrt(1 + np.arange(n)) + 0.05 * rng.standard_normal(n), 3))


@pytest.mark.parametrize("cfg", PLATEAU_CONFIGS, ids=str)
def test_plateau_matches_reference(cfg):
    metrics = _metrics()
    got = plateau_trace(S.ReduceLROnPlateau(Opt(), **cfg), metrics)
    expect = np.array([R.plateau_lrs(metrics, b, **cfg) for b in LRS]).T
    np.testing.assert_array_equal(got, expect)
    assert len(set(expect[:, 0])) > 2  # the sequence did reduce, more than once


# --- checkpoints --------------------------------------------------------------------------

BUILDERS = {name: build for name, (build, _) in CASES.items()}
BUILDERS["cyclic"] = lambda o: S.CyclicLR(
    o, 0.01, [0.1, 0.2, 0.3], step_size_up=3, step_size_down=5, mode="triangular2"
)


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_state_dict_resume_is_bit_identical(name):
    build = BUILDERS[name]
    straight = trace(build(Opt()), 150)
    first = build(Opt())
    for _ in range(61):
        first.step()
    blob = pickle.dumps(first.state_dict())
    assert "optimizer" not in first.state_dict()
    resumed = build(Opt([7.0, 8.0, 9.0]))  # a fresh run, even with other lrs
    resumed.load_state_dict(pickle.loads(blob))
    assert resumed.last_epoch == 61
    assert resumed.get_last_lr() == list(straight[61])
    rest = [resumed.get_last_lr()]
    for _ in range(150 - 61):
        resumed.step()
        rest.append([g["lr"] for g in resumed.optimizer.param_groups])
    np.testing.assert_array_equal(np.array(rest), straight[61:])


def test_state_dict_is_a_copy():
    s = S.MultiStepLR(Opt(), [3, 6])
    sd = s.state_dict()
    sd["milestones"].append(1)
    sd["base_lrs"][0] = 99.0
    assert s.milestones == [3, 6] and s.base_lrs == LRS


def test_plateau_state_dict_resume_is_bit_identical():
    metrics, cfg = _metrics(), PLATEAU_CONFIGS[1]
    straight = plateau_trace(S.ReduceLROnPlateau(Opt(), **cfg), metrics)
    first = S.ReduceLROnPlateau(Opt(), **cfg)
    plateau_trace(first, metrics[:77])
    resumed = S.ReduceLROnPlateau(Opt(), **cfg)
    resumed.load_state_dict(pickle.loads(pickle.dumps(first.state_dict())))
    assert resumed.get_last_lr() == list(straight[76])
    np.testing.assert_array_equal(plateau_trace(resumed, metrics[77:]), straight[77:])


def test_cyclic_state_dict_keeps_the_users_scale_fn():
    fn = lambda c: 0.5**c  # noqa: E731
    s = S.CyclicLR(Opt(), 0.01, 0.1, step_size_up=2, scale_fn=fn)
    assert "scale_fn" not in s.state_dict()
    s2 = S.CyclicLR(Opt(), 0.01, 0.1, step_size_up=2, scale_fn=fn)
    s2.load_state_dict(s.state_dict())
    assert s2.scale_fn is fn


def test_resume_with_last_epoch_argument():
    opt = Opt([1.0])
    with pytest.raises(KeyError):
        S.StepLR(opt, 2, last_epoch=4)
    opt.param_groups[0]["initial_lr"] = 1.0
    opt.param_groups[0]["lr"] = 123.0
    s = S.StepLR(opt, 2, gamma=0.5, last_epoch=4)
    assert s.last_epoch == 5 and s.get_last_lr() == [0.25]


def test_second_schedule_keeps_the_first_initial_lr():
    opt = Opt([1.0])
    S.ExponentialLR(opt, 0.5).step()  # lr is now 0.5
    s = S.StepLR(opt, 3)
    assert s.base_lrs == [1.0] and opt.param_groups[0]["lr"] == 1.0


def test_bad_optimizer():
    with pytest.raises(TypeError):
        S.StepLR(object(), 3)
    with pytest.raises(TypeError):
        S.StepLR(type("O", (), {"param_groups": [{"x": 1}]})(), 3)


# --- argument checks (the kinds of every argument: test_api_args.py) -------------------------------
NAN, INF = math.nan, math.inf

# Every argument that could write a negative, NaN or infinite lr is refused at construction:
# gamma < 0 (StepLR, MultiStepLR, ExponentialLR, CyclicLR), eta_min < 0, base_lr / max_lr / min_lr
# < 0, decay_rate < 0 (InverseTimeLR; -1 divides by zero at t = decay_steps), a factor outside
# torch's range; test_api_args.py feeds each its negative, NaN and infinite values.


@pytest.mark.parametrize(
    "build",
    [
        lambda o: S.CyclicLR(o, 0.01, 0.1, scale_mode="epochs"),  # CyclicLR writes base_lr into the groups
        lambda o: S.StepLR(o, 3, last_epoch=-2),  # LRSchedule adds 'initial_lr'
        lambda o: S.LinearWarmup(o, 3, start_factor=2.0),
        lambda o: S.CosineAnnealingLR(o, 10, eta_min=-1e-3),
    ],
    ids=["cyclic", "step", "warmup", "cosine"],
)
def test_a_refused_schedule_writes_nothing(build):
    opt = Opt()
    before = [dict(g) for g in opt.param_groups]
    with pytest.raises(ValueError):
        build(opt)
    assert opt.param_groups == before


@pytest.mark.parametrize("lrs", [[0.1, -0.03, 2.5], [0.1, NAN, 2.5], [INF], ["0.1"]])
def test_impossible_initial_lr_is_refused(lrs):
    for build in [lambda o: S.StepLR(o, 3), lambda o: S.CosineAnnealingLR(o, 5), lambda o: S.LinearWarmup(o, 2)]:
        opt = Opt(lrs)
        bad = next(i for i, v in enumerate(lrs) if not isinstance(v, float) or not 0 <= v < INF)
        with pytest.raises(
            TypeError if isinstance(lrs[bad], str) else ValueError,
            match=rf"^optimizer\.param_groups\[{bad}\]\['lr'\]: ",
        ):
            build(opt)
    opt = Opt([0.1])
    opt.param_groups[0]["initial_lr"] = -1.0  # resuming from a corrupt group
    with pytest.raises(
        ValueError, match=r"^optimizer\.param_groups\[0\]\['initial_lr'\]: must be a finite number >= 0"
    ):
        S.StepLR(opt, 3, last_epoch=4)


def test_inverse_time_decay_rate_minus_one_would_divide_by_zero():
    # 1 + decay_rate * t / decay_steps = 0 at t = decay_steps: refused at construction.
    with pytest.raises(ValueError, match=r"^decay_rate: must be a finite number >= 0, got -1.0"):
        S.InverseTimeLR(Opt(), -1.0, decay_steps=4)
    assert lrs_at(S.InverseTimeLR(Opt([1.0]), 0.0, decay_steps=4), [0, 4, 100]) == [1.0, 1.0, 1.0]


def test_zero_gamma_is_allowed_and_stays_nonnegative():
    assert lrs_at(S.StepLR(Opt([1.0]), 2, gamma=0.0), [0, 1, 2, 7]) == [1.0, 1.0, 0.0, 0.0]
    assert lrs_at(S.ExponentialLR(Opt([1.0]), 0.0), [0, 1, 5]) == [1.0, 0.0, 0.0]


def test_scale_fn_that_would_write_an_impossible_lr_raises_and_writes_nothing():
    opt = Opt([9.0])
    s = S.CyclicLR(opt, 1.0, 5.0, step_size_up=2, scale_fn=lambda t: 1.0 - t / 2.0, scale_mode="iterations")
    s.step()  # t = 1: scale 0.5
    assert s.get_last_lr() == [1.0 + 4.0 * 0.5 * 0.5]
    s.step()  # t = 2: scale 0, lr = base
    assert s.get_last_lr() == [1.0]
    with pytest.raises(ValueError, match=r"^scale_fn\(3\): must be a finite number >= 0, got -0.5"):
        s.step()
    assert opt.param_groups[0]["lr"] == 1.0
    opt = Opt([9.0])
    with pytest.raises(ValueError, match=r"^scale_fn\(1\): must be a finite number >= 0, got nan"):
        S.CyclicLR(opt, 1.0, 5.0, step_size_up=2, scale_fn=lambda c: NAN)


def test_plateau_metric_kinds():
    s = S.ReduceLROnPlateau(Opt([1.0]), patience=0)
    s.step(np.float32(2.0))
    s.step(np.array(1.0))  # a 0-d array, as a loss often is
    assert s.best == 1.0
    s.step(NAN)  # no improvement, as in torch
    assert s.get_last_lr() == [pytest.approx(0.1)]
    for bad in ("1.0", None, True):
        with pytest.raises(TypeError, match=r"^metric: "):
            s.step(bad)


# torch rejects these too (ValueError, or TypeError for a wrong kind): fastopt refuses at least what torch does.
TORCH_REJECTS = [
    ("LinearLR-start0", lambda M, o: M.LinearLR(o, start_factor=0.0)),
    ("LinearLR-start1.5", lambda M, o: M.LinearLR(o, start_factor=1.5)),
    ("LinearLR-end1.5", lambda M, o: M.LinearLR(o, end_factor=1.5)),
    ("SGDR-T0", lambda M, o: M.CosineAnnealingWarmRestarts(o, 0)),
    ("SGDR-T0-float", lambda M, o: M.CosineAnnealingWarmRestarts(o, 1.5)),
    ("SGDR-Tmult", lambda M, o: M.CosineAnnealingWarmRestarts(o, 3, T_mult=0)),
    ("SGDR-Tmult-float", lambda M, o: M.CosineAnnealingWarmRestarts(o, 3, T_mult=1.5)),
    ("SGDR-eta-str", lambda M, o: M.CosineAnnealingWarmRestarts(o, 3, eta_min="0")),
    ("Cyclic-mode", lambda M, o: M.CyclicLR(o, 0.1, 1.0, mode="sawtooth", cycle_momentum=False)),
    ("Cyclic-groups", lambda M, o: M.CyclicLR(o, [0.1, 0.2], 1.0, cycle_momentum=False)),
    ("Plateau-factor", lambda M, o: M.ReduceLROnPlateau(o, factor=1.0)),
    ("Plateau-mode", lambda M, o: M.ReduceLROnPlateau(o, mode="up")),
    ("Plateau-threshold-mode", lambda M, o: M.ReduceLROnPlateau(o, threshold_mode="pct")),
    ("Plateau-min-lr", lambda M, o: M.ReduceLROnPlateau(o, min_lr=[0.1])),
]


@pytest.mark.parametrize("name,build", TORCH_REJECTS, ids=[n for n, _ in TORCH_REJECTS])
def test_refuses_what_torch_refuses(name, build):
    with pytest.raises((ValueError, TypeError)):
        build(S, Opt())
    torch = pytest.importorskip("torch")
    with pytest.raises((ValueError, TypeError)):
        build(torch.optim.lr_scheduler, _torch_opt(torch))


# --- torch cross-checks (optional) -----------------------------------------------------------


def _torch_opt(torch):
    ps = [torch.zeros(1, requires_grad=True) for _ in LRS]
    return torch.optim.SGD([{"params": [p], "lr": lr} for p, lr in zip(ps, LRS)])


def _torch_trace(torch_opt, sched, n, step=None):
    out = [sched.get_last_lr()]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for t in range(n):
            torch_opt.step()
            sched.step() if step is None else sched.step(step[t])
            out.append([float(v) for v in sched.get_last_lr()])
    return np.array(out, dtype=np.float64)


TORCH_CASES = {
    "step": (lambda o: S.StepLR(o, 7, 0.5), lambda L, o: L.StepLR(o, 7, 0.5)),
    "multistep": (lambda o: S.MultiStepLR(o, [10, 10, 30]), lambda L, o: L.MultiStepLR(o, [10, 10, 30])),
    "exponential": (lambda o: S.ExponentialLR(o, 0.97), lambda L, o: L.ExponentialLR(o, 0.97)),
    "cosine": (lambda o: S.CosineAnnealingLR(o, 30, 1e-3), lambda L, o: L.CosineAnnealingLR(o, 30, 1e-3)),
    "linear": (lambda o: S.LinearLR(o), lambda L, o: L.LinearLR(o)),
    "linear-down": (lambda o: S.LinearLR(o, 0.9, 0.05, 40), lambda L, o: L.LinearLR(o, 0.9, 0.05, 40)),
    "sgdr": (
        lambda o: S.CosineAnnealingWarmRestarts(o, 9, 1, 1e-4),
        lambda L, o: L.CosineAnnealingWarmRestarts(o, 9, 1, 1e-4),
    ),
    "sgdr-x2": (lambda o: S.CosineAnnealingWarmRestarts(o, 3, 2), lambda L, o: L.CosineAnnealingWarmRestarts(o, 3, 2)),
    "cyclic": (
        lambda o: S.CyclicLR(o, 0.01, 0.1, 6, 9),
        lambda L, o: L.CyclicLR(o, 0.01, 0.1, 6, 9, cycle_momentum=False),
    ),
    "cyclic2": (
        lambda o: S.CyclicLR(o, [0.01, 0.02, 0.5], 1.0, 5, mode="triangular2"),
        lambda L, o: L.CyclicLR(o, [0.01, 0.02, 0.5], 1.0, 5, mode="triangular2", cycle_momentum=False),
    ),
    "cyclic-exp": (
        lambda o: S.CyclicLR(o, 0.01, 0.1, 4, mode="exp_range", gamma=0.98),
        lambda L, o: L.CyclicLR(o, 0.01, 0.1, 4, mode="exp_range", gamma=0.98, cycle_momentum=False),
    ),
    "cyclic-scale-iterations": (
        lambda o: S.CyclicLR(o, 0.01, 0.1, 4, 7, scale_fn=_decay, scale_mode="iterations"),
        lambda L, o: L.CyclicLR(o, 0.01, 0.1, 4, 7, scale_fn=_decay, scale_mode="iterations", cycle_momentum=False),
    ),
    "cyclic-scale-cycle": (
        lambda o: S.CyclicLR(o, 0.01, 0.1, 4, 7, scale_fn=_decay),
        lambda L, o: L.CyclicLR(o, 0.01, 0.1, 4, 7, scale_fn=_decay, cycle_momentum=False),
    ),
    "warmup-cosine": (
        lambda o: S.LinearWarmup(o, 10, S.CosineAnnealingLR(o, 50), start_factor=0.1),
        lambda L, o: L.SequentialLR(o, [L.LinearLR(o, 0.1, 1.0, 10), L.CosineAnnealingLR(o, 50)], [10]),
    ),
}


@pytest.mark.parametrize("name", sorted(TORCH_CASES))
def test_matches_torch(name):
    torch = pytest.importorskip("torch")
    ours, theirs = TORCH_CASES[name]
    got = trace(ours(Opt()), 100)
    topt = _torch_opt(torch)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tsched = theirs(torch.optim.lr_scheduler, topt)
    # torch chains multiplicative updates: its rounding accumulates over the 100 steps
    np.testing.assert_allclose(got, _torch_trace(topt, tsched, 100), rtol=1e-11, atol=1e-14)


@pytest.mark.parametrize("cfg", PLATEAU_CONFIGS, ids=str)
def test_plateau_matches_torch(cfg):
    torch = pytest.importorskip("torch")
    metrics = _metrics(100)
    got = plateau_trace(S.ReduceLROnPlateau(Opt(), **cfg), metrics)
    topt = _torch_opt(torch)
    tsched = torch.optim.lr_scheduler.ReduceLROnPlateau(topt, **cfg)
    np.testing.assert_array_equal(got, _torch_trace(topt, tsched, 100, metrics)[1:])
