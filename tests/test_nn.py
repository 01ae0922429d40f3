"""fastopt.nn: every layer's backward against float64 central differences of its own forward,
initializer statistics, the flat parameter store, and CPU == GPU for a whole network.

Gradient checks run the float32 layers and difference a float64 projection L = sum(r * y) with
step eps = 1e-2: float32 forward noise (~1e-7 relative) divided by eps stays well below the
truncation error. Criterion: ||analytic - numeric|| / ||numeric|| < 2e-4; measured at most 2e-5
for every layer. Inputs keep clear of kinks (ReLU at 0, max-pool ties) by more than eps, so the
numerical derivative is the true one there. The kernels themselves are checked against the
float64 references at ~1e-5 in their own test files.
"""

import math

import numpy as np
import pytest
from conftest import BACKENDS, fetch, put

import fastopt
from fastopt import nn
from fastopt.reference import loss as ref_loss

EPS = 1e-2
TOL = 2e-4


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-12)


def _numeric(f, x):
    """Central differences of f() w.r.t. every element of x (a float32 array changed in place)."""
    g = np.zeros(x.shape, np.float64)
    flat = x.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + EPS
        fp = f()
        flat[i] = old - EPS
        fm = f()
        flat[i] = old
        g.flat[i] = (fp - fm) / (2 * EPS)
    return g


def _away_from_zero(rng, shape, margin=0.1):
    x = rng.uniform(margin, 2.0, shape) * rng.choice([-1.0, 1.0], shape)
    return x.astype(np.float32)


def _distinct(rng, shape):
    """Values spaced 0.05 apart in random order: no two within 2 eps, so max pooling has no near ties."""
    n = int(np.prod(shape))
    return (rng.permutation(n).astype(np.float32) * 0.05 - n * 0.025).reshape(shape)


def _spread(rng, shape):
    """Normal values with every channel (axis 1) rescaled to unit standard deviation over the
    batch: batch norm's central-difference error grows like (EPS / sigma)^2, and six draws leave
    some channel with sigma near 0.15 about once in 200 runs (relative error 3e-4 > TOL)."""
    x = rng.standard_normal(shape)
    axes = tuple(i for i in range(x.ndim) if i != 1)
    return (x / x.std(axis=axes, keepdims=True)).astype(np.float32)


