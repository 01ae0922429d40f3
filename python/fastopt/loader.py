"""Batches prepared while the step runs.

A background thread gathers each batch's images in the epoch's order, turns them into network
inputs (the data set's preprocessing: uint8 -> normalized float32, whitening) and copies them to
the device, `ahead` batches in advance. The main thread only takes finished batches from a queue:
NumPy's conversions and the native kernels release the GIL, so the two threads overlap.

On the GPU the copy is fastopt.to_device, which releases the GIL but copies from pageable host
memory and waits for it (the DeviceArray API offers no pinned host buffers or asynchronous host
copies yet): the thread hides that wait behind the step, but the copy engine still stages
through a bounce buffer.
"""
import queue
import threading

import numpy as np

from . import _arrays

__all__ = ["BatchLoader"]

_DONE = object()


class BatchLoader:
    """Iterates (x, y) over `split` in `order`, `batch_size` at a time (the last batch may be
    smaller); x float32 (n, C, H, W) network inputs, y int32, both on `device`."""

    def __init__(self, data, split, order, batch_size, device, ahead=2):
        self.data, self.split, self.order = data, split, order
        self.batch_size, self.device, self.ahead = batch_size, device, max(int(ahead), 1)

    def __len__(self):
        return -(-len(self.order) // self.batch_size)

    def batch(self, b):
        idx = self.order[b * self.batch_size:(b + 1) * self.batch_size]
        x, y = np.ascontiguousarray(self.data.inputs(self.split.x[idx])), self.split.y[idx]
        if self.device != "cpu":
            x, y = _arrays.to_device(x, self.device), _arrays.to_device(y, self.device)
        return x, y

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
