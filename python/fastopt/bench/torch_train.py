"""Training step of torch models: torch alone vs torch + fastopt.torch.convert + fastopt's optimizer.

Models: a CIFAR-shaped ResNet-18 (3x3 stem, four stages of two basic blocks, 11.2M parameters;
built here, torchvision is not needed) and the small CNN that `fastopt bench train` times (4
conv-BN-ReLU blocks of 32 and 64 channels, two max pools, global average pool, dropout, linear),
on synthetic 3x32x32 batches (default 128) with cross-entropy (label smoothing 0.05), AdamW,
global-norm clipping at 5 and a cosine schedule. Contenders, each on its own copy of the same
initial weights:

- torch: eager float32, torch.optim.AdamW (fused where torch has it) after clip_grad_norm_
- fastopt: the same model after fastopt.torch.convert, fastopt.torch.optim.AdamW with the clip fused
- torch compile / fastopt compile: torch.compile of each model (the optimizer step stays eager)
- torch bf16+CL: torch eager under torch.autocast(bfloat16) with channels_last model and input,
  the row to beat
- fastopt bf16: the converted model under torch.autocast(bfloat16) (fastopt's bf16 kernels) with
  NCHW model and input, fastopt's optimizer on the fp32 parameters
- fastopt bf16+CL: the same with channels_last model and input, which fastopt's layers keep as
  they lie (NHWC conv on AVX512-BF16 CPUs, NHWC max pool, batch norm over (N H W, C))

Contenders alternate round by round (A B C A B C ...), so a noisy neighbour hits all alike;
ms/step are medians of per-step samples. `--malloc steady` fixes glibc's mmap and trim thresholds
first: under its adaptive ones, whether a step's freed activations go back to the kernel (and are
faulted in again next step) depends on the sizes other contenders freed before, which moved torch
bf16+CL's small-CNN step between 69 and 111 ms on one machine in one hour. Progress on stderr, a Markdown table on stdout; --out DIR
writes results.json, results.md and chart.png. `training_step_rows()` and `markdown()` are what
`fastopt bench torch` reports; run alone: `python -m fastopt.bench.torch_train`.
"""

import argparse
import statistics
import sys
import time

import numpy as np
import torch

import fastopt

from .report import cpu_model, header, save

LR, WD, CLIP, SMOOTH = 3e-3, 5e-4, 5.0, 0.05
CONTENDERS = (
    "torch",
    "fastopt",
    "torch compile",
    "fastopt compile",
    "torch bf16+CL",
    "fastopt bf16",
    "fastopt bf16+CL",
)
MODELS = ("resnet18", "small_cnn")
# The targets for the converted model's training step on the CPU: (peer, goal, what).
TARGETS = [
    ("torch", 1.3, "fastopt >= 1.3x torch eager"),
    ("torch compile", 1.0, "fastopt not slower than torch.compile of the unconverted model"),
]
# bf16 (issue 17): fastopt's bf16 step against torch's bf16 autocast + channels_last, reported beside.


class BasicBlock(torch.nn.Module):
    """Two 3x3 conv-norm layers and a skip (a 1x1 projection where the shape changes), as in
    torchvision's ResNet; groups applies to the second conv."""

    def __init__(self, c_in, c_out, stride, groups=1, norm=torch.nn.BatchNorm2d):
        super().__init__()
        tn = torch.nn
        self.conv1, self.bn1 = tn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), norm(c_out)
        self.conv2, self.bn2 = tn.Conv2d(c_out, c_out, 3, 1, 1, groups=groups, bias=False), norm(c_out)
        self.relu = tn.ReLU(inplace=True)
        self.shortcut = tn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = tn.Sequential(tn.Conv2d(c_in, c_out, 1, stride, bias=False), norm(c_out))

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


