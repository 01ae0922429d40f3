"""Dropout benchmark: fastopt (CPU, CUDA) vs the NumPy reference vs torch vs the copy floor.

Every op moves 8 bytes per element (read x or dy, write y or dx; the mask is regenerated, never
stored), so its floor is 8 n bytes / the copy bandwidth measured in the same rounds with
fastopt._C.copy_ between two float32 arrays of n elements (same 8 n bytes). Contenders are timed
round-robin (one block of each per round) so load from other processes hits them alike; medians
are reported. Every contender returns a fresh output array per call, as an autograd-free
F.dropout does; the copy writes into a preallocated one.

  python -m fastopt.bench.dropout [--device cpu|cuda|all] [--quick] [--repeat R] [--out DIR]
"""

import argparse
import os
import statistics
import sys
import time

import numpy as np

import fastopt
from fastopt import _C, functional as F
from fastopt.reference import dropout as R

from .backends import torch_or_none
from .report import cpu_model, header, save
from .timing import clock_for, release_gpu_memory

P = 0.5
SEED = 0x5EED
BYTES_PER_ELEMENT = 8
SIZES = [("2^24", 1 << 24), ("2^26", 1 << 26)]
OPS = ["forward", "backward"]
# (device, op, size, versus, goal, what); versus None = % of copy bandwidth.
TARGETS = [
    ("cpu", "forward", "2^24", "torch-cpu", 2.0, "dropout forward >= 2x torch CPU"),
    ("cpu", "forward", "2^26", "torch-cpu", 2.0, "dropout forward >= 2x torch CPU"),
    ("cuda", "forward", "2^26", None, 85.0, "dropout forward >= 85% of copy bandwidth"),
    ("cuda", "backward", "2^26", None, 85.0, "dropout backward >= 85% of copy bandwidth"),
    ("cuda", "forward", "2^24", None, 85.0, "dropout forward >= 85% of copy bandwidth"),
    ("cuda", "backward", "2^24", None, 85.0, "dropout backward >= 85% of copy bandwidth"),
]


class Unavailable(Exception):
    pass


def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="fastopt bench dropout", description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--device", choices=["cpu", "cuda", "all"], default="all", help="all = the CPU plus the GPU when one is usable"
    )
    ap.add_argument("--quick", action="store_true", help="fewer rounds; the NumPy reference at 2^24 only (~90 s)")
    ap.add_argument("--repeat", type=int, default=None, help="timing rounds per case (default 11, quick 5)")
    ap.add_argument("--out", help="write results.json, results.md and chart.png here")
    return ap.parse_args(argv)


def _devices(choice):
    gpu = fastopt.cuda.has_gpu()
    if choice == "cuda" and not gpu:
        raise SystemExit("fastopt bench dropout: --device cuda, but no usable GPU here")
    return {"cpu": ["cpu"], "cuda": ["cuda"], "all": ["cpu"] + (["cuda"] if gpu else [])}[choice]


# ----------------------------------------------------------------------------- contenders
def contenders(device, op, n, ref_max):
    """[(name, step or Unavailable message)]; a step performs one op and returns its output."""
    rng = np.random.default_rng(1)
    host = rng.standard_normal(n, dtype=np.float32)
    out = []
    if device == "cpu":
        dst = np.empty_like(host)
        out.append(("copy-fastopt", lambda: _C.copy_(dst, host)))
        fo = F.dropout_forward if op == "forward" else F.dropout_backward
        out.append(("fastopt-cpu", lambda: fo(host, P, SEED)))
        if n <= ref_max:
            ref = R.dropout_forward if op == "forward" else R.dropout_backward
            out.append(("numpy-ref", lambda: ref(host, P, SEED)))
        else:
            out.append(("numpy-ref", f"skipped above 2^{ref_max.bit_length() - 1} elements (float64 NumPy is slow)"))
    else:
        x = fastopt.to_device(host)
        dst = fastopt.empty((n,), np.float32)
        out.append(("copy-fastopt", lambda: _C.copy_(dst, x)))
        fo = F.dropout_forward if op == "forward" else F.dropout_backward
        out.append(("fastopt-cuda", lambda: fo(x, P, SEED)))
    torch = torch_or_none()
    name = f"torch-{device}"
    if torch is None:
        out.append((name, "torch not installed"))
    elif device == "cuda" and not torch.cuda.is_available():
        out.append((name, "torch has no CUDA here"))
    else:
        t = torch.from_numpy(host).to(device)
        if op == "forward":
            out.append((name, lambda: torch.nn.functional.dropout(t, P, training=True)))
        else:
            # What autograd runs for dropout's backward: dy * stored mask * scale.
            _, mask = torch.native_dropout(t, P, True)
            scale = 1.0 / (1.0 - P)
            out.append((name, lambda: torch.ops.aten.native_dropout_backward(t, mask, scale)))
    return out


