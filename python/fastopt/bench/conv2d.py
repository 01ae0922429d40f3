"""conv2d benchmark: `fastopt bench conv2d` (also `python -m fastopt.bench.conv2d`).

For each layer of the issue's set and each pass (forward, data-grad, weight-grad), times fastopt
(CPU, and CUDA when a GPU is usable), torch (oneDNN on the CPU; cuDNN with benchmark mode and
TF32 off on the GPU) and the float64 NumPy reference, and on the GPU also the opt-in TF32 paths
(fastopt-tf32: allow_tf32=True, against torch-tf32: cuDNN with TF32 allowed) and the kernels
that are opt-in until timed on a GPU, with their switch set around each call (opt_in_kernels:
fastopt-winograd on the 3x3 unit-stride layers, fastopt-strips on the stem's data-grad,
fastopt-dw-loads and fastopt-dw-taps on the depthwise passes), interleaving contenders round by round so that a
noisy neighbour hits all alike. On the CPU each timed call follows at least 10 ms of untimed
calls of the same step: the first calls after another contender pay that one's still spinning
thread pool (torch's OpenMP for ~5 ms, OpenBLAS after the NumPy reference) and their own pool's
wake-up, up to 2x on the 1-2 ms depthwise passes. Each pass must do 2 N K (C/G) R S P Q flops; its floor
is the larger of flops / the machine's SGEMM rate (numpy.matmul 2048^3 float32 on the CPU,
torch.matmul with TF32 off on the GPU) and bytes (x + w + y once) / the copy bandwidth
(fastopt._C.copy_ between two float32 arrays of the layer's working-set size), both measured in
the same run (best sample). Medians of the contenders; progress on stderr, a Markdown table on stdout; --out DIR writes
results.json, results.md and chart.png.

--dtype bf16: fastopt in bfloat16 (fastopt-bf16; on the GPU its bf16 tensor-core kernels) beside fastopt in
float32, torch in bfloat16 with channels_last tensors (torch-bf16-cl: oneDNN's, or cuDNN's, fast bf16 layout)
and torch in float32; the GEMM ceiling is then torch.matmul's bf16 rate (2048^3, measured in the same run on
the same device), and a second table gives each pass's bf16 speed-up over fastopt's own float32. Without
torch (on the GPU: without torch.cuda) the torch rows and the GEMM ceiling are left out, and the log says so.
"""

import argparse
import os
import statistics
import sys
import time

import numpy as np
from ml_dtypes import bfloat16

import fastopt
from fastopt import _C, functional as F
from fastopt.reference import conv as ref

from .backends import torch_or_none
from .report import cpu_model, git_info, save
from .timing import clock_for, release_gpu_memory

