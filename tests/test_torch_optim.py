"""fastopt.torch.optim against torch.optim's own single-tensor optimizers (foreach=False)."""

import copy
import io
import math

import pytest

torch = pytest.importorskip("torch")

import fastopt  # noqa: E402
import fastopt.torch as ft  # noqa: E402

DEVICES = [
    "cpu",
    pytest.param(
        "cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="torch without CUDA")]
    ),
]

# Every option the issue names, torch's defaults included (empty kwargs).
CASES = [
    ("SGD", dict(lr=0.1)),
    ("SGD", dict(lr=0.05, momentum=0.9)),
    ("SGD", dict(lr=0.05, momentum=0.9, dampening=0.3, weight_decay=0.01)),
    ("SGD", dict(lr=0.05, momentum=0.8, nesterov=True, weight_decay=0.01, maximize=True)),
    ("Adagrad", dict()),
    ("Adagrad", dict(lr=0.1, lr_decay=0.01, weight_decay=0.1, initial_accumulator_value=0.1, eps=1e-6)),
    ("RMSprop", dict()),
    ("RMSprop", dict(lr=0.01, momentum=0.9)),
    ("RMSprop", dict(lr=0.01, centered=True)),
    ("RMSprop", dict(lr=0.01, alpha=0.9, centered=True, momentum=0.5, weight_decay=0.01, maximize=True)),
    ("Adam", dict()),
    ("Adam", dict(lr=0.01, weight_decay=0.1, amsgrad=True)),
    ("Adam", dict(lr=0.01, betas=(0.8, 0.99), eps=1e-6, maximize=True)),
    ("AdamW", dict()),
    ("AdamW", dict(lr=0.01, weight_decay=0.1, amsgrad=True)),
]
CASE_IDS = [f"{name}-{'-'.join(f'{k}={v}' for k, v in kw.items()) or 'defaults'}" for name, kw in CASES]
ONE_OF_EACH = [CASES[i] for i in (1, 5, 9, 11, 14)]

# Empty, single, primes, no multiple of any vector width.
SHAPES = [(0, 3), (1,), (7,), (33, 5), (3, 4, 5), (1031,)]
STEPS = 6
EPS32 = 2.0**-23


def _pair(name, kwargs, device="cpu", shapes=SHAPES, seed=0, **ours):
    """The same random float32 parameters under torch's optimizer and fastopt's."""
    gen = torch.Generator().manual_seed(seed)
    init = [torch.randn(s, generator=gen) for s in shapes]
    ref_p = [t.clone().to(device).requires_grad_() for t in init]
    our_p = [t.clone().to(device).requires_grad_() for t in init]
    ref = getattr(torch.optim, name)(ref_p, foreach=False, **kwargs)
    opt = getattr(ft.optim, name)(our_p, **kwargs, **ours)
    return ref, opt, ref_p, our_p, gen


def _set_grads(ref_p, our_p, gen, scale=1.0):
    for a, b in zip(ref_p, our_p):
        g = torch.randn(a.shape, generator=gen) * scale
        a.grad, b.grad = g.clone().to(a.device), g.clone().to(b.device)


class Tracker:
    """Bounds the drift between two float32 trajectories that apply the same update rule with a
    different order of a few float32 operations per element. Each step the updates may differ by
    ~8 ulps of the update (a handful of roundings, each <= 1 ulp), and the rounding of p - u may
    differ by 1 ulp of p; the state (moments, buffers) differs by as little and feeds into later
    updates with weight <= 1. So after t steps |p - p_torch| <= t * (16 eps max|u| + 2 eps max|p|)."""

    def __init__(self, params):
        self.prev = [p.detach().clone() for p in params]
        self.bound = 0.0
        self.max_update = 0.0

    def step(self, params):
        u = max((float((p.detach() - q).abs().max()) for p, q in zip(params, self.prev) if p.numel()), default=0.0)
        big = max((float(p.detach().abs().max()) for p in params if p.numel()), default=0.0)
        self.bound += 16 * EPS32 * u + 2 * EPS32 * big
        self.max_update = max(self.max_update, u)
        self.prev = [p.detach().clone() for p in params]

    def check(self, ours, ref, what=""):
        for i, (a, b) in enumerate(zip(ours, ref)):
            err = float((a.detach().cpu() - b.detach().cpu()).abs().max()) if a.numel() else 0.0
            assert err <= self.bound, f"{what} param {i}: |diff| {err:.3g} > bound {self.bound:.3g}"


