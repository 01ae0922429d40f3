"""fastopt for PyTorch users: torch.optim optimizers over fastopt's fused step (`optim`), drop-in
layers on fastopt's kernels (`nn`, `nn.functional`) and `convert(model)`, which swaps them in.

    import fastopt.torch as ft
    model = ft.convert(model)
    opt = ft.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.05, max_grad_norm=1.0)

Importing this package needs torch (`pip install "fastopt[torch]"`); `import fastopt` does not.
Where torch and fastopt both see a GPU, importing it hands fastopt's GPU allocations to torch's
caching allocator (fastopt.cuda.set_allocator), so the outputs of fastopt's ops on CUDA tensors
come from torch's pool, on the stream they are made on, as torch's own ops' do.
"""

try:
    import torch  # noqa: F401
except ImportError as e:
    raise ImportError('fastopt.torch needs PyTorch: pip install "fastopt[torch]"') from e

from .. import cuda as _cuda
from . import nn, optim
from .convert import convert


def _torch_alloc(nbytes, device, stream):
    return torch.cuda.caching_allocator_alloc(nbytes, device, stream) if nbytes else 0


def _torch_free(address, nbytes, device, stream):
    if address:
        torch.cuda.caching_allocator_delete(address)


if _cuda.has_gpu() and torch.cuda.is_available():
    _cuda.set_allocator(_torch_alloc, _torch_free)

__all__ = ["convert", "nn", "optim"]
