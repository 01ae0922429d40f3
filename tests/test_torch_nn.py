"""fastopt.torch.nn layers and fastopt.torch.convert: torch's parameters, buffers, state_dict keys
and running-stat rule; conversion in place (what is kept and why); a small ResNet trained with
fastopt's optimizer tracking the pure-torch run; torch.compile(fullgraph=True) against eager; the
converted model under bf16 autocast with channels_last input.

The ops themselves are held to their float32 rounding bounds in test_torch_ops.py. Here the
question is the wiring (which argument goes where, which statistics are kept), and a mistake
there is an O(1) error, so outputs are compared normwise: max |got - want| <= 1e-5 * max |want|
(a few float32 roundings of an ~1e3-term sum at most; WIRING_TOL)."""

import copy
import io
from contextlib import redirect_stdout

import numpy as np
import pytest

torch = pytest.importorskip("torch")
tn = torch.nn

import fastopt.torch as ft  # noqa: E402
from fastopt.bench.torch_train import resnet  # noqa: E402

WIRING_TOL = 1e-5


def assert_wired(got, want, what):
    got, want = got.detach().double(), want.detach().double()
    assert got.shape == want.shape, what
    scale = max(want.abs().max().item(), 1e-30) if want.numel() else 1.0
    err = (got - want).abs().max().item() if want.numel() else 0.0
    assert err <= WIRING_TOL * scale, f"{what}: max error {err:.3g} > {WIRING_TOL * scale:.3g}"


def randn(rng, *shape):
    return torch.from_numpy(rng.standard_normal(shape).astype(np.float32))


LAYERS = [  # (class name, constructor args, kwargs, input shape)
    ("Conv2d", (3, 6, 3), dict(padding=1), (2, 3, 7, 8)),
    ("Conv2d", (4, 4, 3), dict(stride=2, padding=1, groups=2, bias=False, padding_mode="reflect"), (2, 4, 9, 7)),
    ("Conv2d", (3, 5, 2), dict(padding="same", padding_mode="circular"), (2, 3, 6, 6)),
    ("Linear", (7, 5), {}, (3, 4, 7)),
    ("Linear", (7, 5), dict(bias=False), (6, 7)),
    ("BatchNorm1d", (5,), {}, (6, 5)),
    ("BatchNorm1d", (5,), dict(momentum=None), (4, 5, 3)),
    ("BatchNorm2d", (4,), dict(momentum=None), (3, 4, 5, 5)),
    ("BatchNorm2d", (4,), dict(affine=False, track_running_stats=False), (3, 4, 5, 5)),
    ("LayerNorm", ((5, 6),), {}, (3, 4, 5, 6)),
    ("LayerNorm", (6,), dict(bias=False), (4, 6)),
    ("LayerNorm", (6,), dict(elementwise_affine=False), (4, 6)),
    ("GroupNorm", (2, 4), {}, (3, 4, 5, 5)),
    ("GroupNorm", (4, 4), dict(affine=False), (3, 4, 6)),
    ("MaxPool2d", (3, 2, 1), {}, (2, 3, 9, 8)),
    ("MaxPool2d", (2,), {}, (2, 3, 8, 8)),
    ("ReLU", (), {}, (3, 5, 4)),
]


@pytest.mark.parametrize("name, args, kwargs, shape", LAYERS, ids=[f"{n}-{i}" for i, (n, *_) in enumerate(LAYERS)])
def test_layer_matches_torch(rng, name, args, kwargs, shape):
    torch.manual_seed(0)
    peer = getattr(tn, name)(*args, **kwargs)
    torch.manual_seed(0)
    layer = getattr(ft.nn, name)(*args, **kwargs)
    assert isinstance(layer, type(peer))
    state = peer.state_dict()
    assert list(layer.state_dict()) == list(state)
    # Non-trivial parameters and running statistics, so that every one of them is exercised.
    with torch.no_grad():
        for k, v in state.items():
            if v.is_floating_point():
                v.copy_(torch.rand_like(v) + 0.5 if "var" in k else torch.randn_like(v))
    layer.load_state_dict(state)
    for mode in ("train", "train", "train", "eval"):  # three steps: momentum=None averages over them
        layer.train(mode == "train")
        peer.train(mode == "train")
        x = randn(rng, *shape)
        xs = (x.clone().requires_grad_(), x.clone().requires_grad_())
        y, want = layer(xs[0]), peer(xs[1])
        assert_wired(y, want, f"{mode} output")
        dy = randn(rng, *want.shape)
        y.backward(dy)
        want.backward(dy)
        assert_wired(xs[0].grad, xs[1].grad, f"{mode} input grad")
        for (k, p), q in zip(layer.named_parameters(), peer.parameters()):
            assert_wired(p.grad, q.grad, f"{mode} {k}.grad")
            p.grad = q.grad = None
        for (k, b), c in zip(layer.named_buffers(), peer.buffers()):
            assert_wired(b, c, f"{mode} buffer {k}")