def _run(ref, opt, ref_p, our_p, gen, steps=STEPS, scale=1.0, between=None):
    track = Tracker(ref_p)
    for t in range(steps):
        _set_grads(ref_p, our_p, gen, scale)
        ref.step()
        opt.step()
        track.step(ref_p)
        track.check(our_p, ref_p, f"step {t}")
        if between:
            between()
    return track


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name, kwargs", CASES, ids=CASE_IDS)
def test_matches_torch(name, kwargs, device):
    ref, opt, ref_p, our_p, gen = _pair(name, kwargs, device)
    track = _run(ref, opt, ref_p, our_p, gen)
    # The state too: the same buffers under the same names, within the same bound relative to
    # their size (they are sums of the gradients, scaled like them).
    for a, b in zip(ref_p, our_p):
        sa, sb = ref.state[a], opt.state[b]
        assert set(sb) == set(sa) - {"step"}, (set(sa), set(sb))
        for key in sb:
            scale = max(1.0, float(sa[key].abs().max()) if sa[key].numel() else 0.0)
            assert torch.allclose(sb[key].cpu(), sa[key].cpu(), rtol=0, atol=STEPS * 32 * EPS32 * scale), key
    # The bound has teeth: a wrong formula moves p by a fair fraction of an update.
    assert track.bound < 0.01 * track.max_update


def test_one_native_call_per_step(monkeypatch):
    calls = []
    native = fastopt._C.optim_step
    monkeypatch.setattr(fastopt._C, "optim_step", lambda *a: calls.append(len(a[0])) or native(*a))
    params = [torch.randn(5, requires_grad=True) for _ in range(4)]
    opt = ft.optim.SGD([{"params": params[:2]}, {"params": params[2:], "lr": 0.5, "momentum": 0.9}], lr=0.1)
    for p in params:
        p.grad = torch.ones(5)
    before = [p._version for p in params]
    opt.step()
    params[1].grad = None  # a parameter without a gradient is left alone
    keep = params[1].detach().clone()
    opt.step()
    assert calls == [4, 3]
    assert torch.equal(params[1], keep)
    assert all(p._version > v for p, v in zip(params, before))  # autograd sees the in-place update


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="torch without CUDA")
def test_two_devices(monkeypatch):
    """Parameters on the CPU and a GPU: one native call per device; a global clip across them is refused."""
    calls = []
    native = fastopt._C.optim_step
    monkeypatch.setattr(fastopt._C, "optim_step", lambda *a: calls.append(len(a[0])) or native(*a))
    ref, opt, ref_p, our_p, gen = _pair("SGD", dict(lr=0.1, momentum=0.9), shapes=[(7,), (3, 5), (4,)])
    for group in (ref_p, our_p):
        group[1].data = group[1].data.cuda()
    opt = ft.optim.SGD(our_p, lr=0.1, momentum=0.9)
    ref = torch.optim.SGD(ref_p, lr=0.1, momentum=0.9, foreach=False)
    _run(ref, opt, ref_p, our_p, gen, steps=3)
    assert calls == [2, 1] * 3
    opt.max_grad_norm = 1.0
    with pytest.raises(ValueError, match="2 devices"):
        opt.step()


