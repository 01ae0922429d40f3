"""Every public entry point, every argument that is not an array, every kind of bad value.

The table below lists, per entry point (functional ops, optimizers and their step / param groups,
schedules, nn layers and initializers), a call with valid arguments and the kind of each
non-array argument. For each argument the test feeds the wrong kinds of value of its kind (a bool
or a float for an integer; a str, a bool or a list for a real number; an int or a str for a bool;
a str, floats or bools for a shape; None where None is not documented) and expects TypeError, then
the argument's out-of-range values (NaN, negative, too large) and expects ValueError; either way
the message must start with the argument's name. Values of the right kind in NumPy's types
(np.int64, np.float64, np.bool_) must be accepted. test_table_covers_the_api checks that every
public entry point is in the table and that every argument of each is either checked here or
named as an array / object argument, so a new argument cannot go unchecked.
"""

import inspect
import math

import numpy as np
import pytest
from ml_dtypes import bfloat16

import fastopt.functional as F
from fastopt import nn, optim, schedules as S
from fastopt.nn import init as I

NAN, INF = math.nan, math.inf

# The wrong kinds of value for each kind of argument (None is added unless the argument takes it).
WRONG_KINDS = {
    "int": [True, np.bool_(True), 2.5, np.float64(2.0), "3", [3]],
    "real": [True, np.bool_(False), "0.1", b"1", [0.1], 1j],
    "reals": [True, "0.1", b"1", 1j, ["0.1", 0.2]],  # one real number, or one per param group
    "bool": [1, 0.0, "yes", np.int64(1)],
    "shape": ["6", (6.5,), (True,), 6.5, [np.float32(2.0)], {6}],
    "pair": [2.5, "2", True, (2, 2.5), (2, "2"), [True, 1]],
    "flags": [(1, 1, 1), "yes", (True, 1.0, True)],
    "betas": ["ab", 0.9, (0.9, "x"), (True, 0.9)],
    "choice": [1, b"min"],
    "callable": [3, "f"],
}


class A:
    """An argument: its kind, whether None is documented, out-of-range values, and the name its
    messages start with (the argument's own unless given)."""

    def __init__(self, kind, none=False, bad=(), name=None):
        self.kind, self.none, self.bad, self.name = kind, none, tuple(bad), name


def INT(*bad, none=False):
    return A("int", none, bad)


def REAL(*bad, none=False):
    return A("real", none, bad)


BOOL = A("bool")
BOOL_OR_NONE = A("bool", none=True)
STREAM = INT(-1, 2**64)


class Entry:
    """call(**kwargs) runs the entry point with `valid` updated by kwargs; `args` are the checked
    arguments; `other` the arguments that are arrays or objects (checked by the native layer or
    by their own tests)."""

    def __init__(self, name, call, valid, args, other=(), signature=None):
        self.name, self.call, self.valid, self.args, self.other = name, call, valid, args, set(other)
        self.signature = signature

    def __call__(self, **kwargs):
        return self.call(**{**self.valid, **kwargs})


def fn(f, valid, args, other=()):
    return Entry(f.__qualname__, lambda **kw: f(**kw), valid, args, other, f)


# ------------------------------------------------------------------------------- valid inputs
RNG = np.random.default_rng(0)
X4 = RNG.standard_normal((2, 4, 5, 5)).astype(np.float32)
W = RNG.standard_normal((6, 2, 3, 3)).astype(np.float32)
C4, Z4 = np.ones(4, np.float32), np.zeros(4, np.float32)
_, BN_MEAN, BN_INVSTD = F.batch_norm_forward(X4, C4, Z4, None, None, True)
_, LN_MEAN, LN_RSTD = F.layer_norm_forward(X4, (5, 5))
_, GN_MEAN, GN_RSTD = F.group_norm_forward(X4, 2)
Y6 = F.conv2d_forward(X4, W, None, 1, 1, 1, 2)
P4, P4_IDX = F.max_pool2d_forward(X4, 2)
X2 = RNG.standard_normal((3, 7)).astype(np.float32)
W2 = RNG.standard_normal((5, 7)).astype(np.float32)
Y2 = RNG.standard_normal((3, 5)).astype(np.float32)
LABELS = np.array([0, 2, 1], np.int32)


