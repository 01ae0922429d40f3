"""linear forward and gradients against the float64 NumPy reference and torch, determinism, and
argument checking.

Tolerance: every output element e is within RTOL * scale(e) of the float64 reference, where
scale(e) is the same sum taken over absolute values (for y: |x| @ |w|.T + |b|), the natural bound
for float32 accumulation error. Sums here run over at most a few thousand terms, blocked by 256
(KC on the CPU), so the observed error is ~1e-7 of that scale; RTOL = 1e-5 leaves room for the
GPU's split-K order."""

import numpy as np
import pytest
from conftest import assert_bits_independent_of_threads, fetch, put

import fastopt.functional as F
from fastopt.reference import linear as ref

RTOL = 1e-5


def assert_close(got, want, scale, name):
    got = fetch(got)
    assert got.dtype == np.float32, name
    assert got.shape == want.shape, name
    err = np.abs(got.astype(np.float64) - want)
    assert np.all(err <= RTOL * scale), f"{name}: max error / scale {np.max(err / np.maximum(scale, 1e-300)):.3g}"


def data(rng, n, i, o, bias=True):
    x = rng.standard_normal((n, i)).astype(np.float32)
    w = rng.standard_normal((o, i)).astype(np.float32)
    b = rng.standard_normal(o).astype(np.float32) if bias else None
    dy = rng.standard_normal((n, o)).astype(np.float32)
    return x, w, b, dy


def check(backend, rng, n, i, o, bias=True, need=(True, True, True)):
    x, w, b, dy = data(rng, n, i, o, bias)
    ax, aw = np.abs(x).astype(np.float64), np.abs(w).astype(np.float64)
    ady = np.abs(dy).astype(np.float64)
    y = F.linear_forward(put(x, backend), put(w, backend), None if b is None else put(b, backend))
    assert_close(y, ref.linear_forward(x, w, b), ref.linear_forward(ax, aw, None if b is None else np.abs(b)), "y")
    got = F.linear_backward(put(dy, backend), put(x, backend), put(w, backend), need=need)
    assert len(got) == 3
    wants = ref.linear_backward(dy, x, w, need=need)
    scales = ref.linear_backward(ady, ax, aw, need=need)
    for name, g, gw, sc, asked in zip(("dx", "dweight", "dbias"), got, wants, scales, need):
        if asked:
            assert_close(g, gw, sc, name)
        else:
            assert g is None, name


# (N, in, out): single elements, empty extents, primes, the layer sizes, several KC
# blocks, thin outputs (rows/columns swapped on the CPU), and products past the CPU's serial
# threshold (OpenMP tasks, GPU split-K).
SHAPES = [
    (1, 1, 1),
    (0, 3, 4),
    (3, 0, 5),
    (4, 5, 0),
    (0, 0, 0),
    (2, 1, 3),
    (1, 7, 1),
    (37, 61, 13),
    (128, 256, 10),
    (128, 64, 10),
    (257, 129, 65),
    (9, 49, 97),
    (3, 1000, 4),
    (600, 3, 2),
    (5, 300, 700),
    (200, 700, 300),
    (129, 513, 47),
]


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("n,i,o", SHAPES)
def test_shapes(backend, rng, n, i, o, bias):
    check(backend, rng, n, i, o, bias)


@pytest.mark.parametrize(
    "need",
    [
        (True, False, False),
        (False, True, False),
        (False, False, True),
        (False, False, False),
        (True, True, False),
        (False, True, True),
    ],
)
def test_need(backend, rng, need):
    check(backend, rng, 19, 23, 29, True, need)


