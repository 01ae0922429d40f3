"""Functional ops, one module per family; each works on NumPy arrays (CPU) and GPU arrays."""

from .activation import *  # noqa: F401,F403
from .augment import *  # noqa: F401,F403
from .clip import clip_grad_norm_, clip_grad_value_, global_norm
from .conv import *  # noqa: F401,F403
from .dropout import *  # noqa: F401,F403
from .linear import *  # noqa: F401,F403
from .loss import *  # noqa: F401,F403
from .normalization import *  # noqa: F401,F403
from .pooling import *  # noqa: F401,F403