def _grads():
    return [RNG.standard_normal(5).astype(np.float32), RNG.standard_normal((2, 3)).astype(np.float32)]


FUNCTIONAL = [
    fn(
        F.batch_norm_forward,
        dict(
            x=X4,
            gamma=C4,
            beta=Z4,
            running_mean=np.zeros(4, np.float32),
            running_var=np.ones(4, np.float32),
            training=True,
        ),
        dict(
            training=BOOL,
            momentum=REAL(1.5, -0.1, NAN, none=True),
            eps=REAL(-1.0, NAN, INF),
            num_batches_tracked=INT(-1, none=True),
            stream=STREAM,
        ),
        ("x", "gamma", "beta", "running_mean", "running_var"),
    ),
    fn(
        F.batch_norm_backward,
        dict(dy=X4, x=X4, gamma=C4, save_mean=BN_MEAN, save_invstd=BN_INVSTD),
        dict(training=BOOL, has_bias=BOOL_OR_NONE, stream=STREAM, accumulate=BOOL, affine_grads=BOOL),
        ("dy", "x", "gamma", "save_mean", "save_invstd", "dgamma_out", "dbeta_out"),
    ),
    fn(
        F.layer_norm_forward,
        dict(x=X4, normalized_shape=(5, 5)),
        dict(normalized_shape=A("shape", bad=[(0, 5), (-1, 5)]), eps=REAL(-1.0, NAN), stream=STREAM),
        ("x", "weight", "bias"),
    ),
    fn(
        F.layer_norm_backward,
        dict(dy=X4, x=X4, normalized_shape=(5, 5), mean=LN_MEAN, rstd=LN_RSTD),
        dict(
            normalized_shape=A("shape", bad=[(0, 5)]),
            has_bias=BOOL_OR_NONE,
            stream=STREAM,
            accumulate=BOOL,
            affine_grads=BOOL,
        ),
        ("dy", "x", "mean", "rstd", "weight", "dweight_out", "dbias_out"),
    ),
    fn(
        F.group_norm_forward,
        dict(x=X4, num_groups=2),
        dict(num_groups=INT(0, -2, 3), eps=REAL(-1.0, NAN), stream=STREAM),
        ("x", "weight", "bias"),
    ),
    fn(
        F.group_norm_backward,
        dict(dy=X4, x=X4, num_groups=2, mean=GN_MEAN, rstd=GN_RSTD),
        dict(num_groups=INT(0, 3), has_bias=BOOL_OR_NONE, stream=STREAM, accumulate=BOOL, affine_grads=BOOL),
        ("dy", "x", "mean", "rstd", "weight", "dweight_out", "dbias_out"),
    ),
    fn(
        F.dropout_forward,
        dict(x=X4, p=0.5, seed=1),
        dict(p=REAL(1.5, -0.1, NAN), seed=INT(-1, 2**64), offset=INT(-1, 2**64 - 1), training=BOOL, stream=STREAM),
        ("x",),
    ),
    fn(
        F.dropout_backward,
        dict(dy=X4, p=0.5, seed=1),
        dict(p=REAL(1.5, NAN), seed=INT(-1), offset=INT(-1), stream=STREAM),
        ("dy",),
    ),
    fn(
        F.dropout_mask,
        dict(shape=(3, 4), p=0.5, seed=1),
        dict(shape=A("shape", bad=[(-1, 2)]), p=REAL(1.5, NAN), seed=INT(-1), offset=INT(-1), stream=STREAM),
        ("device",),
    ),
    fn(
        F.conv2d_forward,
        dict(x=X4, w=W, padding=1, groups=2),
        dict(
            stride=A("pair", bad=[0, (1, 0)]),
            padding=A("pair", bad=[-1]),
            dilation=A("pair", bad=[0]),
            groups=INT(0, 3),
            allow_tf32=BOOL,
            stream=STREAM,
            layout=A("choice", bad=["NHWC"]),
        ),
        ("x", "w", "b"),
    ),
    fn(
        F.conv2d_backward,
        dict(dy=Y6, x=X4, w=W, padding=1, groups=2),
        dict(
            stride=A("pair", bad=[0]),
            padding=A("pair", bad=[-1]),
            dilation=A("pair", bad=[0]),
            groups=INT(0, 3),
            need=A("flags", bad=[(True,), (True, True, True, True)]),
            allow_tf32=BOOL,
            stream=STREAM,
            accumulate=BOOL,
            layout=A("choice", bad=["NHWC"]),
        ),
        ("dy", "x", "w", "dw_out", "db_out"),
    ),
    fn(F.relu_forward, dict(x=X4), dict(stream=STREAM), ("x",)),
    fn(F.relu_backward, dict(dy=X4, x=X4), dict(stream=STREAM), ("dy", "x")),
    fn(F.leaky_relu_forward, dict(x=X4), dict(negative_slope=REAL(NAN, INF), stream=STREAM), ("x",)),
    fn(F.leaky_relu_backward, dict(dy=X4, x=X4), dict(negative_slope=REAL(NAN, -INF), stream=STREAM), ("dy", "x")),
    fn(
        F.max_pool2d_forward,
        dict(x=X4, kernel_size=2),
        dict(
            kernel_size=A("pair", bad=[0, (2, -1)]),
            stride=A("pair", none=True, bad=[0]),
            padding=A("pair", bad=[-1, 2]),
            stream=STREAM,
            layout=A("choice", bad=["NHWC"]),
        ),
        ("x",),
    ),
    fn(
        F.max_pool2d_backward,
        dict(dy=P4, indices=P4_IDX, input_shape=X4.shape, kernel_size=2),
        dict(
            input_shape=A("shape", bad=[(2, 4, -5, 5), (2, 4, 5)]),
            kernel_size=A("pair", bad=[0]),
            stride=A("pair", none=True, bad=[0]),
            padding=A("pair", bad=[-1]),
            stream=STREAM,
            layout=A("choice", bad=["NHWC"]),
        ),
        ("dy", "indices"),
    ),
    *[fn(f, dict(x=X4), dict(stream=STREAM), ("x",)) for f in (F.tanh_forward, F.sigmoid_forward, F.gelu_forward)],
    *[
        fn(f, dict(dy=X4, x=X4), dict(stream=STREAM), ("dy", "x"))
        for f in (F.tanh_backward, F.sigmoid_backward, F.gelu_backward)
    ],
    fn(F.elu_forward, dict(x=X4), dict(alpha=REAL(NAN, INF), stream=STREAM), ("x",)),
    fn(F.elu_backward, dict(dy=X4, x=X4), dict(alpha=REAL(NAN, -INF), stream=STREAM), ("dy", "x")),
    fn(
        F.residual_add,
        dict(body=X4, shortcut=X4, p=0.5),
        dict(p=REAL(1.5, -0.1, NAN), seed=INT(-1, 2**64), offset=INT(-1, 2**64 - 1), stream=STREAM),
        ("body", "shortcut"),
    ),
    Entry(
        "axpby_",
        lambda **kw: F.axpby_(X2.copy(), X2, **kw),
        dict(a=0.5, b=0.5),
        dict(a=REAL(), b=REAL(), stream=STREAM),
        ("ys", "xs"),
        F.axpby_,
    ),
    Entry(
        "cast_",
        lambda **kw: F.cast_([np.zeros(X2.shape, bfloat16)], [X2], **kw),
        dict(),
        dict(stream=STREAM),
        ("ys", "xs"),
        F.cast_,
    ),
    fn(
        F.avg_pool2d_forward,
        dict(x=X4, kernel_size=2),
        dict(
            kernel_size=A("pair", bad=[0, (2, -1)]),
            stride=A("pair", none=True, bad=[0]),
            padding=A("pair", bad=[-1, 2]),
            count_include_pad=BOOL,
            stream=STREAM,
        ),
        ("x",),
    ),
    fn(
        F.avg_pool2d_backward,
        dict(dy=P4, input_shape=X4.shape, kernel_size=2),
        dict(
            input_shape=A("shape", bad=[(2, 4, -5, 5), (2, 4, 5)]),
            kernel_size=A("pair", bad=[0]),
            stride=A("pair", none=True, bad=[0]),
            padding=A("pair", bad=[-1]),
            count_include_pad=BOOL,
            stream=STREAM,
        ),
        ("dy",),
    ),
    fn(F.global_avg_pool_forward, dict(x=X4), dict(stream=STREAM), ("x",)),
    fn(
        F.global_avg_pool_backward,
        dict(dy=X4[:, :, 0, 0].copy(), input_shape=X4.shape),
        dict(input_shape=A("shape", bad=[(2, 4, 0, 5), (2, 4, -1, 5)]), stream=STREAM),
        ("dy",),
    ),
    fn(
        F.softmax_cross_entropy,
        dict(logits=X2, target=LABELS),
        dict(label_smoothing=REAL(1.5, -0.1, NAN), need_grad=BOOL, topk=INT(0), stream=STREAM),
        ("logits", "target", "stats"),
    ),
    fn(
        F.augment_batch,
        dict(x=X4, seed=1, step=0),
        dict(
            seed=INT(-1, 2**64),
            step=INT(-1, 2**64),
            max_shift=INT(-1, 2**30 + 1),
            flip=BOOL,
            cutout=INT(-1),
            brightness=REAL(-0.1, NAN, INF),
            contrast=REAL(1.5, -0.1, NAN),
            fill=REAL(NAN, INF),
            stream=STREAM,
        ),
        ("x",),
    ),
    fn(
        F.mixup,
        dict(x=X2, labels=LABELS, lam=0.3, num_classes=7),
        dict(lam=REAL(1.5, -0.1, NAN), num_classes=INT(0), stream=STREAM),
        ("x", "labels"),
    ),
    fn(
        F.cutmix,
        dict(x=X4[:1].repeat(3, 0), labels=LABELS, lam=0.3, num_classes=7, seed=1, step=0),
        dict(lam=REAL(1.5, -0.1, NAN), num_classes=INT(0), seed=INT(-1, 2**64), step=INT(-1, 2**64), stream=STREAM),
        ("x", "labels"),
    ),
    fn(
        F.random_resized_crop,
        dict(x=X4, seed=1, step=0, size=(3, 4)),
        dict(
            seed=INT(-1, 2**64),
            step=INT(-1, 2**64),
            size=A("pair", bad=[0, (2, -1), 2**24 + 1]),
            scale=A("betas", bad=[(0.0, 1.0), (0.9, 0.5), (NAN, 1.0), (0.5, INF)]),
            ratio=A("betas", bad=[(-1.0, 1.0), (2.0, 1.0), (1.0, NAN)]),
            stream=STREAM,
        ),
        ("x",),
    ),
    fn(
        F.random_rotation,
        dict(x=X4, seed=1, step=0, degrees=10),
        dict(
            seed=INT(-1, 2**64),
            step=INT(-1, 2**64),
            degrees=REAL(-5, NAN, INF, 400),
            fill=REAL(NAN, INF),
            stream=STREAM,
        ),
        ("x",),
    ),
    fn(
        F.pca_jitter,
        dict(x=X4, seed=1, step=0, eigvals=np.ones(4), eigvecs=np.eye(4)),
        dict(seed=INT(-1, 2**64), step=INT(-1, 2**64), sigma=REAL(-1.0, NAN, INF), stream=STREAM),
        ("x", "eigvals", "eigvecs"),
    ),
    fn(F.channel_pca, dict(x=X4), dict(chunk=INT(0, -1)), ("x",)),
    fn(
        F.alternating_flip,
        dict(x=X4, indices=np.arange(2), seed=1, epoch=0),
        dict(seed=INT(-1, 2**64), epoch=INT(-1, 2**64), stream=STREAM),
        ("x", "indices"),
    ),
    fn(
        F.tta_views,
        dict(x=X4),
        dict(
            mode=A("choice", bad=["six_crop"]),
            size=A("pair", none=True, bad=[0, (2, -1), 6]),
            pad=INT(-1, 2**24 + 1),
            fill=REAL(NAN, INF),
            stream=STREAM,
        ),
        ("x",),
    ),
    fn(F.tta_mean, dict(y=X2[:2], views=2), dict(views=INT(0, 11, 3), stream=STREAM), ("y",)),
    fn(F.tta_num_views, dict(mode="flip"), dict(mode=A("choice", bad=["six_crop"])), ()),
    fn(F.linear_forward, dict(x=X2, weight=W2), dict(stream=STREAM), ("x", "weight", "bias")),
    fn(
        F.linear_backward,
        dict(dy=Y2, x=X2, weight=W2),
        dict(need=A("flags", bad=[(True, True)]), stream=STREAM, accumulate=BOOL),
        ("dy", "x", "weight", "dweight_out", "dbias_out"),
    ),
    fn(F.global_norm, dict(grads=X2), dict(norm_type=REAL(0.0, -1.0, NAN), stream=STREAM), ("grads",)),
    Entry(
        "clip_grad_norm_",
        lambda **kw: F.clip_grad_norm_(_grads(), **kw),
        dict(max_norm=1.0),
        dict(max_norm=REAL(-1.0, NAN), norm_type=REAL(0.0, NAN), error_if_nonfinite=BOOL, stream=STREAM),
        ("grads",),
        F.clip_grad_norm_,
    ),
    Entry(
        "clip_grad_value_",
        lambda **kw: F.clip_grad_value_(_grads(), **kw),
        dict(clip_value=0.5),
        dict(clip_value=REAL(-1.0, NAN), stream=STREAM),
        ("grads",),
        F.clip_grad_value_,
    ),
]

