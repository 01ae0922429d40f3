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

import fastopt
from fastopt import nn
from fastopt.reference import loss as ref_loss

from conftest import BACKENDS, fetch, put

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


LAYERS = {
    "conv": (lambda: nn.Conv2d(3, 4, 3, padding=1), (2, 3, 5, 5), "normal"),
    "conv_stride_groups": (lambda: nn.Conv2d(4, 6, 3, stride=2, groups=2), (2, 4, 7, 6), "normal"),
    "conv_nobias": (lambda: nn.Conv2d(2, 3, (1, 3), padding=(0, 1), bias=False), (3, 2, 4, 5), "normal"),
    "linear": (lambda: nn.Linear(7, 5), (3, 7), "normal"),
    "batchnorm2d": (lambda: nn.BatchNorm2d(3), (4, 3, 3, 3), "normal"),
    "batchnorm1d": (lambda: nn.BatchNorm1d(5), (6, 5), "normal"),
    "layernorm": (lambda: nn.LayerNorm((3, 4)), (4, 3, 4), "normal"),
    "groupnorm": (lambda: nn.GroupNorm(2, 4), (3, 4, 3, 3), "normal"),
    "relu": (lambda: nn.ReLU(), (3, 4, 5), "away"),
    "leaky_relu": (lambda: nn.LeakyReLU(0.1), (3, 4, 5), "away"),
    "maxpool": (lambda: nn.MaxPool2d(2), (2, 3, 4, 6), "distinct"),
    "maxpool_overlap": (lambda: nn.MaxPool2d(3, stride=2, padding=1), (2, 2, 5, 7), "distinct"),
    "global_avg_pool": (lambda: nn.GlobalAvgPool2d(), (3, 4, 5, 3), "normal"),
    "flatten": (lambda: nn.Flatten(), (3, 2, 2, 3), "normal"),
    "dropout": (lambda: nn.Dropout(0.3), (4, 37), "normal"),
}


def _input(rng, shape, kind):
    if kind == "away":
        return _away_from_zero(rng, shape)
    if kind == "distinct":
        return _distinct(rng, shape)
    return rng.standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_layer_backward_matches_central_differences(name, rng):
    make, shape, kind = LAYERS[name]
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
    y = model.forward(rng.standard_normal((2, 1, 4, 4)).astype(np.float32))
    assert model.backward(np.ones(y.shape, np.float32)) is None
    assert np.any(model.store.grad != 0)


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


@pytest.mark.parametrize("name,init,std", [
    ("xavier_normal", nn.init.xavier_normal(), math.sqrt(2 / (288 + 576))),
    ("xavier_uniform", nn.init.xavier_uniform(), math.sqrt(6 / (288 + 576)) / math.sqrt(3)),
    ("kaiming_normal", nn.init.kaiming_normal(nonlinearity="relu"), math.sqrt(2 / 288)),
    ("kaiming_uniform_fan_out", nn.init.kaiming_uniform(mode="fan_out", nonlinearity="relu"), math.sqrt(2 / 576)),
    ("lecun_normal", nn.init.lecun_normal(), math.sqrt(1 / 288)),
    ("lecun_uniform", nn.init.lecun_uniform(), math.sqrt(1 / 288)),
    ("torch_default", nn.init.kaiming_uniform(a=math.sqrt(5)), math.sqrt(1 / (3 * 288))),
])
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
    for nl, param in [("linear", None), ("sigmoid", None), ("tanh", None), ("relu", None), ("leaky_relu", None),
                      ("leaky_relu", 0.2), ("selu", None), ("conv2d", None)]:
        assert nn.init.calculate_gain(nl, param) == pytest.approx(torch.nn.init.calculate_gain(nl, param))
    with pytest.raises(ValueError, match="nonlinearity"):
        nn.init.calculate_gain("swish")


# ------------------------------------------------------------------------------ whole network
def _net():
    from fastopt.nn.models import small_cnn

    return small_cnn(1, 10, widths=(8, 16), dropout=0.2)


@pytest.mark.gpu
def test_network_on_gpu_matches_cpu(rng):
    if not fastopt.cuda.is_available():
        pytest.skip("no usable CUDA GPU here")
    x = rng.standard_normal((16, 1, 8, 8)).astype(np.float32)
    y = rng.integers(0, 10, 16).astype(np.int32)
    out = {}
    for backend in ("cpu", "cuda"):
        model = _net()
        store = model.build(backend, seed=3)
        ce = nn.SoftmaxCrossEntropy(0.1)
        logits = model.forward(put(x, backend), True)
        loss = ce.forward(logits, put(y, backend))
        model.backward(ce.backward())
        out[backend] = (fetch(logits), float(loss), fetch(store.grad))
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
