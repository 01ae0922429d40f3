"""Rewrites CUDA launches for the host emulation: kernel<<<grid, block[, smem[, stream]]>>>(args)
becomes fastopt_emulation::launch(grid, block[, smem[, stream]])(call, args), call being a generic
lambda that calls the kernel (so its template arguments are deduced as nvcc deduces them).
Usage: rewrite_launches.py SOURCE.cu OUTPUT.cpp"""
import re
import sys

LAUNCH = re.compile(r"([A-Za-z_][\w:]*(?:<[^<>;()]*>)?)\s*<<<(.*?)>>>\s*\(", re.S)

src, out = sys.argv[1], sys.argv[2]
with open(src) as f:
    text = f.read()
text, count = LAUNCH.subn(lambda m: (f"::fastopt_emulation::launch({m.group(2)})"
                        f"([](auto&... a) {{ {m.group(1)}(a...); }}, "), text)
if "<<<" in text:
    sys.exit(f"{src}: a launch the rewrite does not understand remains")
with open(out, "w") as f:
    f.write(f'#line 1 "{src}"\n{text}')