# ---------------------------------------------------------------------------------- optimizers
RATE = REAL(-1.0, NAN, INF)
OPTIMIZER_ARGS = {
    optim.SGD: dict(
        lr=RATE, momentum=REAL(-0.5, NAN), dampening=REAL(NAN, INF), weight_decay=RATE, nesterov=BOOL, maximize=BOOL
    ),
    optim.Adagrad: dict(
        lr=RATE,
        lr_decay=REAL(-0.1, NAN),
        weight_decay=RATE,
        initial_accumulator_value=REAL(-1.0, NAN),
        eps=REAL(-1e-8, NAN, INF),
        maximize=BOOL,
    ),
    optim.RMSprop: dict(
        lr=RATE,
        alpha=REAL(-0.1, 1.5, NAN),
        eps=REAL(-1e-8, NAN),
        weight_decay=RATE,
        momentum=REAL(-0.5, -1e-30, NAN, INF),
        centered=BOOL,
        maximize=BOOL,
    ),
    optim.Adam: dict(
        lr=RATE,
        betas=A("betas", bad=[(0.9, 1.0), (-0.1, 0.9), (0.9,), (NAN, 0.9)]),
        eps=REAL(-1e-8, NAN),
        weight_decay=RATE,
        amsgrad=BOOL,
        maximize=BOOL,
    ),
}
for _args in OPTIMIZER_ARGS.values():  # every optimizer's options for bf16/fp16 parameters
    _args.update(
        master_weights=BOOL, stochastic_rounding=BOOL, seed=INT(-1, 2**64), state_dtype=A("choice", bad=["float16"])
    )
