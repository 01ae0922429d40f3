"""Optimizer step alone on a torch model's parameters: fastopt.torch.optim vs torch fused vs foreach.

The parameters are those of a CIFAR-shaped ResNet-18 (62 tensors, 11.2M parameters; the shapes
are built here, torchvision is not needed). Every contender steps its own copy of the same
parameters and gradients (the gradients stay put between steps, as nothing zeroes them), and
harness.time_case times them in interleaved rounds (A B C A B C ...) beside a copy with the
case's working set, the bandwidth floor: AdamW must move 28 B/param (32 with the fused clip;
torch's clip_grad_norm_ then step moves 40, judged by the same 32), SGD with momentum 20.

`optimizer_step_rows()` and `markdown()` are what `fastopt bench torch` reports; run alone
(`python -m fastopt.bench.torch_optim`) this writes results.json, results.md and chart.png.
"""

import argparse
import math
import sys

import fastopt

from . import report
from .backends import copies_for, torch_or_none, torch_params_or_unavailable, torch_step
from .cases import CASES, CLIP_NORM, Size, host_data
from .harness import time_case
from .timing import clock_for, release_gpu_memory

DEFAULT_CASES = ("adamw", "clip+adamw", "sgd-momentum")
BACKEND = "fastopt.torch"
# (case, peer, goal, what): the issue's targets for the step on a ResNet-18's parameters.
TARGETS = [
    ("adamw", "torch-fused", 1.0, "AdamW >= 1.0x torch fused"),
    ("adamw", "torch-foreach", 3.0, "AdamW >= 3x torch foreach"),
]


def resnet18_shapes(num_classes=10, cifar=True):
    """Parameter shapes of ResNet-18 (He et al. 2016): a CIFAR stem (3x3 conv, no pool) or
    ImageNet's (7x7/2), four stages of two basic blocks, a 1x1 projection where the shape changes."""
    shapes = [(64, 3, 3, 3) if cifar else (64, 3, 7, 7), (64,), (64,)]
    cin = 64
    for width in (64, 128, 256, 512):
        for block in range(2):
            shapes += [(width, cin, 3, 3), (width,), (width,), (width, width, 3, 3), (width,), (width,)]
            if block == 0 and cin != width:
                shapes += [(width, cin, 1, 1), (width,), (width,)]
            cin = width
    return shapes + [(num_classes, 512), (num_classes,)]


def fastopt_torch_step(case, device, host_p, host_g):
    _, params = torch_params_or_unavailable(device, host_p, host_g)
    import fastopt.torch as ft

    opt = getattr(ft.optim, case.optimizer)(params, **case.kwargs, max_grad_norm=CLIP_NORM if case.clip else None)
    return opt.step


def fastopt_torch_bf16_state_step(case, device, host_p, host_g):
    torch, params = torch_params_or_unavailable(device, host_p, host_g)
    import fastopt.torch as ft

    opt = getattr(ft.optim, case.optimizer)(
        params, **case.kwargs, max_grad_norm=CLIP_NORM if case.clip else None, state_dtype=torch.bfloat16
    )
    return opt.step


def contenders(case, device):
    prefix = "torch-clip+" if case.clip else "torch-"
    # The same step with its state in bf16 (state_dtype; CPU only): each state buffer read and
    # written moves 4 B/param instead of 8 (AdamW: 28 -> 20 B/param).
    states = (case.bytes_per_param - 12 - (4 if case.clip else 0)) // 8
    bf16_state = (
        [(BACKEND + " bf16-state", fastopt_torch_bf16_state_step, case.bytes_per_param - 4 * states)]
        if device == "cpu"
        else []
    )
    return copies_for(device) + [
        (BACKEND, fastopt_torch_step),
        *bf16_state,
        (prefix + "foreach", torch_step("foreach")),
        (prefix + "fused", torch_step("fused")),
    ]