# name: (fastopt layer, input shape, input kind, the torch module it must equal, and torch's
# hyperparameters for the float64 reference: stated here, never read off the layer, so a wrong
# default fails the reference check even where torch is not installed).
LAYERS = {
    "conv": (
        lambda: nn.Conv2d(3, 4, 3, padding=1),
        (2, 3, 5, 5),
        "normal",
        lambda t: t.nn.Conv2d(3, 4, 3, padding=1),
        dict(stride=1, padding=1, dilation=1, groups=1),
    ),
    "conv_stride_groups": (
        lambda: nn.Conv2d(4, 6, 3, stride=2, groups=2),
        (2, 4, 7, 6),
        "normal",
        lambda t: t.nn.Conv2d(4, 6, 3, stride=2, groups=2),
        dict(stride=2, padding=0, dilation=1, groups=2),
    ),
    "conv_nobias": (
        lambda: nn.Conv2d(2, 3, (1, 3), padding=(0, 1), bias=False),
        (3, 2, 4, 5),
        "normal",
        lambda t: t.nn.Conv2d(2, 3, (1, 3), padding=(0, 1), bias=False),
        dict(stride=1, padding=(0, 1), dilation=1, groups=1),
    ),
    "linear": (lambda: nn.Linear(7, 5), (3, 7), "normal", lambda t: t.nn.Linear(7, 5), {}),
    "linear_nobias": (
        lambda: nn.Linear(7, 5, bias=False),
        (3, 7),
        "normal",
        lambda t: t.nn.Linear(7, 5, bias=False),
        {},
    ),
    "batchnorm2d": (
        lambda: nn.BatchNorm2d(3),
        (4, 3, 3, 3),
        "normal",
        lambda t: t.nn.BatchNorm2d(3),
        dict(momentum=0.1, eps=1e-5, track=True),
    ),
    "batchnorm2d_cumulative": (
        lambda: nn.BatchNorm2d(3, momentum=None, eps=1e-3),
        (4, 3, 3, 3),
        "normal",
        lambda t: t.nn.BatchNorm2d(3, momentum=None, eps=1e-3),
        dict(momentum=None, eps=1e-3, track=True),
    ),
    "batchnorm2d_batch_stats_only": (
        lambda: nn.BatchNorm2d(3, affine=False, track_running_stats=False),
        (4, 3, 3, 3),
        "normal",
        lambda t: t.nn.BatchNorm2d(3, affine=False, track_running_stats=False),
        dict(momentum=0.1, eps=1e-5, track=False),
    ),
    "batchnorm1d": (
        lambda: nn.BatchNorm1d(5),
        (6, 5),
        "spread",
        lambda t: t.nn.BatchNorm1d(5),
        dict(momentum=0.1, eps=1e-5, track=True),
    ),
    "batchnorm1d_3d": (
        lambda: nn.BatchNorm1d(4),
        (3, 4, 5),
        "normal",
        lambda t: t.nn.BatchNorm1d(4),
        dict(momentum=0.1, eps=1e-5, track=True),
    ),
    # Inputs of variance 1e-4, where eps = 1e-5 moves the output by 5%: a wrong default eps shows.
    "batchnorm2d_small_variance": (
        lambda: nn.BatchNorm2d(3),
        (4, 3, 3, 3),
        "small",
        lambda t: t.nn.BatchNorm2d(3),
        dict(momentum=0.1, eps=1e-5, track=True),
    ),
    "layernorm_small_variance": (
        lambda: nn.LayerNorm(6),
        (5, 6),
        "small",
        lambda t: t.nn.LayerNorm(6),
        dict(normalized_shape=(6,), eps=1e-5),
    ),
    "groupnorm_small_variance": (
        lambda: nn.GroupNorm(2, 4),
        (3, 4, 3, 3),
        "small",
        lambda t: t.nn.GroupNorm(2, 4),
        dict(num_groups=2, eps=1e-5),
    ),
    "layernorm": (
        lambda: nn.LayerNorm((3, 4)),
        (4, 3, 4),
        "normal",
        lambda t: t.nn.LayerNorm((3, 4)),
        dict(normalized_shape=(3, 4), eps=1e-5),
    ),
    "layernorm_nobias": (
        lambda: nn.LayerNorm(6, bias=False),
        (5, 6),
        "normal",
        lambda t: t.nn.LayerNorm(6, bias=False),
        dict(normalized_shape=(6,), eps=1e-5),
    ),
    "groupnorm": (
        lambda: nn.GroupNorm(2, 4),
        (3, 4, 3, 3),
        "normal",
        lambda t: t.nn.GroupNorm(2, 4),
        dict(num_groups=2, eps=1e-5),
    ),
    "groupnorm_noaffine": (
        lambda: nn.GroupNorm(3, 6, affine=False),
        (2, 6, 2, 3),
        "normal",
        lambda t: t.nn.GroupNorm(3, 6, affine=False),
        dict(num_groups=3, eps=1e-5),
    ),
    "relu": (lambda: nn.ReLU(), (3, 4, 5), "away", lambda t: t.nn.ReLU(), {}),
    "leaky_relu": (lambda: nn.LeakyReLU(), (3, 4, 5), "away", lambda t: t.nn.LeakyReLU(), dict(negative_slope=0.01)),
    "leaky_relu_0.1": (
        lambda: nn.LeakyReLU(0.1),
        (3, 4, 5),
        "away",
        lambda t: t.nn.LeakyReLU(0.1),
        dict(negative_slope=0.1),
    ),
    "maxpool": (
        lambda: nn.MaxPool2d(2),
        (2, 3, 4, 6),
        "distinct",
        lambda t: t.nn.MaxPool2d(2),
        dict(kernel_size=2, stride=2, padding=0),
    ),
    "maxpool_overlap": (
        lambda: nn.MaxPool2d(3, stride=2, padding=1),
        (2, 2, 5, 7),
        "distinct",
        lambda t: t.nn.MaxPool2d(3, stride=2, padding=1),
        dict(kernel_size=3, stride=2, padding=1),
    ),
    "global_avg_pool": (
        lambda: nn.GlobalAvgPool2d(),
        (3, 4, 5, 3),
        "normal",
        lambda t: t.nn.Sequential(t.nn.AdaptiveAvgPool2d(1), t.nn.Flatten()),
        {},
    ),
    "flatten": (lambda: nn.Flatten(), (3, 2, 2, 3), "normal", lambda t: t.nn.Flatten(), {}),
    "dropout": (lambda: nn.Dropout(), (4, 37), "normal", None, dict(p=0.5)),
    "dropout_0.3": (lambda: nn.Dropout(0.3), (4, 37), "normal", None, dict(p=0.3)),
}