OPTIMIZER_ARGS[optim.AdamW] = OPTIMIZER_ARGS[optim.Adam]


def _params():
    return [np.zeros(5, np.float32), np.zeros((2, 3), np.float32)]


def _stepped(cls, group):
    """An optimizer whose group 0 the user then edits with `group`, stepped: the edit is checked."""
    opt = cls(_params())
    opt.param_groups[0].update(group)
    return opt.step(_grads())


def _grouped(cls, group):
    """An optimizer given a second param group with these options."""
    ps = _params()
    return cls([{"params": ps[:1]}, {"params": ps[1:], **group}])


def _in_group(args, gi):
    """The same checks, named as options of param group gi."""
    return {k: A(a.kind, a.none, a.bad, f"param_groups[{gi}][{k!r}]") for k, a in args.items()}


OPTIMIZERS = []
for cls, args in OPTIMIZER_ARGS.items():
    OPTIMIZERS += [
        Entry(cls.__name__, lambda cls=cls, **kw: cls(_params(), **kw), {}, args, ("params",), cls),
        Entry(
            f"{cls.__name__} group edit checked at step",
            lambda cls=cls, **kw: _stepped(cls, kw),
            cls(_params()).defaults,
            _in_group(args, 0),
        ),
        Entry(
            f"{cls.__name__} param group",
            lambda cls=cls, **kw: _grouped(cls, kw),
            cls(_params()).defaults,
            _in_group(args, 1),
        ),
    ]
