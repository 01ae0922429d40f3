"""Training checkpoints on disk: reading one back with every way it can be unusable named
(CheckpointError), and writing files atomically, so that an interrupted run loses nothing. The
Trainer (train.py) decides what goes into a checkpoint; `fastopt train`, `fastopt evaluate` and
`fastopt transfer` read them."""

import json
import os
import zipfile
import zlib

import numpy as np


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed: unreadable, not a training checkpoint, or written by a
    run this one cannot continue. The message names the file and what is wrong."""


# The checkpoint's meta entries and their JSON types.
_META = {"config": dict, "param_groups": list, "epoch": int, "step": int, "history": dict}
_HISTORY = {"epochs": list, "best_epoch": int, "best_val_loss": (int, float), "stopped": str}


def _meta_problem(meta):
    if not isinstance(meta, dict):
        return f"its meta entry is a JSON {type(meta).__name__}, not an object"
    for table, where in ((_META, meta), (_HISTORY, meta.get("history"))):
        for key, kind in table.items():
            if key not in where:
                return f"its meta has no {key!r}"
            if not isinstance(where[key], kind) or isinstance(where[key], bool):
                return f"its meta {key!r} is {where[key]!r}"
    if meta["epoch"] < 0 or meta["step"] < 0:
        return f"its meta has a negative count (epoch {meta['epoch']}, step {meta['step']})"
    if not isinstance(meta.get("initial_loss"), (int, float, type(None))):
        return f"its meta 'initial_loss' is {meta.get('initial_loss')!r}"
    return None


def read_checkpoint(path):
    """(meta, model state, optimizer state) of a checkpoint written by Trainer.save; any file
    that is not one (missing, empty, truncated, corrupt, foreign) raises CheckpointError."""
    try:
        with open(path, "rb") as f:
            try:
                z = np.load(f, allow_pickle=False)
            except ValueError:  # no NumPy magic: NumPy then takes the bytes for a pickle
                raise CheckpointError(f"{path}: not a NumPy .npz file, so not a training checkpoint") from None
            if not isinstance(z, np.lib.npyio.NpzFile):
                raise CheckpointError(
                    f"{path}: a single NumPy array, not a training checkpoint (.npz from fastopt train)"
                )
            with z:
                if "meta" not in z.files:
                    raise CheckpointError(
                        f"{path}: not a training checkpoint (no 'meta' entry; it holds "
                        f"{', '.join(sorted(z.files)[:4]) or 'nothing'})"
                    )
                meta = json.loads(z["meta"].tobytes().decode())
                wrong = _meta_problem(meta)
                if wrong:
                    raise CheckpointError(f"{path}: not a usable training checkpoint ({wrong})")
                model = {k[len("model/") :]: z[k] for k in z.files if k.startswith("model/")}
                meta["ema"] = {k[len("ema/") :]: z[k] for k in z.files if k.startswith("ema/")}
                meta["data_arrays"] = {k[len("data/") :]: z[k] for k in z.files if k.startswith("data/")}
                state = {}
                for k in z.files:
                    if k.startswith("optim/"):
                        _, i, name = k.split("/", 2)
                        state.setdefault(int(i), {})[name] = z[k] if name != "step" else int(z[k])
    except CheckpointError:
        raise
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise CheckpointError(f"{path}: a folder, not a checkpoint file") from None
    except EOFError:
        raise CheckpointError(f"{path}: empty, not a checkpoint") from None
    except zipfile.BadZipFile as e:
        raise CheckpointError(f"{path}: truncated or corrupt ({e})") from None
    except (OSError, ValueError, UnicodeDecodeError, zlib.error) as e:
        raise CheckpointError(
            f"{path}: unreadable, not a checkpoint written by fastopt train ({type(e).__name__}: {e})"
        ) from None
    if "params" in model:
        raise CheckpointError(
            f"{path}: written by an older fastopt (one flat 'params' vector, no parameter names); "
            "checkpoints now name every parameter as torch does: train afresh"
        )
    if not model:
        raise CheckpointError(f"{path}: not a usable training checkpoint (no model parameters)")
    return meta, model, state


def write_atomically(path, write):
    """Write `path` through write(binary file) so that it holds its old content or the whole new
    one, never a part: a temporary file beside it, flushed to disk, then renamed over it."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp"
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
