"""Training-step benchmark: `fastopt bench train [--model small_cnn|resnet20]`.

The network (the default `fastopt train` small_cnn: 4 conv-BN-ReLU blocks of 32 and 64 channels,
two max pools, global average pool, dropout, linear; or resnet20, the CIFAR ResNet-20 of He et al.)
trains on synthetic CIFAR-shaped data (3x32x32, batch 128) with AdamW, warm-up + cosine,
global-norm clipping at 5 and label smoothing 0.05. The peers are the same network in PyTorch
(torch_twin: the same structure and state_dict keys, the same initial weights, parameter groups,
optimizer, schedule and clipping; torch's fused AdamW when it has one): eager float32, its
torch.compile, and eager under bfloat16 autocast with channels_last tensors. "fastopt bf16" is
fastopt's own mixed precision (CPU: `build(precision="bf16")`, bf16 activations and conv/linear
math, fp32 master weights), the contender for torch's bf16 row; `--precision bf16` adds it and
makes it the reference of the ratios (fastopt's float32 step is timed either way and is the
reference otherwise).
Contenders alternate round by round, so a noisy neighbour hits all alike; steps/s are medians of
per-step samples.

A second pass times each module's forward and backward (synchronizing the GPU around each, the
time of nested modules subtracted from their container's) and reports the split of fastopt's step
time by op family, beside torch's from torch.profiler. Progress on stderr, a Markdown table on
stdout; --out DIR writes results.json, results.md and chart.png (the split as a stacked bar).
"""

import argparse
import math
import statistics
import sys
import time

import numpy as np

import fastopt
from fastopt import nn
from fastopt.nn.models import resnet, small_cnn
from fastopt.train import make_optimizer

from .backends import torch_or_none
from .report import cpu_model, header, save

FAMILY = {
    nn.Conv2d: "conv2d",
    nn.BatchNorm2d: "batchnorm",
    nn.ReLU: "activation",
    nn.MaxPool2d: "pooling",
    nn.GlobalAvgPool2d: "pooling",
    nn.AvgPool2d: "pooling",
    nn.Dropout: "dropout",
    nn.Linear: "linear",
    nn.Residual: "residual add",
    nn.Tanh: "activation",
    nn.GELU: "activation",
}
MODELS = {"small_cnn": lambda: small_cnn(3, 10), "resnet20": lambda: resnet(20, 10, in_channels=3)}
CONTENDERS = ("fastopt", "fastopt bf16", "torch", "torch compile", "torch bf16+CL")
LR, WD, CLIP, SMOOTH, WARMUP = 3e-3, 5e-4, 5.0, 0.05, 50


def log(msg):
    print(f"[train bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="fastopt bench train", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=["cpu", "cuda", "all"], default="all")
    p.add_argument("--model", choices=sorted(MODELS), default="small_cnn")
    p.add_argument(
        "--contenders",
        default=None,
        help=f"comma-separated, of {', '.join(CONTENDERS)} (default: all; --quick: fastopt,torch)",
    )
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=10, help="timed steps per contender and round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--quick", action="store_true", help="2 rounds of 3 steps, batch 32 unless --batch is given")
    p.add_argument(
        "--precision",
        choices=["fp32", "bf16", "both"],
        default=None,
        help="fastopt's precision: bf16 adds 'fastopt bf16' (CPU) and makes it the reference of the "
        "ratios; both: fp32 and bf16 (the default with all contenders)",
    )
    p.add_argument("--out", metavar="DIR")
    a = p.parse_args(argv)
    if a.quick:
        a.rounds, a.steps = 2, 3
        a.batch = 32 if a.batch == 128 else a.batch
    default = ("fastopt", "torch") if a.quick else CONTENDERS
    chosen = [c.strip() for c in (a.contenders or ",".join(default)).split(",")]
    unknown = [c for c in chosen if c not in CONTENDERS]
    if unknown or "fastopt" not in chosen:
        p.error(f"argument --contenders: fastopt and any of {', '.join(CONTENDERS[1:])}; got {a.contenders!r}")
    if a.precision in ("bf16", "both") and "fastopt bf16" not in chosen:
        chosen.insert(1, "fastopt bf16")
    if a.precision == "fp32" and "fastopt bf16" in chosen:
        chosen.remove("fastopt bf16")
    a.contenders = [c for c in CONTENDERS if c in chosen]
    a.reference = "fastopt bf16" if a.precision == "bf16" else "fastopt"
    return a


