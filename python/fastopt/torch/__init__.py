"""fastopt for PyTorch users: torch.optim optimizers over fastopt's fused step (`optim`), drop-in
layers on fastopt's kernels (`nn`, `nn.functional`) and `convert(model)`, which swaps them in.

    import fastopt.torch as ft
    model = ft.convert(model)
    opt = ft.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.05, max_grad_norm=1.0)

Importing this package needs torch (`pip install "fastopt[torch]"`); `import fastopt` does not.
"""
try:
    import torch  # noqa: F401
except ImportError as e:
    raise ImportError('fastopt.torch needs PyTorch: pip install "fastopt[torch]"') from e

from . import nn, optim
from .convert import convert

__all__ = ["convert", "nn", "optim"]
