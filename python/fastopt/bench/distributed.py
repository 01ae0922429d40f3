"""Data-parallel benchmark: step time and the gradient all-reduce's share for 1 and 2 processes
on this machine (gloo), DataParallel and ZeRO-1; and, on paper, the bytes a ring moves per step
for all-reduce vs ZeRO-1 (reduce-scatter + all-gather) at 8 and 64 ranks.

On a CPU host the ranks share the cores and the memory bus: the 2-process rows measure the
overhead and the correctness path, not scaling (each rank gets cores / N threads). GPU rows with
NCCL need a machine with several GPUs (--device cuda; not run on a single-GPU host).

  python -m fastopt.bench.distributed [--model resnet20|cnn|mlp] [--batch B] [--steps S] [--quick] [--out DIR]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

from .report import cpu_model, header, save

# Ring algorithms, P ranks, S elements of b bytes, per rank per step (sent; received the same):
# all-reduce = reduce-scatter + all-gather = 2 (P - 1) / P * S * b. ZeRO-1 reduce-scatters the
# gradients and all-gathers the updated parameters: the same 2 (P - 1) / P * S * b, but every rank
# keeps the optimizer state of S / P elements only.
PAPER_MODELS = [("ResNet-50", 25.6e6), ("1B-parameter model", 1.0e9)]
PAPER_RANKS = [8, 64]
GRAD_BYTES = 4  # float32 gradients and parameters
ADAM_STATE_BYTES = 8  # exp_avg + exp_avg_sq, float32
LINK_GBPS = 25.0  # GB/s per rank: a 200 Gb/s InfiniBand port, for the time column


def paper_rows():
    rows = []
    for name, params in PAPER_MODELS:
        for p in PAPER_RANKS:
            ring = (p - 1) / p * params * GRAD_BYTES
            rows.append(
                dict(
                    model=name,
                    params=params,
                    ranks=p,
                    allreduce_bytes=2 * ring,
                    zero1_reduce_scatter_bytes=ring,
                    zero1_all_gather_bytes=ring,
                    zero1_bytes=2 * ring,
                    allreduce_ms_at_link=2 * ring / (LINK_GBPS * 1e9) * 1e3,
                    adam_state_bytes_unsharded=params * ADAM_STATE_BYTES,
                    adam_state_bytes_zero1=params * ADAM_STATE_BYTES / p,
                )
            )
    return rows


def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="fastopt bench distributed", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", choices=["resnet20", "cnn", "mlp"], default="resnet20")
    ap.add_argument("--batch", type=int, default=64, help="per process (the global batch grows with N)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps (default 20, quick 5)")
    ap.add_argument("--nproc", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--quick", action="store_true", help="fewer steps")
    ap.add_argument("--paper-only", action="store_true", help="only the bytes-per-step model (no processes)")
    ap.add_argument("--out", help="write results.json, results.md and chart.png here")
    ap.add_argument("--worker", help=argparse.SUPPRESS)  # internal: one rank's run, its result file
    args = ap.parse_args(argv)
    for name in ("batch", "steps"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            ap.error(f"argument --{name}: expected an integer >= 1, got {getattr(args, name)}")
    if any(n < 1 for n in args.nproc):
        ap.error(f"argument --nproc: expected integers >= 1, got {args.nproc}")
    return args


# --------------------------------------------------------------------------- one rank
def _model(name):
    from .. import nn
    from ..nn.models import resnet, small_cnn

    if name == "resnet20":
        return resnet(20, 10, in_channels=3), (3, 32, 32)
    if name == "cnn":
        return small_cnn(1, 10), (1, 8, 8)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)), (1, 8, 8)


def worker(args):
    """One rank: warm-up, then timed steps of DataParallel and of ZeRO-1; rank 0 writes the result."""
    from .. import distributed as dist, nn, optim
    from ..distributed import core

    rank, world = dist.init()
    model, shape = _model(args.model)
    steps = args.steps or (5 if args.quick else 20)
    rng = np.random.default_rng(rank)
    x = rng.standard_normal((args.batch, *shape)).astype(np.float32)
    y = rng.integers(0, 10, args.batch)
    loss = nn.SoftmaxCrossEntropy(topk=1)
    out = {}
    for mode in ("allreduce", "zero1"):
        net = dist.DataParallel(model) if mode == "allreduce" else model
        if model.store is None:
            net.build(seed=0)
        groups = model.store.param_groups(5e-4)
        opt = (
            optim.AdamW(groups, lr=1e-3)
            if mode == "allreduce"
            else dist.ZeroOptimizer(model, groups, optim.AdamW, lr=1e-3)
        )

        def step():
            loss.forward(net.forward(x, training=True), y)
            if mode == "allreduce":
                net.backward(loss.backward())
                opt.step(model.store.grads, max_grad_norm=5.0)
            else:
                model.backward(loss.backward())
                opt.step(max_grad_norm=5.0)

        for _ in range(2):
            step()
        core.barrier()
        times, comm = [], []
        for _ in range(steps):
            core.comm_seconds(reset=True)
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)
            comm.append(core.comm_seconds())
        out[mode] = dict(
            step_ms=statistics.median(times) * 1e3,
            comm_ms=statistics.median(comm) * 1e3,
            comm_share=float(np.sum(comm) / np.sum(times)),
        )
    if rank == 0:
        with open(args.worker, "w") as f:
            json.dump(dict(world=world, params=model.store.size, **out), f)
    dist.destroy()


def _run_ranks(args, nproc, path):
    from ..distributed.launch import free_port, rank_env

    port = free_port()
    threads = max(1, (os.cpu_count() or 1) // nproc)
    argv = (
        [
            sys.executable,
            "-m",
            "fastopt.bench.distributed",
            "--worker",
            path,
            "--model",
            args.model,
            "--batch",
            str(args.batch),
        ]
        + (["--steps", str(args.steps)] if args.steps else [])
        + (["--quick"] if args.quick else [])
    )
    procs = [subprocess.Popen(argv, env=rank_env(r, nproc, port, threads)) for r in range(nproc)]
    codes = [p.wait() for p in procs]
    if any(codes):
        raise SystemExit(f"fastopt bench distributed: a rank of the {nproc}-process run failed (exit codes {codes})")
    with open(path) as f:
        return json.load(f)


def run(args):
    hdr = header(
        dict(model=args.model, batch=args.batch, steps=args.steps, quick=args.quick, nproc=args.nproc), ["cpu"]
    )
    rows = []
    if not args.paper_only:
        with tempfile.TemporaryDirectory() as tmp:
            for n in args.nproc:
                print(
                    f"fastopt bench distributed: {n} process(es), {args.model}, batch {args.batch} each",
                    file=sys.stderr,
                    flush=True,
                )
                result = _run_ranks(args, n, os.path.join(tmp, f"r{n}.json"))
                for mode in ("allreduce", "zero1"):
                    r = result[mode]
                    rows.append(
                        dict(
                            device="cpu",
                            nproc=n,
                            mode=mode,
                            params=result["params"],
                            step_ms=r["step_ms"],
                            comm_ms=r["comm_ms"],
                            comm_share=r["comm_share"],
                            samples_per_s=n * args.batch / (r["step_ms"] / 1e3),
                        )
                    )
    return dict(
        header=hdr, devices={"cpu": dict(name=cpu_model(), clock="time.perf_counter")}, rows=rows, paper=paper_rows()
    )


def _gb(x):
    return f"{x / 1e9:.3g} GB" if x >= 1e8 else f"{x / 1e6:.3g} MB"


def markdown(doc):
    lines = []
    if doc["rows"]:
        lines += [
            "## Step time on this machine (gloo, CPU): a correctness-and-overhead figure",
            "",
            "| processes | mode | params | step (ms, median) | gradient comm (ms) | comm share | samples/s |",
            "|---:|---|---:|---:|---:|---:|---:|",
        ]
        for r in doc["rows"]:
            lines.append(
                f"| {r['nproc']} | {r['mode']} | {r['params']:,} | {r['step_ms']:.2f} | {r['comm_ms']:.2f} | "
                f"{100 * r['comm_share']:.1f}% | {r['samples_per_s']:.0f} |"
            )
        lines.append("")
    lines += [
        "## On paper: bytes each rank sends per step (ring algorithms, float32)",
        "",
        f"all-reduce = 2 (P-1)/P x 4S; ZeRO-1 = reduce-scatter (P-1)/P x 4S + all-gather (P-1)/P x 4S; "
        f"time at {LINK_GBPS:g} GB/s per rank; Adam state 8 B/parameter.",
        "",
        "| model | ranks | all-reduce | ZeRO-1 (RS + AG) | comm at link | Adam state/rank | ZeRO-1 state/rank |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in doc["paper"]:
        lines.append(
            f"| {r['model']} | {r['ranks']} | {_gb(r['allreduce_bytes'])} | "
            f"{_gb(r['zero1_reduce_scatter_bytes'])} + {_gb(r['zero1_all_gather_bytes'])} | {r['allreduce_ms_at_link']:.1f} ms | "
            f"{_gb(r['adam_state_bytes_unsharded'])} | {_gb(r['adam_state_bytes_zero1'])} |"
        )
    return "\n".join(lines) + "\n"


def chart(doc, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    labels = [f"{r['nproc']}p {r['mode']}" for r in doc["rows"]]
    comm = [r["comm_ms"] for r in doc["rows"]]
    rest = [r["step_ms"] - r["comm_ms"] for r in doc["rows"]]
    ax.bar(labels, rest, label="compute + optimizer")
    ax.bar(labels, comm, bottom=rest, label="gradient communication")
    ax.set(ylabel="ms per step", title="data-parallel step on the CPU (gloo)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    doc = run(args)
    text = markdown(doc)
    print(text)
    if args.out:
        save(args.out, doc, text, chart if doc["rows"] else None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