def _lr_lambda(total):
    def f(t):
        if t < WARMUP:
            return t / WARMUP
        return 0.5 * (1 + math.cos(math.pi * (t - WARMUP) / max(total - WARMUP, 1)))

    return f


class Split:
    """Exclusive time per op family: every module's forward and backward wrapped (instance
    attributes, removed by close()), a container's time net of its children's."""

    def __init__(self, model, device):
        self.device, self.times, self.stack, self.wrapped = device, {}, [], []
        for _, m in model.named_modules():
            family = FAMILY.get(type(m), "other")
            for name in ("forward", "backward"):
                setattr(m, name, self._wrap(getattr(m, name), family))
                self.wrapped.append((m, name))

    def sync(self):
        if self.device != "cpu":
            fastopt.cuda.synchronize()

    def _wrap(self, fn, family):
        def timed(*args, **kw):
            self.sync()
            t0 = time.perf_counter()
            self.stack.append(0.0)
            out = fn(*args, **kw)
            self.sync()
            dt = time.perf_counter() - t0
            inner = self.stack.pop()
            self.times[family] = self.times.get(family, 0.0) + dt - inner
            if self.stack:
                self.stack[-1] += dt
            return out

        return timed

    def close(self):
        for m, name in self.wrapped:
            delattr(m, name)


class FastoptStep:
    def __init__(self, device, batches, total, model, precision="fp32"):
        self.device, self.name = device, "fastopt" if precision == "fp32" else "fastopt bf16"
        self.model = MODELS[model]()
        self.store = self.model.build(device, seed=0, precision=precision)
        self.opt = make_optimizer("adamw", self.store.param_groups(WD), LR)
        self.sched = fastopt.schedules.LinearWarmup(
            self.opt, WARMUP, after=fastopt.schedules.CosineAnnealingLR(self.opt, T_max=total - WARMUP)
        )
        self.ce = nn.SoftmaxCrossEntropy(SMOOTH)
        put = (lambda a: a) if device == "cpu" else fastopt.to_device
        self.batches = [(put(x), put(y)) for x, y in batches]
        self.i = 0
        self.split = None

    def _timed(self, key, fn, *args):
        if self.split is None:
            return fn(*args)
        self.split.sync()
        t0 = time.perf_counter()
        out = fn(*args)
        self.split.sync()
        self.split.times[key] = self.split.times.get(key, 0.0) + time.perf_counter() - t0
        return out

    def step(self):
        x, y = self.batches[self.i % len(self.batches)]
        self.i += 1
        logits = self.model.forward(x, True)
        self._timed("loss", self.ce.forward, logits, y)
        self.model.backward(self.ce.backward())
        self._timed("optimizer", lambda: self.opt.step(self.store.grads, max_grad_norm=CLIP))
        self.sched.step()

    def timed_split(self, steps):
        """ms per step by op family."""
        self.split = Split(self.model, self.device)
        try:
            for _ in range(steps):
                self.step()
        finally:
            self.split.close()
        times, self.split = self.split.times, None
        return {k: v / steps for k, v in sorted(times.items(), key=lambda kv: -kv[1])}

    def sync(self):
        if self.device != "cpu":
            fastopt.cuda.synchronize()


_TORCH_RESIDUAL = {}


def _torch_residual(torch):
    """torch's twin of nn.Residual: children "body" and "shortcut", y = body(x) + shortcut(x)."""
    if "cls" not in _TORCH_RESIDUAL:

        class Residual(torch.nn.Module):
            def __init__(self, body, shortcut=None):
                super().__init__()
                self.body, self.shortcut = body, shortcut

            def forward(self, x):
                return self.body(x) + (x if self.shortcut is None else self.shortcut(x))

        _TORCH_RESIDUAL["cls"] = Residual
    return _TORCH_RESIDUAL["cls"]


