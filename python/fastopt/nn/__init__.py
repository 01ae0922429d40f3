"""fastopt.nn: layers with explicit forward/backward over fastopt's kernels, containers
(Sequential, Residual), initializers, the flat parameter store, softmax cross-entropy and
ready-made networks (models). See module.py for the shape of it all."""

from . import init, models
from .containers import Residual, Sequential
from .layers import *  # noqa: F401,F403
from .layers import __all__ as _layers
from .loss import SoftmaxCrossEntropy
from .module import IncompatibleKeys, Module, Parameter
from .store import ParameterStore

__all__ = ["init", "Module", "Parameter", "ParameterStore", "Sequential", "Residual", "SoftmaxCrossEntropy"] + _layers