def test_params_without_grad_and_closure():
    ref, opt, ref_p, our_p, gen = _pair("Adam", dict(lr=0.01), shapes=[(5,), (6,), (7,)])
    track = Tracker(ref_p)
    for t in range(5):
        _set_grads(ref_p, our_p, gen)
        if t % 2 == 0:  # parameter 1 has a gradient on odd steps only, so its step count lags
            ref_p[1].grad = our_p[1].grad = None
        ref.step()
        assert opt.step(closure=lambda: torch.tensor(7.0)) == 7.0
        track.step(ref_p)
        track.check(our_p, ref_p)
    counts = {i: int(s["step"]) for i, s in opt.state_dict()["state"].items()}
    assert counts == {i: int(s["step"]) for i, s in ref.state_dict()["state"].items()} == {0: 5, 1: 2, 2: 5}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("max_norm", [1e9, 0.5])
def test_max_grad_norm_matches_clip_grad_norm(max_norm, device):
    ref, opt, ref_p, our_p, gen = _pair("AdamW", dict(lr=0.01, weight_decay=0.1), device, max_grad_norm=max_norm)
    track = Tracker(ref_p)
    for t in range(STEPS):
        _set_grads(ref_p, our_p, gen)
        grads = [p.grad.clone() for p in our_p]
        total = torch.nn.utils.clip_grad_norm_(ref_p, max_norm)
        ref.step()
        opt.step()
        track.step(ref_p)
        track.check(our_p, ref_p, f"step {t}")
        # The norm: a sum of ~1100 squares; the CPU sums in double, torch and the GPU in float32.
        assert opt.grad_norm.dtype == torch.float32 and opt.grad_norm.shape == ()
        assert opt.grad_norm.device == our_p[0].device
        assert math.isclose(float(opt.grad_norm), float(total), rel_tol=1e-5)
        assert all(torch.equal(p.grad, g) for p, g in zip(our_p, grads))  # gradients are left unclipped


def test_skip_nonfinite():
    ref, opt, ref_p, our_p, gen = _pair("Adam", dict(lr=0.01), skip_nonfinite=True)
    track = _run(ref, opt, ref_p, our_p, gen, steps=2)
    before = [p.detach().clone() for p in our_p]
    state = copy.deepcopy(opt.state_dict())
    for bad in (math.nan, math.inf):
        _set_grads(ref_p, our_p, gen)
        our_p[3].grad[2, 1] = bad
        opt.step()  # skipped: nothing changes, not even the step count
        assert not math.isfinite(float(opt.grad_norm))
        assert all(torch.equal(p, q) for p, q in zip(our_p, before))
        after = opt.state_dict()
        for i, s in state["state"].items():
            assert all(torch.equal(v, after["state"][i][k]) for k, v in s.items())
    _run(ref, opt, ref_p, our_p, gen, steps=2)  # and torch, which never saw those steps, agrees
    assert math.isfinite(float(opt.grad_norm)) and track.bound > 0


def test_channels_last_and_noncontiguous_grad():
    """A channels_last weight is stepped in its own layout; a gradient laid out otherwise is read right."""
    ref, opt, ref_p, our_p, gen = _pair("SGD", dict(lr=0.1, momentum=0.9), shapes=[(4, 3, 5, 2)])
    ref_p[0].data = ref_p[0].data.to(memory_format=torch.channels_last)
    our_p[0].data = our_p[0].data.to(memory_format=torch.channels_last)
    track = Tracker(ref_p)
    for t in range(3):
        _set_grads(ref_p, our_p, gen)
        if t == 1:
            our_p[0].grad = our_p[0].grad.contiguous()  # unlike its parameter
        ref.step()
        opt.step()
        track.step(ref_p)
        track.check(our_p, ref_p, f"step {t}")
    assert our_p[0].is_contiguous(memory_format=torch.channels_last)
    assert opt.state[our_p[0]]["momentum_buffer"].stride() == our_p[0].stride()


def test_sgd_momentum_switched_on_later():
    """torch starts a momentum buffer as the gradient itself whenever it first needs one."""
    ref, opt, ref_p, our_p, gen = _pair("SGD", dict(lr=0.1), shapes=[(7,), (3, 5)])
    _run(ref, opt, ref_p, our_p, gen, steps=2)
    for o in (ref, opt):
        o.param_groups[0].update(momentum=0.9, dampening=0.5)
    _run(ref, opt, ref_p, our_p, gen, steps=3)
    assert torch.allclose(
        opt.state[our_p[0]]["momentum_buffer"], ref.state[ref_p[0]]["momentum_buffer"], rtol=0, atol=1e-6
    )