OPTIMIZERS.append(
    Entry(
        "Optimizer.step",
        lambda **kw: optim.AdamW(_params()).step(_grads(), **kw),
        {},
        dict(max_grad_norm=REAL(-1.0, NAN, none=True), skip_nonfinite=BOOL, stream=STREAM),
        ("self", "grads"),
        optim.Optimizer.step,
    )
)


# ----------------------------------------------------------------------------------- schedules
class Opt:
    def __init__(self):
        self.param_groups = [{"lr": 0.1, "params": []}, {"lr": 0.03, "params": []}]


def sched(cls, valid, args, other=("optimizer",)):
    return Entry(
        cls.__name__,
        lambda **kw: cls(Opt(), **kw),
        valid,
        {**args, "last_epoch": INT(-2)} if "last_epoch" in inspect.signature(cls).parameters else args,
        other,
        cls,
    )


LR = REAL(-0.1, NAN, INF)
LRS = A("reals", bad=[-0.1, NAN, INF, [0.1, -0.1], [0.1]])
STEPS = INT(0, -3)
SCHEDULES = [
    sched(S.StepLR, dict(step_size=3), dict(step_size=STEPS, gamma=REAL(-0.5, NAN, INF))),
    sched(S.MultiStepLR, dict(milestones=[2, 5]), dict(milestones=A("shape", bad=[[-1, 3]]), gamma=REAL(-1.0, NAN))),
    sched(S.ExponentialLR, dict(gamma=0.9), dict(gamma=REAL(-0.9, NAN, INF))),
    sched(S.CosineAnnealingLR, dict(T_max=10), dict(T_max=STEPS, eta_min=LR)),
    sched(S.LinearLR, {}, dict(start_factor=REAL(0.0, 1.5, NAN), end_factor=REAL(-0.1, 1.5, NAN), total_iters=STEPS)),
    sched(S.CosineAnnealingWarmRestarts, dict(T_0=3), dict(T_0=STEPS, T_mult=STEPS, eta_min=LR)),
    sched(
        S.CyclicLR,
        dict(base_lr=0.01, max_lr=0.1),
        dict(
            base_lr=LRS,
            max_lr=LRS,
            step_size_up=STEPS,
            step_size_down=INT(0, none=True),
            mode=A("choice", bad=["sawtooth"]),
            gamma=REAL(-0.5, NAN),
            scale_fn=A("callable", none=True),
            scale_mode=A("choice", bad=["epochs"]),
        ),
    ),
    sched(
        S.InverseTimeLR, dict(decay_rate=0.5), dict(decay_rate=REAL(-1.0, -0.5, NAN), decay_steps=REAL(0.0, -1.0, NAN))
    ),
    sched(S.InverseSqrtLR, dict(warmup_steps=4), dict(warmup_steps=STEPS)),
    sched(
        S.LinearWarmup,
        dict(warmup_steps=3),
        dict(warmup_steps=INT(-1), start_factor=REAL(-0.1, 1.5, NAN)),
        ("optimizer", "after"),
    ),
    sched(
        S.ReduceLROnPlateau,
        {},
        dict(
            mode=A("choice", bad=["up"]),
            factor=REAL(1.0, -0.1, NAN),
            patience=INT(-1),
            threshold=REAL(-1e-4, NAN),
            threshold_mode=A("choice", bad=["pct"]),
            cooldown=INT(-1),
            min_lr=LRS,
            eps=REAL(-1.0, NAN),
        ),
    ),
    Entry(
        "ReduceLROnPlateau.step",
        lambda **kw: S.ReduceLROnPlateau(Opt()).step(**kw),
        dict(metric=1.0),
        dict(metric=REAL()),
        ("self",),
        S.ReduceLROnPlateau.step,
    ),
]

