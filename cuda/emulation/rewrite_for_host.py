"""Rewrites a CUDA source for the host emulation (line numbers kept):
- kernel<<<grid, block[, smem[, stream]]>>>(args) becomes
  fastopt_emulation::launch(grid, block[, smem[, stream]])(call, args), call being a generic lambda
  that calls the kernel (so its template arguments are deduced as nvcc deduces them);
- each `__shared__ T name[...];` is followed by fastopt_emulation::fresh_shared(&name, sizeof name),
  which poisons the variable once per block, as a new block's shared memory holds garbage.
Usage: rewrite_for_host.py SOURCE OUTPUT"""

import re
import sys

LAUNCH = re.compile(r"([A-Za-z_][\w:]*(?:<[^<>;()]*>)?)\s*<<<(.*?)>>>\s*\(", re.S)
SHARED = re.compile(r"__shared__\s+([^;\n]+);")


def declared_names(declaration):
    """Names declared by `T a[n], b[m]` (commas inside brackets do not separate)."""
    parts, depth, current = [], 0, ""
    for ch in declaration:
        depth += ch in "[(<"
        depth -= ch in "])>"
        if ch == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    parts.append(current)
    return [re.search(r"(\w+)\s*$", p.split("[")[0]).group(1) for p in parts]


def poison(m):
    return m.group(0) + "".join(
        f" ::fastopt_emulation::fresh_shared(&{n}, sizeof {n});" for n in declared_names(m.group(1))
    )


src, out = sys.argv[1], sys.argv[2]
with open(src) as f:
    text = f.read()
text = LAUNCH.sub(
    lambda m: f"::fastopt_emulation::launch({m.group(2)})([](auto&... a) {{ {m.group(1)}(a...); }}, ", text
)
if "<<<" in text:
    sys.exit(f"{src}: a launch the rewrite does not understand remains")
text = SHARED.sub(poison, text)
with open(out, "w") as f:
    f.write(f'#line 1 "{src}"\n{text}')
