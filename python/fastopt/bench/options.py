"""The command line of `fastopt bench`, shared by fastopt.cli and `python -m fastopt.bench`, so
the two cannot drift apart."""

from .. import _options
from .cases import CASES, DEFAULT_CASES, parse_size

MIN_ROUNDS = 3


def add_arguments(p):
    p.add_argument(
        "--device",
        choices=["cpu", "cuda", "all"],
        default="all",
        help="all: the CPU, plus the GPU when one is usable (default)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="fewer sizes and rounds (CPU: 1e5, 2^20, 2^24, many; GPU: 1e6, 2^24, 1e8, many)",
    )
    p.add_argument(
        "--optimizers",
        default=",".join(DEFAULT_CASES),
        help=f"comma-separated cases, or 'all'; known: {', '.join(CASES)} (default: all but amsgrad)",
    )
    p.add_argument(
        "--sizes",
        help="comma-separated parameter counts (1e5, 2^24, 1048576) and/or 'many' "
        "(10k small tensors); default depends on --device and --quick",
    )
    p.add_argument(
        "--repeat",
        type=_options.arg_type("int", 1),
        help="timed rounds per backend (default: 5 quick, 15 full, 20 GPU)",
    )
    p.add_argument(
        "--budget",
        type=_options.arg_type("real", 0.0, low_open=True),
        help=f"seconds per case after which rounds stop once {MIN_ROUNDS} are done (default: 2 quick, 8 full)",
    )
    p.add_argument(
        "--ref-max", default="2^22", help="largest parameter count the float64 NumPy reference runs at (it is slow)"
    )
    p.add_argument("--out", help="folder for results.json, results.md and chart.png")
    p.add_argument(
        "--append",
        action="store_true",
        help="merge into an existing OUT/results.json, replacing only the devices run now",
    )
    p.add_argument("--no-chart", action="store_true")
    return p


def finish(args, error):
    """Validate and normalize parsed arguments; `error` is the parser's error method (a one-line
    usage error, exit code 2), so nothing the run would trip over later ends in a traceback."""
    args.cases = (
        list(CASES) if args.optimizers == "all" else [c.strip() for c in args.optimizers.split(",") if c.strip()]
    )
    unknown = [c for c in args.cases if c not in CASES]
    if unknown or not args.cases:
        error(f"argument --optimizers: unknown {unknown or args.optimizers!r}; known: {', '.join(CASES)}")
    for option, texts in (("--sizes", (args.sizes or "many").split(",")), ("--ref-max", [args.ref_max])):
        for text in texts:
            try:
                parse_size(text, f"argument {option}")
            except ValueError as e:
                error(str(e))
    if args.device == "cuda":
        import fastopt

        if not fastopt.cuda.has_gpu():
            error("argument --device: cuda, but no usable GPU here (see `fastopt info`)")
    if args.append and not args.out:
        error("argument --append: needs --out")
    if args.out:
        unwritable = _options.unwritable(args.out)
        if unwritable:
            error(f"argument --out: {unwritable}")
    return args
