"""fastopt.distributed: data-parallel training and sharded optimizer state on torch.distributed
(gloo between CPU processes, NCCL between GPUs; launched by torchrun or `fastopt train --nproc N`).

- init(): join the process group (torchrun's environment, or rank/world_size/init_method).
- DataParallel(model): rank 0's parameters at start, gradients averaged by one all-reduce of the
  flat gradient buffer (a zero-copy torch view); the optimizer's fused clipping then clips by
  the global norm.
- SyncBatchNorm / convert_sync_batchnorm: batch statistics over every rank's batch.
- ZeroOptimizer: ZeRO stage 1, each rank stepping and keeping the state of one contiguous slice
  of the flat buffer; save_checkpoint / load_checkpoint write and read world-size-independent
  files (rank 0 writes, atomically).

torch is needed by this package only (imported on first use)."""

from .core import DistributedError, barrier, destroy, init, is_initialized, rank, world_size
from .parallel import DataParallel
from .syncbn import SyncBatchNorm, convert_sync_batchnorm
from .zero import ZeroOptimizer, load_checkpoint, save_checkpoint

__all__ = [
    "DistributedError",
    "init",
    "destroy",
    "is_initialized",
    "rank",
    "world_size",
    "barrier",
    "DataParallel",
    "SyncBatchNorm",
    "convert_sync_batchnorm",
    "ZeroOptimizer",
    "save_checkpoint",
    "load_checkpoint",
]
