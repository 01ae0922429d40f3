"""The optimizers: each names torch.optim's defaults, checks its options and picks the update
rule (optim_rules.h) for a group. The math itself lives once, in the native rules."""
from .optimizer import K, Optimizer, check_range


class SGD(Optimizer):
    """SGD with optional momentum (heavy ball or Nesterov), dampening and L2 weight decay."""

    def __init__(self, params, lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False, *,
                 maximize=False):
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                                      nesterov=nesterov, maximize=maximize))

    def _check(self, g):
        check_range("lr", g["lr"])
        check_range("momentum", g["momentum"])
        check_range("weight_decay", g["weight_decay"])
        if g["nesterov"] and (g["momentum"] <= 0 or g["dampening"] != 0):
            raise ValueError("nesterov: requires a momentum > 0 and zero dampening")

    def _kind(self, g):
        if g["momentum"] == 0:
            return K.SGD
        return K.SGD_NESTEROV if g["nesterov"] else K.SGD_MOMENTUM

    def _fill(self, h, g):
        h.momentum, h.dampening, h.weight_decay = g["momentum"], g["dampening"], g["weight_decay"]


class Adagrad(Optimizer):
    """Adagrad: per-coordinate steps lr / (sqrt(sum of squared gradients) + eps)."""

    def __init__(self, params, lr=1e-2, lr_decay=0.0, weight_decay=0.0, initial_accumulator_value=0.0, eps=1e-10,
                 *, maximize=False):
        super().__init__(params, dict(lr=lr, lr_decay=lr_decay, weight_decay=weight_decay,
                                      initial_accumulator_value=initial_accumulator_value, eps=eps,
                                      maximize=maximize))

    def _check(self, g):
        for name in ("lr", "lr_decay", "weight_decay", "initial_accumulator_value", "eps"):
            check_range(name, g[name])

    def _kind(self, g):
        return K.ADAGRAD

    def _initial_state(self, name, group):
        return float(group["initial_accumulator_value"])

    def _fill(self, h, g):
        h.lr_decay, h.weight_decay, h.eps = g["lr_decay"], g["weight_decay"], g["eps"]


class RMSprop(Optimizer):
    """RMSprop (Hinton): divide by a running RMS of the gradients; optionally centered and with momentum."""

    def __init__(self, params, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0, centered=False, *,
                 maximize=False):
        super().__init__(params, dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay, momentum=momentum,
                                      centered=centered, maximize=maximize))

    def _check(self, g):
        for name in ("lr", "alpha", "eps", "weight_decay", "momentum"):
            check_range(name, g[name])

    def _kind(self, g):
        if g["centered"]:
            return K.RMSPROP_CENTERED_MOMENTUM if g["momentum"] > 0 else K.RMSPROP_CENTERED
        return K.RMSPROP_MOMENTUM if g["momentum"] > 0 else K.RMSPROP

    def _fill(self, h, g):
        h.alpha, h.eps, h.weight_decay, h.momentum = g["alpha"], g["eps"], g["weight_decay"], g["momentum"]


class Adam(Optimizer):
    """Adam (Kingma & Ba) with bias correction; weight_decay is L2 (added to the gradient)."""

    _decoupled = False

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False, *,
                 maximize=False):
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                                      amsgrad=amsgrad, maximize=maximize))

    def _check(self, g):
        check_range("lr", g["lr"])
        check_range("eps", g["eps"])
        check_range("weight_decay", g["weight_decay"])
        if len(g["betas"]) != 2:
            raise ValueError(f"betas: expected a pair, got {g['betas']!r}")
        check_range("betas[0]", g["betas"][0], 0.0, 1.0)
        check_range("betas[1]", g["betas"][1], 0.0, 1.0)

    def _kind(self, g):
        return K.ADAM_AMSGRAD if g["amsgrad"] else K.ADAM

    def _fill(self, h, g):
        h.beta1, h.beta2 = g["betas"]
        h.eps, h.weight_decay = g["eps"], g["weight_decay"]
        h.decoupled_weight_decay = self._decoupled


class AdamW(Adam):
    """AdamW (Loshchilov & Hutter): Adam with decoupled weight decay, p *= 1 - lr * weight_decay."""

    _decoupled = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False, *,
                 maximize=False):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                         maximize=maximize)
