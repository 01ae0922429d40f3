"""Clocks. block(step, inner) runs `inner` back-to-back steps and returns per-step samples in seconds.

CPU: every step is timed on its own (perf_counter costs ~0.1 us), so a step that lost its core
to another process is one outlier sample, not a spoiled average. GPU: one sample per block, the
block's mean, because the GPU runs asynchronously; host-side launch overhead still counts
whenever it is the bottleneck (the GPU idles between steps and the events see it)."""

import time

import fastopt

from .backends import torch_or_none


class CpuClock:
    name = "time.perf_counter"
    block_s = 0.004

    def block(self, step, inner):
        clock, out = time.perf_counter, []
        for _ in range(inner):
            t0 = clock()
            step()
            out.append(clock() - t0)
        return out


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
        return [self.start.elapsed_time(self.end) / 1e3 / inner]


class CudaSyncClock:
    name = "wall clock + fastopt.cuda.synchronize"
    block_s = 0.005

    def block(self, step, inner):
        fastopt.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(inner):
            step()
        fastopt.cuda.synchronize()
        return [(time.perf_counter() - t0) / inner]


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