def test_parameter_storage_swapped():
    """`p.data = ...` (a new storage, even a new layout) between steps is followed; a new dtype is refused."""
    ref, opt, ref_p, our_p, gen = _pair("Adam", dict(lr=0.01), shapes=[(4, 3, 5, 2), (6,)])
    _run(ref, opt, ref_p, our_p, gen, steps=2)
    for p in (ref_p[0], our_p[0]):
        p.data = p.data.to(memory_format=torch.channels_last)
    _run(ref, opt, ref_p, our_p, gen, steps=2)
    assert opt.state[our_p[0]]["exp_avg"].stride() == our_p[0].stride()
    our_p[1].data = our_p[1].data.double()
    our_p[1].grad = None  # assigning .data of another dtype drops nothing else; make the grad match
    our_p[1].grad = torch.ones(6, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"param_groups\[0\]\['params'\]\[1\]: was a float32 tensor"):
        opt.step()


def test_add_param_group():
    ref, opt, ref_p, our_p, gen = _pair("Adam", dict(lr=0.01), shapes=[(5,), (6,)])
    _run(ref, opt, ref_p, our_p, gen, steps=2)
    extra = torch.randn(9)
    ref_x, our_x = extra.clone().requires_grad_(), extra.clone().requires_grad_()
    ref.add_param_group({"params": [ref_x], "lr": 0.1})
    opt.add_param_group({"params": [our_x], "lr": 0.1})
    _run(ref, opt, ref_p + [ref_x], our_p + [our_x], gen, steps=3)
    assert int(opt.state_dict()["state"][2]["step"]) == 3


def _scheduled(name, kwargs, make_sched, steps=12):
    ref, opt, ref_p, our_p, gen = _pair(name, kwargs, shapes=[(17,), (4, 3)])
    scheds = [make_sched(ref), make_sched(opt)]
    seen = []

    def sched_step():
        for s in scheds:
            s.step()
        seen.append((opt.param_groups[0]["lr"], opt.param_groups[0].get("momentum"), opt.param_groups[0].get("betas")))
        for key in ("lr", "momentum", "betas", "initial_lr"):
            assert ref.param_groups[0].get(key) == opt.param_groups[0].get(key), key

    _run(ref, opt, ref_p, our_p, gen, steps=steps, between=sched_step)
    return seen


def test_step_lr():
    seen = _scheduled("SGD", dict(lr=0.1, momentum=0.9), lambda o: torch.optim.lr_scheduler.StepLR(o, 3, gamma=0.5))
    assert len({lr for lr, _, _ in seen}) == 5


@pytest.mark.parametrize("name, key", [("SGD", "momentum"), ("Adam", "betas")])
def test_one_cycle_with_momentum_cycling(name, key):
    kwargs = dict(lr=0.01, momentum=0.9) if name == "SGD" else dict(lr=0.01)
    seen = _scheduled(
        name, kwargs, lambda o: torch.optim.lr_scheduler.OneCycleLR(o, max_lr=0.05, total_steps=14, cycle_momentum=True)
    )
    cycled = {m if key == "momentum" else b for _, m, b in seen}
    assert len(cycled) > 5  # the momentum really moved, and the steps above followed it


def _tiny_model(seed):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3))


