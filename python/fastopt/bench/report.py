"""Results: rows -> ratios, targets, the JSON document and the Markdown table."""

import datetime
import json
import os
import platform
import subprocess
import sys

import numpy as np

import fastopt

from .backends import torch_or_none

# (device, case, size label, compare with, op, target, what). compare with: None = % of copy.
TARGETS = [
    ("cpu", "adamw", "2^24", None, 85.0, "AdamW >= 85% of copy bandwidth"),
    ("cpu", "adamw", "2^24", "torch-fused", 1.0, "AdamW >= 1.0x torch fused"),
    ("cpu", "adamw", "2^24", "torch-foreach", 5.0, "AdamW >= 5x torch foreach"),
    ("cpu", "clip+adamw", "2^24", "torch-clip+fused", 1.2, "clip+AdamW >= 1.2x torch clip_grad_norm_ + fused"),
    ("cuda", "adamw", "1e8", None, 90.0, "AdamW >= 90% of copy bandwidth"),
    ("cuda", "adamw", "1e8", "torch-fused", 1.0, "AdamW >= 1.0x torch fused"),
    ("cuda", "clip+adamw", "1e8", "torch-clip+fused", 1.15, "clip+AdamW >= 1.15x torch clip_grad_norm_ + fused"),
    ("cuda", "adamw", "10k tensors", "torch-fused", 1.0, "AdamW, 10k small tensors >= 1.0x torch fused"),
]


def fill_ratios(rows):
    """speedup_vs[b] = b's median / this row's median (> 1: this row is faster than b)."""
    groups = {}
    for r in rows:
        groups.setdefault((r["device"], r["case"], r["size"]), []).append(r)
    for group in groups.values():
        timed = [r for r in group if r["median_ms"] and not r["backend"].startswith("copy")]
        for r in timed:
            r["speedup_vs"] = {o["backend"]: o["median_ms"] / r["median_ms"] for o in timed if o is not r}


def evaluate_targets(rows):
    out = []
    index = {(r["device"], r["case"], r["size"], r["backend"]): r for r in rows}
    measured = {r["device"] for r in rows}
    for device, case, size, peer, goal, what in TARGETS:
        if device not in measured:
            continue
        r = index.get((device, case, size, f"fastopt-{device}"))
        value = None
        if r and r["median_ms"]:
            value = r["pct_copy"] if peer is None else r.get("speedup_vs", {}).get(peer)
        out.append(
            dict(
                device=device,
                case=case,
                size=size,
                versus=peer or "copy bandwidth",
                target=goal,
                value=value,
                met=None if value is None else bool(value >= goal),
                what=what,
            )
        )
    return out


def _git(*args):
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        return subprocess.run(
            ["git", *args], cwd=here, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
    except Exception:
        return None


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_info():
    """{"commit", "dirty"} of the source tree the benchmark runs from."""
    commit = _git("rev-parse", "HEAD")
    dirty = _git("status", "--porcelain", "--untracked-files=no") if commit else None
    # A copy of the tree without .git (the lent GPU machine's) is told its commit by gpu_check.sh.
    commit = commit or os.environ.get("FASTOPT_GIT_COMMIT") or None
    return {"commit": commit, "dirty": bool(dirty) if commit else None}


def header(settings, devices):
    torch = torch_or_none()
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "git": git_info(),
        "fastopt": fastopt.build_info(),
        "torch": getattr(torch, "__version__", None),
        "numpy": np.__version__,
        "python": platform.python_version(),
        "host": {"cpu_model": cpu_model(), "cpus": os.cpu_count(), "loadavg_start": _loadavg()},
        "devices": devices,
        "settings": settings,
    }


def _loadavg():
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def merge(old, new):
    """--append: keep old rows for devices this run did not measure."""
    rerun = set(new["devices"])
    new["rows"] = [r for r in old.get("rows", []) if r["device"] not in rerun] + new["rows"]
    new["devices"] = {**{d: v for d, v in old.get("devices", {}).items() if d not in rerun}, **new["devices"]}
    new["previous_runs"] = old.get("previous_runs", []) + [
        {k: old.get(k) for k in ("date", "settings", "host") if k in old} | {"devices": sorted(old.get("devices", {}))}
    ]
    return new


# ------------------------------------------------------------------------------- Markdown
def _fmt_ms(x):
    return "" if x is None else f"{x:.4g}"


def _fmt_ratio(x):
    return "" if x is None else (f"{x:.2f}x" if x < 10 else f"{x:.0f}x")


