import time

import torch

N = 128
for c, k, h in [(32, 32, 32), (64, 64, 16), (32, 64, 16)]:
    x = torch.randn(N, c, h, h).bfloat16().contiguous(memory_format=torch.channels_last)
    w = (torch.randn(k, c, 3, 3) * 0.1).bfloat16().contiguous(memory_format=torch.channels_last)
    f = lambda x=x, w=w: torch.nn.functional.conv2d(x, w, None, 1, 1)
    for _ in range(3):
        f()
    ts = []
    for _ in range(15):
        t = time.perf_counter()
        f()
        ts.append((time.perf_counter() - t) * 1e3)
    ts.sort()
    print(f"torch bf16 CL {c}>{k}@{h}: median {ts[7]:.2f} ms")
