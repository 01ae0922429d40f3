"""Normalization benchmark: batch norm and layer norm forward + backward (training), fastopt vs
the float64 NumPy reference vs torch vs the memory floor.

Floor: the issue's 3-read/2-write traffic of a forward + backward, 20 bytes per element (forward
reads x, writes y; backward reads x and dy, writes dx), divided by the copy bandwidth measured in
the same rounds with fastopt._C.copy_ between two float32 arrays of the working-set size (x, y,
dy, dx: 16 bytes per element in all). The two-pass kernels move 32 bytes per element, so 62% of
the floor is where they become DRAM-bound (on the CPU the second passes mostly hit cache).

Contenders are timed in interleaved rounds (A B C A B C ...) so a noisy neighbour hits all
alike; medians are reported. Progress goes to stderr, a Markdown table to stdout, and with --out
results.json, results.md and chart.png. Run: python -m fastopt.bench.normalization --quick.
"""

import argparse
import os
import platform
import sys
import time

import numpy as np

import fastopt
from fastopt import functional as F
from fastopt.reference import normalization as ref

from .backends import torch_or_none
from .report import git_info, save
from .timing import clock_for, release_gpu_memory

FLOOR_BYTES = 20  # per element: 3 reads + 2 writes of fp32
WORKING_SET = 16  # per element: x, y, dy, dx
CASES = [
    ("batch_norm", (64, 64, 56, 56)),
    ("batch_norm", (64, 256, 28, 28)),
    ("batch_norm", (64, 512, 7, 7)),
    ("batch_norm", (256, 1024)),
    ("layer_norm", (4096, 1024)),
]
TARGET_VS_TORCH = {"cpu": 1.0, "cuda": 1.0}
TARGET_PCT_FLOOR = {"cuda": 70.0}


class Unavailable(Exception):
    pass


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="fastopt bench normalization", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=["cpu", "cuda", "all"], default="all")
    p.add_argument("--quick", action="store_true", help="fewer rounds (about a minute on a 2-core CPU)")
    p.add_argument("--out", metavar="DIR", help="write results.json, results.md and chart.png here")
    p.add_argument("--repeat", type=int, default=None, help="timing rounds per case (default 25, --quick 9)")
    args = p.parse_args(argv)
    if args.repeat is None:
        args.repeat = 9 if args.quick else 25
    if args.repeat < 1:
        p.error("--repeat must be >= 1")
    return args


def _label(op, shape):
    return f"{'BN' if op == 'batch_norm' else 'LN'} {'x'.join(map(str, shape))}"


# ---------------------------------------------------------------------------- contenders
# Each maker returns a zero-argument step: one training forward + backward on its own data.


def fastopt_step(op, shape, device, host):
    x, dy, w, b = host
    put = (lambda a: a.copy()) if device == "cpu" else fastopt.to_device
    x, dy, w, b = put(x), put(dy), put(w), put(b)
    if op == "batch_norm":
        rm, rv = put(np.zeros(shape[1], np.float32)), put(np.ones(shape[1], np.float32))

        def step():
            y, m, s = F.batch_norm_forward(x, w, b, rm, rv, True)
            return F.batch_norm_backward(dy, x, w, m, s)

        return step
    D = shape[-1]

    def step():
        y, m, s = F.layer_norm_forward(x, D, w, b)
        return F.layer_norm_backward(dy, x, D, m, s, w)

    return step


def numpy_step(op, shape, device, host):
    if device != "cpu":
        raise Unavailable("CPU only")
    x, dy, w, b = host
    if op == "batch_norm":
        rm, rv = np.zeros(shape[1]), np.ones(shape[1])

        def step():
            y, m, s = ref.batch_norm_forward(x, w, b, rm, rv, True)
            return ref.batch_norm_backward(dy, x, w, m, s)

        return step
    D = shape[-1]

    def step():
        y, m, s = ref.layer_norm_forward(x, (D,), w, b)
        return ref.layer_norm_backward(dy, x, (D,), m, s, w)

    return step


