"""Options of the command lines (`fastopt train`, `fastopt bench`) checked by the same rules as the
trainer's config (fastopt._args): argparse turns a value the rule refuses into a one-line usage
error (`error: argument --lr: must be a finite number >= 0, got nan`, exit code 2)."""

import argparse
import math
import os
import tempfile

from . import _args


def check(name, value, kind, low=None, high=None, low_open=False):
    """`value` if it is a `kind` ("int", or "real": finite) in [low, high] (low excluded with
    low_open; None: unbounded); else TypeError or ValueError naming `name` (fastopt._args)."""
    low = -math.inf if low is None else low
    high = math.inf if high is None else high
    if kind == "int":
        return _args.integer(value, name, low, high)
    return _args.finite(value, name, low, high, low_open)


def arg_type(kind, low=None, high=None, low_open=False):
    """An argparse `type=` that parses an int or a float and applies check()."""

    def parse(text):
        try:
            value = int(text) if kind == "int" else float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected {'an integer' if kind == 'int' else 'a number'}, got {text!r}"
            ) from None
        try:
            return check("value", value, kind, low, high, low_open)
        except ValueError as e:  # argparse names the option itself
            raise argparse.ArgumentTypeError(str(e).removeprefix("value: ")) from None

    parse.__name__ = kind
    return parse


def unwritable(folder):
    """None when files can be written in `folder` (created if missing), else why not."""
    try:
        os.makedirs(folder, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        return f"cannot write to {folder!r}: {e.strerror or e}"
    return None