def _input(rng, shape, kind):
    if kind == "away":
        return _away_from_zero(rng, shape)
    if kind == "distinct":
        return _distinct(rng, shape)
    if kind == "spread":
        return _spread(rng, shape)
    return (rng.standard_normal(shape) * (0.01 if kind == "small" else 1.0)).astype(np.float32)


# Central differences with step EPS need inputs spread much wider than EPS.
@pytest.mark.parametrize("name", sorted(k for k, v in LAYERS.items() if v[2] != "small"))
def test_layer_backward_matches_central_differences(name, rng):
    make, shape, kind = LAYERS[name][:3]
    layer = make()
    model = nn.Sequential(layer)
    store = model.build("cpu", seed=int(rng.integers(1 << 31)), input_grad=True)
    x = _input(rng, shape, kind)
    y = layer.forward(x, True)
    r = rng.standard_normal(y.shape)

    def loss():
        if isinstance(layer, nn.Dropout):
            layer.offset = 0  # the same mask every evaluation
        return float(np.sum(r * np.asarray(layer.forward(x, True), np.float64)))

    loss()
    dx = layer.backward(r.astype(np.float32))
    assert _rel(dx, _numeric(loss, x)) < TOL
    for p in layer.parameters():
        loss()
        layer.backward(r.astype(np.float32))
        assert _rel(p.grad, _numeric(loss, p.data)) < TOL, p
    assert store.size == sum(p.size for p in layer.parameters())


# ---------------------------------------------------- forward, backward and state: reference, torch
# Three training steps (fresh x and dy each: the running statistics must follow the batches) and
# one eval forward, compared array by array at max|a - e| <= TOL_EXACT * max|e|. The float32
# layers here reduce at most K = 60 terms (a conv weight gradient over N x P x Q); a float32 sum
# of K terms errs by at most (K - 1) 2^-24 ~ 3.5e-6 of the sum of their magnitudes, and the
# normalizations' rsqrt and two-pass variance add a few ulps: 2e-5 covers that worst case. Measured
# over 200 seeds: at most 5.6e-7 against the float64 reference, 6.5e-7 against torch (float32 on
# both sides, summed in other orders). A wrong default moves these by far more: momentum 0.5 for
# 0.1 by O(1), eps 1e-6 for 1e-5 by ~5% on the small-variance inputs.
TOL_EXACT = 2e-5
STEPS = 3


def _close(actual, expected, what):
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, what
    scale = max(float(np.max(np.abs(expected), initial=0.0)), 1e-30)
    err = float(np.max(np.abs(actual - expected), initial=0.0))
    assert err <= TOL_EXACT * scale, f"{what}: max error {err:.3g} at scale {scale:.3g}"


def _batches(rng, shape, kind, layer):
    """STEPS + 1 inputs (the last for eval) and STEPS output gradients."""
    xs = [_input(rng, shape, kind) for _ in range(STEPS + 1)]
    out_shape = np.shape(layer.forward(xs[0], False))  # eval mode: changes no state
    return xs, [rng.standard_normal(out_shape).astype(np.float32) for _ in range(STEPS)]


def _built(name, rng):
    layer = LAYERS[name][0]()
    nn.Sequential(layer).build("cpu", seed=int(rng.integers(1 << 31)), input_grad=True)
    return layer


def _fastopt_run(layer, xs, dys):
    """[(y, dx, param grads, state)] per training step, then the eval forward's y."""
    steps = []
    for x, dy in zip(xs, dys):
        y = np.array(layer.forward(x.copy(), True))
        dx = np.array(layer.backward(dy.copy()))
        grads = {k: p.grad.copy() for k, p in layer.params.items() if p is not None}
        state = {
            k: np.asarray(v, np.float64)
            for k, v in [*layer.named_buffers(), *layer.extra_state().items()]
            if k != "seed"
        }
        steps.append((y, dx, grads, state))
    return steps, np.array(layer.forward(xs[-1].copy(), False))


