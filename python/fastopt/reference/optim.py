"""Float64 NumPy update rules: the oracle the native optimizers are tested against.

Each rule updates ``p`` in place and keeps its per-parameter buffers in ``state``
under torch.optim's key names, so a state can be compared with torch's key by key.
``g`` is never modified. ``state['step']`` counts updates taken (1 after the first);
SGD keeps a step count as well, which torch's SGD does not.

Notation: t = step, g_t = gradient (negated when ``maximize``), lambda = weight decay.
"""

import math

import numpy as np

from .norms import global_norm

__all__ = [
    "sgd",
    "adagrad",
    "rmsprop",
    "adam",
    "adamw",
    "RULES",
    "step",
    "sgd_momentum_classic",
    "sgd_momentum_velocity",
]


def _grad(p, g, weight_decay, maximize):
    """g (sign flipped when maximizing) plus the L2 term lambda * p, as a new array."""
    g = np.array(g, dtype=np.float64)
    if maximize:
        g = -g
    if weight_decay != 0.0:
        g = g + weight_decay * p
    return g


def _count_step(state):
    state["step"] = state.get("step", 0) + 1
    return state["step"]


def sgd(p, g, state, *, lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False, maximize=False):
    """SGD with optional heavy-ball or Nesterov momentum (torch.optim.SGD).

    g_t = g + lambda p
    b_1 = g_1;   b_t = momentum b_{t-1} + (1 - dampening) g_t       (t > 1)
    d_t = g_t + momentum b_t   if nesterov else   b_t
    p  -= lr d_t                                      (d_t = g_t when momentum == 0)
    """
    if nesterov and (momentum <= 0.0 or dampening != 0.0):
        raise ValueError("nesterov needs momentum > 0 and dampening == 0")
    _count_step(state)
    d = _grad(p, g, weight_decay, maximize)
    if momentum != 0.0:
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = d.copy()
        else:
            buf = state["momentum_buffer"]
            buf *= momentum
            buf += (1.0 - dampening) * d
        buf = state["momentum_buffer"]
        d = d + momentum * buf if nesterov else buf
    p -= lr * d


def adagrad(
    p, g, state, *, lr=1e-2, lr_decay=0.0, weight_decay=0.0, initial_accumulator_value=0.0, eps=1e-10, maximize=False
):
    """AdaGrad (torch.optim.Adagrad).

    s_t  = s_{t-1} + g_t^2                    s_0 = initial_accumulator_value
    lr_t = lr / (1 + (t - 1) lr_decay)
    p   -= lr_t g_t / (sqrt(s_t) + eps)
    """
    if "sum" not in state:
        state["sum"] = np.full_like(p, initial_accumulator_value, dtype=np.float64)
    t = _count_step(state)
    d = _grad(p, g, weight_decay, maximize)
    state["sum"] += d * d
    clr = lr / (1.0 + (t - 1) * lr_decay)
    p -= clr * d / (np.sqrt(state["sum"]) + eps)


def rmsprop(
    p, g, state, *, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0, centered=False, maximize=False
):
    """RMSprop (torch.optim.RMSprop), optionally centered and with momentum.

    v_t = alpha v_{t-1} + (1 - alpha) g_t^2            (square_avg, v_0 = 0)
    m_t = alpha m_{t-1} + (1 - alpha) g_t              (grad_avg, centered only)
    den = sqrt(v_t - m_t^2) + eps  if centered  else  sqrt(v_t) + eps
    b_t = momentum b_{t-1} + g_t / den,  p -= lr b_t   (momentum > 0)
    p  -= lr g_t / den                                 (otherwise)
    """
    if "square_avg" not in state:
        state["square_avg"] = np.zeros_like(p, dtype=np.float64)
        if momentum > 0.0:
            state["momentum_buffer"] = np.zeros_like(p, dtype=np.float64)
        if centered:
            state["grad_avg"] = np.zeros_like(p, dtype=np.float64)
    _count_step(state)
    d = _grad(p, g, weight_decay, maximize)
    v = state["square_avg"]
    v *= alpha
    v += (1.0 - alpha) * d * d
    if centered:
        m = state["grad_avg"]
        m *= alpha
        m += (1.0 - alpha) * d
        den = np.sqrt(v - m * m) + eps
    else:
        den = np.sqrt(v) + eps
    if momentum > 0.0:
        buf = state["momentum_buffer"]
        buf *= momentum
        buf += d / den
        p -= lr * buf
    else:
        p -= lr * d / den


