"""The process group (init from torchrun's environment or explicit arguments), the collectives
fastopt uses with their failures turned into one clear error, and zero-copy torch views of
fastopt's flat buffers.

torch is imported here only, on first use: `import fastopt` needs NumPy alone."""

import datetime
import os
import time

import numpy as np

from .. import _arrays
from .._args import integer, real

__all__ = ["DistributedError", "init", "is_initialized", "rank", "world_size", "barrier", "destroy"]

DEFAULT_TIMEOUT = 300.0  # seconds a collective waits for the other ranks (torch's gloo default is 30 min)


class DistributedError(RuntimeError):
    """A collective failed or timed out: another rank died, stopped answering, or disagrees (world
    size, model). Raised on every rank that notices instead of hanging."""


def torch_modules():
    """(torch, torch.distributed), or ImportError saying what to install."""
    try:
        import torch
        import torch.distributed as dist
    except ImportError:
        raise ImportError(
            "fastopt.distributed runs on torch.distributed: install PyTorch (pip install torch)"
        ) from None
    if not dist.is_available():
        raise ImportError("fastopt.distributed: this PyTorch build has no torch.distributed")
    return torch, dist


class _State:
    timeout = DEFAULT_TIMEOUT
    device = "cpu"
    seconds = 0.0  # time spent in gradient collectives (bench distributed's all-reduce share)


def _env_int(name):
    value = os.environ.get(name)
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{name}: expected an integer in the environment, got {value!r}") from None


def backend_for(backend, device):
    """The backend name, checked against the device the model lives on."""
    if backend is None:
        return "gloo" if device == "cpu" else "nccl"
    if not isinstance(backend, str):
        raise TypeError(f"backend: expected 'gloo' or 'nccl', got {type(backend).__name__}")
    backend = backend.lower()
    if backend not in ("gloo", "nccl"):
        raise ValueError(f"backend: expected 'gloo' (CPU arrays) or 'nccl' (CUDA arrays), got {backend!r}")
    if backend == "nccl" and device == "cpu":
        raise ValueError(
            "backend: 'nccl' moves CUDA arrays only, and this process's device is the CPU; use 'gloo' "
            "(or pass device='cuda:N')"
        )
    if backend == "gloo" and device != "cpu":
        raise ValueError(
            f"backend: 'gloo' for a model on {device}: fastopt reduces CUDA arrays with 'nccl' (gloo "
            "would stage every gradient through the host)"
        )
    return backend


def init(backend=None, rank=None, world_size=None, device=None, init_method=None, timeout=DEFAULT_TIMEOUT):
    """Join the process group; returns (rank, world_size).

    Under torchrun (or any launcher that sets RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT) no
    argument is needed. Otherwise pass rank, world_size and init_method ('tcp://host:port', or
    'env://' with MASTER_ADDR/MASTER_PORT set). device: 'cpu' or 'cuda:N' (default: cuda:LOCAL_RANK
    for backend 'nccl', else the CPU); backend: 'gloo' for the CPU, 'nccl' for CUDA (the default
    follows the device; a backend that does not fit it is a ValueError). timeout: seconds any
    collective waits for the others before raising DistributedError (a dead rank is noticed
    sooner: its connections close). Every rank must agree on world_size: a rank that sees another
    number raises ValueError naming both."""
    torch, dist = torch_modules()
    if dist.is_initialized():
        raise RuntimeError(
            "init: the process group is initialized already (call fastopt.distributed.destroy() first to join another)"
        )
    rank = _env_int("RANK") if rank is None else rank
    world_size = _env_int("WORLD_SIZE") if world_size is None else world_size
    if rank is None or world_size is None:
        raise ValueError(
            "init: no rank/world_size: run under torchrun (which sets RANK and WORLD_SIZE) or pass "
            "rank= and world_size="
        )
    world_size = integer(world_size, "world_size", 1)
    rank = integer(rank, "rank", 0, world_size - 1)
    timeout = real(timeout, "timeout", 0.0, low_open=True)
    if device is None:
        local = _env_int("LOCAL_RANK") or 0
        device = f"cuda:{local}" if backend == "nccl" else "cpu"
    device = _arrays.canonical_device(device)
    backend = backend_for(backend, device)
    if backend == "nccl" and not dist.is_nccl_available():
        raise RuntimeError("backend: 'nccl' is not in this PyTorch build (a CPU-only build?); install a CUDA one")
    if init_method is None:
        if "MASTER_ADDR" not in os.environ or "MASTER_PORT" not in os.environ:
            raise ValueError(
                "init_method: none given and MASTER_ADDR/MASTER_PORT are not set (torchrun sets them); "
                "pass init_method='tcp://host:port'"
            )
        init_method = "env://"
    delta = datetime.timedelta(seconds=timeout)
    store, _, _ = next(dist.rendezvous(init_method, rank, world_size, timeout=delta))
    _check_world_size(store, rank, world_size, timeout)
    dist.init_process_group(backend, store=store, rank=rank, world_size=world_size, timeout=delta)
    _State.timeout, _State.device = timeout, device
    if device != "cpu":
        torch.cuda.set_device(torch.device(device))
    return rank, world_size


