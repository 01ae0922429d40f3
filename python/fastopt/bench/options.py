"""The command line of `fastopt bench`, shared by fastopt.cli and `python -m fastopt.bench`, so
the two cannot drift apart."""
from .cases import CASES, DEFAULT_CASES

MIN_ROUNDS = 3


def add_arguments(p):
    p.add_argument("--device", choices=["cpu", "cuda", "all"], default="all",
                   help="all: the CPU, plus the GPU when one is usable (default)")
    p.add_argument("--quick", action="store_true",
                   help="fewer sizes and rounds (CPU: 1e5, 2^20, 2^24, many; GPU: 1e6, 2^24, 1e8, many)")
    p.add_argument("--optimizers", default=",".join(DEFAULT_CASES),
                   help=f"comma-separated cases, or 'all'; known: {', '.join(CASES)} (default: all but amsgrad)")
    p.add_argument("--sizes", help="comma-separated parameter counts (1e5, 2^24, 1048576) and/or 'many' "
                                   "(10k small tensors); default depends on --device and --quick")
    p.add_argument("--repeat", type=int, help="timed rounds per backend (default: 5 quick, 15 full, 20 GPU)")
    p.add_argument("--budget", type=float, help="seconds per case after which rounds stop once "
                                                f"{MIN_ROUNDS} are done (default: 2 quick, 8 full)")
    p.add_argument("--ref-max", default="2^22",
                   help="largest parameter count the float64 NumPy reference runs at (it is slow)")
    p.add_argument("--out", help="folder for results.json, results.md and chart.png")
    p.add_argument("--append", action="store_true",
                   help="merge into an existing OUT/results.json, replacing only the devices run now")
    p.add_argument("--no-chart", action="store_true")
    return p


def finish(args, error):
    """Validate and normalize parsed arguments; `error` is the parser's error method."""
    args.cases = list(CASES) if args.optimizers == "all" else [c.strip() for c in args.optimizers.split(",") if c.strip()]
    unknown = [c for c in args.cases if c not in CASES]
    if unknown:
        error(f"--optimizers: unknown {unknown}; known: {', '.join(CASES)}")
    if args.append and not args.out:
        error("--append needs --out")
    if args.repeat is not None and args.repeat < 1:
        error("--repeat: must be >= 1")
    return args
