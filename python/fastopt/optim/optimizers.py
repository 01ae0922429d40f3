"""The optimizers: each names torch.optim's defaults, checks its options and picks the update
rule (optim_rules.h) for a group. The math itself lives once, in the native rules.

Every optimizer also takes master_weights, stochastic_rounding, seed and state_dtype, group options
like the others: how bfloat16/float16 parameters and the state are stored (fastopt.optim.Optimizer
says how).

Every option is checked when the optimizer is built, when a group is added, before every step (a
schedule or the user may have edited a group) and when a checkpoint is loaded: a wrong kind of
value (a str, None, a bool for a number) raises TypeError and a value out of range ValueError,
each naming the option. The ranges are torch's, and every number must be finite."""

from __future__ import annotations

from collections.abc import Sequence

from .._args import boolean
from .._types import Params
from .optimizer import PRECISION_OPTIONS, K, Optimizer, any_real, betas, nonnegative, option_name, unit


class SGD(Optimizer):
    """SGD with optional momentum (heavy ball or Nesterov), dampening and L2 weight decay."""

    OPTIONS = dict(
        lr=nonnegative,
        momentum=nonnegative,
        dampening=any_real,
        weight_decay=nonnegative,
        nesterov=boolean,
        maximize=boolean,
        **PRECISION_OPTIONS,
    )
    KINDS = (K.SGD, K.SGD_MOMENTUM, K.SGD_NESTEROV)

    def __init__(
        self,
        params: Params,
        lr: float = 1e-3,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        *,
        maximize: bool = False,
        master_weights: bool = False,
        stochastic_rounding: bool = False,
        seed: int = 0,
        state_dtype: str = "float32",
    ) -> None:
        super().__init__(
            params,
            dict(
                lr=lr,
                momentum=momentum,
                dampening=dampening,
                weight_decay=weight_decay,
                nesterov=nesterov,
                maximize=maximize,
                master_weights=master_weights,
                stochastic_rounding=stochastic_rounding,
                seed=seed,
                state_dtype=state_dtype,
            ),
        )

    @classmethod
    def _check_rule(cls, g, prefix):
        if g["nesterov"] and (g["momentum"] <= 0 or g["dampening"] != 0):
            raise ValueError(f"{option_name(prefix, 'nesterov')}: requires a momentum > 0 and zero dampening")

    @classmethod
    def _kind(cls, g):
        if g["momentum"] == 0:
            return K.SGD
        return K.SGD_NESTEROV if g["nesterov"] else K.SGD_MOMENTUM

    @classmethod
    def _fill(cls, h, g):
        h.momentum, h.dampening, h.weight_decay = float(g["momentum"]), float(g["dampening"]), float(g["weight_decay"])


class Adagrad(Optimizer):
    """Adagrad: per-coordinate steps lr / (sqrt(sum of squared gradients) + eps)."""

    OPTIONS = dict(
        lr=nonnegative,
        lr_decay=nonnegative,
        weight_decay=nonnegative,
        initial_accumulator_value=nonnegative,
        eps=nonnegative,
        maximize=boolean,
        **PRECISION_OPTIONS,
    )
    KINDS = (K.ADAGRAD,)

    def __init__(
        self,
        params: Params,
        lr: float = 1e-2,
        lr_decay: float = 0.0,
        weight_decay: float = 0.0,
        initial_accumulator_value: float = 0.0,
        eps: float = 1e-10,
        *,
        maximize: bool = False,
        master_weights: bool = False,
        stochastic_rounding: bool = False,
        seed: int = 0,
        state_dtype: str = "float32",
    ) -> None:
        super().__init__(
            params,
            dict(
                lr=lr,
                lr_decay=lr_decay,
                weight_decay=weight_decay,
                initial_accumulator_value=initial_accumulator_value,
                eps=eps,
                maximize=maximize,
                master_weights=master_weights,
                stochastic_rounding=stochastic_rounding,
                seed=seed,
                state_dtype=state_dtype,
            ),
        )

    @classmethod
    def _kind(cls, g):
        return K.ADAGRAD

    @classmethod
    def _initial_state(cls, name, group):
        return float(group["initial_accumulator_value"])

    @classmethod
    def _fill(cls, h, g):
        h.lr_decay, h.weight_decay, h.eps = float(g["lr_decay"]), float(g["weight_decay"]), float(g["eps"])