def test_dropout_layer():
    layer = ft.nn.Dropout(0.4)
    x = torch.randn(50, 40)
    y = layer(x)
    assert torch.equal(y[y != 0], (x * (1 / 0.6))[y != 0]) and 0.5 < (y != 0).float().mean() < 0.7
    assert layer.eval()(x) is x
    assert isinstance(layer, tn.Dropout) and layer.state_dict() == {}


class Custom(tn.Conv2d):
    """A user's subclass with its own forward: convert must not touch it."""

    def forward(self, x):
        return super().forward(x) * 2


def test_convert_in_place_keeps_parameters_and_lists_what_it_kept():
    torch.manual_seed(0)
    model = tn.Sequential(
        tn.Conv2d(3, 8, 3, padding=1),
        tn.BatchNorm2d(8),
        tn.ReLU(),
        tn.MaxPool2d(2, ceil_mode=True),
        tn.Conv2d(8, 8, 3, padding=1).double(),
        Custom(8, 8, 1),
        tn.ReLU(inplace=True),
        tn.GroupNorm(2, 8),
        tn.Dropout(0.1, inplace=True),
        tn.MaxPool2d(2),
        tn.Flatten(),
        tn.LayerNorm(32),
        tn.Dropout(0.1),
        tn.Linear(32, 4),
    )
    modules, params = list(model.modules()), list(model.parameters())
    keys = list(model.state_dict())
    opt = torch.optim.SGD(params, lr=0.1)  # made before the conversion
    out = io.StringIO()
    with redirect_stdout(out):
        assert ft.convert(model, verbose=True) is model
    text = out.getvalue()
    assert list(model.modules()) == modules and list(model.parameters()) == params
    assert list(model.state_dict()) == keys
    converted = [0, 1, 2, 7, 9, 11, 12, 13]
    assert [i for i, m in enumerate(model) if type(m).__module__ == "fastopt.torch.nn"] == converted
    assert type(model[5]) is Custom
    assert "8 layers now run fastopt's kernels" in text
    for kept in (
        "3 (MaxPool2d): ceil_mode=True",
        "4 (Conv2d): weight is torch.float64",
        "6 (ReLU): inplace=True",
        "8 (Dropout): inplace=True",
        "channels_last",
        "torch.autocast",
    ):
        assert kept in text, kept
    model[4].float()
    x = torch.randn(2, 3, 8, 8)
    before = [p.detach().clone() for p in params]
    model(x).square().mean().backward()
    opt.step()
    assert all(not torch.equal(a, p) for a, p in zip(before, params) if p.grad is not None)
    with redirect_stdout(io.StringIO()) as again:
        ft.convert(model, verbose=True)  # idempotent: the float32 conv converts now, nothing else changes
    assert "1 layer now run" in again.getvalue() and type(model[4]) is ft.nn.Conv2d
    assert type(ft.convert(tn.Linear(3, 2))) is ft.nn.Linear
    with pytest.raises(TypeError, match="model: expected a torch.nn.Module, got list"):
        ft.convert([tn.Linear(3, 2)])


def small_resnet():
    """Skip connections (identity and 1x1 projection), a grouped conv, BatchNorm, GroupNorm and pooling."""
    return resnet(
        widths=(8, 16), blocks=(1, 1), groups=2, norms=[tn.BatchNorm2d, lambda c: tn.GroupNorm(4, c)], stem_pool=True
    )


