"""fastopt.nn: layers with explicit forward/backward over fastopt's kernels, initializers, the
flat parameter store, and softmax cross-entropy. See module.py for the shape of it all."""
from . import init
from .layers import *  # noqa: F401,F403
from .layers import __all__ as _layers
from .loss import SoftmaxCrossEntropy
from .module import Module, Parameter, ParameterStore, Sequential

__all__ = ["init", "Module", "Parameter", "ParameterStore", "Sequential", "SoftmaxCrossEntropy"] + _layers