def markdown(doc):
    h = doc
    fo = h["fastopt"]
    lines = [
        "# fastopt optimizer benchmark",
        "",
        f"- date {h['date']}, git {str(h['git']['commit'])[:12]}{' (dirty)' if h['git']['dirty'] else ''}, "
        f"fastopt {fo.get('version')} (SIMD {fo.get('simd')}, OpenMP threads {fo.get('cpu_threads')}, "
        f"CUDA {fo.get('cuda_version') or 'no'}), torch {h['torch'] or 'not installed'}, numpy {h['numpy']}",
        f"- host: {h['host']['cpu_model']}, {h['host']['cpus']} CPUs, load average at start "
        f"{h['host']['loadavg_start']}, at end {h['host'].get('loadavg_end')}",
    ]
    for dev, info in h["devices"].items():
        bw = ", ".join(f"{k}: {v:.0f}" for k, v in info["copy_gbs"].items())
        lines.append(
            f"- {dev}: {info['name']}; timed with {info['clock']}; copy bandwidth (GB/s, read + write, "
            f"best of {' / '.join(info['copies'])}; median over the cases) by size: {bw}"
        )
    lines += [
        "",
        "GB/s counts the minimal fp32 bytes of a step for every backend (AdamW 28 B/param, "
        "clip+AdamW 32, SGD 12, momentum/Adagrad/RMSprop 20); % copy = that rate / the bandwidth of a "
        "copy with the same working set, timed in the same rounds (column 'copy GB/s'). Above 100% is "
        "possible: a copy to a cold destination also reads it (write-allocate), an in-place update does not. 'fastopt speedup' = the peer's "
        "median / fastopt's median (> 1: fastopt is faster).",
        "",
    ]
    lines += ["## Targets", "", "| device | target | measured | met |", "|---|---|---|---|"]
    for t in doc["targets"]:
        v = t["value"]
        shown = "not measured" if v is None else (f"{v:.1f}%" if t["versus"] == "copy bandwidth" else f"{v:.2f}x")
        met = {None: "-", True: "yes", False: "**no**"}[t["met"]]
        lines.append(f"| {t['device']} | {t['what']} ({t['size']}) | {shown} | {met} |")
    for dev in h["devices"]:
        lines += [
            "",
            f"## {dev}",
            "",
            "| case | size | tensors | backend | median ms | p10-p90 ms | GB/s | copy GB/s | % copy | fastopt speedup |",
            "|---|---|--:|---|--:|--:|--:|--:|--:|--:|",
        ]
        for r in (r for r in doc["rows"] if r["device"] == dev):
            if r["backend"].startswith("copy"):
                continue
            if r["median_ms"] is None:
                lines.append(f"| {r['case']} | {r['size']} | {r['tensors']} | {r['backend']} | {r['note']} | | | | | |")
                continue
            fo_name = f"fastopt-{dev}"
            vs = (
                ""
                if r["backend"] == fo_name
                else _fmt_ratio(r["speedup_vs"].get(fo_name) and 1 / r["speedup_vs"][fo_name])
            )
            pct = "" if r["pct_copy"] is None else f"{r['pct_copy']:.0f}%"
            copy = "" if r["copy_gbs"] is None else f"{r['copy_gbs']:.0f}"
            lines.append(
                f"| {r['case']} | {r['size']} | {r['tensors']} | {r['backend']} | {_fmt_ms(r['median_ms'])} "
                f"| {_fmt_ms(r['p10_ms'])}-{_fmt_ms(r['p90_ms'])} | {r['gbs']:.1f} | {copy} | {pct} | {vs} |"
            )
    if doc.get("notes"):
        lines += ["", "## Notes", ""] + [f"- {n}" for n in doc["notes"]]
    return "\n".join(lines) + "\n"


def save(out, doc, text, draw=None):
    """Write results.json (doc), results.md (text) and, when matplotlib is installed, chart.png
    through draw(doc, path): the same three files for every suite."""
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(doc, f, indent=1)
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(text if text.endswith("\n") else text + "\n")
    written = ["results.json", "results.md"]
    if draw is not None:
        try:
            draw(doc, os.path.join(out, "chart.png"))
            written.append("chart.png")
        except ImportError as e:
            print(f"fastopt bench: no chart ({e}; pip install matplotlib)", file=sys.stderr)
    print(f"fastopt bench: wrote {', '.join(os.path.join(out, w) for w in written)}", file=sys.stderr)