def test_resnet_training_tracks_torch():
    torch.manual_seed(0)
    peer = small_resnet()
    model = ft.convert(copy.deepcopy(peer))
    assert sum(type(m).__module__ == "fastopt.torch.nn" for m in model.modules()) >= 12
    g = torch.Generator().manual_seed(1)
    data = [(torch.randn(8, 3, 16, 16, generator=g), torch.randint(0, 10, (8,), generator=g)) for _ in range(3)]
    runs = []
    for net, optim in ((peer, torch.optim), (model, ft.optim)):
        opt = optim.AdamW(net.parameters(), lr=3e-3, weight_decay=0.05)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=30)
        losses = []
        for step in range(30):
            x, y = data[step % 3]
            opt.zero_grad(set_to_none=True)
            loss = torch.nn.functional.cross_entropy(net(x), y)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())
        runs.append(np.array(losses))
    torch_losses, fast_losses = runs
    # Same math in float32 with other summation orders: the curves start equal to a few ulps and
    # drift only through Adam's normalization of tiny gradients; 1e-3 is far above that and far
    # below what a wrong gradient does in 30 steps.
    assert np.max(np.abs(fast_losses - torch_losses) / torch_losses) < 1e-3, (fast_losses, torch_losses)
    assert fast_losses[-3:].mean() < fast_losses[:3].mean() - 0.1  # it learns
    for (k, b), c in zip(model.named_buffers(), peer.buffers()):
        assert_wired(b, c, k)


def compile_model():
    return tn.Sequential(
        tn.Conv2d(3, 8, 3, padding=1),
        tn.BatchNorm2d(8),
        tn.ReLU(),
        tn.MaxPool2d(2),
        tn.Conv2d(8, 8, 3, padding=1, groups=2),
        tn.GroupNorm(2, 8),
        tn.Flatten(),
        tn.LayerNorm(128),
        tn.Dropout(0.2),
        tn.Linear(128, 5),
    )


def test_compile_fullgraph_matches_eager():
    torch._dynamo.reset()
    torch.manual_seed(0)
    eager = ft.convert(compile_model())
    model = copy.deepcopy(eager)
    compiled = torch.compile(model, fullgraph=True)  # fullgraph: a graph break is an error
    x = torch.randn(4, 3, 8, 8)
    # inductor's own RNG would draw other dropout seeds; fallback_random draws torch's, as eager does
    with torch._inductor.config.patch(fallback_random=True):
        for net in (eager, compiled):
            torch.manual_seed(5)
            net(x).square().sum().backward()
    torch.manual_seed(5)
    y = compiled(x)
    torch.manual_seed(5)
    want = eager(x)
    assert_wired(y, want, "output")
    for (k, p), q in zip(model.named_parameters(), eager.parameters()):
        assert_wired(p.grad, q.grad, f"{k}.grad")
    for (k, b), c in zip(model.named_buffers(), eager.buffers()):
        assert_wired(b.float(), c.float(), k)


def _rel(a, b):
    a, b = a.detach().double().flatten(), b.detach().double().flatten()
    return ((a - b).norm() / b.norm()).item()


def test_autocast_bf16_with_channels_last():
    """The converted model under bf16 autocast with channels_last input: fastopt's conv and linear
    run its bf16 kernels and the normalizations follow (bf16 in, bf16 out, fp32 statistics), as
    torch's own layers do under autocast. Both move away from the float32 model by bf16
    roundings; fastopt's output and parameter gradients must move by no more than 1.5x torch's
    own autocast run of the unconverted model (plus 1e-3 for where torch's moves are tiny)."""
    torch.manual_seed(0)
    peer = small_resnet()
    model = ft.convert(copy.deepcopy(peer))
    fp32 = copy.deepcopy(peer)
    x = torch.randn(4, 3, 16, 16)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    out = {}
    for name, net in (("fastopt", model), ("torch", peer)):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = net(x_cl)
        assert y.dtype == torch.bfloat16, name
        y.float().square().sum().backward()
        out[name] = (y, [p.grad for p in net.parameters()])
    want = fp32(x)
    want.square().sum().backward()
    for p in model.parameters():
        assert p.grad.dtype == torch.float32
    assert _rel(out["fastopt"][0], want) <= 1.5 * _rel(out["torch"][0], want) + 1e-3
    for (k, _), g, t, w in zip(model.named_parameters(), out["fastopt"][1], out["torch"][1], fp32.parameters()):
        assert _rel(g, w.grad) <= 1.5 * _rel(t, w.grad) + 1e-3, k
    # a bf16 input (what a bf16 data pipeline hands over) runs the bf16 kernels as is
    with torch.autocast("cpu", dtype=torch.bfloat16):
        yb = model.eval()(x_cl.bfloat16())
    assert yb.dtype == torch.bfloat16 and torch.isfinite(yb.float()).all()