# --------------------------------------------------------------------------------- timing
def time_case(device, op, label, n, clock, rounds, ref_max, progress):
    rows, live = [], []
    for name, step in contenders(device, op, n, ref_max):
        row = dict(device=device, op=op, size=label, n=n, backend=name, median_ms=None, note="")
        rows.append(row)
        if isinstance(step, str):
            row["note"] = step
            continue
        est = min(clock.block(step, 1))  # first touch, lazy init
        if est < 0.5:
            est = min(clock.block(step, 1))
        inner = max(1, min(100, int(clock.block_s / max(est, 1e-7)) + 1))
        # The float64 reference takes seconds: fewer rounds of it, it only sets the scale.
        live.append((row, step, inner, 1 if name == "numpy-ref" else rounds, []))
    for r in range(rounds):
        for row, step, inner, want, samples in live:
            if r < want:
                samples += clock.block(step, inner)
        progress(f"{device} {op} {label}: round {r + 1}/{rounds}")
    for row, step, inner, want, samples in live:
        ms = sorted(s * 1e3 for s in samples)
        row.update(
            median_ms=statistics.median(ms),
            min_ms=ms[0],
            p10_ms=ms[int(0.1 * (len(ms) - 1))],
            p90_ms=ms[int(0.9 * (len(ms) - 1))],
            samples=len(ms),
            gbs=BYTES_PER_ELEMENT * n / (statistics.median(ms) * 1e-3) / 1e9,
        )
    copy = next((r for r in rows if r["backend"] == "copy-fastopt" and r["median_ms"]), None)
    for row in rows:
        timed = row["median_ms"] is not None
        row["copy_gbs"] = copy["gbs"] if copy else None
        row["floor_ms"] = copy["median_ms"] if copy else None
        row["pct_copy"] = 100 * row["gbs"] / copy["gbs"] if (timed and copy and row is not copy) else None
    fo = next((r for r in rows if r["backend"] == f"fastopt-{device}" and r["median_ms"]), None)
    for row in rows:
        if fo and row["median_ms"] and row is not fo and row["backend"] != "copy-fastopt":
            row["fastopt_speedup"] = row["median_ms"] / fo["median_ms"]
    return rows


def evaluate(rows):
    out = []
    measured = {r["device"] for r in rows}
    for device, op, size, versus, goal, what in TARGETS:
        if device not in measured:
            continue
        fo = next(
            (
                r
                for r in rows
                if (r["device"], r["op"], r["size"], r["backend"]) == (device, op, size, f"fastopt-{device}")
            ),
            None,
        )
        value = None
        if fo and fo["median_ms"]:
            if versus is None:
                value = fo["pct_copy"]
            else:
                peer = next(
                    (r for r in rows if (r["device"], r["op"], r["size"], r["backend"]) == (device, op, size, versus)),
                    None,
                )
                value = peer.get("fastopt_speedup") if peer else None
        out.append(
            dict(
                device=device,
                op=op,
                size=size,
                versus=versus or "copy bandwidth",
                target=goal,
                value=value,
                met=None if value is None else bool(value >= goal),
                what=what,
            )
        )
    return out


# -------------------------------------------------------------------------------- output
def markdown(doc):
    h = doc["header"]
    lines = [
        "# fastopt dropout benchmark",
        "",
        f"- date {h['date']}, git {str(h['git']['commit'])[:12]}{' (dirty)' if h['git']['dirty'] else ''}, "
        f"SIMD {h['fastopt'].get('simd')}, OpenMP threads {h['fastopt'].get('cpu_threads')}, "
        f"torch {h['torch']}, numpy {h['numpy']}",
        f"- host: {h['host']['cpu_model']}, {h['host']['cpus']} CPUs, load average at start "
        f"{h['host']['loadavg_start']}, at end {doc.get('loadavg_end')}",
        f"- p = {P}; GB/s counts 8 bytes per element (read x or dy, write y or dx) for every backend; "
        "floor = the same bytes at the copy bandwidth measured in the same rounds "
        "(fastopt._C.copy_, float32, n elements); % copy = GB/s / copy GB/s; "
        "'fastopt speedup' = that backend's median / fastopt's median.",
        "",
        "## Targets",
        "",
        "| device | target | size | measured | met |",
        "|---|---|---|--:|---|",
    ]
    for t in doc["targets"]:
        v = t["value"]
        shown = "not measured" if v is None else (f"{v:.1f}%" if t["versus"] == "copy bandwidth" else f"{v:.2f}x")
        lines.append(
            f"| {t['device']} | {t['what']} | {t['size']} | {shown} | "
            f"{ {None: '-', True: 'yes', False: '**no**'}[t['met']] } |"
        )
    for dev in doc["devices"]:
        lines += [
            "",
            f"## {dev} ({doc['devices'][dev]['clock']})",
            "",
            "| op | size | backend | median ms | p10-p90 ms | GB/s | floor ms | % copy | fastopt speedup |",
            "|---|---|---|--:|--:|--:|--:|--:|--:|",
        ]
        for r in (r for r in doc["rows"] if r["device"] == dev):
            if r["median_ms"] is None:
                lines.append(f"| {r['op']} | {r['size']} | {r['backend']} | {r['note']} | | | | | |")
                continue
            pct = "" if r["pct_copy"] is None else f"{r['pct_copy']:.0f}%"
            sp = f"{r['fastopt_speedup']:.2f}x" if r.get("fastopt_speedup") else ""
            floor = "" if r["floor_ms"] is None else f"{r['floor_ms']:.4g}"
            lines.append(
                f"| {r['op']} | {r['size']} | {r['backend']} | {r['median_ms']:.4g} | "
                f"{r['p10_ms']:.4g}-{r['p90_ms']:.4g} | {r['gbs']:.2f} | {floor} | {pct} | {sp} |"
            )
    return "\n".join(lines) + "\n"


