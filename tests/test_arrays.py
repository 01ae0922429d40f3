"""Argument checking (every bad input is a clear Python exception naming the argument), the
device layer, and build facts."""

import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import torch_with_cuda

import fastopt
from fastopt import optim


def _adam(n=8):
    p = np.zeros(n, np.float32)
    return p, optim.Adam([p])


@pytest.mark.parametrize(
    "make,exc,match",
    [
        (lambda p: [p.astype(np.float64)], TypeError, r"grads\[0\]: expected a float32 array, got float64"),
        (lambda p: [np.zeros(16, np.float32)[::2]], ValueError, r"grads\[0\]: array must be C-contiguous"),
        (lambda p: [np.zeros(9, np.float32)], ValueError, r"grads\[0\]: shape \(9,\) does not match params\[0\]"),
        (lambda p: [p], ValueError, r"share memory"),
        (lambda p: [], ValueError, r"grads: got 0 gradients for 1 parameters"),
        (lambda p: [[1.0] * 8], TypeError, r"grads\[0\]: expected a numpy.ndarray"),
        (lambda p: ["x"], TypeError, r"grads\[0\]"),
    ],
)
def test_bad_gradients(make, exc, match):
    p, opt = _adam()
    before = p.copy()
    with pytest.raises(exc, match=match):
        opt.step(make(p))
    np.testing.assert_array_equal(p, before)


def test_read_only_parameter():
    p = np.zeros(4, np.float32)
    p.flags.writeable = False
    opt = optim.SGD([p], lr=0.1)
    with pytest.raises(ValueError, match=r"params\[0\]: array is read-only"):
        opt.step([np.ones(4, np.float32)])


def test_read_only_gradient_is_fine():
    p = np.zeros(4, np.float32)
    g = np.ones(4, np.float32)
    g.flags.writeable = False
    optim.SGD([p], lr=0.5).step([g])
    np.testing.assert_array_equal(p, -0.5)


def test_overlapping_parameters():
    buf = np.zeros(10, np.float32)
    opt = optim.SGD([buf[:6], buf[4:]], lr=0.1)
    with pytest.raises(ValueError, match=r"params\[1\] and params\[0\] share memory"):
        opt.step([np.ones(6, np.float32), np.ones(6, np.float32)])


def test_gradient_aliasing_state():
    p = np.zeros(4, np.float32)
    opt = optim.SGD([p], lr=0.1, momentum=0.9)
    opt.step([np.ones(4, np.float32)])
    with pytest.raises(ValueError, match=r"share memory"):
        opt.step([opt.state[0]["momentum_buffer"]])