def torch_step(op, shape, device, host):
    torch = torch_or_none()
    if torch is None or (device == "cuda" and not torch.cuda.is_available()):
        raise Unavailable("torch not installed" if torch is None else "needs torch with CUDA")
    dev = "cpu" if device == "cpu" else "cuda"
    x, dy, w, b = (torch.tensor(a, device=dev) for a in host)
    x.requires_grad_(True)
    w.requires_grad_(True)
    b.requires_grad_(True)
    tf = torch.nn.functional
    if op == "batch_norm":
        rm, rv = torch.zeros(shape[1], device=dev), torch.ones(shape[1], device=dev)

        def step():
            y = tf.batch_norm(x, rm, rv, w, b, True, 0.1, 1e-5)
            return torch.autograd.grad(y, (x, w, b), dy)

        return step

    def step():
        y = tf.layer_norm(x, (shape[-1],), w, b)
        return torch.autograd.grad(y, (x, w, b), dy)

    return step


def copy_step(op, shape, device, host):
    n = int(np.prod(shape)) * WORKING_SET // 8  # two arrays of n floats: the working set
    if device == "cpu":
        src, dst = np.ones(n, np.float32), np.zeros(n, np.float32)
    else:
        src, dst = fastopt.zeros((n,), np.float32), fastopt.zeros((n,), np.float32)
    return lambda: fastopt._C.copy_(dst, src)


def contenders(device):
    return [
        ("copy", copy_step),
        (f"fastopt-{device}", fastopt_step),
        (f"torch-{device}", torch_step),
        ("numpy-ref", numpy_step),
    ]


# -------------------------------------------------------------------------------- timing


def host_data(op, shape, seed=0):
    """x, dy and the affine parameters (per channel for batch norm, per element of the row for
    layer norm)."""
    rng = np.random.default_rng(seed)
    C = shape[1] if op == "batch_norm" else shape[-1]
    return (
        rng.standard_normal(shape, dtype=np.float32) * 2 + 1,
        rng.standard_normal(shape, dtype=np.float32),
        rng.uniform(0.5, 1.5, C).astype(np.float32),
        rng.standard_normal(C, dtype=np.float32),
    )


