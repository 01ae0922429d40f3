"""`fastopt train --nproc N`: N local ranks of one training run, and what each rank changes.

The launcher starts N copies of the same command with torchrun's environment (RANK, LOCAL_RANK,
WORLD_SIZE, MASTER_ADDR=127.0.0.1, MASTER_PORT on a free port, OMP_NUM_THREADS = cores / N);
a command started by torchrun (several machines) gets the same environment from torchrun and
runs the same way. In each rank: the process group joins, the model is wrapped in DataParallel
(SyncBatchNorm first with --sync-bn), and the rank trains on its own 1 / N of the training split
(--batch-size is per rank, as with torch DDP: the global batch is N times larger). Rank 0 alone
writes into --out (logs, curves, checkpoints); the others write nowhere the user sees (a scratch
folder, removed at exit) and print nothing but errors.
"""

import atexit
import dataclasses
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

from . import core

__all__ = ["in_distributed_run", "spawn", "setup", "wrap"]


def in_distributed_run():
    """Whether this process is one rank of several (started by spawn or torchrun)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1
    except ValueError:
        return False


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def refuse(args):
    """ValueError for the modes that run in one process only."""
    for option in ("search", "lr_find", "sanity"):
        if getattr(args, option, None):
            raise ValueError(f"--{option.replace('_', '-')}: runs in one process; leave out --nproc")


def rank_env(rank, nproc, port, threads=None):
    """os.environ plus torchrun's variables for local rank `rank` of nproc (MASTER_PORT = port),
    and OMP_NUM_THREADS = cores / nproc unless set (threads: set it to that)."""
    env = dict(
        os.environ,
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(nproc),
        LOCAL_WORLD_SIZE=str(nproc),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    default = str(max(1, (os.cpu_count() or 1) // nproc))
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    env.setdefault("OMP_NUM_THREADS", default)
    return env


def spawn(args, argv, command=("train",), poll=0.2):
    """Run `fastopt <command> argv` as args.nproc local ranks; returns the first non-zero exit
    code (0 when all succeed). When one rank fails the others are stopped (they would otherwise
    wait for it until the collective timeout)."""
    refuse(args)
    nproc = args.nproc
    port = free_port()
    procs = [
        subprocess.Popen([sys.executable, "-m", "fastopt.cli", *command, *argv], env=rank_env(rank, nproc, port))
        for rank in range(nproc)
    ]
    try:
        while True:
            codes = [p.poll() for p in procs]
            failed = [c for c in codes if c not in (None, 0)]
            if failed or all(c == 0 for c in codes):
                break
            time.sleep(poll)
    except KeyboardInterrupt:
        failed = [130]
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    if failed:
        rank = next(r for r, p in enumerate(procs) if p.returncode == failed[0])
        print(
            f"fastopt train --nproc {nproc}: rank {rank} exited with code {failed[0]}; the other ranks were stopped",
            file=sys.stderr,
        )
        return failed[0]
    return 0


def setup(args, data):
    """In one rank of a distributed run: join the process group, keep this rank's share of the
    training split (every rank the same number of images, the remainder dropped), and on ranks
    other than 0 silence the output and point --out at a scratch folder. Returns the data."""
    from .. import cuda

    refuse(args)
    local = int(os.environ.get("LOCAL_RANK", "0"))
    gpu = args.device.startswith("cuda") or (args.device == "auto" and cuda.has_gpu())
    args.device = f"cuda:{local}" if gpu else "cpu"
    rank, world = core.init(device=args.device)
    n = len(data.train) // world
    if n < 1:
        raise ValueError(f"--nproc: {world} ranks but only {len(data.train)} training images")
    part = slice(rank * n, (rank + 1) * n)
    train = dataclasses.replace(data.train, x=data.train.x[part], y=data.train.y[part])
    if rank != 0:
        args.quiet = True
        args.out = tempfile.mkdtemp(prefix=f"fastopt-rank{rank}-")
        atexit.register(shutil.rmtree, args.out, True)
        sys.stdout = open(os.devnull, "w")  # rank 0 reports; the others' errors still reach stderr
    atexit.register(core.destroy)
    return dataclasses.replace(data, train=train)


def wrap(model, args):
    """The model a rank trains: DataParallel (SyncBatchNorm in place of BatchNorm with --sync-bn);
    the model itself outside a distributed run."""
    if not core.is_initialized():
        return model
    from .parallel import DataParallel
    from .syncbn import convert_sync_batchnorm

    if getattr(args, "sync_bn", False):
        model = convert_sync_batchnorm(model)
    return DataParallel(model)