def resnet(widths=(64, 128, 256, 512), blocks=(2, 2, 2, 2), num_classes=10, groups=1, norms=None, stem_pool=False):
    """ResNet of basic blocks with a CIFAR stem (3x3 conv-BN-ReLU; a 3x3/2 max pool when
    stem_pool). The defaults are ResNet-18. norms: one norm-layer factory per stage (default
    BatchNorm2d everywhere)."""
    tn = torch.nn
    norms = norms or [tn.BatchNorm2d] * len(widths)
    layers = [tn.Conv2d(3, widths[0], 3, 1, 1, bias=False), tn.BatchNorm2d(widths[0]), tn.ReLU(inplace=True)]
    if stem_pool:
        layers.append(tn.MaxPool2d(3, 2, 1))
    c = widths[0]
    for i, (width, n, norm) in enumerate(zip(widths, blocks, norms)):
        for b in range(n):
            layers.append(BasicBlock(c, width, 2 if b == 0 and i > 0 else 1, groups, norm))
            c = width
    layers += [tn.AdaptiveAvgPool2d(1), tn.Flatten(), tn.Linear(c, num_classes)]
    return tn.Sequential(*layers)


def small_cnn(num_classes=10, widths=(32, 64), dropout=0.25):
    """fastopt.nn.models.small_cnn in torch: per stage two conv-BN-ReLU blocks and a 2x2 max
    pool, then global average pooling, dropout and a linear classifier."""
    tn = torch.nn
    layers, c = [], 3
    for w in widths:
        for c_in in (c, w):
            layers += [tn.Conv2d(c_in, w, 3, padding=1, bias=False), tn.BatchNorm2d(w), tn.ReLU()]
        layers.append(tn.MaxPool2d(2))
        c = w
    layers += [tn.AdaptiveAvgPool2d(1), tn.Flatten(), tn.Dropout(dropout), tn.Linear(c, num_classes)]
    return tn.Sequential(*layers)


def log(msg):
    print(f"[torch train bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m fastopt.bench.torch_train", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=["cpu", "cuda", "all"], default="cpu")
    p.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, of {', '.join(MODELS)}")
    p.add_argument("--contenders", default=",".join(CONTENDERS), help=f"comma-separated, of {', '.join(CONTENDERS)}")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=5, help="timed steps per contender and round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--quick", action="store_true", help="2 rounds of 2 steps, batch 32 unless --batch is given")
    p.add_argument("--out", metavar="DIR")
    p.add_argument(
        "--malloc",
        choices=["default", "steady"],
        default="default",
        help="steady: fix glibc's mmap and trim thresholds (32 MiB, 1 GiB) so freed activations stay "
        "mapped, as a caching allocator (jemalloc, tcmalloc) keeps them; with the default, a "
        "contender's step may pay page faults that depend on which contenders ran before it",
    )
    a = p.parse_args(argv)
    if a.quick:
        a.rounds, a.steps = 2, 2
        a.batch = 32 if a.batch == 128 else a.batch
    for name, known in (("models", MODELS), ("contenders", CONTENDERS)):
        chosen = [s.strip() for s in getattr(a, name).split(",") if s.strip()]
        unknown = [s for s in chosen if s not in known]
        if unknown or not chosen:
            p.error(f"--{name}: unknown {unknown}; known: {', '.join(known)}")
        setattr(a, name, chosen)
    return a