# ---------------------------------------------------------------------------------------- nn
INIT = A("callable", none=True)
LAYERS = [
    fn(
        nn.Conv2d,
        dict(in_channels=4, out_channels=6, kernel_size=3, groups=2),
        dict(
            in_channels=INT(0),
            out_channels=INT(0, -6),
            kernel_size=A("pair", bad=[0]),
            stride=A("pair", bad=[0]),
            padding=A("pair", bad=[-1]),
            dilation=A("pair", bad=[0]),
            groups=INT(0, 4),
            bias=BOOL,
            weight_init=INIT,
            bias_init=INIT,
            allow_tf32=BOOL,
        ),
    ),
    fn(
        nn.Linear,
        dict(in_features=7, out_features=5),
        dict(in_features=INT(0), out_features=INT(-1), bias=BOOL, weight_init=INIT, bias_init=INIT),
    ),
    *[
        fn(
            cls,
            dict(num_features=4),
            dict(
                num_features=INT(0),
                eps=REAL(-1.0, NAN),
                momentum=REAL(1.5, -0.1, NAN, none=True),
                affine=BOOL,
                track_running_stats=BOOL,
            ),
        )
        for cls in (nn.BatchNorm1d, nn.BatchNorm2d)
    ],
    fn(
        nn.LayerNorm,
        dict(normalized_shape=(5, 5)),
        dict(normalized_shape=A("shape", bad=[(0,), (5, -5)]), eps=REAL(-1.0, NAN), elementwise_affine=BOOL, bias=BOOL),
    ),
    fn(
        nn.GroupNorm,
        dict(num_groups=2, num_channels=4),
        dict(num_groups=INT(0, 3), num_channels=INT(0), eps=REAL(-1.0, NAN), affine=BOOL),
    ),
    fn(nn.LeakyReLU, {}, dict(negative_slope=REAL(NAN, INF))),
    fn(
        nn.MaxPool2d,
        dict(kernel_size=2),
        dict(kernel_size=A("pair", bad=[0]), stride=A("pair", none=True, bad=[0]), padding=A("pair", bad=[-1])),
    ),
    fn(nn.Dropout, {}, dict(p=REAL(1.5, -0.1, NAN))),
    fn(nn.ELU, {}, dict(alpha=REAL(NAN, INF))),
    fn(
        nn.AvgPool2d,
        dict(kernel_size=2),
        dict(
            kernel_size=A("pair", bad=[0]),
            stride=A("pair", none=True, bad=[0]),
            padding=A("pair", bad=[-1]),
            count_include_pad=BOOL,
        ),
    ),
    fn(nn.Residual, dict(body=nn.ReLU()), dict(drop_path=REAL(1.5, -0.1, NAN)), ("body", "shortcut")),
    fn(
        nn.models.resnet,
        {},
        dict(
            depth=INT(7, 21, -4),
            num_classes=INT(0),
            in_channels=INT(0),
            width=INT(0),
            drop_path=REAL(1.5, -0.1, NAN),
            zero_init_residual=BOOL,
        ),
    ),
    fn(nn.SoftmaxCrossEntropy, {}, dict(label_smoothing=REAL(1.5, NAN), topk=INT(0))),
    fn(
        nn.Parameter,
        dict(shape=(2, 3), init=I.zeros()),
        dict(shape=A("shape", bad=[(2, -3)]), init=A("callable"), decay=BOOL),
    ),
    Entry(
        "Sequential.build",
        lambda **kw: nn.Sequential(nn.Linear(3, 2)).build(**kw),
        {},
        dict(seed=INT(-1), input_grad=BOOL, precision=A("choice", bad=["fp16"])),
        ("self", "device"),
        nn.Sequential.build,
    ),
    fn(
        I.calculate_gain,
        dict(nonlinearity="leaky_relu"),
        dict(nonlinearity=A("choice", bad=["swish"]), param=REAL(NAN, INF, none=True)),
    ),
    fn(I.fans, dict(shape=(4, 3, 3, 3)), dict(shape=A("shape", bad=[(4,), (4, -3)]))),
    *[fn(f, {}, dict(gain=REAL(NAN, INF))) for f in (I.xavier_normal, I.xavier_uniform)],
    *[
        fn(f, {}, dict(a=REAL(NAN, INF), mode=A("choice", bad=["fan"]), nonlinearity=A("choice", bad=["swish"])))
        for f in (I.kaiming_normal, I.kaiming_uniform)
    ],
    fn(I.fan_in_uniform, dict(fan_in=9), dict(fan_in=INT(-1))),
    fn(I.constant, dict(value=0.5), dict(value=REAL(NAN, INF))),
]