COLORS = {"fastopt": "#1f5fbf", "numpy-ref": "#9a9a9a", "torch": "#d3423a", "copy-fastopt": "#6bbf59"}


def _color(backend):
    return next((c for k, c in COLORS.items() if backend.startswith(k)), "#444444")


def chart(doc, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    devices = list(doc["devices"])
    fig, axes = plt.subplots(1, len(devices), figsize=(7.5 * len(devices), 5.2), squeeze=False)
    for ax, dev in zip(axes[0], devices):
        rows = [r for r in doc["rows"] if r["device"] == dev]
        cases = list(dict.fromkeys((r["op"], r["size"]) for r in rows))
        backends = list(dict.fromkeys(r["backend"] for r in rows))
        width = 0.8 / len(backends)
        for k, b in enumerate(backends):
            vals = []
            for c in cases:
                r = next((r for r in rows if (r["op"], r["size"]) == c and r["backend"] == b), None)
                vals.append(r["gbs"] if r and r["median_ms"] else np.nan)
            xs = np.arange(len(cases)) + (k - (len(backends) - 1) / 2) * width
            label = "copy (floor)" if b.startswith("copy") else b
            bars = ax.bar(xs, vals, width, label=label, color=_color(b))
            for bar, v in zip(bars, vals):
                if np.isfinite(v):
                    ax.annotate(
                        f"{v:.3g}",
                        (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                        ha="center",
                        va="bottom",
                        fontsize=8,
                        xytext=(0, 2),
                        textcoords="offset points",
                    )
        ax.set_yscale("log")
        ax.set_xticks(np.arange(len(cases)), [f"{op}\n{size} elements" for op, size in cases])
        ax.set_ylabel("GB/s (8 bytes per element, log scale)")
        ax.set_title(f"dropout p={P} on {dev}: {doc['devices'][dev]['name']}", fontsize=10)
        ax.grid(axis="y", alpha=0.3, which="both")
        ax.margins(y=0.15)
        ax.legend(fontsize=8, loc="upper right", ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(args):
    rounds = args.repeat or (5 if args.quick else 11)
    ref_max = (1 << 24) if args.quick else (1 << 26)
    devices = _devices(args.device)
    plan = [(d, op, label, n) for d in devices for label, n in SIZES for op in OPS]
    t0 = time.perf_counter()
    total = len(plan) * rounds
    done = [0]

    def progress(text):
        done[0] += 1
        print(f"[{done[0]:>2}/{total} {time.perf_counter() - t0:6.1f} s] {text}", file=sys.stderr, flush=True)

    hdr = header(dict(quick=args.quick, rounds=rounds, p=P), devices)  # load average before timing
    rows, dev_info = [], {}
    for device in devices:
        clock = clock_for(device)
        name = cpu_model() if device == "cpu" else _C.cuda.device_name(0)
        dev_info[device] = dict(name=name, clock=clock.name)
        for d, op, label, n in (p for p in plan if p[0] == device):
            rows += time_case(device, op, label, n, clock, rounds, ref_max, progress)
        if device == "cuda":
            release_gpu_memory()
    doc = dict(header=hdr, devices=dev_info, rows=rows, targets=evaluate(rows))
    try:
        doc["loadavg_end"] = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        doc["loadavg_end"] = None
    return doc


def main(argv=None):
    args = parse_args(argv)
    doc = run(args)
    text = markdown(doc)
    print(text)
    if args.out:
        save(args.out, doc, text, chart)
    return 0


if __name__ == "__main__":
    sys.exit(main())