def model_size(shapes, scale=1.0):
    """A Size with one tensor per shape; scale < 1 shrinks every tensor (quick checks only)."""
    lengths = tuple(max(1, round(math.prod(s) * scale)) for s in shapes)
    label = f"ResNet-18 ({len(lengths)} tensors, {sum(lengths) / 1e6:.2f}M)"
    return Size(label if scale == 1.0 else f"{label} x{scale:g}", lengths)


def optimizer_step_rows(device, shapes=None, cases=DEFAULT_CASES, rounds=15, budget=8.0, scale=1.0):
    """Rows (harness.time_case's format, plus speedup_vs) for each case on `device` ('cpu' or
    'cuda'); shapes: the model's parameter shapes (default: resnet18_shapes())."""
    size = model_size(shapes or resnet18_shapes(), scale)
    host = host_data(size)
    rows = []
    for name in cases:
        case = CASES[name]
        case_rows = time_case(
            device, case, size, host, clock_for(device), rounds, budget, 0, makers=contenders(case, device)
        )
        rows += case_rows
        timed = ", ".join(
            f"{r['backend']} {r['median_ms']:.3g} ms"
            for r in case_rows
            if r["median_ms"] and not r["backend"].startswith("copy")
        )
        print(f"[torch optimizer bench] {device} {name}: {timed}", file=sys.stderr, flush=True)
        if device == "cuda":
            release_gpu_memory()
    report.fill_ratios(rows)
    return rows


def evaluate_targets(rows):
    out = []
    for device in dict.fromkeys(r["device"] for r in rows):
        for case, peer, goal, what in TARGETS:
            r = next((r for r in rows if (r["device"], r["case"], r["backend"]) == (device, case, BACKEND)), None)
            value = r.get("speedup_vs", {}).get(peer) if r and r["median_ms"] else None
            out.append(
                dict(
                    device=device,
                    case=case,
                    size=r["size"] if r else None,
                    versus=peer,
                    target=goal,
                    value=value,
                    met=None if value is None else bool(value >= goal),
                    what=what,
                )
            )
    return out


def markdown(rows, targets, level="##"):
    """The section `fastopt bench torch` prints: targets, then one table per device."""
    size = rows[0]["size"] if rows else "no rows"
    lines = [
        f"{level} Optimizer step on a torch model's parameters: {size}",
        "",
        "GB/s counts the minimal fp32 bytes of the step (bytes/param column) for every backend; % copy = that "
        "rate / the bandwidth of a copy with the same working set timed in the same rounds; floor = the "
        f"time of those bytes at that bandwidth. Speedup = the peer's median / {BACKEND}'s.",
        "",
        "| device | target | measured | met |",
        "|---|---|---|---|",
    ]
    for t in targets:
        shown = "not measured" if t["value"] is None else f"{t['value']:.2f}x"
        lines.append(
            f"| {t['device']} | {t['what']} | {shown} | {({None: '-', True: 'yes', False: '**no**'})[t['met']]} |"
        )
    for device in dict.fromkeys(r["device"] for r in rows):
        lines += [
            "",
            f"| {device}: case | backend | B/param | median ms | p10-p90 ms | GB/s | % copy | floor ms "
            f"| {BACKEND} speedup |",
            "|---|---|--:|--:|--:|--:|--:|--:|--:|",
        ]
        for r in rows:
            if r["device"] != device or r["backend"].startswith("copy"):
                continue
            if r["median_ms"] is None:
                lines.append(f"| {r['case']} | {r['backend']} | | {r['note']} | | | | | |")
                continue
            ours = r.get("speedup_vs", {}).get(BACKEND)
            pct = "" if r["pct_copy"] is None else f"{r['pct_copy']:.0f}%"
            floor = "" if r["floor_ms"] is None else f"{r['floor_ms']:.3g}"
            vs = "" if r["backend"] == BACKEND or ours is None else f"{1 / ours:.2f}x"
            lines.append(
                f"| {r['case']} | {r['backend']} | {r['bytes_per_param']} | {r['median_ms']:.4g} | "
                f"{r['p10_ms']:.4g}-{r['p90_ms']:.4g} | {r['gbs']:.1f} | {pct} | {floor} | {vs} |"
            )
    return "\n".join(lines) + "\n"


