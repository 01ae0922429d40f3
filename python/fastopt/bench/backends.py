"""The contenders. Each maker returns a zero-argument `step` callable that performs one full
optimizer step on its own copy of the data, or raises Unavailable with a reason for the table.

Copies ('copy-fastopt', 'copy-numpy', 'copy-torch') are pseudo-backends: a copy with the case's
working set (cases.py), timed in the same rounds as the optimizers so the ceiling is measured
under the same conditions (this matters on a shared, noisy CPU).
"""

import numpy as np

import fastopt


class Unavailable(Exception):
    pass


def torch_or_none():
    try:
        import torch
    except Exception:
        return None
    return torch


# ------------------------------------------------------------------------------ fastopt
def fastopt_step(case, device, host_p, host_g):
    if device == "cpu":
        params = [p.copy() for p in host_p]
        grads = [g.copy() for g in host_g]
    else:
        params = [fastopt.to_device(p) for p in host_p]
        grads = [fastopt.to_device(g) for g in host_g]
    opt = getattr(fastopt.optim, case.optimizer)(params, **case.kwargs)
    clip = 1.0 if case.clip else None
    return lambda: opt.step(grads, max_grad_norm=clip)


def numpy_ref_step(case, device, host_p, host_g):
    if device != "cpu":
        raise Unavailable("CPU only")
    try:
        from fastopt.reference import optim as ref

        ref_step = ref.step
    except (ImportError, AttributeError) as e:
        raise Unavailable(f"fastopt.reference.optim.step missing ({e})") from e
    params = [p.astype(np.float64) for p in host_p]
    grads = [g.astype(np.float64) for g in host_g]
    states = [{} for _ in params]
    hypers = [dict(case.kwargs)] * len(params)
    clip = 1.0 if case.clip else None
    return lambda: ref_step(case.ref_rule, params, grads, states, hypers, max_grad_norm=clip)


# -------------------------------------------------------------------------------- torch
def _torch_params(torch, device, host_p, host_g):
    dev = "cpu" if device == "cpu" else "cuda"
    params = []
    for p, g in zip(host_p, host_g):
        t = torch.from_numpy(p.copy()).to(dev).requires_grad_(True)
        t.grad = torch.from_numpy(g.copy()).to(dev)
        params.append(t)
    return params


def torch_params_or_unavailable(device, host_p, host_g):
    """(torch, the case's parameters with .grad as torch tensors on device), or Unavailable."""
    torch = torch_or_none()
    if torch is None:
        raise Unavailable("torch not installed")
    if device != "cpu" and not torch.cuda.is_available():
        raise Unavailable("torch without CUDA")
    return torch, _torch_params(torch, device, host_p, host_g)


def torch_step(mode):
    """mode: 'foreach' or 'fused'. For a clip case the peer is torch's usual recipe,
    clip_grad_norm_ (its default implementation choice) then the step."""

    def make(case, device, host_p, host_g):
        torch, params = torch_params_or_unavailable(device, host_p, host_g)
        try:
            opt = getattr(torch.optim, case.optimizer)(params, **case.kwargs, **{mode: True})
        except (RuntimeError, TypeError, ValueError) as e:
            raise Unavailable(f"torch {mode} {case.optimizer}: {str(e).splitlines()[0][:80]}") from e
        clip = torch.nn.utils.clip_grad_norm_

        def step():
            if case.clip:
                clip(params, 1.0)
            opt.step()

        try:
            step()  # some unsupported combinations fail only at the first step
        except (RuntimeError, TypeError, ValueError) as e:
            raise Unavailable(f"torch {mode} {case.optimizer}: {str(e).splitlines()[0][:80]}") from e
        return step

    return make


# ---------------------------------------------------------------------------------- copies
def _copy_len(case, host_p):
    return sum(p.size for p in host_p) * case.working_set // 8


def copy_fastopt(case, device, host_p, host_g):
    n = _copy_len(case, host_p)
    if device == "cpu":
        src, dst = np.ones(n, np.float32), np.zeros(n, np.float32)
    else:
        src, dst = fastopt.zeros((n,), np.float32), fastopt.zeros((n,), np.float32)
    return lambda: fastopt._C.copy_(dst, src)


def copy_numpy(case, device, host_p, host_g):
    if device != "cpu":
        raise Unavailable("CPU only")
    n = _copy_len(case, host_p)
    src, dst = np.ones(n, np.float32), np.zeros(n, np.float32)
    return lambda: np.copyto(dst, src)


def copy_torch(case, device, host_p, host_g):
    torch = torch_or_none()
    if torch is None or (device != "cpu" and not torch.cuda.is_available()):
        raise Unavailable("torch not installed" if torch is None else "needs torch with CUDA")
    n = _copy_len(case, host_p)
    dev = "cpu" if device == "cpu" else "cuda"
    src, dst = torch.ones(n, device=dev), torch.zeros(n, device=dev)
    return lambda: dst.copy_(src)


def backends_for(case, device):
    """(name, maker) in table order; the names are the report's backend labels."""
    fo = f"fastopt-{device}"
    prefix = "torch-clip+" if case.clip else "torch-"
    rows = [(fo, fastopt_step)]
    if device == "cpu":
        rows.append(("numpy-ref", numpy_ref_step))
    rows += [(prefix + "foreach", torch_step("foreach")), (prefix + "fused", torch_step("fused"))]
    return rows


def copies_for(device):
    """The ceiling is the best of these: no single memcpy is the fastest everywhere."""
    rows = [("copy-fastopt", copy_fastopt)]
    if device == "cpu":
        rows.append(("copy-numpy", copy_numpy))
    return rows + [("copy-torch", copy_torch)]