def torch_twin(module, torch):
    """The torch.nn module of the same structure as a fastopt.nn module, children named alike, so
    that state_dicts move between the two with their keys unchanged (drop_path is left out:
    torch.nn has no stochastic depth). Copy the weights with
    twin.load_state_dict({k: torch.from_numpy(v) for k, v in module.state_dict().items()})."""
    tn = torch.nn
    if isinstance(module, nn.Sequential):
        return tn.Sequential(*[torch_twin(m, torch) for m in module.layers])
    if isinstance(module, nn.Residual):
        shortcut = None if module.shortcut is None else torch_twin(module.shortcut, torch)
        return _torch_residual(torch)(torch_twin(module.body, torch), shortcut)
    if isinstance(module, nn.Conv2d):
        k, c = module.params["weight"].shape, module.conv
        return tn.Conv2d(
            k[1] * c["groups"],
            k[0],
            tuple(k[2:]),
            stride=c["stride"],
            padding=c["padding"],
            dilation=c["dilation"],
            groups=c["groups"],
            bias=module.params["bias"] is not None,
        )
    if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
        cls = tn.BatchNorm2d if isinstance(module, nn.BatchNorm2d) else tn.BatchNorm1d
        return cls(
            module.num_features,
            module.eps,
            module.momentum,
            module.params["weight"] is not None,
            module.track_running_stats,
        )
    if isinstance(module, nn.Linear):
        out_f, in_f = module.params["weight"].shape
        return tn.Linear(in_f, out_f, bias=module.params["bias"] is not None)
    if isinstance(module, (nn.MaxPool2d, nn.AvgPool2d)):
        if isinstance(module, nn.MaxPool2d):
            return tn.MaxPool2d(module.kernel_size, module.stride, module.padding)
        return tn.AvgPool2d(
            module.kernel_size, module.stride, module.padding, count_include_pad=module.count_include_pad
        )
    if isinstance(module, nn.GlobalAvgPool2d):
        return tn.Sequential(tn.AdaptiveAvgPool2d(1), tn.Flatten())
    simple = {
        nn.ReLU: lambda m: tn.ReLU(),
        nn.LeakyReLU: lambda m: tn.LeakyReLU(m.negative_slope),
        nn.Tanh: lambda m: tn.Tanh(),
        nn.Sigmoid: lambda m: tn.Sigmoid(),
        nn.ELU: lambda m: tn.ELU(m.alpha),
        nn.GELU: lambda m: tn.GELU(),
        nn.Flatten: lambda m: tn.Flatten(),
        nn.Dropout: lambda m: tn.Dropout(m.p),
    }
    if type(module) not in simple:
        raise TypeError(f"torch_twin: no torch twin for {type(module).__name__}")
    return simple[type(module)](module)


class TorchStep:
    """The peer: torch_twin of the fastopt network with its initial weights; `variant` is eager
    float32 ("torch"), its torch.compile, or eager under bf16 autocast with channels_last."""

    def __init__(self, torch, device, batches, total, init_from, variant="torch"):
        tn = torch.nn
        dev = "cpu" if device == "cpu" else "cuda"
        self.name, self.torch, self.dev = variant, torch, dev
        model = torch_twin(init_from.model, torch)
        model.load_state_dict({k: torch.from_numpy(v) for k, v in init_from.model.state_dict().items()})
        model = model.to(dev).train()
        self.bf16 = variant == "torch bf16+CL"
        fmt = torch.channels_last if self.bf16 else torch.contiguous_format
        model = model.to(memory_format=fmt)
        decayed = {n for n, p in init_from.model.named_parameters() if p.decay}  # fastopt's groups, by name
        params = dict(model.named_parameters())
        kw = {"fused": True} if dev == "cuda" or _has_cpu_fused(torch) else {}
        self.opt = torch.optim.AdamW(
            [
                {"params": [p for n, p in params.items() if n in decayed], "weight_decay": WD},
                {"params": [p for n, p in params.items() if n not in decayed], "weight_decay": 0.0},
            ],
            lr=LR,
            **kw,
        )
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, _lr_lambda(total))
        self.loss = tn.CrossEntropyLoss(label_smoothing=SMOOTH)
        self.params = list(params.values())
        self.model = torch.compile(model) if variant == "torch compile" else model
        self.batches = [
            (torch.from_numpy(x).to(dev).contiguous(memory_format=fmt), torch.from_numpy(y).long().to(dev))
            for x, y in batches
        ]
        self.i = 0

    def step(self):
        torch = self.torch
        x, y = self.batches[self.i % len(self.batches)]
        self.i += 1
        self.opt.zero_grad(set_to_none=True)
        with torch.autocast(self.dev, dtype=torch.bfloat16, enabled=self.bf16):
            loss = self.loss(self.model(x), y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, CLIP)
        self.opt.step()
        self.sched.step()

    def sync(self):
        if self.dev == "cuda":
            self.torch.cuda.synchronize()


