"""The PyTorch front on bfloat16 tensors (CPU): each fastopt:: op and its autograd backward on bf16
inputs is the fastopt kernel on the same bf16 values, bit for bit (the kernels themselves are held
to the float64 reference in test_bf16.py and test_bf16_layers.py), with the dtypes a torch user
expects (activations and their gradients bf16; conv/linear weights in the input's dtype and their
gradients too; normalization parameters, statistics and their gradients float32), and
torch.library.opcheck passes on bf16 inputs (the fake kernels give the real dtypes)."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import fastopt.functional as K  # noqa: E402
from fastopt.torch import ops  # noqa: E402
from fastopt.torch.nn import functional as F  # noqa: E402


def bf(rng, *shape):
    return torch.from_numpy(rng.standard_normal(shape).astype(np.float32)).bfloat16()


def f32(rng, *shape):
    return torch.from_numpy(rng.standard_normal(shape).astype(np.float32))


def same(got, want, what):
    assert got.dtype == want.dtype, f"{what}: dtype {got.dtype} != {want.dtype}"
    assert torch.equal(got.detach(), want), f"{what}: differs from the fastopt kernel"


def k(a):
    """A fastopt kernel result (NumPy, bf16 via ml_dtypes) as a torch tensor of the same bits."""
    return ops._tensor(a)


def grads_of(fn, inputs, dy):
    leaves = [None if t is None else t.detach().clone().requires_grad_() for t in inputs]
    out = fn(*leaves)
    out.backward(dy)
    return out.detach(), [None if t is None else t.grad for t in leaves]


def test_conv2d(rng):
    x, w, b = bf(rng, 2, 4, 7, 9), bf(rng, 6, 2, 3, 3), bf(rng, 6)
    dy = bf(rng, 2, 6, 7, 5)
    y, (dx, dw, db) = grads_of(lambda x, w, b: F.conv2d(x, w, b, stride=(1, 2), padding=1, groups=2), (x, w, b), dy)
    same(y, k(K.conv2d_forward(x, w, b, (1, 2), 1, 1, 2)), "y")
    kdx, kdw, kdb = K.conv2d_backward(dy, x, w, (1, 2), 1, 1, 2)
    same(dx, k(kdx), "dx")
    same(dw, k(kdw).bfloat16(), "dw")  # fp32 from the kernel, in the weight's dtype for autograd
    same(db, k(kdb).bfloat16(), "db")


def test_linear(rng):
    x, w, b, dy = bf(rng, 3, 5, 7), bf(rng, 4, 7), bf(rng, 4), bf(rng, 3, 5, 4)
    y, (dx, dw, db) = grads_of(F.linear, (x, w, b), dy)
    same(y, k(K.linear_forward(x.reshape(15, 7), w, b)).reshape(3, 5, 4), "y")
    kdx, kdw, kdb = K.linear_backward(dy.reshape(15, 4), x.reshape(15, 7), w)
    same(dx, k(kdx).reshape(3, 5, 7), "dx")
    same(dw, k(kdw).bfloat16(), "dw")
    same(db, k(kdb).bfloat16(), "db")


@pytest.mark.parametrize("training", [True, False])
def test_batch_norm(rng, training):
    x, g, b, dy = bf(rng, 4, 3, 5, 5), f32(rng, 3), f32(rng, 3), bf(rng, 4, 3, 5, 5)
    rm, rv = f32(rng, 3), f32(rng, 3).abs() + 0.5
    rm0, rv0 = rm.clone(), rv.clone()
    y, (dx, dg, db) = grads_of(lambda x, g, b: F.batch_norm(x, rm, rv, g, b, training=training), (x, g, b), dy)
    krm, krv = rm0.numpy().copy(), rv0.numpy().copy()
    ky, mean, invstd = K.batch_norm_forward(x, g, b, krm, krv, training)
    same(y, k(ky), "y")
    if training:  # torch's rule for the running statistics, float32
        assert rm.dtype == rv.dtype == torch.float32
        np.testing.assert_allclose(rm.numpy(), krm, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(rv.numpy(), krv, rtol=1e-6, atol=1e-7)
    kdx, kdg, kdb = K.batch_norm_backward(dy, x, g, mean, invstd, training)
    same(dx, k(kdx), "dx")
    same(dg, k(kdg), "dgamma")
    same(db, k(kdb), "dbeta")


def test_layer_and_group_norm(rng):
    x, dy = bf(rng, 4, 6, 5, 5), bf(rng, 4, 6, 5, 5)
    w, b = f32(rng, 5, 5), f32(rng, 5, 5)
    y, (dx, dw, db) = grads_of(lambda x, w, b: F.layer_norm(x, [5, 5], w, b), (x, w, b), dy)
    ky, m, r = K.layer_norm_forward(x, [5, 5], w, b)
    same(y, k(ky), "layer y")
    for got, want, name in zip(
        (dx, dw, db), K.layer_norm_backward(dy, x, [5, 5], m, r, w, has_bias=True), ("dx", "dw", "db")
    ):
        same(got, k(want), f"layer {name}")
    g, gb = f32(rng, 6), f32(rng, 6)
    y, (dx, dw, db) = grads_of(lambda x, w, b: F.group_norm(x, 3, w, b), (x, g, gb), dy)
    ky, m, r = K.group_norm_forward(x, 3, g, gb)
    same(y, k(ky), "group y")
    for got, want, name in zip(
        (dx, dw, db), K.group_norm_backward(dy, x, 3, m, r, g, has_bias=True), ("dx", "dw", "db")
    ):
        same(got, k(want), f"group {name}")


def test_relu_max_pool_dropout(rng):
    x, dy = bf(rng, 2, 3, 9, 8), bf(rng, 2, 3, 9, 8)
    y, (dx,) = grads_of(F.relu, (x,), dy)
    same(y, k(K.relu_forward(x)), "relu y")
    same(dx, k(K.relu_backward(dy, x)), "relu dx")
    y, (dx,) = grads_of(lambda x: F.max_pool2d(x, 3, 2, 1), (x,), bf(rng, 2, 3, 5, 4))
    ky, idx = K.max_pool2d_forward(x, 3, 2, 1)
    same(y, k(ky), "max_pool y")
    assert dx.dtype == torch.bfloat16
    torch.manual_seed(3)
    y = F.dropout(x, 0.3, training=True)
    assert y.dtype == torch.bfloat16 and torch.all((y == 0) | (y.float() != 0))


@pytest.mark.parametrize(
    "name", ["conv2d", "linear", "batch_norm", "layer_norm", "group_norm", "relu", "max_pool2d", "dropout"]
)
def test_opcheck_bf16(rng, name):
    r = lambda *s: bf(rng, *s).requires_grad_()  # noqa: E731
    p = lambda *s: f32(rng, *s).requires_grad_()  # noqa: E731
    cases = {
        "conv2d": (ops.conv2d, (r(2, 4, 7, 9), r(6, 2, 3, 3), r(6), [1, 2], [1, 0], [1, 1], 2)),
        "linear": (ops.linear, (r(3, 5, 7), r(4, 7), r(4))),
        "batch_norm": (ops.batch_norm, (r(4, 3, 5, 5), p(3), p(3), None, None, True, 1e-5)),
        "layer_norm": (ops.layer_norm, (r(4, 3, 5, 6), [5, 6], p(5, 6), p(5, 6), 1e-5)),
        "group_norm": (ops.group_norm, (r(4, 6, 5, 5), 3, None, p(6), 1e-5)),
        "relu": (ops.relu, (r(4, 6, 5, 5),)),
        "max_pool2d": (ops.max_pool2d, (r(2, 3, 9, 8), [3, 3], [2, 2], [1, 1])),
        "dropout": (ops.dropout, (r(4, 6, 5, 5), 0.3, torch.tensor(1234))),
    }
    op, args = cases[name]
    torch.library.opcheck(op, args)