def time_case(device, op, shape, clock, rounds, quick):
    host = host_data(op, shape)
    numel = int(np.prod(shape))
    live, rows = [], []
    for name, maker in contenders(device):
        row = dict(
            device=device, op=op, shape=list(shape), case=_label(op, shape), backend=name, median_ms=None, note=""
        )
        rows.append(row)
        try:
            step = maker(op, shape, device, host)
            est = min(clock.block(step, 1))  # first touch, lazy init
        except Unavailable as e:
            row["note"] = str(e)
            continue
        inner = max(1, int(clock.block_s / max(est, 1e-7)))
        # The float64 reference costs seconds on the big shapes: one sample per round at most,
        # and in --quick mode a single sample.
        reps = 1 if (name == "numpy-ref" and (quick or est > 1.0)) else rounds
        live.append((row, step, 1 if name == "numpy-ref" else inner, reps, []))
    for r in range(rounds):
        for row, step, inner, reps, samples in live:
            if r < reps:
                samples += clock.block(step, inner)
    for row, step, inner, reps, samples in live:
        ms = sorted(s * 1e3 for s in samples)
        row.update(
            median_ms=(ms[(len(ms) - 1) // 2] + ms[len(ms) // 2]) / 2,
            p10_ms=ms[int(0.1 * (len(ms) - 1))],
            p90_ms=ms[int(0.9 * (len(ms) - 1))],
            samples=len(ms),
        )
    copy = rows[0]
    copy_gbs = 2 * (numel * WORKING_SET // 8) * 4 / (copy["median_ms"] * 1e-3) / 1e9 if copy["median_ms"] else None
    floor_ms = numel * FLOOR_BYTES / (copy_gbs * 1e9) * 1e3 if copy_gbs else None
    by = {r["backend"]: r["median_ms"] for r in rows}
    for row in rows:
        row.update(copy_gbs=copy_gbs, floor_ms=floor_ms, elements=numel)
        if row["median_ms"] and not row["backend"] == "copy":
            row["gbs_floor_bytes"] = numel * FLOOR_BYTES / (row["median_ms"] * 1e-3) / 1e9
            row["pct_floor"] = 100 * floor_ms / row["median_ms"] if floor_ms else None
            t, n = by.get(f"torch-{device}"), by.get("numpy-ref")
            row["speedup_vs_torch"] = t / row["median_ms"] if t else None
            row["speedup_vs_numpy"] = n / row["median_ms"] if n else None
    return rows


# ------------------------------------------------------------------------------- reports


def _fmt(v, spec, suffix=""):
    return "-" if v is None else format(v, spec) + suffix


def markdown(doc):
    out = []
    for device in doc["devices"]:
        rows = [r for r in doc["rows"] if r["device"] == device]
        out.append(f"### {device}: training forward + backward (median of {doc['rounds']} rounds)\n")
        out.append(
            "| case | fastopt ms | torch ms | numpy-ref ms | floor ms (20 B/elem) | copy GB/s | "
            "fastopt % of floor | fastopt vs torch | fastopt vs numpy |"
        )
        out.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for case in dict.fromkeys(r["case"] for r in rows):
            at = {r["backend"]: r for r in rows if r["case"] == case}
            fo = at[f"fastopt-{device}"]
            out.append(
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} |".format(
                    case,
                    _fmt(fo["median_ms"], ".2f"),
                    _fmt(at[f"torch-{device}"]["median_ms"], ".2f"),
                    _fmt(at["numpy-ref"]["median_ms"], ".1f"),
                    _fmt(fo["floor_ms"], ".2f"),
                    _fmt(fo["copy_gbs"], ".1f"),
                    _fmt(fo.get("pct_floor"), ".0f"),
                    _fmt(fo.get("speedup_vs_torch"), ".2f", "x"),
                    _fmt(fo.get("speedup_vs_numpy"), ".1f", "x"),
                )
            )
        targets = f"target: BN >= {TARGET_VS_TORCH[device]:.1f}x torch"
        if device in TARGET_PCT_FLOOR:
            targets += f" and >= {TARGET_PCT_FLOOR[device]:.0f}% of the floor"
        out.append(f"\n{targets}.\n")
    return "\n".join(out)


def draw(doc, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    devices = doc["devices"]
    fig, axes = plt.subplots(len(devices), 2, figsize=(13, 4.8 * len(devices)), squeeze=False)
    for row_axes, device in zip(axes, devices):
        rows = [r for r in doc["rows"] if r["device"] == device]
        cases = list(dict.fromkeys(r["case"] for r in rows))
        names = [f"fastopt-{device}", f"torch-{device}", "numpy-ref"]
        colors = {"fastopt": "#1f77b4", "torch": "#ff7f0e", "numpy-ref": "#7f7f7f"}
        ax = row_axes[0]
        width = 0.27
        for k, name in enumerate(names):
            vals = []
            for case in cases:
                r = next(r for r in rows if r["case"] == case and r["backend"] == name)
                vals.append(r.get("pct_floor") or 0.0)
            bars = ax.bar(
                np.arange(len(cases)) + (k - 1) * width,
                vals,
                width,
                label=name,
                color=colors[name.split("-")[0] if name != "numpy-ref" else name],
            )
            for bar, v in zip(bars, vals):
                ax.text(
                    bar.get_x() + bar.get_width() / 2,
                    bar.get_height(),
                    f"{v:.0f}",
                    ha="center",
                    va="bottom",
                    fontsize=8,
                )
        if device in TARGET_PCT_FLOOR:
            ax.axhline(TARGET_PCT_FLOOR[device], color="red", ls="--", lw=1, label="target")
        ax.set_xticks(np.arange(len(cases)), cases, rotation=15, fontsize=9)
        ax.set_ylabel("% of floor (20 B/elem at copy bandwidth)")
        ax.set_title(f"{device}: fwd+bwd, fraction of the memory floor (higher is better)")
        ax.legend(fontsize=8)
        ax = row_axes[1]
        sp = []
        for case in cases:
            r = next(r for r in rows if r["case"] == case and r["backend"] == f"fastopt-{device}")
            sp.append(r.get("speedup_vs_torch") or 0.0)
        bars = ax.bar(np.arange(len(cases)), sp, 0.5, color=colors["fastopt"])
        for bar, v in zip(bars, sp):
            ax.text(
                bar.get_x() + bar.get_width() / 2, bar.get_height(), f"{v:.2f}x", ha="center", va="bottom", fontsize=9
            )
        ax.axhline(TARGET_VS_TORCH[device], color="red", ls="--", lw=1, label="target (BN)")
        ax.set_xticks(np.arange(len(cases)), cases, rotation=15, fontsize=9)
        ax.set_ylabel("torch time / fastopt time")
        ax.set_title(f"{device}: fastopt speedup over torch (higher is better)")
        ax.legend(fontsize=8)
    fig.suptitle(f"fastopt normalization, {doc['machine']}", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(args):
    gpu = fastopt.cuda.has_gpu()
    if args.device == "cuda" and not gpu:
        raise SystemExit("fastopt bench normalization: --device cuda, but no usable GPU")
    devices = ["cpu", "cuda"] if args.device == "all" and gpu else (["cpu"] if args.device == "all" else [args.device])
    torch = torch_or_none()
    t0 = time.perf_counter()
    load_before = os.getloadavg()[0]
    rows = []
    plan = [(d, op, shape) for d in devices for op, shape in CASES]
    for i, (device, op, shape) in enumerate(plan):
        clock = clock_for(device)
        rows += time_case(device, op, shape, clock, args.repeat, args.quick)
        fo = next(r for r in rows[-4:] if r["backend"] == f"fastopt-{device}")
        print(
            f"[{i + 1}/{len(plan)} {time.perf_counter() - t0:5.1f}s] {device} {_label(op, shape)}: "
            f"fastopt {_fmt(fo['median_ms'], '.2f')} ms, {_fmt(fo.get('speedup_vs_torch'), '.2f')}x torch, "
            f"{_fmt(fo.get('pct_floor'), '.0f')}% of floor",
            file=sys.stderr,
            flush=True,
        )
        if device == "cuda":
            release_gpu_memory()
    doc = dict(
        benchmark="normalization",
        date=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        git=git_info(),
        rounds=args.repeat,
        quick=args.quick,
        devices=devices,
        machine=f"{platform.machine()}, {os.cpu_count()} CPUs"
        + (f", {fastopt.cuda.device_name(0)}" if "cuda" in devices else ""),
        build=fastopt.build_info(),
        torch=getattr(torch, "__version__", None),
        torch_threads=torch.get_num_threads() if torch is not None else None,
        floor_bytes_per_element=FLOOR_BYTES,
        working_set_bytes_per_element=WORKING_SET,
        seconds=time.perf_counter() - t0,
        load_average=[load_before, os.getloadavg()[0]],
        rows=rows,
    )
    md = markdown(doc)
    print(md)
    if args.out:
        commit = str(doc["git"].get("commit"))[:12] + (" (dirty)" if doc["git"].get("dirty") else "")
        header = (
            f"# fastopt normalization benchmark, {doc['date']}\n\n{doc['machine']}; commit {commit}; "
            f"build {doc['build']['simd']}, "
            f"{doc['build']['cpu_threads']} threads; torch {doc['torch']} "
            f"({doc['torch_threads']} threads). 1-minute load average {doc['load_average'][0]:.1f} "
            f"before, {doc['load_average'][1]:.1f} after the run ({os.cpu_count()} CPUs).\n\n"
        )
        save(args.out, doc, header + md, draw)
    return 0


def main(argv=None):
    return run(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
