"""Fused optimizers with torch.optim's names, defaults and update formulas.

Every step is one native call over all parameter tensors (one parallel loop on the CPU, a
multi-tensor launch on the GPU), with optional fused global-norm gradient clipping. EMA keeps a
moving average of a network's weights (ema.py).
"""

from .ema import EMA
from .optimizer import Optimizer, StepResult
from .optimizers import SGD, Adagrad, Adam, AdamW, RMSprop

__all__ = ["Optimizer", "StepResult", "SGD", "Adagrad", "RMSprop", "Adam", "AdamW", "EMA"]