class Contender:
    """One training loop: its own model copy, optimizer and cosine schedule over `total` steps."""

    def __init__(self, name, build, device, batches, total):
        import fastopt.torch as ft

        self.name, self.device = name, device
        torch.manual_seed(0)  # every contender starts from the same weights
        model = build().to(device).train()
        fast = name.startswith("fastopt")
        self.bf16 = name.endswith("bf16+CL") or name.endswith("bf16")
        channels_last = name.endswith("bf16+CL")
        if fast:
            ft.convert(model)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        decay = [p for n, p in model.named_parameters() if p.dim() > 1]
        rest = [p for n, p in model.named_parameters() if p.dim() <= 1]
        groups = [{"params": decay, "weight_decay": WD}, {"params": rest, "weight_decay": 0.0}]
        if fast:
            self.opt = ft.optim.AdamW(groups, lr=LR, max_grad_norm=CLIP)
        else:
            self.opt = torch.optim.AdamW(groups, lr=LR, **({"fused": True} if _has_fused(device) else {}))
        self.sched = torch.optim.lr_scheduler.CosineAnnealingLR(self.opt, T_max=total)
        self.params = decay + rest
        self.model = torch.compile(model) if name.endswith("compile") else model
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        self.batches = [(x.to(device).contiguous(memory_format=fmt), y.to(device)) for x, y in batches]
        self.i = 0

    def step(self):
        x, y = self.batches[self.i % len(self.batches)]
        self.i += 1
        self.opt.zero_grad(set_to_none=True)
        with torch.autocast(self.device, dtype=torch.bfloat16, enabled=self.bf16):
            loss = torch.nn.functional.cross_entropy(self.model(x), y, label_smoothing=SMOOTH)
        loss.backward()
        if not self.name.startswith("fastopt"):
            torch.nn.utils.clip_grad_norm_(self.params, CLIP)
        self.opt.step()
        self.sched.step()
        return loss

    def sync(self):
        if self.device == "cuda":
            torch.cuda.synchronize()


def _has_fused(device):
    try:
        p = torch.zeros(1, device=device, requires_grad=True)
        p.grad = torch.zeros(1, device=device)
        torch.optim.AdamW([p], fused=True).step()
        return True
    except (RuntimeError, ValueError):
        return False


def time_model(model, device, args):
    build = {"resnet18": resnet, "small_cnn": small_cnn}[model]
    g = torch.Generator().manual_seed(0)
    batches = [
        (torch.randn(args.batch, 3, 32, 32, generator=g), torch.randint(0, 10, (args.batch,), generator=g))
        for _ in range(4)
    ]
    total = (args.rounds + 2) * args.steps + 10
    contenders = []
    for name in args.contenders:
        c = Contender(name, build, device, batches, total)
        t0 = time.perf_counter()
        for _ in range(2):  # warm-up: compilation, allocators, oneDNN plans, page faults
            c.step()
        c.sync()
        log(f"{device} {model}: {name} ready ({time.perf_counter() - t0:.1f} s for 2 warm-up steps)")
        contenders.append(c)
    samples = {c.name: [] for c in contenders}
    for r in range(args.rounds):
        for c in contenders:
            for _ in range(args.steps):
                t0 = time.perf_counter()
                c.step()
                c.sync()
                samples[c.name].append(time.perf_counter() - t0)
        log(
            f"{device} {model} round {r + 1}/{args.rounds}: "
            + ", ".join(f"{k} {statistics.median(v) * 1e3:.1f}" for k, v in samples.items())
            + " ms/step"
        )
    ms = {k: statistics.median(v) * 1e3 for k, v in samples.items()}
    row = {
        "device": device,
        "model": model,
        "batch": args.batch,
        "ms_per_step": ms,
        "p10_p90_ms": {
            k: [float(np.percentile(v, 10)) * 1e3, float(np.percentile(v, 90)) * 1e3] for k, v in samples.items()
        },
    }
    if "fastopt" in ms:
        row["fastopt_speedup_vs"] = {k: v / ms["fastopt"] for k, v in ms.items() if k != "fastopt"}
    for layout in ("fastopt bf16", "fastopt bf16+CL"):
        if layout in ms and "torch bf16+CL" in ms:
            row.setdefault("bf16_speedup_vs_torch_bf16", {})[layout] = ms["torch bf16+CL"] / ms[layout]
    return row


def training_step_rows(args):
    devices = {
        "all": ["cpu"] + (["cuda"] if torch.cuda.is_available() and fastopt.cuda.has_gpu() else []),
        "cpu": ["cpu"],
        "cuda": ["cuda"],
    }[args.device]
    if "cuda" in devices and not (torch.cuda.is_available() and fastopt.cuda.has_gpu()):
        raise SystemExit("torch train bench: --device cuda, but torch or fastopt sees no usable GPU")
    rows = []
    for device in devices:
        for model in args.models:
            log(f"{device} {model}: batch {args.batch}, {args.rounds} rounds x {args.steps} steps per contender")
            rows.append(time_model(model, device, args))
    return rows


