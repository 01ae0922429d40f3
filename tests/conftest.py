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


def assert_bits_independent_of_threads(tmp_path, body):
    """Runs `body` (Python filling the list `out` with arrays, numpy as np and fastopt.functional
    as F imported) under OMP_NUM_THREADS 1, 2 and 3 and asserts identical bits."""
    import os
    import subprocess
    import sys

    script = tmp_path / "run.py"
    script.write_text(
        "import sys, numpy as np, fastopt.functional as F\nout = []\n" + body + "np.savez(sys.argv[1], *out)\n"
    )
    results = []
    for threads in ("1", "2", "3"):
        path = tmp_path / f"t{threads}.npz"
        subprocess.run(
            [sys.executable, str(script), str(path)], check=True, env={**os.environ, "OMP_NUM_THREADS": threads}
        )
        results.append(np.load(path))
    for other in results[1:]:
        for key in results[0].files:
            np.testing.assert_array_equal(results[0][key], other[key], err_msg=key)


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