def test_empty_reductions(backend, rng):
    # in = 0: y is the bias (or zeros) exactly; N = 0: dweight and dbias are zeros; out = 0: dx is zeros.
    b = rng.standard_normal(5).astype(np.float32)
    y = fetch(
        F.linear_forward(
            put(np.zeros((3, 0), np.float32), backend), put(np.zeros((5, 0), np.float32), backend), put(b, backend)
        )
    )
    np.testing.assert_array_equal(y, np.broadcast_to(b, (3, 5)))
    x, w = np.zeros((0, 4), np.float32), np.ones((6, 4), np.float32)
    dx, dw, db = F.linear_backward(put(np.zeros((0, 6), np.float32), backend), put(x, backend), put(w, backend))
    assert fetch(dx).shape == (0, 4)
    np.testing.assert_array_equal(fetch(dw), np.zeros((6, 4), np.float32))
    np.testing.assert_array_equal(fetch(db), np.zeros(6, np.float32))
    x, w = np.ones((3, 4), np.float32), np.zeros((0, 4), np.float32)
    dx, dw, db = F.linear_backward(put(np.zeros((3, 0), np.float32), backend), put(x, backend), put(w, backend))
    np.testing.assert_array_equal(fetch(dx), np.zeros((3, 4), np.float32))
    assert fetch(dw).shape == (0, 4) and fetch(db).shape == (0,)


@pytest.mark.parametrize("n,i,o", [(8, 16, 10), (128, 256, 10), (257, 129, 65), (200, 700, 300)])
def test_deterministic(backend, rng, n, i, o):
    x, w, b, dy = data(rng, n, i, o)
    xd, wd, bd, dyd = (put(a, backend) for a in (x, w, b, dy))
    runs = [
        [fetch(F.linear_forward(xd, wd, bd))] + [fetch(g) for g in F.linear_backward(dyd, xd, wd)] for _ in range(2)
    ]
    for a, c in zip(*runs):
        np.testing.assert_array_equal(a, c)


@pytest.mark.parametrize("n,i,o", [(1, 1, 1), (37, 61, 13), (128, 256, 10), (257, 129, 65), (200, 700, 300)])
def test_matches_torch(backend, rng, n, i, o):
    torch = pytest.importorskip("torch")
    x, w, b, dy = data(rng, n, i, o)
    xt, wt, bt = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    yt = torch.nn.functional.linear(xt, wt, bt)
    yt.backward(torch.tensor(dy))
    ax, aw, ady = (np.abs(a).astype(np.float64) for a in (x, w, dy))
    y = F.linear_forward(put(x, backend), put(w, backend), put(b, backend))
    # Both sides are float32 sums in different orders: twice the bound against the exact result.
    scale = ref.linear_forward(ax, aw, np.abs(b))
    assert_close(y, yt.detach().numpy().astype(np.float64), 2 * scale, "y")
    got = F.linear_backward(put(dy, backend), put(x, backend), put(w, backend))
    for name, g, want, sc in zip(("dx", "dweight", "dbias"), got, (xt, wt, bt), ref.linear_backward(ady, ax, aw)):
        assert_close(g, want.grad.numpy().astype(np.float64), 2 * sc, name)


# ---------------------------------------------------------------- the reference itself


def test_reference_matches_torch(rng):
    torch = pytest.importorskip("torch")
    x, w, b, dy = (rng.standard_normal(s) for s in ((7, 5), (3, 5), (3,), (7, 3)))
    xt, wt, bt = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    yt = torch.nn.functional.linear(xt, wt, bt)
    yt.backward(torch.tensor(dy))
    np.testing.assert_allclose(ref.linear_forward(x, w, b), yt.detach().numpy(), rtol=1e-12, atol=1e-12)
    for got, want in zip(ref.linear_backward(dy, x, w), (xt, wt, bt)):
        np.testing.assert_allclose(got, want.grad.numpy(), rtol=1e-12, atol=1e-12)


def test_reference_gradients_are_adjoints(rng):
    x, w, dy = rng.standard_normal((6, 4)), rng.standard_normal((5, 4)), rng.standard_normal((6, 5))
    dx, dw, db = ref.linear_backward(dy, x, w)
    inner = np.vdot(dy, ref.linear_forward(x, w))
    np.testing.assert_allclose(np.vdot(dx, x), inner, rtol=1e-12)
    np.testing.assert_allclose(np.vdot(dw, w), inner, rtol=1e-12)
    np.testing.assert_allclose(db, dy.sum(0), rtol=1e-12)


# ---------------------------------------------------------------- bad input


def _args():
    return np.zeros((4, 3), np.float32), np.zeros((5, 3), np.float32), np.zeros((4, 5), np.float32)