ENTRIES = FUNCTIONAL + OPTIMIZERS + SCHEDULES + LAYERS
CASES = [pytest.param(e, name, id=f"{e.name}-{name}") for e in ENTRIES for name in e.args]


def _refused(entry, name, value, exc):
    """None when entry(name=value) raises exc with a message starting with the argument's name,
    else what happened instead."""
    named = entry.args[name].name or name
    try:
        entry(**{name: value})
    except exc as e:
        msg = str(e)
        return None if msg.startswith(named) and msg[len(named) : len(named) + 1] in ":[" else f"message {msg!r}"
    except Exception as e:  # noqa: BLE001 - reported below
        return f"{type(e).__name__}: {e}"
    return "accepted"


@pytest.mark.parametrize("entry,name", CASES)
def test_wrong_kind_raises_type_error_naming_the_argument(entry, name):
    arg = entry.args[name]
    values = WRONG_KINDS[arg.kind] + ([] if arg.none else [None])
    problems = {repr(v): _refused(entry, name, v, TypeError) for v in values}
    assert not {k: v for k, v in problems.items() if v}, f"{entry.name}({name}=...) not refused with TypeError"


@pytest.mark.parametrize("entry,name", [c for c in CASES if c.values[0].args[c.values[1]].bad])
def test_out_of_range_raises_value_error_naming_the_argument(entry, name):
    problems = {repr(v): _refused(entry, name, v, ValueError) for v in entry.args[name].bad}
    assert not {k: v for k, v in problems.items() if v}, f"{entry.name}({name}=...) not refused with ValueError"


