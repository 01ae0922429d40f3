"""The benchmark loop: `fastopt bench` / `python -m fastopt.bench` / bench/run.py.

For each device, size and case, every backend (and two copies, the ceiling) is set up on its own
copy of the same data, then timed in interleaved rounds: A B C A B C ... so that a noisy
neighbour or frequency change hits all contenders alike. Progress goes to stderr, the table to
stdout, and with --out: results.json, results.md and chart.png.
"""

import argparse
import gc
import json
import math
import os
import statistics
import sys
import time

import fastopt

from . import report
from .backends import Unavailable, backends_for, copies_for
from .cases import CASES, MANY_MEAN, MANY_TENSORS, SIZES, host_data, parse_size, size_label
from .options import MIN_ROUNDS, add_arguments, finish
from .timing import clock_for, release_gpu_memory


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="fastopt bench", description=__doc__.split("\n\n")[0])
    return finish(add_arguments(p).parse_args(argv), p.error)


def main(argv=None):
    return run(parse_args(argv))


def pick_devices(choice):
    gpu = fastopt.cuda.has_gpu()
    if choice == "cuda" and not gpu:
        raise SystemExit("fastopt bench: --device cuda, but no usable GPU (see `fastopt info`)")
    return ["cpu", "cuda"] if choice == "all" and gpu else (["cpu"] if choice == "all" else [choice])


class Progress:
    """One stderr line per case with elapsed time and an ETA. A case's expected cost is modelled
    as its bytes moved plus a per-tensor overhead, capped by the per-case time budget."""

    def __init__(self, plan, budget):
        self.weights = [
            min(size.n * CASES[c].bytes_per_param / 2e9 + size.tensors / 2e3, budget) + 0.3 for _, size, c in plan
        ]
        self.t0 = time.perf_counter()
        self.done = 0

    def line(self, text):
        elapsed = time.perf_counter() - self.t0
        self.done += 1
        done_w = sum(self.weights[: self.done])
        left = elapsed / done_w * sum(self.weights[self.done :])
        print(
            f"[{self.done:>3}/{len(self.weights)} {_clock(elapsed)}, ETA ~{_clock(left)}] {text}",
            file=sys.stderr,
            flush=True,
        )


def _clock(s):
    return f"{int(s) // 60}:{int(s) % 60:02d}"


