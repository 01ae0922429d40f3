"""Weight averaging over a built network's store: the exponential moving average of Polyak and
Juditsky (EMA, as timm's ModelEmaV2 and TensorFlow's ExponentialMovingAverage keep it) and the
plain running mean of stochastic weight averaging (SWA, Izmailov et al. 2018).

The average covers the parameters and the float buffers (batch norm's running statistics),
which the store keeps in two flat arrays: an update is ONE native call (axpby over both arrays,
12 bytes per value: read the average and the weights, write the average). num_batches_tracked
is a count, not averaged.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import _arrays, functional as F
from .._args import boolean, integer, real

if TYPE_CHECKING:
    from ..nn import Module, ParameterStore

__all__ = ["EMA"]


def _clone(t):
    out = _arrays.empty(tuple(t.shape), np.float32, _arrays.device_of(t))
    F.axpby_(out, t, 1.0, 0.0)  # b = 0: the uninitialized values are not read
    return out


class EMA:
    """avg = decay * avg + (1 - decay) * w after each optimizer step (`update()`).

    store: a built network's ParameterStore, or the built network. The average starts as a copy of
    the weights at construction. warmup=True ramps the decay as TensorFlow's num_updates does,
    decay_n = min(decay, (1 + n) / (10 + n)) for the n-th update (n = 0, 1, ...), so that early
    weights do not dominate a short run. decay=None is the plain running mean of the weights at
    construction and after every update (SWA: avg_n = mean of n + 1 snapshots).

    `with ema.applied():` puts the average into the network (parameters and running statistics)
    and the live weights back on exit, for evaluation or a checkpoint of the averaged model.
    """

    def __init__(self, store: ParameterStore | Module, decay: float | None = 0.999, warmup: bool = False) -> None:
        store = getattr(store, "store", store)
        if not all(hasattr(store, a) for a in ("data", "buffers", "root")):
            raise TypeError(
                f"store: expected a built network or its ParameterStore (model.build(...)), got {type(store).__name__}"
            )
        self.decay = None if decay is None else real(decay, "decay", 0.0, 1.0)
        self.warmup = boolean(warmup, "warmup")
        if self.warmup and self.decay is None:
            raise ValueError("warmup: ramps an exponential decay; decay=None is the running mean, which has none")
        self.store = store
        self.live = [store.data] + ([store.buffers] if store.buffers.shape[0] else [])
        self.average = [_clone(t) for t in self.live]
        self.num_updates = 0

    def current_decay(self) -> float:
        """The decay the next update() applies."""
        n = self.num_updates
        if self.decay is None:
            return (n + 1) / (n + 2)
        return min(self.decay, (1 + n) / (10 + n)) if self.warmup else self.decay

    def update(self) -> float:
        """Fold the current weights into the average; returns the decay used."""
        d = self.current_decay()
        F.axpby_(self.average, self.live, 1.0 - d, d)
        self.num_updates += 1
        return d

    @contextlib.contextmanager
    def applied(self) -> Iterator[EMA]:
        """The averaged weights in the network for the duration of the block."""
        backup = [_clone(t) for t in self.live]
        F.axpby_(self.live, self.average, 1.0, 0.0)
        try:
            yield self
        finally:
            F.axpby_(self.live, backup, 1.0, 0.0)

    def copy_to_model(self) -> None:
        """Keep the average in the network for good (the end of SWA)."""
        F.axpby_(self.live, self.average, 1.0, 0.0)

    def copy_from_model(self, num_updates: int = 0) -> None:
        """Restart the average from the network's current weights, as after num_updates updates."""
        F.axpby_(self.average, self.live, 1.0, 0.0)
        self.num_updates = integer(num_updates, "num_updates", 0)

    def state_dict(self) -> dict[str, Any]:
        return {"num_updates": self.num_updates, "average": [_arrays.to_numpy(a) for a in self.average]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a state_dict(); checked whole before anything changes (ValueError naming the entry)."""
        n = integer(state["num_updates"], "state['num_updates']", 0)
        average = list(state["average"])
        if len(average) != len(self.average):
            raise ValueError(f"state['average']: {len(average)} arrays, this network's average has {len(self.average)}")
        for i, (saved, mine) in enumerate(zip(average, self.average)):
            if np.shape(saved) != tuple(mine.shape) or np.asarray(saved).dtype != np.float32:
                raise ValueError(
                    f"state['average'][{i}]: float32 {tuple(mine.shape)} expected, got "
                    f"{np.asarray(saved).dtype} {np.shape(saved)} (another network?)"
                )
        for saved, mine in zip(average, self.average):
            _arrays.copy_(mine, np.ascontiguousarray(saved))
        self.num_updates = n

    def __repr__(self):
        what = "running mean" if self.decay is None else f"decay={self.decay}{', warmup' if self.warmup else ''}"
        return f"EMA({what}, {self.num_updates} updates)"
