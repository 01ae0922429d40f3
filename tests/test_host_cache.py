"""Large CPU outputs come from a cache of freed blocks (cpp/bindings/host_cache.h): a block freed by
one output serves the next of its size, views keep theirs, small outputs and a cap of 0 bypass it,
and the cap bounds what it holds."""

import subprocess
import sys

import numpy as np

import fastopt
import fastopt.functional as F

BIG = (5, 1 << 20)  # 20 MiB of float32: past the cache's 4 MiB floor


def test_a_freed_output_serves_the_next(rng):
    x = rng.standard_normal(BIG).astype(np.float32)
    y = F.relu_forward(x)
    at = y.ctypes.data
    np.testing.assert_array_equal(y, np.maximum(x, 0))
    del y
    hits = fastopt.host_cache_info()["hits"]
    x2 = rng.standard_normal(BIG).astype(np.float32)
    y2 = F.relu_forward(x2)
    assert y2.ctypes.data == at and fastopt.host_cache_info()["hits"] == hits + 1
    np.testing.assert_array_equal(y2, np.maximum(x2, 0))  # every element rewritten
    assert y2.flags.c_contiguous and y2.flags.writeable and y2.dtype == np.float32


def test_a_view_keeps_its_block(rng):
    x = rng.standard_normal(BIG).astype(np.float32)
    y = F.relu_forward(x)
    view = y[1:]
    del y
    y2 = F.relu_forward(-x)
    np.testing.assert_array_equal(view, np.maximum(x[1:], 0))
    assert not np.shares_memory(view, y2)


def test_small_outputs_bypass_it(rng):
    before = fastopt.host_cache_info()
    y = F.relu_forward(rng.standard_normal(1000).astype(np.float32))
    after = fastopt.host_cache_info()
    assert y.flags.owndata
    assert (after["hits"], after["misses"]) == (before["hits"], before["misses"])


def test_empty_host_cache(rng):
    y = F.relu_forward(rng.standard_normal(BIG).astype(np.float32))
    del y
    assert fastopt.host_cache_info()["cached_bytes"] >= 20 << 20
    fastopt.empty_host_cache()
    assert fastopt.host_cache_info()["cached_bytes"] == 0


def _run(code, cache_mb):
    env_code = f"import os; os.environ['FASTOPT_HOST_CACHE_MB'] = {cache_mb!r}\n"
    run = subprocess.run([sys.executable, "-c", env_code + code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    return run.stdout


def test_cap_zero_turns_it_off():
    out = _run(
        "import numpy as np, fastopt, fastopt.functional as F\n"
        "y = F.relu_forward(np.ones((5, 1 << 20), np.float32))\n"
        "print(y.flags.owndata, fastopt.host_cache_info()['cap_bytes'], y.min())\n",
        "0",
    )
    assert out.split() == ["True", "0", "1.0"]


def test_the_cap_bounds_what_it_holds():
    # 30 MiB: the first freed 20 MiB block stays, the second does not fit beside it and is freed.
    out = _run(
        "import numpy as np, fastopt, fastopt.functional as F\n"
        "a = F.relu_forward(np.ones((5, 1 << 20), np.float32))\n"
        "b = F.relu_forward(np.ones((6, 1 << 20), np.float32))\n"
        "del a, b\n"
        "print(fastopt.host_cache_info()['cached_bytes'] >> 20)\n"
        "c = F.relu_forward(np.ones((5, 1 << 20), np.float32))\n"  # 20 MiB: served from the cache
        "print(fastopt.host_cache_info()['hits'])\n"
        "keep = c\n",
        "30",
    )  # alive at exit: the interpreter frees it during shutdown
    assert out.split() == ["20", "1"]