def _numpy_twin(value):
    """The same value in NumPy's scalar types."""
    if isinstance(value, bool):
        return np.bool_(value)
    if isinstance(value, int):
        return np.int64(value)
    if isinstance(value, float):
        return np.float64(value)
    if isinstance(value, (tuple, list)):
        return type(value)(_numpy_twin(v) for v in value)
    return value


@pytest.mark.parametrize("entry,name", CASES)
def test_right_kind_is_accepted_in_numpy_types(entry, name):
    if name in entry.valid:
        value = entry.valid[name]
    else:
        value = inspect.signature(entry.signature).parameters[name].default
    if value is None or callable(value):
        pytest.skip("None / a callable: no NumPy twin")
    entry(**{name: _numpy_twin(value)})


def _public():
    """Every public entry point that takes an argument besides arrays."""
    names = {n for n in dir(F) if not n.startswith("_") and inspect.isfunction(getattr(F, n))}
    names |= {c.__name__ for c in OPTIMIZER_ARGS} | {"Optimizer.step"}
    names |= {n for n in S.__all__ if n != "LRSchedule"} | {"ReduceLROnPlateau.step"}
    layers = {n for n in nn.__all__ if n not in ("init", "Module", "ParameterStore", "Sequential")}
    names |= {n for n in layers if len(inspect.signature(getattr(nn, n)).parameters)} | {"Sequential.build"}
    names |= {n for n in I.__all__ if inspect.signature(getattr(I, n)).parameters} | {"fan_in_uniform"}
    return names


def test_table_covers_the_api():
    assert _public() <= {e.name for e in ENTRIES}
    for e in ENTRIES:
        if e.signature is not None:
            params = set(inspect.signature(e.signature).parameters) - {"self"}
            assert params == set(e.args) | e.other - {"self"}, f"{e.name}: unlisted arguments"