def _check_world_size(store, rank, world_size, timeout):
    """Each rank posts its world size; rank 0 reads the others', the others read rank 0's, so a
    launcher that told ranks different sizes fails at once on both sides, not by a timeout."""
    store.set(f"fastopt/world_size/{rank}", str(world_size))
    others = range(1, world_size) if rank == 0 else [0]
    for other in others:
        key = f"fastopt/world_size/{other}"
        try:
            store.wait([key], datetime.timedelta(seconds=timeout))
        except Exception as e:  # noqa: BLE001 - torch raises several kinds for a store timeout
            raise DistributedError(
                f"init: rank {other} never joined within {timeout:g} s (is it running, with the "
                f"same MASTER_ADDR/MASTER_PORT and WORLD_SIZE?) ({e})"
            ) from None
        theirs = int(store.get(key))
        if theirs != world_size:
            raise ValueError(
                f"world_size: rank {rank} was started with world_size {world_size}, rank {other} with "
                f"{theirs}: every rank must be given the same number"
            )


def is_initialized():
    try:
        import torch.distributed as dist
    except ImportError:
        return False
    return dist.is_available() and dist.is_initialized()


def rank():
    """This process's rank (0 when no process group is initialized)."""
    return torch_modules()[1].get_rank() if is_initialized() else 0


def world_size():
    """The number of ranks (1 when no process group is initialized)."""
    return torch_modules()[1].get_world_size() if is_initialized() else 1


def require_init(what):
    if not is_initialized():
        raise RuntimeError(
            f"{what}: no process group; call fastopt.distributed.init() first (under torchrun, or "
            "with rank=, world_size=, init_method=)"
        )


def destroy():
    """Leave the process group (at the end of a run), all ranks together: a rank that tears its
    gloo connections down while a peer still uses them can make that peer's gloo threads abort its
    exit ("terminate called without an active exception"), so every rank first waits at a barrier."""
    if is_initialized():
        dist = torch_modules()[1]
        try:
            dist.barrier()
        except (RuntimeError, dist.DistError):  # a broken group: leave it all the same
            pass
        dist.destroy_process_group()


def collective(what, fn, *args, **kwargs):
    """Run one torch.distributed call; a failure (a dead peer, a timeout) becomes DistributedError
    naming the operation and this rank, raised instead of a hang."""
    _, dist = torch_modules()
    try:
        return fn(*args, **kwargs)
    except (RuntimeError, dist.DistError) as e:
        rank, world = dist.get_rank(), dist.get_world_size()
        # The group is unusable now; left alive, its gloo threads can abort the interpreter's exit
        # ("terminate called without an active exception") after the error below was reported.
        try:
            dist.destroy_process_group()
        except Exception:  # noqa: BLE001 - tearing down a broken group may fail too; the error below stands
            pass
        raise DistributedError(
            f"{what}: failed on rank {rank} of {world}: another rank died or did not answer within the "
            f"{_State.timeout:g} s timeout ({str(e).splitlines()[0] if str(e) else type(e).__name__})"
        ) from e


def barrier(what="barrier"):
    _, dist = torch_modules()
    collective(what, dist.barrier)


def timed(what, fn, *args, **kwargs):
    """collective(), its wall time added to the gradient-communication total (bench)."""
    start = time.perf_counter()
    try:
        return collective(what, fn, *args, **kwargs)
    finally:
        _State.seconds += time.perf_counter() - start


def comm_seconds(reset=False):
    """Seconds spent in gradient collectives since the last reset."""
    value = _State.seconds
    if reset:
        _State.seconds = 0.0
    return value


def as_tensor(array):
    """A torch tensor sharing memory with a fastopt array: torch.from_numpy on the host, DLPack for
    a CUDA array (fastopt.DeviceArray exports __dlpack__). Writes through it land in the array."""
    torch, _ = torch_modules()
    if isinstance(array, np.ndarray):
        return torch.from_numpy(array)
    if _arrays._is_torch(array):
        return array
    return torch.from_dlpack(array)


def all_gather_objects(what, value):
    """[value of rank 0, value of rank 1, ...] of a picklable value (small: shapes, checksums)."""
    _, dist = torch_modules()
    out = [None] * dist.get_world_size()
    collective(what, dist.all_gather_object, out, value)
    return out


def global_sum(what, value):
    """The float64 sum of a Python float over all ranks."""
    torch, dist = torch_modules()
    t = torch.tensor([value], dtype=torch.float64, device=_State.device)
    timed(what, dist.all_reduce, t)
    return float(t.item())