def _reference_run(layer, hyper, xs, dys):
    """The same steps through fastopt.reference in float64, with torch's hyperparameters `hyper`
    (the layer supplies only its parameter values and, for dropout, its seed)."""
    from fastopt.reference import (
        activation as ra,
        conv as rc,
        dropout as rd,
        linear as rl,
        normalization as rn,
        pooling as rp,
    )

    w, b = (
        None if layer.params.get(k) is None else layer.params[k].data.astype(np.float64) for k in ("weight", "bias")
    )
    state = {}
    if isinstance(layer, nn.BatchNorm1d | nn.BatchNorm2d) and hyper["track"]:
        c = layer.num_features
        state = {"running_mean": np.zeros(c), "running_var": np.ones(c), "num_batches_tracked": np.float64(0)}
    if isinstance(layer, nn.Dropout):
        state = {"offset": np.float64(0)}

    def step(x, dy, training):
        x = x.astype(np.float64)
        if isinstance(layer, nn.Conv2d | nn.Linear):
            conv = isinstance(layer, nn.Conv2d)
            y = rc.conv2d_forward(x, w, b, **hyper) if conv else rl.linear_forward(x, w, b)
            dx, dw, db = rc.conv2d_backward(dy, x, w, **hyper) if conv else rl.linear_backward(dy, x, w)
        elif isinstance(layer, nn.BatchNorm1d | nn.BatchNorm2d):
            batch = training or not hyper["track"]
            if training and hyper["track"]:
                state["num_batches_tracked"] += 1
            y, mean, invstd = rn.batch_norm_forward(
                x,
                w,
                b,
                state.get("running_mean"),
                state.get("running_var"),
                batch,
                hyper["momentum"],
                hyper["eps"],
                num_batches_tracked=state.get("num_batches_tracked"),
            )
            dx, dw, db = rn.batch_norm_backward(dy, x, w, mean, invstd, batch)
        elif isinstance(layer, nn.LayerNorm | nn.GroupNorm):
            ln = isinstance(layer, nn.LayerNorm)
            arg = hyper["normalized_shape"] if ln else hyper["num_groups"]
            fwd, bwd = (
                (rn.layer_norm_forward, rn.layer_norm_backward)
                if ln
                else (rn.group_norm_forward, rn.group_norm_backward)
            )
            y, mean, rstd = fwd(x, arg, w, b, hyper["eps"])
            dx, dw, db = bwd(dy, x, arg, mean, rstd, w)
        elif isinstance(layer, nn.LeakyReLU):
            y, dx = ra.leaky_relu_forward(x, **hyper), ra.leaky_relu_backward(dy, x, **hyper)
        elif isinstance(layer, nn.ReLU):
            y, dx = ra.relu_forward(x), ra.relu_backward(dy, x)
        elif isinstance(layer, nn.MaxPool2d):
            y, idx = rp.max_pool2d_forward(x, **hyper)
            dx = rp.max_pool2d_backward(dy, idx, x.shape)
        elif isinstance(layer, nn.GlobalAvgPool2d):
            y, dx = rp.global_avg_pool_forward(x), rp.global_avg_pool_backward(dy, x.shape)
        elif isinstance(layer, nn.Flatten):
            y, dx = x.reshape(len(x), -1), dy.reshape(x.shape)
        elif isinstance(layer, nn.Dropout):
            offset = int(state["offset"])
            y = rd.dropout_forward(x, hyper["p"], layer.seed, offset, training)
            dx = rd.dropout_backward(dy, hyper["p"], layer.seed, offset)
            if training:
                state["offset"] += x.size
        else:
            raise AssertionError(f"no reference for {type(layer).__name__}")
        if isinstance(layer, nn.Conv2d | nn.Linear | nn.BatchNorm1d | nn.BatchNorm2d | nn.LayerNorm | nn.GroupNorm):
            grads = {k: g for k, g in (("weight", dw), ("bias", db)) if layer.params.get(k) is not None}
        else:
            grads = {}
        return y, dx, grads, {k: np.array(v) for k, v in state.items()}

    steps = [step(x, dy.astype(np.float64), True) for x, dy in zip(xs, dys)]
    return steps, step(xs[-1], np.zeros(dys[0].shape), False)[0]  # eval: the gradient is not used


def _torch_run(module, layer, xs, dys):
    """The same steps through the torch module, its parameters set to the layer's."""
    torch = pytest.importorskip("torch")
    mine = {k for k, p in layer.params.items() if p is not None}
    assert {k for k, _ in module.named_parameters()} == mine  # the same affine / bias defaults
    with torch.no_grad():
        for k in mine:
            getattr(module, k).copy_(torch.from_numpy(layer.params[k].data.copy()))
    steps = []
    module.train()
    for x, dy in zip(xs, dys):
        xt = torch.from_numpy(x.copy()).requires_grad_()
        y = module(xt)
        y.backward(torch.from_numpy(dy.copy()))
        grads = {k: getattr(module, k).grad.numpy().copy() for k in mine}
        module.zero_grad(set_to_none=True)
        state = {k: v.double().numpy().copy() for k, v in module.named_buffers()}
        steps.append((y.detach().numpy().copy(), xt.grad.numpy().copy(), grads, state))
    module.eval()
    with torch.no_grad():
        return steps, module(torch.from_numpy(xs[-1].copy())).numpy().copy()


