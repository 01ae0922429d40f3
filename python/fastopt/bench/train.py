"""Training-step benchmark: `fastopt bench train`.

The default `fastopt train` network (small_cnn: 4 conv-BN-ReLU blocks of 32 and 64 channels, two
max pools, global average pool, dropout, linear) trains on synthetic CIFAR-shaped data (3x32x32,
batch 128) with AdamW, warm-up + cosine, global-norm clipping at 5 and label smoothing 0.05.
The peer is the same network in PyTorch eager (same initial weights, same parameter groups,
optimizer, schedule and clipping; torch's fused AdamW when it has one). Contenders alternate
round by round, so a noisy neighbour hits both alike; steps/s are medians of per-step samples.

A second pass times each layer's forward and backward (synchronizing the GPU around each) and
reports the split of fastopt's step time by op family, beside torch's from torch.profiler. Progress on stderr, a Markdown table on
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
from fastopt.nn.models import small_cnn
from fastopt.train import make_optimizer

from .backends import torch_or_none
from .report import cpu_model, header, save

FAMILY = {
    nn.Conv2d: "conv2d", nn.BatchNorm2d: "batchnorm", nn.ReLU: "activation", nn.MaxPool2d: "pooling",
    nn.GlobalAvgPool2d: "pooling", nn.Dropout: "dropout", nn.Linear: "linear",
}
LR, WD, CLIP, SMOOTH, WARMUP = 3e-3, 5e-4, 5.0, 0.05, 50


def log(msg):
    print(f"[train bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="fastopt bench train", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=["cpu", "cuda", "all"], default="all")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=10, help="timed steps per contender and round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--quick", action="store_true", help="2 rounds of 3 steps, batch 32 unless --batch is given")
    p.add_argument("--out", metavar="DIR")
    a = p.parse_args(argv)
    if a.quick:
        a.rounds, a.steps = 2, 3
        a.batch = 32 if a.batch == 128 else a.batch
    return a


def _lr_lambda(total):
    def f(t):
        if t < WARMUP:
            return t / WARMUP
        return 0.5 * (1 + math.cos(math.pi * (t - WARMUP) / max(total - WARMUP, 1)))
    return f


class FastoptStep:
    name = "fastopt"

    def __init__(self, device, batches, total):
        self.device = device
        self.model = small_cnn(3, 10)
        self.store = self.model.build(device, seed=0)
        self.opt = make_optimizer("adamw", self.store.param_groups(WD), LR)
        self.sched = fastopt.schedules.LinearWarmup(
            self.opt, WARMUP, after=fastopt.schedules.CosineAnnealingLR(self.opt, T_max=total - WARMUP))
        self.ce = nn.SoftmaxCrossEntropy(SMOOTH)
        put = (lambda a: a) if device == "cpu" else fastopt.to_device
        self.batches = [(put(x), put(y)) for x, y in batches]
        self.i = 0
        self.timers = None

    def _timed(self, key, fn, *args):
        if self.timers is None:
            return fn(*args)
        if self.device != "cpu":
            fastopt.cuda.synchronize()
        t0 = time.perf_counter()
        out = fn(*args)
        if self.device != "cpu":
            fastopt.cuda.synchronize()
        self.timers[key] = self.timers.get(key, 0.0) + time.perf_counter() - t0
        return out

    def step(self):
        x, y = self.batches[self.i % len(self.batches)]
        self.i += 1
        for layer in self.model.layers:
            x = self._timed(FAMILY[type(layer)], layer.forward, x, True)
        self._timed("loss", self.ce.forward, x, y)
        d = self.ce.backward()
        for layer in reversed(self.model.layers):
            d = self._timed(FAMILY[type(layer)], layer.backward, d)
        self._timed("optimizer", lambda: self.opt.step(self.store.grads, max_grad_norm=CLIP))
        self.sched.step()

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
        return tn.Conv2d(k[1] * c["groups"], k[0], tuple(k[2:]), stride=c["stride"], padding=c["padding"],
                         dilation=c["dilation"], groups=c["groups"], bias=module.params["bias"] is not None)
    if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
        cls = tn.BatchNorm2d if isinstance(module, nn.BatchNorm2d) else tn.BatchNorm1d
        return cls(module.num_features, module.eps, module.momentum, module.params["weight"] is not None,
                   module.track_running_stats)
    if isinstance(module, nn.Linear):
        out_f, in_f = module.params["weight"].shape
        return tn.Linear(in_f, out_f, bias=module.params["bias"] is not None)
    if isinstance(module, (nn.MaxPool2d, nn.AvgPool2d)):
        if isinstance(module, nn.MaxPool2d):
            return tn.MaxPool2d(module.kernel_size, module.stride, module.padding)
        return tn.AvgPool2d(module.kernel_size, module.stride, module.padding,
                            count_include_pad=module.count_include_pad)
    if isinstance(module, nn.GlobalAvgPool2d):
        return tn.Sequential(tn.AdaptiveAvgPool2d(1), tn.Flatten())
    simple = {nn.ReLU: lambda m: tn.ReLU(), nn.LeakyReLU: lambda m: tn.LeakyReLU(m.negative_slope),
              nn.Tanh: lambda m: tn.Tanh(), nn.Sigmoid: lambda m: tn.Sigmoid(), nn.ELU: lambda m: tn.ELU(m.alpha),
              nn.GELU: lambda m: tn.GELU(), nn.Flatten: lambda m: tn.Flatten(), nn.Dropout: lambda m: tn.Dropout(m.p)}
    if type(module) not in simple:
        raise TypeError(f"torch_twin: no torch twin for {type(module).__name__}")
    return simple[type(module)](module)


class TorchStep:
    name = "torch"

    def __init__(self, torch, device, batches, total, init_from):
        tn = torch.nn
        dev = "cpu" if device == "cpu" else "cuda"
        layers = []
        for layer in init_from.model.layers:
            if isinstance(layer, nn.Conv2d):
                k = layer.params["weight"].shape
                m = tn.Conv2d(k[1], k[0], k[2], padding=layer.conv["padding"], bias=False)
            elif isinstance(layer, nn.BatchNorm2d):
                m = tn.BatchNorm2d(layer.num_features)
            elif isinstance(layer, nn.ReLU):
                m = tn.ReLU()
            elif isinstance(layer, nn.MaxPool2d):
                m = tn.MaxPool2d(layer.kernel_size)
            elif isinstance(layer, nn.GlobalAvgPool2d):
                m = tn.Sequential(tn.AdaptiveAvgPool2d(1), tn.Flatten())
            elif isinstance(layer, nn.Dropout):
                m = tn.Dropout(layer.p)
            else:
                m = tn.Linear(*reversed(layer.params["weight"].shape))
            for name, p in layer.params.items():
                if p is not None:
                    getattr(m, name).data.copy_(torch.from_numpy(fastopt._arrays.to_numpy(p.data)))
            layers.append(m)
        self.torch = torch
        self.model = tn.Sequential(*layers).to(dev).train()
        decay = [m.weight for m in self.model.modules() if isinstance(m, (tn.Conv2d, tn.Linear))]
        ids = {id(p) for p in decay}
        rest = [p for p in self.model.parameters() if id(p) not in ids]
        kw = {"fused": True} if dev == "cuda" or _has_cpu_fused(torch) else {}
        self.opt = torch.optim.AdamW([{"params": decay, "weight_decay": WD}, {"params": rest, "weight_decay": 0.0}],
                                     lr=LR, **kw)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, _lr_lambda(total))
        self.loss = tn.CrossEntropyLoss(label_smoothing=SMOOTH)
        self.batches = [(torch.from_numpy(x).to(dev), torch.from_numpy(y).long().to(dev)) for x, y in batches]
        self.dev = dev
        self.i = 0

    def step(self):
        torch = self.torch
        x, y = self.batches[self.i % len(self.batches)]
        self.i += 1
        self.opt.zero_grad(set_to_none=True)
        loss = self.loss(self.model(x), y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), CLIP)
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
    batches = [(rng.standard_normal((args.batch, 3, 32, 32)).astype(np.float32),
                rng.integers(0, 10, args.batch).astype(np.int32)) for _ in range(4)]
    total = args.rounds * args.steps + 2 * args.steps + 100
    contenders = [FastoptStep(device, batches, total)]
    if torch is not None and (device == "cpu" or torch.cuda.is_available()):
        contenders.append(TorchStep(torch, device, batches, total, contenders[0]))
    samples = {c.name: [] for c in contenders}
    for c in contenders:  # warm-up: allocators, oneDNN/cuDNN plans, page faults
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
        log(f"{device} round {r + 1}/{args.rounds}: " + ", ".join(
            f"{k} {statistics.median(v) * 1e3:.1f} ms/step" for k, v in samples.items()))
    fast = contenders[0]
    fast.timers = {}
    split_steps = max(args.steps, 3)
    for _ in range(split_steps):
        fast.step()
    split = {k: v / split_steps for k, v in sorted(fast.timers.items(), key=lambda kv: -kv[1])}
    peer_split = torch_split(contenders[1], device, torch, split_steps) if len(contenders) > 1 else {}
    med = {k: statistics.median(v) for k, v in samples.items()}
    row = {"device": device, "batch": args.batch,
           "ms_per_step": {k: v * 1e3 for k, v in med.items()},
           "steps_per_s": {k: 1.0 / v for k, v in med.items()},
           "p10_p90_ms": {k: [float(np.percentile(v, 10)) * 1e3, float(np.percentile(v, 90)) * 1e3]
                          for k, v in samples.items()},
           "split_ms": {k: v * 1e3 for k, v in split.items()},
           "torch_split_ms": peer_split}
    if "torch" in med:
        row["speedup_vs_torch"] = med["torch"] / med["fastopt"]
    return row


def markdown(doc):
    lines = [f"# Training step: small_cnn, 3x32x32, AdamW + clipping ({doc['date']})", "",
             f"CPU: {doc['host']['cpu_model']}; commit {doc['git']['commit']}", "",
             "| device | batch | fastopt ms/step | torch ms/step | fastopt steps/s | torch steps/s | fastopt / torch |",
             "|---|---|---|---|---|---|---|"]
    for r in doc["rows"]:
        ms, sps = r["ms_per_step"], r["steps_per_s"]
        t_ms = f"{ms['torch']:.1f}" if "torch" in ms else "-"
        t_sps = f"{sps['torch']:.2f}" if "torch" in sps else "-"
        ratio = f"{r['speedup_vs_torch']:.2f}x" if "speedup_vs_torch" in r else "-"
        lines.append(f"| {r['device']} | {r['batch']} | {ms['fastopt']:.1f} | {t_ms} | {sps['fastopt']:.2f} | {t_sps} "
                     f"| {ratio} |")
    for r in doc["rows"]:
        total = sum(r["split_ms"].values())
        peer = r.get("torch_split_ms", {})
        lines += ["", f"Split of the step time by op family on {r['device']}: fastopt's layers timed one by one "
                  "(synchronized); torch's from torch.profiler self times (ops matched by name).", "",
                  "| op family | fastopt ms/step | share | torch ms/step |", "|---|---|---|---|"]
        for k in list(r["split_ms"]) + [k for k in peer if k not in r["split_ms"]]:
            v = r["split_ms"].get(k)
            share = f"{100 * v / total:.1f}%" if v is not None else "-"
            lines.append(f"| {k} | {'-' if v is None else f'{v:.2f}'} | {share} | "
                         f"{f'{peer[k]:.2f}' if k in peer else '-'} |")
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
    axes[0].set(ylabel="ms per training step (median)", title="small_cnn step, batch %d" % rows[0]["batch"])
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
    devices = ["cpu"] if args.device == "cpu" else ["cuda"] if args.device == "cuda" else (
        ["cpu"] + (["cuda"] if fastopt.cuda.has_gpu() else []))
    if "cuda" in devices and not fastopt.cuda.has_gpu():
        log("no usable GPU")
        return 1
    info = {"cpu": cpu_model()}
    if "cuda" in devices:
        info["cuda"] = fastopt.cuda.device_name(0)
    doc = header(vars(args), info)
    doc["rows"] = []
    for d in devices:
        log(f"{d}: batch {args.batch}, {args.rounds} rounds x {args.steps} steps per contender")
        doc["rows"].append(time_device(d, args, torch))
    text = markdown(doc)
    print(text)
    if args.out:
        save(args.out, doc, text, chart)
    return 0
