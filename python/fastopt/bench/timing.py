"""Clocks. A sample is the mean of a block of back-to-back steps, so fast steps are not lost in
timer resolution and, on the GPU, host-side launch overhead counts whenever it is the
bottleneck (the GPU idles between steps and the events see it)."""
import time

import fastopt

from .backends import torch_or_none


class CpuClock:
    name = "time.perf_counter"
    block_s = 0.004

    def block(self, step, inner):
        t0 = time.perf_counter()
        for _ in range(inner):
            step()
        return (time.perf_counter() - t0) / inner


class CudaEventClock:
    """torch.cuda.Event on torch's current stream, which is the legacy default stream that
    fastopt's stream=0 also uses."""
    name = "torch.cuda.Event"
    block_s = 0.002

    def __init__(self, torch):
        self.torch = torch
        self.start = torch.cuda.Event(enable_timing=True)
        self.end = torch.cuda.Event(enable_timing=True)

    def block(self, step, inner):
        self.start.record()
        for _ in range(inner):
            step()
        self.end.record()
        self.end.synchronize()
        return self.start.elapsed_time(self.end) / 1e3 / inner


class CudaSyncClock:
    name = "wall clock + fastopt.cuda.synchronize"
    block_s = 0.005

    def block(self, step, inner):
        fastopt.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(inner):
            step()
        fastopt.cuda.synchronize()
        return (time.perf_counter() - t0) / inner


def clock_for(device):
    if device == "cpu":
        return CpuClock()
    torch = torch_or_none()
    if torch is not None and torch.cuda.is_available():
        return CudaEventClock(torch)
    return CudaSyncClock()


def release_gpu_memory():
    torch = torch_or_none()
    if torch is not None and torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