def _compare_runs(got, expected):
    (got_steps, got_eval), (exp_steps, exp_eval) = got, expected
    for i, (g, e) in enumerate(zip(got_steps, exp_steps)):
        _close(g[0], e[0], f"step {i} y")
        _close(g[1], e[1], f"step {i} dx")
        for part, what in ((2, "d"), (3, "")):
            assert g[part].keys() == e[part].keys(), (i, sorted(g[part]), sorted(e[part]))
            for k in e[part]:
                _close(g[part][k], e[part][k], f"step {i} {what}{k}")
    _close(got_eval, exp_eval, "eval y")


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_layer_matches_float64_reference(name, rng):
    _, shape, kind, _, hyper = LAYERS[name]
    layer = _built(name, rng)
    xs, dys = _batches(rng, shape, kind, layer)
    expected = _reference_run(layer, hyper, xs, dys)
    _compare_runs(_fastopt_run(layer, xs, dys), expected)


@pytest.mark.parametrize("name", sorted(k for k, v in LAYERS.items() if v[3] is not None))
def test_layer_matches_torch_module(name, rng):
    torch = pytest.importorskip("torch")
    _, shape, kind, make_torch, _ = LAYERS[name]
    layer = _built(name, rng)
    xs, dys = _batches(rng, shape, kind, layer)
    expected = _torch_run(make_torch(torch), layer, xs, dys)
    _compare_runs(_fastopt_run(layer, xs, dys), expected)


# fastopt class, its torch twin, and the torch arguments fastopt does not offer (so a dropped one
# is noticed too; torch 2.13's keyword-only `bias` of batch and group norm is not offered yet).
TWINS = [
    (nn.Conv2d, "Conv2d", {"padding_mode", "device", "dtype"}),
    (nn.Linear, "Linear", {"device", "dtype"}),
    (nn.BatchNorm1d, "BatchNorm1d", {"device", "dtype", "bias"}),
    (nn.BatchNorm2d, "BatchNorm2d", {"device", "dtype", "bias"}),
    (nn.LayerNorm, "LayerNorm", {"device", "dtype"}),
    (nn.GroupNorm, "GroupNorm", {"device", "dtype", "bias"}),
    (nn.ReLU, "ReLU", {"inplace"}),
    (nn.LeakyReLU, "LeakyReLU", {"inplace"}),
    (nn.MaxPool2d, "MaxPool2d", {"dilation", "return_indices", "ceil_mode"}),
    (nn.Flatten, "Flatten", {"start_dim", "end_dim"}),
    (nn.Dropout, "Dropout", {"inplace"}),
    (nn.SoftmaxCrossEntropy, "CrossEntropyLoss", {"weight", "size_average", "ignore_index", "reduce", "reduction"}),
]


@pytest.mark.parametrize("ours,theirs,missing", TWINS, ids=[t[1] for t in TWINS])
def test_constructor_arguments_and_defaults_follow_torch(ours, theirs, missing):
    import inspect

    torch = pytest.importorskip("torch")
    mine = inspect.signature(ours).parameters
    torch_params = inspect.signature(getattr(torch.nn, theirs)).parameters
    assert set(torch_params) - set(mine) == missing
    shared = [name for name in torch_params if name in mine]
    assert shared == [name for name in mine if name in torch_params], "the shared arguments in another order"
    for name in shared:
        assert mine[name].default == torch_params[name].default, name