class RMSprop(Optimizer):
    """RMSprop (Hinton): divide by a running RMS of the gradients; optionally centered and with momentum.
    alpha lies in [0, 1] (above 1 the running average of squares could turn negative)."""

    OPTIONS = dict(
        lr=nonnegative,
        alpha=unit,
        eps=nonnegative,
        weight_decay=nonnegative,
        momentum=nonnegative,
        centered=boolean,
        maximize=boolean,
        **PRECISION_OPTIONS,
    )
    KINDS = (K.RMSPROP, K.RMSPROP_MOMENTUM, K.RMSPROP_CENTERED, K.RMSPROP_CENTERED_MOMENTUM)

    def __init__(
        self,
        params: Params,
        lr: float = 1e-2,
        alpha: float = 0.99,
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        momentum: float = 0.0,
        centered: bool = False,
        *,
        maximize: bool = False,
        master_weights: bool = False,
        stochastic_rounding: bool = False,
        seed: int = 0,
        state_dtype: str = "float32",
    ) -> None:
        super().__init__(
            params,
            dict(
                lr=lr,
                alpha=alpha,
                eps=eps,
                weight_decay=weight_decay,
                momentum=momentum,
                centered=centered,
                maximize=maximize,
                master_weights=master_weights,
                stochastic_rounding=stochastic_rounding,
                seed=seed,
                state_dtype=state_dtype,
            ),
        )

    @classmethod
    def _kind(cls, g):
        if g["centered"]:
            return K.RMSPROP_CENTERED_MOMENTUM if g["momentum"] > 0 else K.RMSPROP_CENTERED
        return K.RMSPROP_MOMENTUM if g["momentum"] > 0 else K.RMSPROP

    @classmethod
    def _fill(cls, h, g):
        h.alpha, h.eps = float(g["alpha"]), float(g["eps"])
        h.weight_decay, h.momentum = float(g["weight_decay"]), float(g["momentum"])


class Adam(Optimizer):
    """Adam (Kingma & Ba) with bias correction; weight_decay is L2 (added to the gradient)."""

    OPTIONS = dict(
        lr=nonnegative,
        betas=betas,
        eps=nonnegative,
        weight_decay=nonnegative,
        amsgrad=boolean,
        maximize=boolean,
        **PRECISION_OPTIONS,
    )
    KINDS = (K.ADAM, K.ADAM_AMSGRAD)
    _decoupled = False

    def __init__(
        self,
        params: Params,
        lr: float = 1e-3,
        betas: Sequence[float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        amsgrad: bool = False,
        *,
        maximize: bool = False,
        master_weights: bool = False,
        stochastic_rounding: bool = False,
        seed: int = 0,
        state_dtype: str = "float32",
    ) -> None:
        betas = tuple(betas) if isinstance(betas, list) else betas
        super().__init__(
            params,
            dict(
                lr=lr,
                betas=betas,
                eps=eps,
                weight_decay=weight_decay,
                amsgrad=amsgrad,
                maximize=maximize,
                master_weights=master_weights,
                stochastic_rounding=stochastic_rounding,
                seed=seed,
                state_dtype=state_dtype,
            ),
        )

    @classmethod
    def _kind(cls, g):
        return K.ADAM_AMSGRAD if g["amsgrad"] else K.ADAM

    @classmethod
    def _fill(cls, h, g):
        h.beta1, h.beta2 = (float(b) for b in g["betas"])
        h.eps, h.weight_decay = float(g["eps"]), float(g["weight_decay"])
        h.decoupled_weight_decay = cls._decoupled


class AdamW(Adam):
    """AdamW (Loshchilov & Hutter): Adam with decoupled weight decay, p *= 1 - lr * weight_decay."""

    _decoupled = True

    def __init__(
        self,
        params: Params,
        lr: float = 1e-3,
        betas: Sequence[float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
        *,
        maximize: bool = False,
        master_weights: bool = False,
        stochastic_rounding: bool = False,
        seed: int = 0,
        state_dtype: str = "float32",
    ) -> None:
        super().__init__(
            params,
            lr=lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            amsgrad=amsgrad,
            maximize=maximize,
            master_weights=master_weights,
            stochastic_rounding=stochastic_rounding,
            seed=seed,
            state_dtype=state_dtype,
        )