@pytest.mark.parametrize(
    "call,exc,match",
    [
        (lambda x, w, dy: F.linear_forward(x[0], w), ValueError, r"x: expected a 2-D array \(N, in_features\)"),
        (lambda x, w, dy: F.linear_forward(x[None], w), ValueError, r"x: expected a 2-D array"),
        (lambda x, w, dy: F.linear_forward(x, w[0]), ValueError, r"weight: expected a 2-D array"),
        (lambda x, w, dy: F.linear_forward(x, w.T.copy()), ValueError, r"weight: expected shape \(out_features, 3\)"),
        (lambda x, w, dy: F.linear_forward(x, w, np.zeros(4, np.float32)), ValueError, r"bias: expected shape \(5,\)"),
        (lambda x, w, dy: F.linear_forward(x, w, np.zeros((1, 5), np.float32)), ValueError, r"bias: expected shape"),
        (lambda x, w, dy: F.linear_forward(x.astype(np.float64), w), TypeError, r"x: expected a float32 array"),
        (lambda x, w, dy: F.linear_forward(x, w.astype(np.float16)), TypeError, r"weight: unsupported dtype float16"),
        (lambda x, w, dy: F.linear_forward(x, w, np.zeros(5, np.float64)), TypeError, r"bias: expected a float32"),
        (
            lambda x, w, dy: F.linear_forward(np.zeros((4, 6), np.float32)[:, ::2], w),
            ValueError,
            r"x: array must be C-contiguous",
        ),
        (
            lambda x, w, dy: F.linear_forward(x, np.zeros((3, 5), np.float32).T),
            ValueError,
            r"weight: array must be C-contiguous",
        ),
        (lambda x, w, dy: F.linear_forward([[1.0]], w), TypeError, r"x: expected a numpy.ndarray"),
        (lambda x, w, dy: F.linear_backward(dy[:3], x, w), ValueError, r"dy: expected the output shape \(4, 5\)"),
        (lambda x, w, dy: F.linear_backward(dy.T.copy(), x, w), ValueError, r"dy: expected the output shape"),
        (lambda x, w, dy: F.linear_backward(dy.astype(np.float64), x, w), TypeError, r"dy: expected a float32 array"),
        (lambda x, w, dy: F.linear_backward(dy, x, w[:, :2].copy()), ValueError, r"weight: expected shape"),
        (lambda x, w, dy: F.linear_backward(dy, x[0], w), ValueError, r"x: expected a 2-D array"),
        (lambda x, w, dy: F.linear_backward(dy, x, w, need=(True, True)), ValueError, r"need: expected 3 flags"),
    ],
)
def test_bad_arguments(call, exc, match):
    with pytest.raises(exc, match=match):
        call(*_args())


def test_read_only_inputs_are_fine(rng):
    x, w, b, dy = data(rng, 3, 4, 5)
    for a in (x, w, b, dy):
        a.flags.writeable = False
    y = F.linear_forward(x, w, b)
    np.testing.assert_allclose(y, ref.linear_forward(x, w, b), rtol=1e-5, atol=1e-5)
    for got, want in zip(F.linear_backward(dy, x, w), ref.linear_backward(dy, x, w)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_thread_count_does_not_change_bits(tmp_path):
    # Every output is reduced by one thread in fixed KC blocks, the bias in fixed row blocks: one
    # thread and several give identical bits, on both the serial and the OpenMP paths.
    assert_bits_independent_of_threads(
        tmp_path,
        (
            "rng = np.random.default_rng(7)\n"
            "for n, i, o in [(128, 256, 10), (300, 700, 200), (3000, 40, 300), (5, 2000, 900)]:\n"
            "    x = rng.standard_normal((n, i)).astype(np.float32)\n"
            "    w = rng.standard_normal((o, i)).astype(np.float32)\n"
            "    b = rng.standard_normal(o).astype(np.float32)\n"
            "    dy = rng.standard_normal((n, o)).astype(np.float32)\n"
            "    out += [F.linear_forward(x, w, b), *F.linear_backward(dy, x, w)]\n"
        ),
    )
