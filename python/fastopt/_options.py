"""Range checks shared by the trainer's config and the command lines (`fastopt train`, `fastopt
bench`): one rule per option, which the config raises as ValueError and argparse prints as a usage
error (one line, exit code 2), so the two can never disagree about what is allowed."""
import argparse
import math
import numbers
import os
import tempfile


def _bound(v):
    return f"{v:g}" if isinstance(v, float) else str(v)


def problem(value, kind, low=None, high=None, low_open=False):
    """None when `value` is a `kind` ("int" or "real") within [low, high] (low excluded with
    low_open; None: unbounded), else what is wrong, as text to follow the option's name. A bool
    is not an int, a string is not a number, and a real must be finite."""
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            return f"expected an integer, got {type(value).__name__}"
        what = "an integer"
    else:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            return f"expected a real number, got {type(value).__name__}"
        if not math.isfinite(value):
            return f"must be a finite number, got {value}"
        what = "a number"
    below = value <= low if low_open else value < low if low is not None else False
    if below or (high is not None and value > high):
        if low is not None and high is not None:
            wanted = f"in {'(' if low_open else '['}{_bound(low)}, {_bound(high)}]"
        elif low is not None:
            wanted = f"{'>' if low_open else '>='} {_bound(low)}"
        else:
            wanted = f"<= {_bound(high)}"
        return f"must be {what} {wanted}, got {value}"
    return None


def check(name, value, kind, low=None, high=None, low_open=False):
    """`value` when problem() finds nothing; else TypeError (wrong kind) or ValueError naming `name`."""
    text = problem(value, kind, low, high, low_open)
    if text is None:
        return value
    raise (TypeError if text.startswith("expected") else ValueError)(f"{name}: {text}")


def arg_type(kind, low=None, high=None, low_open=False):
    """An argparse `type=` that parses an int or a float and applies problem(): argparse turns its
    complaint into `error: argument --name: must be ...`."""
    def parse(text):
        try:
            value = int(text) if kind == "int" else float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind == 'int' else 'a number'}, "
                                             f"got {text!r}") from None
        wrong = problem(value, kind, low, high, low_open)
        if wrong:
            raise argparse.ArgumentTypeError(wrong)
        return value

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