@pytest.mark.parametrize("unscale_first", [False, True])
def test_grad_scaler(unscale_first):
    """torch.amp.GradScaler: skip on Inf (the scale drops, nothing moves, the step count neither),
    and otherwise the same steps as torch's optimizer under the same scaler. On the CPU fastopt
    takes the fused path (GradScaler does not unscale: the gradients stay scaled and the step
    unscales inside the kernel); with scaler.unscale_(opt) first (to clip by hand) the step gets
    grad_scale None and steps the unscaled gradients."""
    models = [_tiny_model(0), _tiny_model(0)]
    opts = [
        torch.optim.AdamW(models[0].parameters(), lr=0.01, foreach=False),
        ft.optim.AdamW(models[1].parameters(), lr=0.01, max_grad_norm=10.0),
    ]
    scalers = [torch.amp.GradScaler("cpu", init_scale=2.0**12) for _ in models]
    gen = torch.Generator().manual_seed(1)
    track = Tracker(list(models[0].parameters()))
    for t in range(6):
        x, y = torch.randn(8, 6, generator=gen), torch.randn(8, 3, generator=gen)
        before = [p.detach().clone() for p in models[1].parameters()]
        for model, opt, scaler in zip(models, opts, scalers):
            opt.zero_grad(set_to_none=True)
            scaler.scale(torch.nn.functional.mse_loss(model(x), y)).backward()
            if t == 3:
                model[0].weight.grad[1, 2] = math.inf
            if unscale_first:
                scaler.unscale_(opt)
            scaled = model[0].weight.grad.clone()
            scaler.step(opt)
            if opt is opts[1] and t != 3:  # fused: the step read the gradients, and left them as they were
                assert torch.equal(model[0].weight.grad, scaled)
                assert opts[1]._step_supports_amp_scaling
            scaler.update()
        if t == 3:
            assert all(torch.equal(p, q) for p, q in zip(models[1].parameters(), before))
            assert scalers[1].get_scale() == 2.0**11
        track.step(list(models[0].parameters()))
        track.check(list(models[1].parameters()), list(models[0].parameters()), f"step {t}")
    assert scalers[0].get_scale() == scalers[1].get_scale()
    assert int(opts[1].state_dict()["state"][0]["step"]) == 5


@pytest.mark.parametrize("name, kwargs", ONE_OF_EACH, ids=lambda v: v if isinstance(v, str) else "")
@pytest.mark.parametrize("direction", ["torch->fastopt", "fastopt->torch"])
def test_state_dict_both_ways(name, kwargs, direction):
    """Run 3 steps on one optimizer, hand its state_dict (through torch.save) to the other kind,
    and continue: the result equals the first optimizer continuing."""
    ref, opt, ref_p, our_p, gen = _pair(name, kwargs, shapes=[(7,), (3, 5)])
    first, first_p, second, second_p = (
        (ref, ref_p, opt, our_p) if direction == "torch->fastopt" else (opt, our_p, ref, ref_p)
    )
    for _ in range(3):
        _set_grads(first_p, second_p, gen)
        first.step()
    saved = first.state_dict()
    assert all(isinstance(k, int) for k in saved["state"])
    if name != "SGD":  # torch's SGD keeps no step count
        assert all(
            s["step"].dtype == torch.float32 and s["step"].shape == () and int(s["step"]) == 3
            for s in saved["state"].values()
        )
    buf = io.BytesIO()
    torch.save(saved, buf)
    with torch.no_grad():
        for a, b in zip(second_p, first_p):
            a.copy_(b)
    second.load_state_dict(torch.load(io.BytesIO(buf.getvalue())))
    track = Tracker(first_p)
    for t in range(3):
        _set_grads(first_p, second_p, gen)
        first.step()
        second.step()
        track.step(first_p)
        track.check(second_p, first_p, f"{direction} step {t}")
    again = second.state_dict()
    assert set(again["state"]) == set(first.state_dict()["state"])
    for i, s in first.state_dict()["state"].items():
        assert set(again["state"][i]) == set(s)


def test_deepcopy_continues():
    ref, opt, ref_p, our_p, gen = _pair("AdamW", dict(lr=0.01), shapes=[(7,), (3, 5)])
    _run(ref, opt, ref_p, our_p, gen, steps=2)
    clone = copy.deepcopy(opt)
    assert int(clone.state_dict()["state"][0]["step"]) == 2  # the hooks came along