# torch's ops by family, for the peer's split (profiler self time; first match wins).
TORCH_FAMILY = [
    ("conv2d", ("convolution", "conv2d", "mkldnn_conv", "cudnn_conv")),
    ("batchnorm", ("batch_norm",)),
    ("activation", ("relu", "threshold", "clamp_min")),
    ("pooling", ("max_pool", "avg_pool", "adaptive_avg", "mean")),
    ("dropout", ("dropout", "bernoulli")),
    ("linear", ("addmm", "linear", "aten::mm", "aten::t")),
    ("loss", ("log_softmax", "nll_loss", "cross_entropy")),
    ("optimizer", ("adamw", "adam", "foreach", "norm", "clip", "stack")),
    ("residual add", ("aten::add",)),
]


def torch_split(step, device, torch, steps):
    """ms per step by op family from torch.profiler's self times (CPU time, or GPU kernel time)."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device != "cpu" else [])
    with profile(activities=acts) as prof:
        for _ in range(steps):
            step.step()
        step.sync()
    out = {}
    for e in prof.key_averages():
        t = (e.self_cpu_time_total if device == "cpu" else getattr(e, "self_device_time_total", 0.0)) / 1e3 / steps
        if t <= 0:
            continue
        name = e.key.lower()
        fam = next((f for f, keys in TORCH_FAMILY if any(k in name for k in keys)), "other")
        out[fam] = out.get(fam, 0.0) + t
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def _has_cpu_fused(torch):
    try:
        p = torch.zeros(1, requires_grad=True)
        p.grad = torch.zeros(1)
        torch.optim.AdamW([p], fused=True).step()
        return True
    except Exception:
        return False


def time_device(device, args, torch):
    rng = np.random.default_rng(0)
    batches = [
        (
            rng.standard_normal((args.batch, 3, 32, 32)).astype(np.float32),
            rng.integers(0, 10, args.batch).astype(np.int32),
        )
        for _ in range(4)
    ]
    total = args.rounds * args.steps + 2 * args.steps + 100
    contenders = [FastoptStep(device, batches, total, args.model)]
    if "fastopt bf16" in args.contenders:
        contenders.append(FastoptStep(device, batches, total, args.model, "bf16"))
    if torch is not None and (device == "cpu" or torch.cuda.is_available()):
        contenders += [
            TorchStep(torch, device, batches, total, contenders[0], v) for v in args.contenders if v.startswith("torch")
        ]
    samples = {c.name: [] for c in contenders}
    for c in contenders:  # warm-up: allocators, oneDNN/cuDNN plans, compilation, page faults
        for _ in range(2):
            c.step()
        c.sync()
    for r in range(args.rounds):
        for c in contenders:
            for _ in range(args.steps):
                t0 = time.perf_counter()
                c.step()
                c.sync()
                samples[c.name].append(time.perf_counter() - t0)
        log(
            f"{device} round {r + 1}/{args.rounds}: "
            + ", ".join(f"{k} {statistics.median(v) * 1e3:.1f} ms/step" for k, v in samples.items())
        )
    split_steps = max(args.steps, 3)
    split = contenders[0].timed_split(split_steps)
    eager = [c for c in contenders if c.name == "torch"]
    peer_split = torch_split(eager[0], device, torch, split_steps) if eager else {}
    med = {k: statistics.median(v) for k, v in samples.items()}
    ref = args.reference if args.reference in med else "fastopt"
    row = {
        "device": device,
        "model": args.model,
        "batch": args.batch,
        "reference": ref,
        "ms_per_step": {k: v * 1e3 for k, v in med.items()},
        "steps_per_s": {k: 1.0 / v for k, v in med.items()},
        "p10_p90_ms": {
            k: [float(np.percentile(v, 10)) * 1e3, float(np.percentile(v, 90)) * 1e3] for k, v in samples.items()
        },
        "fastopt_speedup_vs": {k: v / med[ref] for k, v in med.items() if k != ref},
        "split_ms": {k: v * 1e3 for k, v in split.items()},
        "torch_split_ms": peer_split,
    }
    if "torch" in med:
        row["speedup_vs_torch"] = med["torch"] / med["fastopt"]
    if "fastopt bf16" in med and "torch bf16+CL" in med:
        row["bf16_speedup_vs_torch_bf16"] = med["torch bf16+CL"] / med["fastopt bf16"]
    return row


def markdown(doc):
    model = doc["rows"][0]["model"] if doc["rows"] else "?"
    names = [n for n in CONTENDERS if any(n in r["ms_per_step"] for r in doc["rows"])]
    ref = doc["rows"][0].get("reference", "fastopt") if doc["rows"] else "fastopt"
    peers = [n for n in names if n != ref]
    lines = [
        f"# Training step: {model}, 3x32x32, AdamW + clipping ({doc['date']})",
        "",
        f"CPU: {doc['host']['cpu_model']}; commit {doc['git']['commit']}",
        "",
        "| device | batch | "
        + " | ".join(f"{n} ms/step" for n in names)
        + " | "
        + " | ".join(f"{ref} vs {n}" for n in peers)
        + " |",
        "|---|---|" + "---|" * (len(names) + len(peers)),
    ]
    for r in doc["rows"]:
        ms, sp = r["ms_per_step"], r["fastopt_speedup_vs"]
        lines.append(
            f"| {r['device']} | {r['batch']} | "
            + " | ".join(f"{ms[n]:.1f}" if n in ms else "-" for n in names)
            + " | "
            + " | ".join(f"{sp[n]:.2f}x" if n in sp else "-" for n in peers)
            + " |"
        )
    for r in doc["rows"]:
        if "bf16_speedup_vs_torch_bf16" in r:
            lines += [
                "",
                f"{r['device']}: fastopt bf16 vs torch bf16 autocast + channels_last: "
                f"{r['bf16_speedup_vs_torch_bf16']:.2f}x (> 1: fastopt faster)",
            ]
    for r in doc["rows"]:
        total = sum(r["split_ms"].values())
        peer = r.get("torch_split_ms", {})
        lines += [
            "",
            f"Split of the step time by op family on {r['device']}: fastopt's modules timed one by one "
            "(synchronized, a container's time net of its children's); torch's from torch.profiler self times "
            "(ops matched by name).",
            "",
            "| op family | fastopt ms/step | share | torch ms/step |",
            "|---|---|---|---|",
        ]
        for k in list(r["split_ms"]) + [k for k in peer if k not in r["split_ms"]]:
            v = r["split_ms"].get(k)
            share = f"{100 * v / total:.1f}%" if v is not None else "-"
            lines.append(
                f"| {k} | {'-' if v is None else f'{v:.2f}'} | {share} | {f'{peer[k]:.2f}' if k in peer else '-'} |"
            )
    return "\n".join(lines) + "\n"


def chart(doc, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = doc["rows"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    names = [f"{r['device']}\n{k}" for r in rows for k in r["ms_per_step"]]
    vals = [v for r in rows for v in r["ms_per_step"].values()]
    axes[0].bar(names, vals, color=["tab:blue" if "fastopt" in n else "tab:grey" for n in names])
    axes[0].tick_params(axis="x", labelsize=7)
    axes[0].set(ylabel="ms per training step (median)", title=f"{rows[0]['model']} step, batch {rows[0]['batch']}")
    families = sorted({k for r in rows for k in r["split_ms"]})
    bottom = np.zeros(len(rows))
    for fam in families:
        v = np.array([r["split_ms"].get(fam, 0.0) for r in rows])
        axes[1].bar([r["device"] for r in rows], v, bottom=bottom, label=fam)
        bottom += v
    axes[1].set(ylabel="ms per step", title="fastopt step time by op family")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    args = parse_args(argv)
    torch = torch_or_none()
    if torch is not None:
        torch.manual_seed(0)
    devices = (
        ["cpu"]
        if args.device == "cpu"
        else ["cuda"]
        if args.device == "cuda"
        else (["cpu"] + (["cuda"] if fastopt.cuda.has_gpu() else []))
    )
    if "cuda" in devices and not fastopt.cuda.has_gpu():
        log("no usable GPU")
        return 1
    info = {"cpu": cpu_model()}
    if "cuda" in devices:
        info["cuda"] = fastopt.cuda.device_name(0)
    doc = header(vars(args), info)
    doc["rows"] = []
    for d in devices:
        log(f"{d}: {args.model}, batch {args.batch}, {args.rounds} rounds x {args.steps} steps per contender")
        doc["rows"].append(time_device(d, args, torch))
    text = markdown(doc)
    print(text)
    if args.out:
        save(args.out, doc, text, chart)
    return 0
