"""Tests run on every backend present: 'cpu' always, 'cuda' when a GPU is usable."""
import numpy as np
import pytest

import fastopt

# The cuda variant carries the gpu marker at collection time, so `pytest -m gpu` selects it and
# machines without a GPU report it as skipped rather than silently dropping it.
BACKENDS = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


def pytest_collection_modifyitems(config, items):
    if fastopt.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="no usable CUDA GPU here")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def torch_with_cuda():
    """torch, for tests that share GPU memory with it; skips without a CUDA torch and GPU (the
    FASTOPT_CUDA=EMULATE build has no GPU to share)."""
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch without a usable CUDA device")
    return torch


@pytest.fixture(params=BACKENDS)
def backend(request):
    return request.param


def put(x, backend):
    """A float32 (or given dtype) copy of x on the backend."""
    x = np.ascontiguousarray(x)
    return x.copy() if backend == "cpu" else fastopt.to_device(x)


def fetch(x):
    """NumPy copy of an array from any backend (0-d arrays and Python scalars too)."""
    if isinstance(x, (float, int, bool, np.generic)):
        return np.asarray(x)
    return x.copy() if isinstance(x, np.ndarray) else x.numpy()


@pytest.fixture
def rng(request):
    # Fresh inputs every run, but reproducible from the printed seed when a test fails.
    seed = np.random.SeedSequence().entropy % (2**32)
    print(f"rng seed {seed}")
    return np.random.default_rng(seed)