@pytest.mark.parametrize("smoothing", [None, 0.1])
@pytest.mark.parametrize("soft", [False, True])
def test_cross_entropy_matches_torch(smoothing, soft, rng):
    torch = pytest.importorskip("torch")
    logits = rng.standard_normal((6, 9)).astype(np.float32) * 3
    target = (rng.dirichlet(np.ones(9), 6) if soft else rng.integers(0, 9, 6)).astype(np.float32 if soft else np.int32)
    kwargs = {} if smoothing is None else {"label_smoothing": smoothing}  # None: both defaults
    ce = nn.SoftmaxCrossEntropy(**kwargs)
    loss = float(ce.forward(logits, target))
    grad = ce.backward()
    lt = torch.from_numpy(logits.copy()).requires_grad_()
    tt = torch.from_numpy(target.copy()) if soft else torch.from_numpy(target.astype(np.int64))
    expected = torch.nn.CrossEntropyLoss(**kwargs)(lt, tt)
    expected.backward()
    # A mean of 6 log-softmax rows over 9 classes, float32 both sides: a few ulps of the loss.
    assert loss == pytest.approx(expected.item(), rel=1e-6)
    _close(grad, lt.grad.numpy(), "dlogits")


def test_cross_entropy_defaults_match_reference(rng):
    # torch's defaults: no label smoothing, the mean over the batch. float32 against float64 over 9
    # classes: a few ulps of the loss and of the largest gradient element.
    logits = rng.standard_normal((6, 9)).astype(np.float32) * 3
    target = rng.integers(0, 9, 6).astype(np.int32)
    ce = nn.SoftmaxCrossEntropy()
    loss = float(ce.forward(logits, target))
    expected, expected_grad = ref_loss.softmax_cross_entropy(logits, target, 0.0)[:2]
    assert loss == pytest.approx(float(expected), rel=1e-6)
    _close(ce.backward(), expected_grad, "dlogits")


@pytest.mark.parametrize(
    "ours,theirs",
    [
        (lambda: nn.Conv2d(16, 128, 3), lambda t: t.nn.Conv2d(16, 128, 3)),
        (lambda: nn.Linear(300, 200), lambda t: t.nn.Linear(300, 200)),
    ],
    ids=["conv", "linear"],
)
def test_default_initialization_follows_torch(ours, theirs):
    # Both draw weight and bias uniformly within +-1/sqrt(fan_in) (torch: kaiming_uniform with
    # a = sqrt(5), bias U(+-1/sqrt(fan_in))). 18432 / 60000 weights and 128 / 200 biases: the
    # largest |w| falls short of the bound by 0.2% with probability 0.998^18432 ~ 1e-16, the
    # largest bias by 10% with 0.9^128 ~ 1e-6, and the sample std lies within 3% of bound / sqrt(3)
    # (over 5 sigma). The seeds are fixed besides.
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    layer, module = ours(), theirs(torch)
    nn.Sequential(layer).build("cpu", seed=0)
    for name in ("weight", "bias"):
        w, t = layer.params[name].data, getattr(module, name).detach().numpy()
        assert w.shape == t.shape
        bound = 1 / math.sqrt(
            w.size // w.shape[0] if name == "weight" else layer.params["weight"].size // layer.params["weight"].shape[0]
        )
        for values in (w, t):
            assert np.abs(values).max() <= bound * (1 + 1e-6)
            assert np.abs(values).max() >= bound * (0.998 if name == "weight" else 0.9)
            if name == "weight":
                assert abs(values.std() / (bound / math.sqrt(3)) - 1) < 0.03


@pytest.mark.parametrize("smoothing,soft", [(0.0, False), (0.1, False), (0.1, True)])
def test_cross_entropy_backward_matches_central_differences(smoothing, soft, rng):
    logits = rng.standard_normal((5, 7)).astype(np.float32)
    if soft:
        target = rng.dirichlet(np.ones(7), 5).astype(np.float32)
    else:
        target = rng.integers(0, 7, 5).astype(np.int32)
    ce = nn.SoftmaxCrossEntropy(smoothing)
    ce.forward(logits, target)
    d = ce.backward()
    # The loss is itself the scalar being differenced, with no float64 projection to damp the
    # float32 forward's rounding (~1e-7 of a loss near 2, over 2 eps: ~5e-6 per element, against
    # gradient elements near 1e-2): differencing it failed the bound about once in a few hundred
    # draws. The float64 reference loss, whose forward the loss tests pin the native one to, has
    # only the truncation error.
    numeric = _numeric(lambda: float(ref_loss.softmax_cross_entropy(logits, target, smoothing)[0]), logits)
    assert _rel(d, numeric) < TOL


def test_backward_needs_a_training_forward(rng):
    layer = nn.ReLU()
    layer.forward(rng.standard_normal(4).astype(np.float32), training=False)
    with pytest.raises(RuntimeError, match="training=True"):
        layer.backward(np.ones(4, np.float32))


