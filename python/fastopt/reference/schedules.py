"""Closed-form learning rates lr(t), float64, written from the formulas alone.

t is the number of scheduler steps taken (t = 0 right after construction) and
base_lr a param group's initial lr. These functions share no code with
fastopt.schedules, so the tests can hold one against the other.
"""

import math

__all__ = [
    "step_lr",
    "multistep_lr",
    "exponential_lr",
    "cosine_annealing_lr",
    "linear_lr",
    "cosine_warm_restarts_lr",
    "cyclic_lr",
    "inverse_time_lr",
    "inverse_sqrt_lr",
    "linear_warmup_lr",
    "plateau_lrs",
]


def step_lr(t, base_lr, step_size, gamma=0.1):
    """base_lr * gamma^floor(t / step_size)"""
    return base_lr * gamma ** math.floor(t / step_size)


def multistep_lr(t, base_lr, milestones, gamma=0.1):
    """base_lr * gamma^#{m in milestones : m <= t}"""
    return base_lr * gamma ** sum(1 for m in milestones if m <= t)


def exponential_lr(t, base_lr, gamma):
    """base_lr * gamma^t"""
    return base_lr * gamma**t


def cosine_annealing_lr(t, base_lr, T_max, eta_min=0.0):
    """eta_min + (base_lr - eta_min) (1 + cos(pi t / T_max)) / 2"""
    return eta_min + 0.5 * (base_lr - eta_min) * (1.0 + math.cos(math.pi * t / T_max))


def linear_lr(t, base_lr, start_factor=1.0 / 3, end_factor=1.0, total_iters=5):
    """base_lr times the factor going linearly from start_factor (t = 0) to end_factor
    (t = total_iters), constant afterwards."""
    if t >= total_iters:
        return base_lr * end_factor
    return base_lr * (start_factor * (total_iters - t) + end_factor * t) / total_iters


def cosine_warm_restarts_lr(t, base_lr, T_0, T_mult=1, eta_min=0.0):
    """SGDR. Restarts happen at t_n = T_0 (1 + T_mult + ... + T_mult^(n-1)); in period n
    (length T_0 T_mult^n) the cosine runs over T_cur = t - t_n."""
    if T_mult == 1:
        n = t // T_0
        start = n * T_0
    else:
        n = 0
        while T_0 * (T_mult ** (n + 1) - 1) // (T_mult - 1) <= t:
            n += 1
        start = T_0 * (T_mult**n - 1) // (T_mult - 1)
    T_i = T_0 * T_mult**n
    return cosine_annealing_lr(t - start, base_lr, T_i, eta_min)


def cyclic_lr(
    t,
    base_lr,
    max_lr,
    step_size_up=2000,
    step_size_down=None,
    mode="triangular",
    gamma=1.0,
    scale_fn=None,
    scale_mode="cycle",
):
    """Smith's triangular cycle, written as torch documents it:
    cycle = floor(1 + t / L), x = 1 + t / L - cycle (fraction of the cycle, L = up + down),
    height = x / r while x <= r (r = up / L), else (1 - x) / (1 - r);
    lr = base_lr + (max_lr - base_lr) height scale, scale = 1, 2^-(cycle-1) or gamma^t,
    or with a scale_fn: scale_fn(cycle) ('cycle') or scale_fn(t) ('iterations')."""
    down = step_size_up if step_size_down is None else step_size_down
    L = step_size_up + down
    r = step_size_up / L
    cycle = math.floor(1 + t / L)
    x = 1.0 + t / L - cycle
    height = x / r if x <= r else (1.0 - x) / (1.0 - r)
    if scale_fn is not None:
        scale = scale_fn(cycle if scale_mode == "cycle" else t)
    else:
        scale = {"triangular": 1.0, "triangular2": 0.5 ** (cycle - 1), "exp_range": gamma**t}[mode]
    return base_lr + (max_lr - base_lr) * height * scale


def inverse_time_lr(t, base_lr, decay_rate, decay_steps=1):
    """base_lr / (1 + decay_rate t / decay_steps)"""
    return base_lr / (1.0 + decay_rate * t / decay_steps)


def inverse_sqrt_lr(t, base_lr, warmup_steps):
    """base_lr * min(1, sqrt(warmup_steps / t)), base_lr at t = 0"""
    return base_lr * (1.0 if t == 0 else min(1.0, math.sqrt(warmup_steps / t)))


def linear_warmup_lr(t, base_lr, warmup_steps, after=None, start_factor=0.0):
    """base_lr (s + (1 - s) t / w) for t < w, then after(t - w) (base_lr when after is
    None); after is a function of the shifted step count."""
    if t < warmup_steps:
        return base_lr * (start_factor + (1.0 - start_factor) * t / warmup_steps)
    return base_lr if after is None else after(t - warmup_steps)


def plateau_lrs(
    metrics,
    base_lr,
    mode="min",
    factor=0.1,
    patience=10,
    threshold=1e-4,
    threshold_mode="rel",
    cooldown=0,
    min_lr=0.0,
    eps=1e-8,
):
    """The lr after each metric of ReduceLROnPlateau, one group.

    An improvement beats the best so far by the threshold (see fastopt.schedules);
    `bad` counts non-improving evaluations since the last improvement or reduction,
    but not those inside the `cooldown` evaluations right after a reduction. When
    bad exceeds patience, lr <- max(lr factor, min_lr) if that lowers it by more than eps.
    """
    best = math.inf if mode == "min" else -math.inf
    lr, bad, cooling, out = base_lr, 0, 0, []
    for m in metrics:
        improved = {
            ("min", "rel"): m < best * (1.0 - threshold),
            ("min", "abs"): m < best - threshold,
            ("max", "rel"): m > best * (1.0 + threshold),
            ("max", "abs"): m > best + threshold,
        }[mode, threshold_mode]
        if improved:
            best, bad = m, 0
        else:
            bad += 1
        if cooling > 0:
            cooling, bad = cooling - 1, 0
        if bad > patience:
            new = max(lr * factor, min_lr)
            if lr - new > eps:
                lr = new
            cooling, bad = cooldown, 0
        out.append(lr)
    return out