def targets(rows):
    out = []
    for r in rows:
        for peer, goal, what in TARGETS:
            value = r.get("fastopt_speedup_vs", {}).get(peer)
            if r["device"] == "cpu" and value is not None:
                out.append(
                    {
                        "device": r["device"],
                        "model": r["model"],
                        "what": what,
                        "target": goal,
                        "value": value,
                        "met": value >= goal,
                    }
                )
    return out


def markdown(doc):
    names = [c for c in CONTENDERS if any(c in r["ms_per_step"] for r in doc["rows"])]
    lines = [
        f"# Training step of torch models, 3x32x32, AdamW + clipping ({doc['date']})",
        "",
        f"CPU: {doc['host']['cpu_model']}; torch {doc['torch']}; commit {doc['git']['commit']}; "
        f"malloc {doc['devices'].get('malloc', 'default')}",
        "",
        "ms per training step (median); in brackets the fastopt row's speedup over that contender.",
        "",
        "| device | model | batch | " + " | ".join(names) + " |",
        "|---|---|---|" + "---|" * len(names),
    ]
    for r in doc["rows"]:
        cells = []
        for n in names:
            v = r["ms_per_step"].get(n)
            s = r.get("fastopt_speedup_vs", {}).get(n)
            cells.append("-" if v is None else f"{v:.1f}" + (f" ({s:.2f}x)" if s is not None else ""))
        lines.append(f"| {r['device']} | {r['model']} | {r['batch']} | " + " | ".join(cells) + " |")
    for r in doc["rows"]:
        for layout, ratio in r.get("bf16_speedup_vs_torch_bf16", {}).items():
            lines.append(f"\n{r['device']} {r['model']}: {layout} vs torch bf16+CL {ratio:.2f}x (> 1: fastopt faster)")
    if doc.get("targets"):
        lines += ["", "| model | target | measured | met |", "|---|---|---|---|"]
        lines += [
            f"| {t['model']} | {t['what']} | {t['value']:.2f}x | {'yes' if t['met'] else '**no**'} |"
            for t in doc["targets"]
        ]
    return "\n".join(lines) + "\n"


def chart(doc, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = doc["rows"]
    fig, axes = plt.subplots(1, len(rows), figsize=(5.5 * len(rows), 4), squeeze=False)
    for ax, r in zip(axes[0], rows):
        names = list(r["ms_per_step"])
        colors = ["tab:blue" if n.startswith("fastopt") else "tab:orange" if "bf16" in n else "tab:grey" for n in names]
        bars = ax.bar(names, [r["ms_per_step"][n] for n in names], color=colors)
        ax.bar_label(bars, fmt="%.1f", fontsize=8)
        ax.set(ylabel="ms per training step (median)", title=f"{r['model']} on {r['device']}, batch {r['batch']}")
        ax.tick_params(axis="x", rotation=25)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def steady_malloc():
    """glibc's mallopt: M_MMAP_THRESHOLD (-3) at its 64-bit maximum, 32 MiB, which also stops its
    dynamic adjustment, and M_TRIM_THRESHOLD (-1) at 1 GiB. Returns what was set, or why not."""
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return "default (no glibc mallopt here)"
    if mallopt(-3, 32 << 20) != 1 or mallopt(-1, 1 << 30) != 1:
        return "default (mallopt refused)"
    return "steady: glibc mmap threshold 32 MiB, trim threshold 1 GiB"


def main(argv=None):
    args = parse_args(argv)
    info = {"cpu": cpu_model(), "malloc": steady_malloc() if args.malloc == "steady" else "default (glibc's own)"}
    doc = header({k: v for k, v in vars(args).items()}, info)
    doc["rows"] = training_step_rows(args)
    doc["targets"] = targets(doc["rows"])
    text = markdown(doc)
    print(text)
    if args.out:
        save(args.out, doc, text, chart)
    return 0


if __name__ == "__main__":
    sys.exit(main())
