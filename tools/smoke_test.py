"""Smoke test of an installed fastopt (tools/check_wheel.sh runs it in a fresh venv, from outside
the source tree): the module imports, says how it was built, and one small op of each family
agrees with the float64 reference on fresh random inputs, odd sizes included. Exits non-zero on
any failure. Not a test suite (tests/ is): it proves the wheel holds a working build.

Tolerances: u = 2^-24 is float32's unit roundoff. A float32 sum of K products is within
(K + 2) u * sum|terms| of the exact one (the classic gamma_K bound, +2 for the bias and the
final rounding), so GEMM-like ops are held to that against the reference run on |x|, |w|.
Elementwise ops round once, or a few times, per output: a few u relative.
"""

import sys

import numpy as np

import fastopt
from fastopt import functional as F, optim, reference as R

U32 = 2.0**-24
failures = []


def check(name, ok, detail=""):
    print(f"{'ok  ' if ok else 'FAIL'} {name}{': ' + detail if detail else ''}")
    if not ok:
        failures.append(name)


def within(name, got, want, bound):
    err = np.abs(np.asarray(got, np.float64) - want)
    check(name, got.shape == want.shape and bool(np.all(err <= bound)), f"max error {err.max():.3g}")


def conv2d(rng, device):
    x = rng.standard_normal((2, 3, 9, 7)).astype(np.float32)
    w = rng.standard_normal((5, 3, 3, 3)).astype(np.float32)
    b = rng.standard_normal(5).astype(np.float32)
    args = dict(stride=2, padding=1)
    if device == "gpu":
        got = F.conv2d_forward(fastopt.to_device(x), fastopt.to_device(w), fastopt.to_device(b), **args).numpy()
    else:
        got = F.conv2d_forward(x, w, b, **args)
    k = 3 * 3 * 3
    scale = R.conv.conv2d_forward(np.abs(x), np.abs(w), np.abs(b), **args)
    within(f"conv2d_forward ({device})", got, R.conv.conv2d_forward(x, w, b, **args), (k + 2) * U32 * scale)


def main():
    info = fastopt.build_info()
    print(f"fastopt {fastopt.__version__} from {fastopt.__file__}\n{info}")
    rng = np.random.default_rng(2024)

    conv2d(rng, "cpu")
    x = rng.standard_normal((7, 33)).astype(np.float32)
    w = rng.standard_normal((5, 33)).astype(np.float32)
    b = rng.standard_normal(5).astype(np.float32)
    within(
        "linear_forward",
        F.linear_forward(x, w, b),
        R.linear.linear_forward(x, w, b),
        35 * U32 * R.linear.linear_forward(np.abs(x), np.abs(w), np.abs(b)),
    )

    # Three AdamW steps with the clipping fused. Per step the parameter (|p| < 6) is rounded to
    # float32 once and the update (about lr) carries a few u of its own: 4 u (|p| + 1) a step.
    params = [rng.standard_normal(n).astype(np.float32) for n in (31, 1)]
    ref_params = [p.astype(np.float64) for p in params]
    states = [{} for _ in params]
    opt = optim.AdamW(params, lr=1e-2, weight_decay=1e-2)
    for _ in range(3):
        grads = [rng.standard_normal(p.shape).astype(np.float32) for p in params]
        opt.step(grads, max_grad_norm=1.0)
        R.optim.step(
            "adamw",
            ref_params,
            [g.astype(np.float64) for g in grads],
            states,
            [dict(lr=1e-2, weight_decay=1e-2)] * 2,
            max_grad_norm=1.0,
        )
    for i, (p, want) in enumerate(zip(params, ref_params)):
        within(f"AdamW step, tensor {i}", p, want, 3 * 4 * U32 * (np.abs(want) + 1))

    # Batch norm: the mean and variance of 2 x 3 x 5 = 30 values per channel, then one fused
    # multiply-add per output; 1e-5 is over 100 u on outputs of size about 3.
    x = rng.standard_normal((2, 4, 3, 5)).astype(np.float32)
    gamma, beta = rng.standard_normal(4).astype(np.float32), rng.standard_normal(4).astype(np.float32)
    y = F.batch_norm_forward(x, gamma, beta, None, None, training=True)[0]
    within("batch_norm_forward", y, R.normalization.batch_norm_forward(x, gamma, beta, None, None, True)[0], 1e-5)

    # Dropout: the same Philox mask bit for bit, survivors scaled by 1/(1-p) with one rounding.
    x = rng.standard_normal((3, 37)).astype(np.float32)
    got, want = F.dropout_forward(x, 0.3, seed=7, offset=5), R.dropout.dropout_forward(x, 0.3, seed=7, offset=5)
    check("dropout mask", bool(np.array_equal(got == 0, want == 0)))
    within("dropout_forward", got, want, U32 * np.abs(want))

    x = rng.standard_normal((2, 3, 7, 9)).astype(np.float32)
    y, idx = F.max_pool2d_forward(x, 3, stride=2, padding=1)
    want, want_idx = R.pooling.max_pool2d_forward(x, 3, stride=2, padding=1)
    check("max_pool2d_forward", bool(np.array_equal(y, want) and np.array_equal(idx, want_idx)))

    # gelu: erf in float32, a few u relative plus a few u absolute near zero.
    within("gelu_forward", F.gelu_forward(x), R.activation.gelu_forward(x), 8 * U32 * (np.abs(x) + 1))

    logits = rng.standard_normal((9, 11)).astype(np.float32)
    target = rng.integers(0, 11, 9)
    loss, dlogits = F.softmax_cross_entropy(logits, target)
    want_loss, want_dlogits, _ = R.loss.softmax_cross_entropy(logits, target)
    within("softmax_cross_entropy loss", loss, np.float64(want_loss), 64 * U32 * want_loss)
    within("softmax_cross_entropy grad", dlogits, want_dlogits, 16 * U32)

    # bf16 in, bf16 out: fp32 arithmetic, then one rounding to bfloat16 (unit roundoff 2^-8).
    xb = R.bf16.inputs(rng.standard_normal((5, 67)))
    yb = F.gelu_forward(xb)
    check("gelu_forward bf16 dtype", yb.dtype == fastopt.bfloat16, str(yb.dtype))
    want = R.activation.gelu_forward(xb.astype(np.float64))
    within("gelu_forward bf16", yb, want, R.bf16.U * np.abs(want) + 8 * U32 * (np.abs(want) + 1))

    if info["cuda"]:
        # A CUDA build imports and answers without a driver: no GPU is 0 devices, not an error.
        count = fastopt.cuda.device_count()
        check("CUDA device query", isinstance(count, int) and count >= 0, f"{count} device(s)")
        if fastopt.cuda.has_gpu():
            conv2d(rng, "gpu")

    if failures:
        sys.exit(f"smoke test: {len(failures)} failed: {', '.join(failures)}")
    print("smoke test passed")


if __name__ == "__main__":
    main()