# name, C, K, H (= W), R (= S), stride, padding, groups
LAYERS = [
    ("3x3 64@56", 64, 64, 56, 3, 1, 1, 1),
    ("3x3 128@28", 128, 128, 28, 3, 1, 1, 1),
    ("3x3 256@14", 256, 256, 14, 3, 1, 1, 1),
    ("3x3 512@7", 512, 512, 7, 3, 1, 1, 1),
    ("1x1 64>256@56", 64, 256, 56, 1, 1, 0, 1),
    ("dw3x3 64@56", 64, 64, 56, 3, 1, 1, 64),
    ("7x7/2 3>64@224", 3, 64, 224, 7, 2, 3, 1),
]
# The small CNN of `fastopt bench train` / `fastopt bench torch train` (3x32x32 input): what its
# training step spends in conv (--layers small_cnn).
SMALL_CNN_LAYERS = [
    ("3x3 3>32@32", 3, 32, 32, 3, 1, 1, 1),
    ("3x3 32>32@32", 32, 32, 32, 3, 1, 1, 1),
    ("3x3 32>64@16", 32, 64, 16, 3, 1, 1, 1),
    ("3x3 64>64@16", 64, 64, 16, 3, 1, 1, 1),
]
# The CIFAR ResNet-18 of `fastopt bench torch train` (3x32x32 input): each distinct conv shape
# (--layers resnet18_cifar).
RESNET18_CIFAR_LAYERS = [
    ("3x3 3>64@32", 3, 64, 32, 3, 1, 1, 1),
    ("3x3 64@32", 64, 64, 32, 3, 1, 1, 1),
    ("3x3/2 64>128@32", 64, 128, 32, 3, 2, 1, 1),
    ("1x1/2 64>128@32", 64, 128, 32, 1, 2, 0, 1),
    ("3x3 128@16", 128, 128, 16, 3, 1, 1, 1),
    ("3x3/2 128>256@16", 128, 256, 16, 3, 2, 1, 1),
    ("1x1/2 128>256@16", 128, 256, 16, 1, 2, 0, 1),
    ("3x3 256@8", 256, 256, 8, 3, 1, 1, 1),
    ("3x3/2 256>512@8", 256, 512, 8, 3, 2, 1, 1),
    ("1x1/2 256>512@8", 256, 512, 8, 1, 2, 0, 1),
    ("3x3 512@4", 512, 512, 4, 3, 1, 1, 1),
]
LAYER_SETS = {
    "resnet": LAYERS,
    "small_cnn": SMALL_CNN_LAYERS,
    "resnet18_cifar": RESNET18_CIFAR_LAYERS,
    "all": LAYERS + SMALL_CNN_LAYERS + RESNET18_CIFAR_LAYERS,
}
PASSES = ("forward", "data-grad", "weight-grad")


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="fastopt bench conv2d", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=["cpu", "cuda", "all"], default="all")
    p.add_argument("--quick", action="store_true", help="small batch (N=8 on the CPU, 32 on the GPU)")
    p.add_argument("--out", metavar="DIR", help="write results.json, results.md and chart.png here")
    p.add_argument(
        "--repeat", type=int, default=9, help="timed rounds per contender (default 9; NumPy: 1 with --quick, else 3)"
    )
    p.add_argument("--batch", type=int, default=None, help="override N (default 32 CPU / 128 GPU)")
    p.add_argument(
        "--no-opt-in",
        dest="opt_in",
        action="store_false",
        help="leave out the kernels that are opt-in until timed on a GPU (should one of them fail)",
    )
    p.add_argument(
        "--dtype",
        choices=["fp32", "bf16"],
        default="fp32",
        help="bf16: fastopt and torch (channels_last) in bfloat16 beside both in float32, against "
        "torch.matmul's bf16 rate",
    )
    p.add_argument(
        "--layers",
        choices=sorted(LAYER_SETS),
        default="resnet",
        help="resnet: the issue's ResNet-style set (default); small_cnn: the small CNN's four convs; "
        "resnet18_cifar: the CIFAR ResNet-18's eleven conv shapes; all: every set",
    )
    a = p.parse_args(argv)
    if a.repeat < 1:
        p.error("--repeat must be >= 1")
    return a