def test_first_layer_skips_input_gradient(rng):
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten())
    model.build("cpu", seed=0)
    x = rng.standard_normal((2, 1, 4, 4)).astype(np.float32)
    y = model.forward(x)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    assert model.backward(dy) is None
    # The parameter gradients are still computed, and right.
    from fastopt.reference.conv import conv2d_backward

    conv = model.layers[0]
    _, dw, db = conv2d_backward(dy.reshape(2, 2, 2, 2), x, conv.params["weight"].data)
    _close(conv.params["weight"].grad, dw, "dweight")
    _close(conv.params["bias"].grad, db, "dbias")


def test_store_is_one_buffer_with_decay_first():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(16, 2))
    store = model.build("cpu", seed=1)
    conv, bn, lin = model.layers[0], model.layers[1], model.layers[3]
    decayed = [conv.params["weight"], lin.params["weight"]]
    assert store.num_decay == sum(p.size for p in decayed)
    for p in model.parameters():
        assert np.shares_memory(p.data, store.data) and np.shares_memory(p.grad, store.grad)
    groups = store.param_groups(0.1)
    assert [g["weight_decay"] for g in groups] == [0.1, 0.0]
    assert [g["params"][0].size for g in groups] == [store.num_decay, store.size - store.num_decay]
    assert bn.params["weight"].data.tolist() == [1.0] * 4 and bn.params["bias"].data.tolist() == [0.0] * 4
    # Same seed, same network; another seed, another one.
    again = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(16, 2)).build("cpu", seed=1)
    other = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(16, 2)).build("cpu", seed=2)
    assert np.array_equal(again.data, store.data) and not np.array_equal(other.data, store.data)


def test_sequential_rejects_non_modules():
    with pytest.raises(TypeError, match=r"layers\[1\]"):
        nn.Sequential(nn.ReLU(), lambda x: x)


def test_layer_argument_errors():
    with pytest.raises(ValueError, match="groups"):
        nn.Conv2d(3, 4, 3, groups=2)
    with pytest.raises(ValueError, match="num_groups"):
        nn.GroupNorm(3, 4)
    with pytest.raises(ValueError, match="p"):
        nn.Dropout(1.5)
    bn = nn.BatchNorm2d(3)
    nn.Sequential(bn).build("cpu")
    with pytest.raises(ValueError, match="x"):
        bn.forward(np.zeros((2, 4, 3, 3), np.float32))


# ------------------------------------------------------------------------------ initializers
FAN_SHAPE = (64, 32, 3, 3)  # fan_in 288, fan_out 576


@pytest.mark.parametrize(
    "name,init,std",
    [
        ("xavier_normal", nn.init.xavier_normal(), math.sqrt(2 / (288 + 576))),
        ("xavier_uniform", nn.init.xavier_uniform(), math.sqrt(6 / (288 + 576)) / math.sqrt(3)),
        ("kaiming_normal", nn.init.kaiming_normal(nonlinearity="relu"), math.sqrt(2 / 288)),
        ("kaiming_uniform_fan_out", nn.init.kaiming_uniform(mode="fan_out", nonlinearity="relu"), math.sqrt(2 / 576)),
        ("lecun_normal", nn.init.lecun_normal(), math.sqrt(1 / 288)),
        ("lecun_uniform", nn.init.lecun_uniform(), math.sqrt(1 / 288)),
        ("torch_default", nn.init.kaiming_uniform(a=math.sqrt(5)), math.sqrt(1 / (3 * 288))),
    ],
)
def test_initializer_statistics(name, init, std):
    w = init(np.random.default_rng(0), FAN_SHAPE)
    assert w.dtype == np.float32 and w.shape == FAN_SHAPE
    # 18432 draws: the sample std is within ~1.5% of the true one (5 sigma 2.6%).
    assert abs(w.std() / std - 1) < 0.03
    assert abs(w.mean()) < 4 * std / math.sqrt(w.size)
    if "uniform" in name or name == "torch_default":
        assert np.abs(w).max() <= std * math.sqrt(3) * (1 + 1e-6)


def test_gains_follow_torch():
    torch = pytest.importorskip("torch")
    for nl, param in [
        ("linear", None),
        ("sigmoid", None),
        ("tanh", None),
        ("relu", None),
        ("leaky_relu", None),
        ("leaky_relu", 0.2),
        ("selu", None),
        ("conv2d", None),
    ]:
        assert nn.init.calculate_gain(nl, param) == pytest.approx(torch.nn.init.calculate_gain(nl, param))
    with pytest.raises(ValueError, match="nonlinearity"):
        nn.init.calculate_gain("swish")


