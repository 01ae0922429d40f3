"""Batches prepared while the step runs.

A background thread gathers each batch's images in the epoch's order, turns them into network
inputs (the data set's preprocessing: uint8 -> normalized float32, whitening) and copies them to
the device, `ahead` batches in advance. The main thread only takes finished batches from a queue:
NumPy's conversions and the native kernels release the GIL, so the two threads overlap.

On the GPU each batch is assembled in a pinned (page-locked) host buffer and copied with
fastopt.to_device(..., non_blocking=True): the copy engine reads the buffer directly (no bounce
buffer) and the thread does not wait for it. The copies go to the legacy default stream, where
the step's kernels run, so a step never reads a batch before its copy is done. A ring of
`ahead + 2` buffers per array (the queue's `ahead`, the batch in use, the one being filled)
is reused; before refilling a buffer the thread waits for the stream, so no copy still reading
it is overwritten.
"""

import queue
import threading

import numpy as np

from . import _arrays, cuda

__all__ = ["BatchLoader"]

_DONE = object()


class BatchLoader:
    """Iterates (x, y) over `split` in `order`, `batch_size` at a time (the last batch may be
    smaller); x float32 (n, C, H, W) network inputs, y int32, both on `device`."""

    def __init__(self, data, split, order, batch_size, device, ahead=2):
        self.data, self.split, self.order = data, split, order
        self.batch_size, self.device, self.ahead = batch_size, device, max(int(ahead), 1)
        self._ring = {}  # (name, slot) -> pinned host buffer (GPU only)

    def __len__(self):
        return -(-len(self.order) // self.batch_size)

    def batch(self, b):
        idx = self.order[b * self.batch_size : (b + 1) * self.batch_size]
        x, y = np.ascontiguousarray(self.data.inputs(self.split.x[idx])), self.split.y[idx]
        if self.device != "cpu":
            slot = b % (self.ahead + 2)
            if any(k[1] == slot for k in self._ring):
                cuda.synchronize()  # the copies that last read this slot's buffers are done
            x, y = self._upload("x", slot, x), self._upload("y", slot, y)
        return x, y

    def _upload(self, name, slot, a):
        buf = self._ring.get((name, slot))
        if buf is None or buf.shape != a.shape or buf.dtype != a.dtype:
            buf = self._ring[(name, slot)] = cuda.pinned_empty(a.shape, a.dtype)
        np.copyto(buf, a)
        return _arrays.to_device(buf, self.device, non_blocking=True)

    def __iter__(self):
        ready = queue.Queue(self.ahead)
        stop = threading.Event()

        def produce():
            try:
                for b in range(len(self)):
                    if stop.is_set():
                        return
                    item = self.batch(b)
                    while not stop.is_set():
                        try:
                            ready.put(item, timeout=0.1)
                            break
                        except queue.Full:
                            continue
                item = _DONE
            except BaseException as e:  # handed to the consumer, which raises it
                item = e
            while not stop.is_set():
                try:
                    ready.put(item, timeout=0.1)
                    return
                except queue.Full:
                    continue

        worker = threading.Thread(target=produce, name="fastopt-loader", daemon=True)
        worker.start()
        try:
            while True:
                item = ready.get()
                if item is _DONE:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:  # the consumer stopped early (divergence, an exception): release the thread
            stop.set()
            worker.join()
