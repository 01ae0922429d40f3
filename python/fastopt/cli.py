"""The `fastopt` console script: `fastopt train`, `fastopt evaluate`, `fastopt transfer`, `fastopt info` and
`fastopt bench [SUITE]`."""

import argparse
import importlib
import json
import sys

from .bench import options as bench_options


def _info(args):
    import fastopt

    info = fastopt.build_info()
    info["gpus"] = [fastopt.cuda.device_name(i) for i in range(fastopt.cuda.device_count())]
    runtime, driver = fastopt.cuda.versions()
    info["cuda_runtime"], info["cuda_driver"] = runtime, driver
    info["host_cache_mb"] = fastopt.host_cache_info()["cap_bytes"] >> 20  # FASTOPT_HOST_CACHE_MB
    switches = fastopt.switches()
    if args.json:
        print(json.dumps({**info, "switches": switches}, indent=2))
        return 0
    width = max(len(k) for k in info)
    for key, value in info.items():
        print(f"{key:<{width}}  {value}")
    if not info["gpus"]:
        print(f"{'':<{width}}  (no usable GPU: fastopt runs on the CPU)")
    print('\nenvironment switches (README, "Environment switches"):')
    width = max(len(s["name"]) for s in switches)
    for s in switches:
        value = "unset" if s["value"] is None else repr(s["value"])
        print(f"  {s['name']:<{width}}  {value} (default {s['default']}; {s['backend']}, read {s['read']})")
    return 0


def _bench(args):
    from .bench.harness import run

    return run(args)


# `fastopt bench SUITE ...` hands the rest of the command line to that suite's own main();
# `fastopt bench ...` without a suite times the optimizers.
SUITES = {
    "normalization": "normalization",
    "dropout": "dropout",
    "conv2d": "conv2d",
    "train": "train",
    "torch": "torch_suite",
    "loader": "loader",
    "distributed": "distributed",
}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "train":
        from . import train_cli

        return train_cli.main(argv[1:])
    if argv and argv[0] == "evaluate":
        from . import evaluate

        return evaluate.main(argv[1:])
    if argv and argv[0] == "transfer":
        from . import transfer

        return transfer.main(argv[1:])
    if len(argv) >= 2 and argv[0] == "bench" and argv[1] in SUITES:
        return importlib.import_module(f"fastopt.bench.{SUITES[argv[1]]}").main(argv[2:])
    parser = argparse.ArgumentParser(prog="fastopt", description="fastopt: fused training kernels")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("train", help="train a small CNN on digits or your own images, --data (fastopt train --help)")
    sub.add_parser(
        "evaluate", help="accuracy, top-5, confusion matrix and ensembles of checkpoints (fastopt evaluate --help)"
    )
    sub.add_parser(
        "transfer",
        help="pretrain on digits 0-4, learn 5-9 from K images per class: scratch, linear "
        "probe, fine-tune (fastopt transfer --help)",
    )
    p_info = sub.add_parser("info", help="how fastopt was built, and the devices it sees")
    p_info.add_argument("--json", action="store_true")
    p_info.set_defaults(func=_info)
    p_bench = sub.add_parser(
        "bench",
        help="time the optimizers against copy bandwidth, NumPy and torch",
        description="Time fastopt's optimizer steps against the copy bandwidth, the "
        "NumPy reference and torch (foreach, fused); writes JSON, Markdown, PNG.",
        epilog=f"Other suites: fastopt bench {{{','.join(SUITES)}}} --help",
    )
    bench_options.add_arguments(p_bench)
    p_bench.set_defaults(func=_bench)
    args = parser.parse_args(argv)
    if args.command == "bench":
        bench_options.finish(args, p_bench.error)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
