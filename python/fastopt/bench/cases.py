"""What is benchmarked: the optimizer cases, the sizes, and the data they run on.

Bytes per parameter are the minimal fp32 traffic of one step (DESIGN.md, "Performance
bookkeeping"). Every backend of a case is judged against the same minimal count, so a peer that
moves more bytes (torch's unfused clip then step: 40 B) shows up as a lower GB/s, not a
different yardstick.

The ceiling is a plain copy whose working set (source + destination) equals the case's (AdamW:
p, g, m, v = 16 B/param, so a copy of 2n floats), so both see the same cache level: this matters
at small sizes and on a CPU whose L3 holds hundreds of MB.
"""

import math
import re
from dataclasses import dataclass, field

import numpy as np

MANY_TENSORS = 10_000
MANY_MEAN = 400  # mean tensor length of the many-small-tensors case (~4M params in all)
CLIP_NORM = 1.0  # random gradients have norm ~sqrt(n) >> 1, so clipping really scales
LR = 1e-3


@dataclass(frozen=True)
class Case:
    name: str  # 'adamw', 'clip+adamw', ...
    optimizer: str  # fastopt.optim class name
    bytes_per_param: int
    working_set: int  # bytes per param of the distinct arrays touched (the copy ceiling's size)
    kwargs: dict = field(default_factory=dict)  # the same for fastopt, torch and the reference
    ref_rule: str = ""  # fastopt.reference.optim rule name
    clip: bool = False


CASES = {
    c.name: c
    for c in [
        Case("sgd", "SGD", 12, 8, dict(lr=LR), "sgd"),
        Case("sgd-momentum", "SGD", 20, 12, dict(lr=LR, momentum=0.9), "sgd"),
        Case("adagrad", "Adagrad", 20, 12, dict(lr=LR), "adagrad"),
        Case("rmsprop", "RMSprop", 20, 12, dict(lr=LR), "rmsprop"),
        Case("adam", "Adam", 28, 16, dict(lr=LR), "adam"),
        Case("adamw", "AdamW", 28, 16, dict(lr=LR, weight_decay=1e-2), "adamw"),
        Case("adamw-amsgrad", "AdamW", 36, 20, dict(lr=LR, weight_decay=1e-2, amsgrad=True), "adamw"),
        Case("clip+adamw", "AdamW", 32, 16, dict(lr=LR, weight_decay=1e-2), "adamw", clip=True),
    ]
}
DEFAULT_CASES = [c for c in CASES if c != "adamw-amsgrad"]

# The many-small-tensors case is spelled 'many' in --sizes.
SIZES = {
    ("cpu", True): ["1e5", "2^20", "2^24", "many"],
    ("cpu", False): ["1e5", "1e6", "1e7", "2^24", "1e8", "many"],
    ("cuda", True): ["1e6", "2^24", "1e8", "many"],
    ("cuda", False): ["1e5", "1e6", "1e7", "2^24", "1e8", "many"],
}


@dataclass(frozen=True)
class Size:
    label: str
    lengths: tuple  # one entry per tensor

    @property
    def n(self):
        return int(sum(self.lengths))

    @property
    def tensors(self):
        return len(self.lengths)


def parse_size(text, option="--sizes"):
    """'1e5', '2^24', '1048576', '1_000_000' or 'many' -> Size; ValueError naming `option`."""
    text = text.strip().lower()
    if text == "many":
        # Deterministic lengths, mostly not multiples of any vector width, like biases and norms.
        rng = np.random.default_rng(12345)
        lengths = rng.integers(16, 2 * MANY_MEAN - 16, size=MANY_TENSORS)
        return Size(f"{MANY_TENSORS // 1000}k tensors", tuple(int(x) for x in lengths))
    m = re.fullmatch(r"(\d+)\^(\d+)", text)
    if m:
        n = int(m.group(1)) ** int(m.group(2))
    else:
        try:
            n = int(float(text)) if re.fullmatch(r"[\d.]+e\d+", text) else int(text.replace("_", ""))
        except (ValueError, OverflowError):
            raise ValueError(f"{option}: cannot read {text!r} (use 1e5, 2^24, 1048576 or many)") from None
    if n < 1:
        raise ValueError(f"{option}: {text!r} must be >= 1")
    return Size(size_label(n), (n,))


def size_label(n):
    if n >= 1024 and n & (n - 1) == 0:
        return f"2^{n.bit_length() - 1}"
    e = round(math.log10(n)) if n > 0 else 0
    if n >= 1000 and 10**e == n:
        return f"1e{e}"
    return f"{n:,}"


def host_data(size, seed=0):
    """Float32 parameters and gradients on the host, one array per tensor; every backend starts
    from its own copy of these."""
    rng = np.random.default_rng(seed)
    flat_p = rng.standard_normal(size.n, dtype=np.float32)
    flat_g = rng.standard_normal(size.n, dtype=np.float32)
    flat_g *= 1e-2
    cuts = np.cumsum(size.lengths)[:-1]
    return np.split(flat_p, cuts), np.split(flat_g, cuts)
