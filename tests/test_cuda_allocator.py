"""fastopt.cuda.set_allocator: GPU arrays made and freed by the user's allocator (fastopt.torch
installs torch's caching allocator this way). The test allocator hands out pieces of one array
made by fastopt's own pool before it is installed, so the memory is real device memory (on the
emulation too), and records every call."""

import gc

import numpy as np
import pytest
from conftest import fetch

import fastopt
import fastopt.functional as F
from fastopt import optim

pytestmark = pytest.mark.gpu


class Arena:
    """A bump allocator over one pool array, 256-byte aligned, recording live blocks."""

    def __init__(self, nbytes=1 << 22):
        self.backing = fastopt.empty((nbytes,), np.uint8)
        self.base = self.backing.__cuda_array_interface__["data"][0]
        self.size, self.used = nbytes, 0
        self.live, self.freed, self.streams = {}, [], []

    def alloc(self, nbytes, device, stream):
        start = -(-self.used // 256) * 256
        if start + nbytes > self.size:
            raise MemoryError("arena full")
        self.used = start + nbytes
        self.live[self.base + start] = nbytes
        self.streams.append((device, stream))
        return self.base + start

    def free(self, address, nbytes, device, stream):
        assert self.live.pop(address) == nbytes
        self.freed.append(address)

    def owns(self, array):
        address = array.__cuda_array_interface__["data"][0]
        return self.base <= address < self.base + self.size


@pytest.fixture
def arena():
    a = Arena()
    fastopt.cuda.set_allocator(a.alloc, a.free)
    try:
        yield a
    finally:
        fastopt.cuda.set_allocator(None, None)


def test_ops_allocate_through_the_installed_allocator(arena, rng):
    x = rng.standard_normal((2, 3, 9, 9)).astype(np.float32)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    dx, dw = fastopt.to_device(x), fastopt.to_device(w)
    assert arena.owns(dx) and arena.owns(dw)
    y = F.conv2d_forward(dx, dw, None, padding=1)
    assert arena.owns(y)
    np.testing.assert_allclose(fetch(y), fetch(F.conv2d_forward(x, w, None, padding=1)), rtol=1e-5, atol=1e-5)
    r = F.relu_forward(y)
    assert arena.owns(r)
    before = len(arena.live)
    del r, y
    gc.collect()
    assert len(arena.live) == before - 2  # both freed, each into the allocator that made it


def test_optimizer_state_and_norm_scalars_come_from_it(arena, rng):
    p = fastopt.to_device(rng.standard_normal(1000).astype(np.float32))
    opt = optim.AdamW([p], lr=1e-2)
    norm, skipped = opt.step([fastopt.to_device(rng.standard_normal(1000).astype(np.float32))], max_grad_norm=1.0)
    buffers = list(opt.state[0].values())
    assert len(buffers) == 2 and all(arena.owns(b) for b in buffers)  # exp_avg, exp_avg_sq
    assert arena.owns(norm) and arena.owns(skipped)
    assert np.isfinite(float(norm)) and not bool(skipped)
    assert all(device == 0 for device, _ in arena.streams)


def test_switching_back_frees_into_the_allocator_that_made_the_array(rng):
    a = Arena()
    fastopt.cuda.set_allocator(a.alloc, a.free)
    try:
        kept = fastopt.to_device(np.arange(10, dtype=np.float32))
    finally:
        fastopt.cuda.set_allocator(None, None)
    pooled = fastopt.to_device(np.arange(10, dtype=np.float32))
    assert a.owns(kept) and not a.owns(pooled)
    address = kept.__cuda_array_interface__["data"][0]
    del kept
    gc.collect()
    assert a.freed == [address] and not a.live


def test_bad_allocators_are_refused(rng):
    with pytest.raises(ValueError, match="give both alloc and free"):
        fastopt.cuda.set_allocator(lambda n, d, s: 0, None)
    with pytest.raises(TypeError, match="free: expected a callable, got int"):
        fastopt.cuda.set_allocator(lambda n, d, s: 0, 3)
    fastopt.cuda.set_allocator(lambda n, d, s: "nowhere", lambda *a: None)
    try:
        with pytest.raises(TypeError, match="alloc returned str, expected an int address"):
            fastopt.to_device(np.ones(4, np.float32))
    finally:
        fastopt.cuda.set_allocator(None, None)

    def full(n, d, s):
        raise MemoryError("out of memory in the user's allocator")

    fastopt.cuda.set_allocator(full, lambda *a: None)
    try:
        with pytest.raises(
            MemoryError, match=r"cannot be allocated on cuda:0 \(out of memory in the user's allocator\)"
        ):
            fastopt.to_device(np.ones(4, np.float32))
    finally:
        fastopt.cuda.set_allocator(None, None)
    np.testing.assert_array_equal(fetch(fastopt.to_device(np.ones(4, np.float32))), 1.0)  # the pool again