def _adam(p, d, state, lr, betas, eps, amsgrad):
    """The Adam moment update shared by adam and adamw; d is the (decayed) gradient."""
    beta1, beta2 = betas
    if "exp_avg" not in state:
        state["exp_avg"] = np.zeros_like(p, dtype=np.float64)
        state["exp_avg_sq"] = np.zeros_like(p, dtype=np.float64)
        if amsgrad:
            state["max_exp_avg_sq"] = np.zeros_like(p, dtype=np.float64)
    t = _count_step(state)
    m, v = state["exp_avg"], state["exp_avg_sq"]
    m *= beta1
    m += (1.0 - beta1) * d
    v *= beta2
    v += (1.0 - beta2) * d * d
    if amsgrad:
        np.maximum(state["max_exp_avg_sq"], v, out=state["max_exp_avg_sq"])
        v = state["max_exp_avg_sq"]
    bc1 = 1.0 - beta1**t
    bc2 = 1.0 - beta2**t
    p -= (lr / bc1) * m / (np.sqrt(v) / math.sqrt(bc2) + eps)


def adam(p, g, state, *, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False, maximize=False):
    """Adam with L2 weight decay folded into the gradient (torch.optim.Adam).

    g_t = g + lambda p
    m_t = b1 m_{t-1} + (1 - b1) g_t;   v_t = b2 v_{t-1} + (1 - b2) g_t^2
    vmax_t = max(vmax_{t-1}, v_t) replaces v_t below when amsgrad
    p  -= lr / (1 - b1^t) * m_t / (sqrt(v_t) / sqrt(1 - b2^t) + eps)
    """
    _adam(p, _grad(p, g, weight_decay, maximize), state, lr, betas, eps, amsgrad)


def adamw(p, g, state, *, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False, maximize=False):
    """AdamW: decoupled weight decay (torch.optim.AdamW).

    p *= 1 - lr lambda       (before the moments see g; g itself is not decayed)
    then the Adam update of ``adam`` with lambda = 0.
    """
    p *= 1.0 - lr * weight_decay
    _adam(p, _grad(p, g, 0.0, maximize), state, lr, betas, eps, amsgrad)


RULES = {"sgd": sgd, "adagrad": adagrad, "rmsprop": rmsprop, "adam": adam, "adamw": adamw}


def step(rule, params, grads, states, hypers, max_grad_norm=None, skip_nonfinite=False):
    """One optimizer step over a list of tensors, with optional global-norm clipping.

    ``rule`` is a name in RULES or a rule function; params/grads/states/hypers are
    aligned per tensor (hypers: the rule's keyword arguments for that tensor, and optionally
    ``l1``: L1 regularization, l1 * sign(p) added to the gradient like the L2 term).

    When ``max_grad_norm`` is given or ``skip_nonfinite`` is set, the global L2 norm
    ||g|| of all gradients is computed first and returned (otherwise None is).
    With ``skip_nonfinite``, a NaN/Inf anywhere in the gradients skips the whole step:
    params and states are left exactly as they were ('step' not incremented).
    Otherwise each rule sees coef * g with coef = min(1, max_grad_norm / (||g|| + 1e-6)).
    Without ``skip_nonfinite`` a non-finite gradient is not special: as in torch,
    a NaN norm makes coef NaN and the NaN flows into every parameter.

    Returns (norm or None, skipped).
    """
    fn = RULES[rule] if isinstance(rule, str) else rule
    if not (len(params) == len(grads) == len(states) == len(hypers)):
        raise ValueError("params, grads, states and hypers must have the same length")
    norm = None
    if max_grad_norm is not None or skip_nonfinite:
        norm = global_norm(grads, 2.0)
        if skip_nonfinite and not all(np.isfinite(g).all() for g in grads):
            return norm, True
    if max_grad_norm is not None:
        # np.minimum, unlike min(), keeps a NaN norm NaN, as torch's clamp does.
        coef = float(np.minimum(1.0, max_grad_norm / (norm + 1e-6)))
        grads = [np.asarray(g, dtype=np.float64) * coef for g in grads]
    for p, g, s, h in zip(params, grads, states, hypers):
        h = dict(h)
        l1 = h.pop("l1", 0.0)
        if l1:  # the kernels add l1 * sign(p) after the sign flip and the L2 term: the same, pre-flipped
            g = np.asarray(g, np.float64) + (-1.0 if h.get("maximize") else 1.0) * l1 * np.sign(p)
        fn(p, g, s, **h)
    return norm, False


def sgd_momentum_classic(p, g, v, lr, rho):
    """Momentum as an accumulated gradient: v = rho v + g;  p -= lr v."""
    v *= rho
    v += g
    p -= lr * v


def sgd_momentum_velocity(p, g, v, lr, rho):
    """Momentum as a velocity (Sutskever et al. 2013): v = rho v - lr g;  p += v."""
    v *= rho
    v -= lr * g
    p += v