@pytest.mark.parametrize(
    "cls,kwargs,match",
    [
        (optim.SGD, dict(lr=-1.0), "lr"),
        (optim.SGD, dict(momentum=-0.1), "momentum"),
        (optim.SGD, dict(nesterov=True), "nesterov"),
        (optim.SGD, dict(nesterov=True, momentum=0.9, dampening=0.1), "nesterov"),
        (optim.SGD, dict(lr=float("nan")), "lr"),
        (optim.Adam, dict(betas=(1.0, 0.999)), r"betas\[0\]"),
        (optim.Adam, dict(betas=(0.9, -0.1)), r"betas\[1\]"),
        (optim.Adam, dict(betas=(0.9,)), "betas"),
        (optim.AdamW, dict(eps=-1e-8), "eps"),
        (optim.AdamW, dict(weight_decay=-1), "weight_decay"),
        (optim.Adagrad, dict(lr_decay=-1), "lr_decay"),
        (optim.Adagrad, dict(initial_accumulator_value=-1), "initial_accumulator_value"),
        (optim.RMSprop, dict(alpha=-0.5), "alpha"),
        (optim.SGD, dict(foo=1), "unexpected keyword"),
    ],
)
def test_bad_hyperparameters(cls, kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        cls([np.zeros(3, np.float32)], **kwargs)


def test_bad_params():
    with pytest.raises(ValueError, match="empty"):
        optim.SGD([])
    with pytest.raises(TypeError, match=r"params\[0\]: expected float32"):
        optim.SGD([np.zeros(3)])
    p = np.zeros(3, np.float32)
    with pytest.raises(ValueError, match="appears twice"):
        optim.SGD([p, p])
    with pytest.raises(ValueError, match="unknown option"):
        optim.SGD([{"params": [p], "betas": (0.9, 0.9)}])
    with pytest.raises(ValueError, match="max_grad_norm"):
        optim.SGD([p]).step([np.zeros(3, np.float32)], max_grad_norm=-1.0)


def test_lr_edited_to_invalid_value_is_caught_at_step():
    p, opt = _adam()
    opt.param_groups[0]["lr"] = -1.0
    with pytest.raises(ValueError, match="lr"):
        opt.step([np.ones(8, np.float32)])


def test_load_state_dict_mismatch():
    p, opt = _adam()
    opt.step([np.ones(8, np.float32)])
    sd = opt.state_dict()
    _, other = _adam(9)
    with pytest.raises(ValueError, match="shape"):
        other.load_state_dict(sd)
    with pytest.raises(ValueError, match="parameter groups"):
        optim.Adam([{"params": [np.zeros(8, np.float32)]}, {"params": [np.zeros(1, np.float32)]}]).load_state_dict(sd)


def test_native_layer_rejects_inconsistent_calls():
    # The Python layer never sends these, but nothing reachable from Python may crash.
    from fastopt import _C

    p = np.zeros(4, np.float32)
    g = np.zeros(4, np.float32)
    h = _C.Hyper()
    h.kind = _C.OptKind.ADAM
    steps = np.zeros(1, np.int64)
    with pytest.raises(ValueError, match=r"states\[0\]: this rule keeps 2"):
        _C.optim_step([p], [g], [()], steps, [h], [0])
    with pytest.raises(ValueError, match=r"group_of\[0\]: no group 3"):
        _C.optim_step([p], [g], [(np.zeros(4, np.float32), np.zeros(4, np.float32))], steps, [h], [3])
    with pytest.raises(ValueError, match="steps: needs one counter"):
        _C.optim_step([p], [g], [(np.zeros(4, np.float32), np.zeros(4, np.float32))], np.zeros(2, np.int64), [h], [0])
    with pytest.raises(TypeError, match="steps: expected a int64"):
        _C.optim_step([p], [g], [(np.zeros(4, np.float32), np.zeros(4, np.float32))], np.zeros(1, np.int32), [h], [0])


# ------------------------------------------------------------------------------ devices


def test_cuda_availability_is_consistent():
    info = fastopt.build_info()
    assert fastopt.cuda.is_available() == (fastopt.cuda.device_count() > 0)
    if not info["cuda"]:
        assert not fastopt.cuda.is_available()


@pytest.mark.skipif(fastopt.cuda.is_available(), reason="checks the no-GPU behaviour")
def test_device_arrays_need_a_gpu():
    with pytest.raises(RuntimeError, match="CUDA"):
        fastopt.to_device(np.zeros(3, np.float32))
    with pytest.raises(RuntimeError, match="CUDA"):
        fastopt.zeros((2, 3))


def test_build_info():
    info = fastopt.build_info()
    assert info["version"] == fastopt.__version__
    for key in (
        "cuda",
        "cuda_version",
        "cuda_architectures",
        "openmp",
        "simd",
        "simd_compiled",
        "compiler",
        "cpu_threads",
    ):
        assert key in info
    assert info["simd"] in info["simd_compiled"].split(",")
    if info["cuda"]:
        # The default architecture list, unless the build was told otherwise (bench/gpu_check.sh).
        wanted = os.environ.get("FASTOPT_CUDA_ARCHS", "80-real;90")
        assert info["cuda_architectures"] == wanted.replace(";", ",")


def test_cli_info():
    out = subprocess.run([sys.executable, "-m", "fastopt.cli", "info"], capture_output=True, text=True, check=True)
    assert "version" in out.stdout and "simd" in out.stdout and "host_cache_mb" in out.stdout


def test_host_dlpack_layout_is_read_by_numpy(rng):
    # The DLPack structs DeviceArray exports, checked through NumPy's own importer.
    from fastopt import _C

    class Exporter:
        def __init__(self, array):
            self.array = array

        def __dlpack__(self, **kwargs):
            return _C._host_dlpack(self.array)

        def __dlpack_device__(self):
            return (1, 0)

    for dtype in (np.float32, np.float64, np.int32, np.int64, np.uint8, np.bool_):
        x = (rng.standard_normal((3, 5)) * 10).astype(dtype)
        y = np.from_dlpack(Exporter(x))
        assert y.dtype == x.dtype and y.shape == x.shape
        np.testing.assert_array_equal(y, x)
        assert np.shares_memory(x, y)
    del x, y  # the capsule's deleter runs without crashing


@pytest.mark.gpu
def test_device_array_round_trip(rng):
    for dtype in (np.float32, np.float64, np.int64, np.int32, np.uint8):
        for shape in [(0,), (1,), (7, 3), (1031,)]:
            x = (rng.standard_normal(shape) * 100).astype(dtype)
            d = fastopt.to_device(x)
            assert d.shape == x.shape and d.dtype == x.dtype and d.nbytes == x.nbytes and d.size == x.size
            np.testing.assert_array_equal(d.numpy(), x)
            cai = d.__cuda_array_interface__
            assert cai["shape"] == x.shape and cai["typestr"] == x.dtype.str and cai["version"] == 3
            assert cai["data"][0] == d.ptr
    z = fastopt.zeros((4, 5))
    np.testing.assert_array_equal(z.numpy(), np.zeros((4, 5), np.float32))
    assert "DeviceArray(shape=(4, 5)" in repr(z)


@pytest.mark.gpu
def test_device_array_views_share_memory(rng):
    host = rng.standard_normal((6, 4)).astype(np.float32)
    a = fastopt.to_device(host)
    rows = a[2:5]
    assert rows.shape == (3, 4) and rows.ptr == a.ptr + 2 * 4 * 4
    assert np.array_equal(rows.numpy(), host[2:5])
    flat = a.reshape(-1)
    assert flat.shape == (24,) and flat.ptr == a.ptr
    assert np.array_equal(a.reshape(3, 8).numpy(), host.reshape(3, 8))
    assert np.array_equal(a.reshape((2, 3, 4))[1:].numpy(), host.reshape(2, 3, 4)[1:])
    fastopt._arrays.copy_(flat[4:8], np.full(4, 7, np.float32))  # writes land in the base
    assert np.all(a.numpy()[1] == 7)
    assert a[4:].shape == (2, 4) and a[7:].shape == (0, 4) and a[-2:].ptr == a.ptr + 4 * 4 * 4
    with pytest.raises(ValueError, match="shape"):
        a.reshape(5, 5)
    with pytest.raises(ValueError, match="shape"):
        a.reshape(-1, -1)
    with pytest.raises(ValueError, match="step 1"):
        a[::2]


FILLS = [  # (value, dtype): the GPU branch of full() zero-fills, then copies any other value in
    (0.0, np.float32),
    (1.0, np.float32),
    (-0.0, np.float32),
    (np.nan, np.float32),
    (-np.inf, np.float32),
    (0.1, np.float64),
    (-7, np.int64),
    (3, np.int32),
    (0, np.int32),
    (255, np.uint8),
]


@pytest.mark.gpu
@pytest.mark.parametrize("shape", [(), (0,), (1,), (3, 1031)])
@pytest.mark.parametrize("value,dtype", FILLS)
def test_full_on_the_gpu_matches_numpy_bit_for_bit(shape, value, dtype):
    want = np.full(shape, value, dtype)
    got = fastopt._arrays.full(shape, value, dtype, device="cuda")
    assert isinstance(got, fastopt.DeviceArray) and got.shape == shape and got.dtype == want.dtype
    bits = want.reshape(-1).view(np.uint8)  # -0.0 and NaN compared by their bits
    np.testing.assert_array_equal(got.numpy().reshape(-1).view(np.uint8), bits)
    like = fastopt._arrays.full_like(got, value, dtype)
    assert isinstance(like, fastopt.DeviceArray) and like.shape == shape
    np.testing.assert_array_equal(like.numpy().reshape(-1).view(np.uint8), bits)


@pytest.mark.gpu
def test_torch_and_cupy_share_memory_with_device_arrays(rng):
    torch = torch_with_cuda()
    x = rng.standard_normal(100).astype(np.float32)
    d = fastopt.to_device(x)
    t = torch.from_dlpack(d)
    assert t.is_cuda and t.data_ptr() == d.ptr
    t.mul_(2)
    np.testing.assert_allclose(d.numpy(), 2 * x)
    t2 = torch.as_tensor(d, device="cuda")  # via __cuda_array_interface__
    assert t2.data_ptr() == d.ptr


@pytest.mark.gpu
def test_step_on_torch_cuda_tensors_in_place(rng):
    torch = torch_with_cuda()
    init = rng.standard_normal(1000).astype(np.float32)
    g = rng.standard_normal(1000).astype(np.float32)
    p = torch.tensor(init, device="cuda")
    opt = optim.AdamW([p], lr=0.01)
    res = opt.step([torch.tensor(g, device="cuda")], max_grad_norm=1.0)
    assert isinstance(res.norm, fastopt.DeviceArray) and res.norm.shape == ()
    assert float(res.norm.numpy()) == pytest.approx(np.linalg.norm(g.astype(np.float64)), rel=1e-5)
    ref_p = init.copy()
    optim.AdamW([ref_p], lr=0.01).step([g], max_grad_norm=1.0)
    np.testing.assert_allclose(p.cpu().numpy(), ref_p, rtol=1e-6, atol=1e-6)


@pytest.mark.gpu
def test_mixed_devices_rejected(rng):
    p = fastopt.to_device(np.zeros(4, np.float32))
    opt = optim.SGD([p], lr=0.1)
    with pytest.raises(ValueError, match=r"grads\[0\] is on cpu but params\[0\] is on cuda:0"):
        opt.step([np.ones(4, np.float32)])
    with pytest.raises(ValueError, match=r"params\[1\]: on cpu"):
        optim.SGD([p, np.zeros(3, np.float32)])


@pytest.mark.gpu
def test_tensor_over_2_31_elements():
    # int64 indexing end to end: SGD on 2^31 + 5 elements (17 GB of device memory).
    torch = torch_with_cuda()
    n = 2**31 + 5
    p = torch.zeros(n, device="cuda")
    g = torch.ones(n, device="cuda")
    optim.SGD([p], lr=0.5).step([g])
    assert float(p[0]) == -0.5 and float(p[-1]) == -0.5 and float(p[2**31 + 1]) == -0.5
    assert float(fastopt.global_norm([g], np.inf)) == 1.0


def test_torch_cpu_tensors_update_in_place(rng):
    torch = pytest.importorskip("torch")
    init = rng.standard_normal((5, 7)).astype(np.float32)
    grads = [rng.standard_normal((5, 7)).astype(np.float32) for _ in range(3)]
    p_np, p_t = init.copy(), torch.tensor(init)
    o_np, o_t = optim.AdamW([p_np], lr=0.01), optim.AdamW([p_t], lr=0.01)
    for g in grads:
        o_np.step([g], max_grad_norm=1.0)
        o_t.step([torch.tensor(g)], max_grad_norm=1.0)
    np.testing.assert_array_equal(p_t.numpy(), p_np)
    assert isinstance(o_t.state[0]["exp_avg"], np.ndarray)
    assert o_t.state_dict()["state"][0]["step"] == 3
    g = torch.tensor(grads[0])
    assert fastopt.clip_grad_norm_([g], 1.0) == pytest.approx(np.linalg.norm(grads[0].astype(np.float64)), rel=1e-6)


def test_torch_tensor_errors():
    torch = pytest.importorskip("torch")
    p = torch.zeros(4, 4)
    opt = optim.SGD([p], lr=0.1)
    with pytest.raises(ValueError, match=r"grads\[0\]: tensor must be contiguous"):
        opt.step([torch.zeros(4, 4).t()])
    with pytest.raises(TypeError, match=r"grads\[0\]: expected a float32 array, got float64"):
        opt.step([torch.zeros(4, 4, dtype=torch.float64)])
    with pytest.raises(TypeError, match=r"params\[0\]: expected float32"):
        optim.SGD([torch.zeros(3, dtype=torch.float64)])  # bf16/fp16 ones are taken (test_optim_bf16.py)


@pytest.mark.gpu
def test_pinned_host_buffers_and_non_blocking_copies(rng):
    """fastopt.cuda.pinned_empty gives page-locked NumPy arrays (the runtime reports them as host
    memory it can copy from directly); to_device(..., non_blocking=True) from one queues the copy
    and returns, from ordinary memory it copies synchronously, and both give the same array."""
    from ml_dtypes import bfloat16

    for shape, dtype in (((3, 5, 7), np.float32), ((0,), np.float32), ((4, 9), np.int64), ((6,), bfloat16)):
        buf = fastopt.cuda.pinned_empty(shape, dtype)
        assert buf.shape == shape and buf.dtype == dtype and buf.flags.c_contiguous and buf.flags.writeable
        src = rng.standard_normal(shape).astype(dtype)
        np.copyto(buf, src)
        a = fastopt.to_device(buf, non_blocking=True)
        b = fastopt.to_device(src, non_blocking=True)  # pageable: a synchronous copy
        fastopt.cuda.synchronize()
        for d in (a, b):
            assert d.dtype == dtype and np.array_equal(d.numpy().view(np.uint8), src.view(np.uint8))
    with pytest.raises(ValueError, match="shape"):
        fastopt.cuda.pinned_empty((2, -1))


@pytest.mark.skipif(fastopt.cuda.is_available(), reason="checks the no-GPU behaviour")
def test_pinned_host_buffers_need_a_gpu():
    with pytest.raises(RuntimeError, match="pinned_empty: page-locked host memory needs a (CUDA build|usable GPU)"):
        fastopt.cuda.pinned_empty((2,))