def test_bad_input():
    p = torch.randn(4, requires_grad=True)
    with pytest.raises(TypeError, match="expected a torch.float32 parameter, got torch.float64"):
        ft.optim.AdamW([p.detach().double().requires_grad_()])
    named = [("encoder.scale", torch.randn(3, dtype=torch.float64, requires_grad=True))]  # fp16 is taken
    with pytest.raises(TypeError, match="'encoder.scale'"):
        ft.optim.SGD(named, lr=0.1)
    with pytest.raises(ValueError, match="dense"):
        ft.optim.SGD([torch.randn(4, 6)[:, ::2].detach().requires_grad_()])
    with pytest.raises(ValueError, match="lr"):
        ft.optim.Adam([p], lr=-1.0)
    with pytest.raises(ValueError, match=r"betas\[1\]"):
        ft.optim.Adam([p], betas=(0.9, 1.5))
    with pytest.raises(ValueError, match="nesterov"):
        ft.optim.SGD([p], lr=0.1, nesterov=True)
    with pytest.raises(TypeError, match="fused"):
        ft.optim.AdamW([p], fused=True)
    with pytest.raises(ValueError, match="max_grad_norm"):
        ft.optim.AdamW([p], max_grad_norm=-1.0)
    with pytest.raises(TypeError, match="skip_nonfinite"):
        ft.optim.AdamW([p], skip_nonfinite="yes")
    with pytest.raises(TypeError, match="lr: expected a real number, got str"):
        ft.optim.SGD([p], lr="0.1")
    with pytest.raises(ValueError, match="twice"), pytest.warns(UserWarning, match="duplicate"):
        ft.optim.SGD([p, p], lr=0.1)
    opt = ft.optim.SGD([p], lr=0.1)
    with pytest.raises(TypeError, match="float32"):
        opt.add_param_group({"params": [torch.zeros(2, dtype=torch.float64, requires_grad=True)]})
    assert len(opt.param_groups) == 1  # the refused group left nothing behind
    p.grad = torch.ones(4).to_sparse()
    with pytest.raises(TypeError, match=r"param_groups\[0\]\['params'\]\[0\]\.grad: .*sparse"):
        opt.step()
    opt.param_groups[0]["lr"] = -0.5  # checked at every step, as a scheduler may edit it
    p.grad = torch.ones(4)
    with pytest.raises(ValueError, match="lr"):
        opt.step()


def test_bad_state_dict():
    p = [torch.randn(3, requires_grad=True)]
    ref = torch.optim.Adam(p, decoupled_weight_decay=True)
    with pytest.raises(ValueError, match="AdamW"):
        ft.optim.Adam([torch.randn(3, requires_grad=True)]).load_state_dict(ref.state_dict())
    sd = torch.optim.SGD(p, lr=0.1, differentiable=True).state_dict()
    with pytest.raises(ValueError, match="differentiable"):
        ft.optim.SGD([torch.randn(3, requires_grad=True)], lr=0.1).load_state_dict(sd)
    adam = torch.optim.Adam(p)
    p[0].grad = torch.ones(3)
    adam.step()
    ours = ft.optim.SGD([torch.randn(3, requires_grad=True)], lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match="'exp_avg'.*another optimizer"):
        ours.load_state_dict(adam.state_dict())
    sd = copy.deepcopy(adam.state_dict())  # its entries are the live state's
    sd["state"][0]["step"] = torch.tensor(-2.0)
    with pytest.raises(ValueError, match=r"\['step'\]: expected a step count"):
        ft.optim.Adam([torch.randn(3, requires_grad=True)]).load_state_dict(sd)
    with pytest.raises(ValueError, match="has shape \\(3,\\), its parameter \\(4,\\)"):
        ft.optim.Adam([torch.randn(4, requires_grad=True)]).load_state_dict(adam.state_dict())
    assert ours.state_dict()["state"] == {}  # the refused checkpoints changed nothing
    sd = torch.optim.SGD(p, lr=0.1).state_dict()
    sd["param_groups"][0]["momentum"] = -1.0
    with pytest.raises(ValueError, match="momentum"):
        ft.optim.SGD([torch.randn(3, requires_grad=True)], lr=0.1).load_state_dict(sd)