def log(msg):
    print(f"[conv2d bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def flops(n, c, k, p, q, r, groups):
    return 2.0 * n * k * (c // groups) * r * r * p * q


# ------------------------------------------------------------------------ ceilings
# Ceilings take the best sample, not the median: a neighbour's load only ever slows a sample
# down, and a ceiling that noise lowered would flatter every percentage measured against it.
def sgemm_rate(device, torch, rounds=5, dtype="fp32"):
    """FLOP/s of a 2048^3 float32 matrix product: numpy.matmul (OpenBLAS) or torch on the GPU; for
    dtype bf16, torch.matmul in bfloat16 on `device` (None without torch)."""
    n = 2048
    if dtype == "bf16":
        if torch is None:
            return None
        a = torch.randn(n, n, device=device).bfloat16()
        b, c = a.clone(), torch.empty_like(a)
        step = lambda: torch.matmul(a, b, out=c)  # noqa: E731
    elif device == "cpu":
        a = np.random.default_rng(0).standard_normal((n, n)).astype(np.float32)
        b, c = a.copy(), np.empty_like(a)
        step = lambda: np.matmul(a, b, out=c)  # noqa: E731
    else:
        a = torch.randn(n, n, device="cuda")
        b, c = a.clone(), torch.empty_like(a)
        step = lambda: torch.matmul(a, b, out=c)  # noqa: E731
    clock = clock_for(device)
    step()
    return 2.0 * n**3 / min(sum((clock.block(step, 2) for _ in range(rounds)), []))


def copy_bandwidth(device, nbytes, rounds=7):
    """Bytes/s (read + write) of fastopt._C.copy_ between two float32 arrays of nbytes each."""
    n = max(nbytes // 4, 1 << 16)
    if device == "cpu":
        src, dst = np.ones(n, np.float32), np.empty(n, np.float32)
    else:
        src, dst = fastopt.to_device(np.ones(n, np.float32)), fastopt.empty((n,))
    step = lambda: _C.copy_(dst, src, 0)  # noqa: E731
    clock = clock_for(device)
    step()
    return 2.0 * 4 * n / min(sum((clock.block(step, 3) for _ in range(rounds)), []))


# ------------------------------------------------------------------------ contenders
def with_env(name, value, step):
    """step, run with the environment variable `name` set to `value` (the native code reads it per call)."""

    def run():
        old = os.environ.get(name)
        os.environ[name] = value
        try:
            return step()
        finally:
            if old is None:
                del os.environ[name]
            else:
                os.environ[name] = old

    return run


# The CUDA kernels that are opt-in until timed on a GPU: (backend, environment switch, passes it
# takes, whether it takes a layer (C, R, stride, groups)).
OPT_IN_KERNELS = [
    (
        "fastopt-winograd",
        "FASTOPT_CUDA_CONV2D_WINOGRAD",
        PASSES,
        lambda c, r, stride, groups: r == 3 and stride == 1 and groups == 1,
    ),
    (
        "fastopt-strips",
        "FASTOPT_CUDA_CONV2D_STRIPS",
        ("data-grad",),  # the few-channel data-grad: the stem
        lambda c, r, stride, groups: c // groups < 16 and groups < c,
    ),
    (
        "fastopt-dw-loads",
        "FASTOPT_CUDA_CONV2D_DW_LOADS",
        ("forward", "data-grad"),
        lambda c, r, stride, groups: groups == c,
    ),
    (
        "fastopt-dw-taps",
        "FASTOPT_CUDA_CONV2D_DW_TAPS",
        ("weight-grad",),
        lambda c, r, stride, groups: groups == c and r in (3, 5, 7),
    ),
]
OPT_IN_BACKENDS = {backend for backend, *_ in OPT_IN_KERNELS}


def opt_in_kernels(c, r, stride, groups):
    """(backend, environment switch, passes) of the opt-in kernels that would take passes of this layer."""
    return [
        (backend, switch, passes) for backend, switch, passes, takes in OPT_IN_KERNELS if takes(c, r, stride, groups)
    ]


def fastopt_steps(x, w, dy, args, **kw):
    return {
        "forward": lambda: F.conv2d_forward(x, w, None, *args, **kw),
        "data-grad": lambda: F.conv2d_backward(dy, x, w, *args, need=(True, False, False), **kw),
        "weight-grad": lambda: F.conv2d_backward(dy, x, w, *args, need=(False, True, False), **kw),
    }


def contenders(device, layer, n, torch, with_reference, opt_in=True, dtype="fp32"):
    """{backend: {pass: step}} on one copy of the layer's data per backend."""
    _, c, k, h, r, stride, pad, groups = layer
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, c, h, h)).astype(np.float32)
    w = (rng.standard_normal((k, c // groups, r, r)) / np.sqrt(c // groups * r * r)).astype(np.float32)
    p, q = ref.output_size(h, h, r, r, (stride, stride), (pad, pad), (1, 1))
    dy = rng.standard_normal((n, k, p, q)).astype(np.float32)
    args = (stride, pad, 1, groups)
    out = {}
    put = (lambda a: a) if device == "cpu" else fastopt.to_device
    xd, wd, dyd = put(x), put(w), put(dy)
    out["fastopt"] = fastopt_steps(xd, wd, dyd, args)
    if dtype == "bf16":
        out["fastopt-bf16"] = fastopt_steps(*(put(a.astype(bfloat16)) for a in (x, w, dy)), args)
        if device == "cpu" and groups == 1:
            # channels_last, what fastopt.torch runs for channels_last bf16 tensors on AVX512-BF16 CPUs
            xl, dyl = (np.ascontiguousarray(a.astype(bfloat16).transpose(0, 2, 3, 1)) for a in (x, dy))
            out["fastopt-bf16-nhwc"] = fastopt_steps(xl, w.astype(bfloat16), dyl, args, layout="nhwc")
    if device == "cuda":
        out["fastopt-tf32"] = fastopt_steps(xd, wd, dyd, args, allow_tf32=True)
        for backend, switch, passes in opt_in_kernels(c, r, stride, groups) if opt_in else ():
            out[backend] = {ps: with_env(switch, "1", out["fastopt"][ps]) for ps in passes}
    if torch is not None:
        dev = "cpu" if device == "cpu" else "cuda"
        xt, wt, dyt = (torch.from_numpy(a.copy()).to(dev) for a in (x, w, dy))
        bwd = torch.ops.aten.convolution_backward

        def torch_steps(xt, wt, dyt):
            def tb(mask):
                return lambda: bwd(dyt, xt, wt, None, [stride] * 2, [pad] * 2, [1, 1], False, [0, 0], groups, mask)

            return {
                "forward": lambda: torch.nn.functional.conv2d(xt, wt, None, stride, pad, 1, groups),
                "data-grad": tb([True, False, False]),
                "weight-grad": tb([False, True, False]),
            }

        out["torch"] = torch_steps(xt, wt, dyt)
        if dtype == "bf16":
            out["torch-bf16-cl"] = torch_steps(
                *(t.bfloat16().contiguous(memory_format=torch.channels_last) for t in (xt, wt, dyt))
            )
        if device == "cuda":

            def tf32(step):
                def run():
                    torch.backends.cudnn.allow_tf32 = True
                    try:
                        return step()
                    finally:
                        torch.backends.cudnn.allow_tf32 = False

                return run

            out["torch-tf32"] = {ps: tf32(step) for ps, step in out["torch"].items()}
    if with_reference:
        out["numpy-ref"] = {
            "forward": lambda: ref.conv2d_forward(x, w, None, *args),
            "data-grad": lambda: ref.conv2d_backward(dy, x, w, *args, need=(True, False, False)),
            "weight-grad": lambda: ref.conv2d_backward(dy, x, w, *args, need=(False, True, False)),
        }
    nbytes = (2 if dtype == "bf16" else 4) * (x.size + w.size + dy.size)
    return out, flops(n, c, k, p, q, r, groups), nbytes


def time_layer(device, layer, n, torch, repeat, with_reference, ref_repeat, opt_in=True, dtype="fp32"):
    steps, fl, nbytes = contenders(device, layer, n, torch, with_reference, opt_in, dtype)
    clock = clock_for(device)
    samples = {(b, ps): [] for b in steps for ps in steps[b]}
    for b in steps:  # warm-up: first-touch allocation, oneDNN/cuDNN plan selection
        for ps in steps[b]:
            steps[b][ps]()
    for rnd in range(repeat):
        for b in steps:
            if b == "numpy-ref" and rnd >= ref_repeat:
                continue
            for ps in steps[b]:
                if device == "cpu" and b != "numpy-ref":  # settle: see the module docstring
                    settle_until = time.perf_counter() + 0.01
                    while time.perf_counter() < settle_until:
                        steps[b][ps]()
                samples[(b, ps)] += clock.block(steps[b][ps], 1)
    return {k: statistics.median(v) for k, v in samples.items()}, fl, nbytes


# ------------------------------------------------------------------------ report
def run(args):
    torch = torch_or_none()
    gpu = fastopt.cuda.has_gpu()
    if args.device == "cuda" and not gpu:
        raise SystemExit("conv2d bench: --device cuda, but no usable GPU")
    devices = ["cpu", "cuda"] if args.device == "all" and gpu else (["cpu"] if args.device == "all" else [args.device])
    if torch is not None:
        torch.backends.cudnn.benchmark = True
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    rows, ceilings = [], {}
    for device in devices:
        n = args.batch or ((8 if args.quick else 32) if device == "cpu" else (32 if args.quick else 128))
        tdev = torch if (torch is not None and (device == "cpu" or torch.cuda.is_available())) else None
        has_sgemm = (device == "cpu" and args.dtype == "fp32") or tdev is not None
        if tdev is None:
            log(
                f"{device}: no torch{'' if device == 'cpu' else ' with CUDA'}: the torch rows are skipped"
                + (
                    ""
                    if has_sgemm
                    else f", and so is the {'torch.matmul bf16' if args.dtype == 'bf16' else 'SGEMM'} "
                    "ceiling (the floor is then the copy bandwidth's alone)"
                )
            )
        ceilings[device] = {
            "sgemm_gflops": None,
            "batch": n,
            "copy_gbps": {},
            "gemm": "torch.matmul bf16" if args.dtype == "bf16" else "float32 SGEMM",
        }
        rates, measured = [], []
        # The SGEMM rate is sampled next to every layer and the best kept, so that the ceiling
        # sees the same quiet spells as the layers it is compared with.
        layers = LAYER_SETS[args.layers]
        for i, layer in enumerate(layers):
            t0 = time.perf_counter()
            if has_sgemm:
                rates.append(sgemm_rate(device, tdev, dtype=args.dtype))
            with_reference = device == "cpu" and args.dtype == "fp32"
            times, fl, nbytes = time_layer(
                device, layer, n, tdev, args.repeat, with_reference, 1 if args.quick else 3, args.opt_in, args.dtype
            )
            bw = copy_bandwidth(device, nbytes)
            ceilings[device]["copy_gbps"][layer[0]] = bw / 1e9
            measured.append((layer, fl, nbytes, bw, times))
            log(f"{device}: [{i + 1}/{len(layers)}] {layer[0]} in {time.perf_counter() - t0:.1f} s")
        rates = [r for r in rates if r]
        rate = max(rates) if rates else None
        ceilings[device]["sgemm_gflops"] = rate / 1e9 if rate else None
        ceilings[device]["sgemm_samples_gflops"] = [r / 1e9 for r in rates]
        gemm = ceilings[device]["gemm"]
        log(
            f"{device}: {gemm} (best of {len(rates)}) {rate / 1e9:.0f} GFLOP/s" if rate else f"{device}: no {gemm} rate"
        )
        for layer, fl, nbytes, bw, times in measured:
            floor = max(fl / rate if rate else 0.0, nbytes / bw)
            for ps in PASSES:
                base = {
                    b: times[(b, ps)] for b in ("torch", "torch-tf32", "torch-bf16-cl", "numpy-ref") if (b, ps) in times
                }
                for b in sorted({b for b, p in times if p == ps}):
                    t = times[(b, ps)]
                    # TF32 against TF32, bf16 against torch's bf16 channels_last
                    peer = "torch-tf32" if b.endswith("-tf32") else "torch-bf16-cl" if "-bf16" in b else "torch"
                    rows.append(
                        {
                            "device": device,
                            "layer": layer[0],
                            "pass": ps,
                            "backend": b,
                            "batch": n,
                            "median_ms": t * 1e3,
                            "gflops": fl / t / 1e9,
                            "gflop": fl / 1e9,
                            "bytes": nbytes,
                            "pct_of_floor": 100.0 * floor / t,
                            "pct_of_sgemm": 100.0 * fl / t / rate if rate else None,
                            "vs_torch": base[peer] / t if peer in base else None,
                            "vs_numpy": base["numpy-ref"] / t if "numpy-ref" in base else None,
                        }
                    )
        release_gpu_memory()
    doc = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "git": git_info(),
        "host": {
            "cpu_model": cpu_model(),
            "cpus": os.cpu_count(),
            "gpu": fastopt.cuda.device_name(0) if "cuda" in devices else None,
        },
        "fastopt": fastopt.build_info(),
        "torch": getattr(torch, "__version__", None),
        "numpy": np.__version__,
        "settings": {
            "quick": args.quick,
            "repeat": args.repeat,
            "devices": devices,
            "dtype": args.dtype,
            "layers": args.layers,
        },
        "ceilings": ceilings,
        "rows": rows,
    }
    md = markdown(doc)
    print(md)
    if args.out:
        save(args.out, doc, md, chart)
    return 0


def _f(v, fmt):
    return "-" if v is None else format(v, fmt)


def markdown(doc):
    git, gpu = doc.get("git") or {}, doc["host"].get("gpu")
    out = [
        f"# conv2d, {doc['date']}",
        "",
        f"Host: {doc['host']['cpu_model']} ({doc['host']['cpus']} CPUs){f', {gpu}' if gpu else ''}; "
        f"commit {str(git.get('commit'))[:12]}{' (dirty)' if git.get('dirty') else ''}; torch {doc['torch']}, "
        f"numpy {doc['numpy']}; fastopt SIMD {doc['fastopt'].get('simd')}, AMX {doc['fastopt'].get('amx')}; "
        f"settings {doc['settings']}.",
        "",
    ]
    for device, ceil in doc["ceilings"].items():
        out.append(
            f"**{device}**: N = {ceil['batch']}; {ceil.get('gemm', 'SGEMM')} {_f(ceil['sgemm_gflops'], '.0f')} "
            "GFLOP/s; copy "
            f"{_f(min(ceil['copy_gbps'].values(), default=None), '.0f')}-"
            f"{_f(max(ceil['copy_gbps'].values(), default=None), '.0f')} GB/s (read + write)."
        )
    out += [
        "",
        "GFLOP/s = 2 N K (C/G) R S P Q / median time. % floor: the floor (max of flops / GEMM rate, "
        "bytes / copy bandwidth) over the time. vs torch / vs NumPy: their time over this one (> 1: faster); "
        "the -tf32 rows (tensor cores, opt-in) are compared with torch-tf32, the -bf16 rows with torch-bf16-cl.",
        "",
        "| device | layer | pass | backend | median ms | GFLOP/s | % floor | % SGEMM | vs torch | vs NumPy |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in doc["rows"]:
        out.append(
            f"| {r['device']} | {r['layer']} | {r['pass']} | {r['backend']} | {r['median_ms']:.2f} | "
            f"{r['gflops']:.1f} | {r['pct_of_floor']:.0f}% | {_f(r['pct_of_sgemm'], '.0f')}% | "
            f"{_f(r['vs_torch'], '.2f')} | {_f(r['vs_numpy'], '.1f')} |"
        )
    out += opt_in_verdicts(doc["rows"]) + bf16_speedups(doc["rows"])
    return "\n".join(out)


def bf16_speedups(rows):
    """Markdown lines: fastopt's bf16 time against its own float32 time on the same pass."""
    fp32 = {(r["layer"], r["pass"]): r["median_ms"] for r in rows if r["backend"] == "fastopt"}
    bf16 = [r for r in rows if r["backend"].startswith("fastopt-bf16") and (r["layer"], r["pass"]) in fp32]
    if not bf16:
        return []
    out = [
        "",
        "bfloat16 against float32 (fastopt): fp32 ms / bf16 ms.",
        "",
        "| layer | pass | backend | fp32 ms | bf16 ms | speed-up | vs torch bf16 CL |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for r in bf16:
        base = fp32[(r["layer"], r["pass"])]
        out.append(
            f"| {r['layer']} | {r['pass']} | {r['backend']} | {base:.2f} | {r['median_ms']:.2f} | "
            f"{base / r['median_ms']:.2f} | "
            f"{_f(r['vs_torch'], '.2f')} |"
        )
    return out


def opt_in_verdicts(rows):
    """Markdown lines: each opt-in kernel's time against the default fastopt path on the same pass
    (> 1: the opt-in kernel is faster, and should become the default there)."""
    default = {(r["device"], r["layer"], r["pass"]): r["median_ms"] for r in rows if r["backend"] == "fastopt"}
    opt_in = [r for r in rows if r["backend"] in OPT_IN_BACKENDS and (r["device"], r["layer"], r["pass"]) in default]
    if not opt_in:
        return []
    out = [
        "",
        "Opt-in kernels (each with its switch set) against the default path: default ms / opt-in ms.",
        "",
        "| device | layer | pass | opt-in | default ms | opt-in ms | speed-up | vs torch |",
        "|---|---|---|---|---:|---:|---:|---:|",
    ]
    for r in opt_in:
        base = default[(r["device"], r["layer"], r["pass"])]
        out.append(
            f"| {r['device']} | {r['layer']} | {r['pass']} | {r['backend']} | {base:.3f} | "
            f"{r['median_ms']:.3f} | {base / r['median_ms']:.2f} | {_f(r['vs_torch'], '.2f')} |"
        )
    return out


def chart(doc, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    devices = list(doc["ceilings"])
    fig, axes = plt.subplots(len(devices), len(PASSES), figsize=(18, 5.5 * len(devices)), squeeze=False)
    colors = {
        "fastopt": "#1f77b4",
        "fastopt-winograd": "#2ca02c",
        "torch": "#ff7f0e",
        "fastopt-tf32": "#9ecae1",
        "torch-tf32": "#fdbe85",
        "fastopt-bf16": "#08519c",
        "torch-bf16-cl": "#a63603",
        "numpy-ref": "#7f7f7f",
    }
    for di, device in enumerate(devices):
        rows = [r for r in doc["rows"] if r["device"] == device]
        layers = list(dict.fromkeys(r["layer"] for r in rows))
        backends = [b for b in colors if any(r["backend"] == b for r in rows)]
        width = 0.8 / len(backends)
        for pi, ps in enumerate(PASSES):
            ax = axes[di][pi]
            for bi, b in enumerate(backends):
                vals = [
                    next((r["gflops"] for r in rows if r["layer"] == l and r["pass"] == ps and r["backend"] == b), 0.0)
                    for l in layers
                ]
                xs = np.arange(len(layers)) + (bi - (len(backends) - 1) / 2) * width
                ax.bar(xs, vals, width, label=b, color=colors[b])
            rate = doc["ceilings"][device]["sgemm_gflops"]
            if rate:
                ax.axhline(rate, color="k", ls="--", lw=1)
                gemm = doc["ceilings"][device].get("gemm", "SGEMM")
                ax.text(len(layers) - 0.5, rate, f"{gemm} {rate:.0f}", ha="right", va="bottom", fontsize=9)
            ax.set_xticks(np.arange(len(layers)))
            ax.set_xticklabels(layers, rotation=30, ha="right", fontsize=9)
            ax.set_ylabel("GFLOP/s (higher is better)")
            ax.set_title(f"{device}, N={doc['ceilings'][device]['batch']}: {ps}")
            ax.grid(axis="y", alpha=0.3)
            if pi == 0:
                ax.legend(fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv=None):
    return run(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
