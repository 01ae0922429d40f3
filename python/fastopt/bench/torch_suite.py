"""`fastopt bench torch`: fastopt inside PyTorch training, in two parts.

- `fastopt bench torch train ...`: ms per training step of torch models (CIFAR ResNet-18 and the
  trainer's small CNN) for torch eager, `fastopt.torch.convert` + `fastopt.torch.optim`,
  torch.compile of each, and torch bf16 autocast + channels_last (bench/torch_train.py).
- `fastopt bench torch optim ...`: the optimizer step alone on a ResNet-18's parameters, fastopt
  against torch fused and foreach, beside the copy floor (bench/torch_optim.py).

`fastopt bench torch [--out DIR] [--quick]` runs both with their defaults, writing DIR/train and
DIR/optim; each part's --help lists its own options.
"""

import argparse
import importlib
import importlib.util
import os
import sys

PARTS = {"train": "fastopt.bench.torch_train", "optim": "fastopt.bench.torch_optim"}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if importlib.util.find_spec("torch") is None:
        print("fastopt bench torch: error: needs torch (pip install 'fastopt[torch]')", file=sys.stderr)
        return 2
    if argv and argv[0] in PARTS:
        return importlib.import_module(PARTS[argv[0]]).main(argv[1:])
    p = argparse.ArgumentParser(
        prog="fastopt bench torch",
        description=__doc__.split("\n\n")[0],
        epilog="Parts alone: fastopt bench torch {train,optim} --help",
    )
    p.add_argument("--out", metavar="DIR", help="write DIR/train and DIR/optim (JSON, Markdown, PNG)")
    p.add_argument("--quick", action="store_true", help="a short run of each part (checks, not figures)")
    a = p.parse_args(argv)
    if a.out is not None and os.path.exists(a.out) and not os.path.isdir(a.out):
        p.error(f"argument --out: {a.out!r} exists and is not a folder")
    for part, quick in (("train", ["--quick"]), ("optim", ["--scale", "0.05", "--repeat", "3"])):
        part_argv = (quick if a.quick else []) + (["--out", os.path.join(a.out, part)] if a.out else [])
        rc = importlib.import_module(PARTS[part]).main(part_argv)
        if rc:
            return rc
    return 0


if __name__ == "__main__":
    sys.exit(main())