# ------------------------------------------------------------------------------ whole network
def _net():
    from fastopt.nn.models import small_cnn

    return small_cnn(1, 10, widths=(8, 16), dropout=0.2)


# The two devices round differently (forward activations agree to about 1e-6), so an activation
# within that gap of a ReLU's zero or of a max-pool window's runner-up can take the other branch on
# the other device and route its gradient elsewhere: a kink of the network, not a kernel error
# (seen once in ~70 fresh seeds: a pre-ReLU value of 1.5e-8 flipped 3 of 4370 gradient entries).
# So the test draws inputs whose CPU forward keeps every kink KINK_MARGIN away, and asserts that
# the devices' pre-activations agree to within that margin, which then rules out any flip.
KINK_MARGIN = 2e-5


def _kink_margin(model):
    """Smallest distance of the last forward from a branch of a ReLU or a 2x2 max pool."""
    from fastopt.nn.layers import MaxPool2d, ReLU

    margin, prev = np.inf, None
    for layer in model.layers:
        if isinstance(layer, ReLU):
            prev = fetch(layer._x).astype(np.float64)
            margin = min(margin, np.abs(prev).min())
        elif isinstance(layer, MaxPool2d):
            a = np.maximum(prev, 0.0)
            n, c, h, w = a.shape
            win = np.sort(a.reshape(n, c, h // 2, 2, w // 2, 2).transpose(0, 1, 2, 4, 3, 5).reshape(-1, 4), 1)
            top, second = win[:, -1], win[:, -2]
            # Windows that are all zero tie exactly on both devices; only a positive leader can flip.
            gap = (top - second)[top > 0]
            margin = min(margin, gap.min() if gap.size else np.inf)
    return margin


@pytest.mark.gpu
def test_network_on_gpu_matches_cpu(rng):
    if not fastopt.cuda.is_available():
        pytest.skip("no usable CUDA GPU here")
    from fastopt.nn.layers import ReLU

    for _ in range(50):
        x = rng.standard_normal((16, 1, 8, 8)).astype(np.float32)
        probe = _net()
        probe.build("cpu", seed=3)
        probe.forward(x, True)
        if _kink_margin(probe) > KINK_MARGIN:
            break
    else:
        pytest.fail(f"50 draws all came within {KINK_MARGIN} of a ReLU or max-pool kink")
    y = rng.integers(0, 10, 16).astype(np.int32)
    out, pre = {}, {}
    for backend in ("cpu", "cuda"):
        model = _net()
        store = model.build(backend, seed=3)
        ce = nn.SoftmaxCrossEntropy(0.1)
        logits = model.forward(put(x, backend), True)
        pre[backend] = [fetch(layer._x) for layer in model.layers if isinstance(layer, ReLU)]
        loss = ce.forward(logits, put(y, backend))
        model.backward(ce.backward())
        out[backend] = (fetch(logits), float(loss), fetch(store.grad))
    for cpu, gpu in zip(pre["cpu"], pre["cuda"]):
        assert np.abs(gpu.astype(np.float64) - cpu).max() < KINK_MARGIN / 2
    assert np.allclose(out["cuda"][0], out["cpu"][0], rtol=1e-4, atol=1e-5)
    assert out["cuda"][1] == pytest.approx(out["cpu"][1], rel=1e-5)
    assert _rel(out["cuda"][2], out["cpu"][2]) < 1e-4


@pytest.mark.parametrize("backend", BACKENDS)
def test_network_overfits_a_tiny_batch(backend, rng):
    x = rng.standard_normal((20, 1, 8, 8)).astype(np.float32)
    y = rng.integers(0, 10, 20).astype(np.int32)
    model = _net()
    store = model.build(backend, seed=0)
    opt = fastopt.optim.AdamW(store.param_groups(0.0), lr=1e-2)
    ce = nn.SoftmaxCrossEntropy()
    xd, yd = put(x, backend), put(y, backend)
    for _ in range(60):
        ce.forward(model.forward(xd, True), yd)
        model.backward(ce.backward())
        opt.step(store.grads)
    stats = np.zeros(3, np.float32) if backend == "cpu" else fastopt.zeros((3,))
    ce.forward(model.forward(xd, False), yd, training=False, stats=stats)
    loss_sum, top1, _ = fetch(stats)
    assert top1 == 20, f"train accuracy {top1 / 20}"
    assert loss_sum / 20 < 0.1