def draw(doc, path):
    """Per device: median ms per case and backend, with the copy floor as a dashed mark."""
    from .chart import _bars, plt

    devices = list(doc["devices"])
    fig, axes = plt.subplots(1, len(devices), figsize=(7 * len(devices), 5.2), squeeze=False)
    for ax, device in zip(axes[0], devices):
        rows = [r for r in doc["rows"] if r["device"] == device and not r["backend"].startswith("copy")]
        cases = list(dict.fromkeys(r["case"] for r in rows))
        _bars(
            ax,
            rows,
            cases,
            lambda r: r["median_ms"],
            "median ms per step (lower is better)",
            f"{device} ({doc['devices'][device]['name']}): {rows[0]['size']}",
            lambda v: f"{v:.3g}",
        )
        for k, case in enumerate(cases):
            floor = next((r["floor_ms"] for r in rows if r["case"] == case and r["floor_ms"]), None)
            if floor:
                ax.hlines(
                    floor, k - 0.45, k + 0.45, colors="k", linestyles="--", lw=1, label="copy floor" if k == 0 else None
                )
        ax.legend(fontsize=9)
    fig.suptitle(
        f"Optimizer step on a torch model's parameters, {doc['date'][:10]}, git {str(doc['git']['commit'])[:10]}",
        fontsize=12,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m fastopt.bench.torch_optim", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=["cpu", "cuda", "all"], default="all")
    p.add_argument("--optimizers", default=",".join(DEFAULT_CASES), help=f"comma-separated; known: {', '.join(CASES)}")
    p.add_argument("--repeat", type=int, default=15, help="timed rounds per contender (default 15)")
    p.add_argument("--budget", type=float, default=8.0, help="seconds per case after which rounds stop (default 8)")
    p.add_argument("--scale", type=float, default=1.0, help="shrink every tensor by this factor (quick checks)")
    p.add_argument("--out", metavar="DIR")
    p.add_argument("--no-chart", action="store_true")
    a = p.parse_args(argv)
    a.cases = [c.strip() for c in a.optimizers.split(",") if c.strip()]
    if not a.cases or any(c not in CASES for c in a.cases):
        p.error(f"argument --optimizers: expected names from {', '.join(CASES)}, got {a.optimizers!r}")
    if a.repeat < 1:
        p.error(f"argument --repeat: must be >= 1, got {a.repeat}")
    if not a.budget > 0:
        p.error(f"argument --budget: must be > 0, got {a.budget}")
    if not 0 < a.scale <= 1:
        p.error(f"argument --scale: must be in (0, 1], got {a.scale}")
    if torch_or_none() is None:
        p.error("needs torch (pip install 'fastopt[torch]')")
    gpu = fastopt.cuda.has_gpu() and torch_or_none().cuda.is_available()
    if a.device == "cuda" and not gpu:
        p.error("argument --device: cuda, but no GPU that both fastopt and torch can use")
    a.devices = ["cpu", "cuda"] if a.device == "all" and gpu else ["cpu"] if a.device == "all" else [a.device]
    return a


def main(argv=None):
    a = parse_args(argv)
    rows = []
    for device in a.devices:
        rows += optimizer_step_rows(device, cases=a.cases, rounds=a.repeat, budget=a.budget, scale=a.scale)
    devices = {
        d: dict(name=report.cpu_model() if d == "cpu" else fastopt.cuda.device_name(0), clock=clock_for(d).name)
        for d in a.devices
    }
    doc = report.header(
        dict(cases=a.cases, rounds=a.repeat, budget_s=a.budget, scale=a.scale, argv=sys.argv[1:]), devices
    )
    doc["rows"] = rows
    doc["targets"] = evaluate_targets(rows)
    text = "# fastopt.torch optimizer benchmark\n\n" + markdown(rows, doc["targets"])
    print(text)
    if a.out:
        report.save(a.out, doc, text, None if a.no_chart else draw)
    return 0


if __name__ == "__main__":
    sys.exit(main())