def time_case(device, case, size, host, clock, rounds, budget, ref_max, makers=None):
    """Rows for one (device, case, size). makers: (backend name, maker) pairs to time instead of
    the optimizer suite's (copies_for + backends_for), or triples whose third item is the bytes
    per parameter that backend moves (default: the case's); a name starting with 'copy' is a
    ceiling."""
    contenders, rows = [], []
    base = dict(
        device=device, case=case.name, optimizer=case.optimizer, size=size.label, n=size.n, tensors=size.tensors
    )
    for name, maker, *moved in makers or copies_for(device) + backends_for(case, device):
        # A copy's bytes (read + write) per parameter of the case are its working set.
        bpp = case.working_set if name.startswith("copy") else moved[0] if moved else case.bytes_per_param
        row = dict(base, backend=name, bytes_per_param=bpp, median_ms=None, note="")
        rows.append(row)
        if name == "numpy-ref" and size.n > ref_max:
            row["note"] = f"skipped above {size_label(ref_max)} params (float64 NumPy is slow)"
            continue
        try:
            step = maker(case, device, *host)
            est = min(clock.block(step, 1))  # state allocation, first-touch, lazy init
            if est < 0.5:  # a slow step needs no second warm-up, and time is short
                step()
                est = min(clock.block(step, 1))
        except Unavailable as e:
            row["note"] = str(e)
            continue
        except Exception as e:  # one broken backend must not cost the whole run its results
            row["note"] = f"error: {type(e).__name__}: {str(e).splitlines()[0][:100] if str(e) else ''}"
            print(f"fastopt bench: {device} {case.name} {size.label} {name}: {row['note']}", file=sys.stderr)
            continue
        inner = max(1, min(1000, math.ceil(clock.block_s / max(est, 1e-7))))
        contenders.append((row, step, inner, est < 0.02, []))
    t0 = time.perf_counter()
    for r in range(rounds):
        for row, step, inner, warm, samples in contenders:
            if warm:
                step()  # the other contenders evicted our caches and left threads spinning
            samples += clock.block(step, inner)
        spent = time.perf_counter() - t0
        # A pathological peer (e.g. one OpenMP region per tensor on an oversubscribed CPU: seconds
        # a step) must not stall the run: past 3 budgets, one round is enough.
        if (r + 1 >= MIN_ROUNDS and spent > budget) or spent > 3 * budget:
            break
    for row, step, inner, warm, samples in contenders:
        ms = sorted(s * 1e3 for s in samples)
        q = lambda f: ms[min(len(ms) - 1, int(f * len(ms)))]
        median = (ms[(len(ms) - 1) // 2] + ms[len(ms) // 2]) / 2
        row.update(
            median_ms=median,
            p10_ms=q(0.1),
            p90_ms=q(0.9),
            min_ms=ms[0],
            samples=len(ms),
            steps_per_block=inner,
            gbs=row["bytes_per_param"] * size.n / (median * 1e-3) / 1e9,
        )
    copy_gbs = max((r["gbs"] for r in rows if r["backend"].startswith("copy") and r["median_ms"]), default=None)
    for row in rows:
        row["copy_gbs"] = copy_gbs
        ok = row["median_ms"] and copy_gbs
        row["pct_copy"] = 100 * row["gbs"] / copy_gbs if ok and not row["backend"].startswith("copy") else None
        row["floor_ms"] = row["bytes_per_param"] * size.n / (copy_gbs * 1e9) * 1e3 if copy_gbs else None
    return rows


def summary(rows, device):
    fo = f"fastopt-{device}"
    parts = []
    for r in rows:
        if r["backend"].startswith("copy"):
            continue
        if r["median_ms"] is None:
            parts.append(f"{r['backend']} n/a")
        elif r["backend"] == fo:
            pct = f", {r['pct_copy']:.0f}% copy" if r["pct_copy"] is not None else ""
            parts.append(f"{fo} {r['median_ms']:.3g} ms ({r['gbs']:.1f} GB/s{pct})")
        else:
            parts.append(f"{r['backend']} {r['median_ms']:.3g}")
    return " | ".join(parts)


def run(args):
    """Run the benchmark described by parsed arguments (see options.py); returns an exit code."""
    devices = pick_devices(args.device)
    ref_max = parse_size(args.ref_max).n
    plan = []
    for device in devices:
        sizes = args.sizes.split(",") if args.sizes else SIZES[(device, args.quick)]
        for size in dict.fromkeys(parse_size(s) for s in sizes):
            plan += [(device, size, c) for c in args.cases]
    rounds_for = lambda d: args.repeat or (5 if args.quick else 20 if d == "cuda" else 15)
    budget = args.budget or (2.0 if args.quick else 8.0)
    settings = dict(
        quick=args.quick,
        cases=args.cases,
        ref_max=ref_max,
        budget_s=budget,
        rounds={d: rounds_for(d) for d in devices},
        argv=sys.argv[1:],
    )
    dev_info = {}
    for d in devices:
        dev_info[d] = dict(
            name=report.cpu_model() if d == "cpu" else fastopt.cuda.device_name(0),
            clock=clock_for(d).name,
            copy_gbs={},
            copies=[],
        )
    doc = report.header(settings, dev_info)
    print(
        f"fastopt bench: {len(plan)} cases on {', '.join(devices)}; progress below, table at the end",
        file=sys.stderr,
        flush=True,
    )
    progress = Progress(plan, budget)
    rows, host_key, host, copies = [], None, None, {}
    for device, size, c in plan:
        if host_key != size:  # one set of host data per size, shared by every case and backend
            host, host_key = None, None
            gc.collect()
            host, host_key = host_data(size), size
        case_rows = time_case(device, CASES[c], size, host, clock_for(device), rounds_for(device), budget, ref_max)
        rows += case_rows
        if case_rows[0]["copy_gbs"]:
            copies.setdefault((device, size.label), []).append(case_rows[0]["copy_gbs"])
        progress.line(f"{device} {c} {size.label}: {summary(case_rows, device)}")
        gc.collect()
        if device == "cuda":
            release_gpu_memory()
    for (device, label), values in copies.items():
        dev_info[device]["copy_gbs"][label] = statistics.median(values)
    for d in devices:
        dev_info[d]["copies"] = sorted(
            {r["backend"] for r in rows if r["device"] == d and r["backend"].startswith("copy") and r["median_ms"]}
        )
    doc["host"]["loadavg_end"] = report._loadavg()
    doc["rows"] = rows
    doc["notes"] = [
        f"numpy-ref is fastopt.reference.optim in float64 (it moves twice the bytes; GB/s still counts fp32 bytes); "
        f"run up to {size_label(ref_max)} params.",
        "torch clip cases: torch.nn.utils.clip_grad_norm_ (default implementation) then the step, "
        "which moves 40 B/param for AdamW; it is judged by the same minimal 32 B.",
        "GPU data is not rotated: sizes up to 1e7 may sit partly in L2, 2^24 and 1e8 do not.",
        f"Many small tensors: {MANY_TENSORS:,} tensors of 16 to {2 * MANY_MEAN - 17} params "
        f"(~{MANY_TENSORS * MANY_MEAN / 1e6:.0f}M in all).",
    ]
    if args.append and os.path.exists(os.path.join(args.out, "results.json")):
        with open(os.path.join(args.out, "results.json")) as f:
            doc = report.merge(json.load(f), doc)
    report.fill_ratios(doc["rows"])
    doc["targets"] = report.evaluate_targets(doc["rows"])
    text = report.markdown(doc)
    print(text)
    if args.out:
        report.save(args.out, doc, text, None if args.no_chart else _draw)
    return 0


def _draw(doc, path):
    from .chart import draw  # matplotlib is optional

    draw(doc, path)
