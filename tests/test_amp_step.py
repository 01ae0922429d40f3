"""GradScaler's fused path in the native step (issue 16): the step unscales the gradients itself
and skips itself on an Inf, so no pass rewrites the gradients. On the CPU the binding takes
1/scale (inv_scale); on the GPU it takes GradScaler's two device scalars (grad_scale, found_inf)
and the kernels read them there, so the host never waits for the GPU.

Exactness: the scale S is a power of two (as GradScaler's always is), so g*S is exact, and the
step's multiplier 1/S undoes it exactly: every result must equal the step on the unscaled
gradients bit for bit, the clipped step and its reported norm included.
"""

import numpy as np
import pytest
from conftest import fetch, put

from fastopt import _C

S = 1024.0


def hyper(kind=_C.OptKind.ADAM):
    h = _C.Hyper()
    h.kind = kind
    h.lr, h.beta1, h.beta2, h.eps = 1e-2, 0.9, 0.999, 1e-8
    h.weight_decay, h.decoupled_weight_decay = 0.05, True
    return h


def setup(rng, backend, sizes=(7, 33, 1000)):
    """Two copies (plain, scaled) of params, states and step counts; grads and grads * S."""
    params = [rng.standard_normal(n).astype(np.float32) for n in sizes]
    grads = [rng.standard_normal(n).astype(np.float32) for n in sizes]
    runs = []
    for scale in (1.0, S):
        runs.append(
            dict(
                params=[put(p, backend) for p in params],
                grads=[put(g * np.float32(scale), backend) for g in grads],
                states=[(put(np.zeros(n, np.float32), backend), put(np.zeros(n, np.float32), backend)) for n in sizes],
                steps=put(np.zeros(len(sizes), np.int64), backend),
            )
        )
    return runs


def step(run, backend, max_norm=None, scale=None, found_inf=0.0):
    kw = {}
    if scale is not None:
        if backend == "cpu":
            kw["inv_scale"] = 1.0 / scale
        else:
            kw["grad_scale"] = put(np.array(scale, np.float32), backend)
            kw["found_inf"] = put(np.array(found_inf, np.float32), backend)
    n = len(run["params"])
    return _C.optim_step(
        run["params"], run["grads"], run["states"], run["steps"], [hyper()], [0] * n, max_norm, False, 0, None, **kw
    )


def snapshot(run):
    return [fetch(p) for p in run["params"]] + [fetch(s) for st in run["states"] for s in st] + [fetch(run["steps"])]


@pytest.mark.parametrize("max_norm", [None, 0.5])
def test_fused_unscale_equals_step_on_unscaled_grads(rng, backend, max_norm):
    plain, scaled = setup(rng, backend)
    for _ in range(3):
        norm_a, _ = step(plain, backend, max_norm)
        norm_b, _ = step(scaled, backend, max_norm, scale=S)
        if max_norm is not None:  # the reported norm is the unscaled gradients'
            assert fetch(norm_a) == fetch(norm_b)
    for a, b in zip(snapshot(plain), snapshot(scaled)):
        np.testing.assert_array_equal(a, b)
    assert fetch(scaled["steps"]).tolist() == [3, 3, 3]


@pytest.mark.gpu
@pytest.mark.parametrize("max_norm", [None, 0.5])
def test_found_inf_on_the_device_skips_everything(rng, max_norm):
    backend = "cuda"
    _, scaled = setup(rng, backend)
    step(scaled, backend, max_norm, scale=S)
    before = snapshot(scaled)
    step(scaled, backend, max_norm, scale=S, found_inf=1.0)
    for a, b in zip(before, snapshot(scaled)):
        np.testing.assert_array_equal(a, b)  # params, states and the step counts too
    step(scaled, backend, max_norm, scale=S)  # and the next step runs again
    assert fetch(scaled["steps"]).tolist() == [2, 2, 2]


@pytest.mark.gpu
def test_device_scalars_are_checked(rng):
    backend = "cuda"
    _, run = setup(rng, backend, sizes=(5,))
    args = (run["params"], run["grads"], run["states"], run["steps"], [hyper()], [0])
    with pytest.raises(ValueError, match="grad_scale: must hold one value"):
        _C.optim_step(*args, grad_scale=put(np.ones(2, np.float32), backend))
    with pytest.raises(TypeError, match="found_inf"):
        _C.optim_step(*args, found_inf=put(np.zeros(1, np.float64), backend))
    with pytest.raises(ValueError, match="inv_scale: the host-side unscale is for CPU"):
        _C.optim_step(*args, inv_scale=0.5)
    assert fetch(run["steps"]).tolist() == [0]  # nothing ran


def test_device_scalars_refused_for_cpu_parameters(rng):
    _, run = setup(rng, "cpu", sizes=(5,))
    args = (run["params"], run["grads"], run["states"], run["steps"], [hyper()], [0])
    for name in ("grad_scale", "found_inf"):
        with pytest.raises(ValueError, match=f"{name}: a device scalar is for GPU parameters"):
            _C.optim_step(*args, **{name: np.ones(1, np.float32)})
    assert fetch(run["steps"]).tolist() == [0]
