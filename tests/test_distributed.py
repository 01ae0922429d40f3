"""fastopt.distributed on 2 CPU processes (gloo): DataParallel and SyncBatchNorm against one
process with the whole batch, ZeRO-1 against the unsharded optimizer for every rule, checkpoints
resumed on 1 and 2 ranks, and a killed rank.

Each scenario runs this file as a script in torchrun's environment (RANK, WORLD_SIZE,
MASTER_ADDR, MASTER_PORT on a free port); the ranks write their results to .npz files and the
test compares them with a single-process reference computed here.

Tolerances. Splitting the batch changes only the order of float32 reductions. A weight gradient
is g = (1/n) sum of n per-sample (per-pixel) terms t_i, n <= 2B*H*W = 8*16 = 128 here, which one
rank adds in one order and two ranks as two halves then one add; each order's error is at most
(n - 1) u sum|t_i| (u = 2^-24), so |dg| <= 2 (n - 1) u T with T = max |t_i|, of order 1 for these
small nets. SGD with momentum m passes a gradient change to the parameters with a gain of at most
lr / (1 - m) = 1 (lr = 0.1, m = 0.9), and K = 4 steps add up: 4 * 2 * 127 * 6e-8 ~ 6e-5. The
differences also feed back through the next steps' gradients (a Lipschitz factor of order 1 for
these well-conditioned nets, over 4 steps), hence atol = 2e-4; the observed differences are
~1e-7 (the bound is a worst case). Clipping scales both runs' gradients by the same coefficient
(the same norm to float64 rounding), which leaves the bound as it is.
"""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

torch = pytest.importorskip("torch")
if not torch.distributed.is_available():
    pytest.skip("this PyTorch has no torch.distributed", allow_module_level=True)

from fastopt import data as datasets, nn, optim  # noqa: E402
from fastopt.distributed.launch import free_port, rank_env  # noqa: E402

B, K, LR, MOMENTUM = 4, 4, 0.1, 0.9
ATOL = 2e-4  # derived in the module docstring
HERE = os.path.abspath(__file__)


# --------------------------------------------------------------------------- the models
def mlp():
    # 63 parameters: two ranks get chunks of 32 and 31 (a padded last chunk) and rank 0's chunk
    # holds no non-decayed element (an empty group slice).
    return nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3, bias=False))


def bn_net(sync):
    from fastopt.distributed import SyncBatchNorm

    norm = SyncBatchNorm(4) if sync else nn.BatchNorm2d(4)
    return nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), norm, nn.ReLU(), nn.GlobalAvgPool2d(), nn.Linear(4, 3))


def batch(kind, step):
    """The global batch of a step (2B samples); rank r trains on rows [r*B, (r+1)*B)."""
    rng = np.random.default_rng([7, step])
    shape = (2 * B, 5) if kind == "mlp" else (2 * B, 2, 4, 4)
    return rng.standard_normal(shape).astype(np.float32), rng.integers(0, 3, 2 * B).astype(np.int64)


def train(model, optimizer, kind, steps, part, max_grad_norm=None, first=0, sync=None):
    """`steps` SGD steps on rows `part` of each global batch; sync(): the gradient reduction
    (None: the optimizer's own step does it, as ZeroOptimizer)."""
    loss = nn.SoftmaxCrossEntropy(topk=1)
    store = model.store
    for step in range(first, first + steps):
        x, y = batch(kind, step)
        x, y = np.ascontiguousarray(x[part]), y[part]
        loss.forward(model.forward(x, training=True), y)
        model.backward(loss.backward())
        if sync is not None:
            sync()
        if isinstance(optimizer, optim.Optimizer):
            optimizer.step(store.grads_for(optimizer), max_grad_norm=max_grad_norm)
        else:
            optimizer.step(max_grad_norm=max_grad_norm)
    return store.numpy()


def sgd(model):
    return optim.SGD(model.store.param_groups(1e-3), lr=LR, momentum=MOMENTUM)


# Every fastopt rule (and its variants), for ZeRO-1 == unsharded.
RULES = {
    "sgd": (optim.SGD, dict(lr=0.1)),
    "momentum": (optim.SGD, dict(lr=0.1, momentum=0.9, dampening=0.1)),
    "nesterov": (optim.SGD, dict(lr=0.1, momentum=0.9, nesterov=True)),
    "adagrad": (optim.Adagrad, dict(lr=0.1, lr_decay=0.01, initial_accumulator_value=0.1)),
    "rmsprop": (optim.RMSprop, dict(lr=0.01)),
    "rmsprop_centered": (optim.RMSprop, dict(lr=0.01, centered=True, momentum=0.5)),
    "adam": (optim.Adam, dict(lr=0.01)),
    "amsgrad": (optim.Adam, dict(lr=0.01, amsgrad=True)),
    "adamw": (optim.AdamW, dict(lr=0.01, weight_decay=0.1)),
}


# ------------------------------------------------------------------------ the workers
def worker_main(scenario, out):
    import fastopt.distributed as dist

    rank, world = dist.init(timeout=float(os.environ.get("FASTOPT_TEST_TIMEOUT", "20")))
    part = slice(rank * B, (rank + 1) * B) if world > 1 else slice(0, 2 * B)
    result = {}
    try:
        SCENARIOS[scenario](dist, rank, world, part, result, out)
    except dist.DistributedError as e:
        with open(f"{out}.error{rank}", "w") as f:
            f.write(str(e))
        sys.exit(3)
    np.savez(f"{out}.rank{rank}.npz", **result)
    dist.destroy()


def scenario_equivalence(dist, rank, world, part, result, out):
    for name, clip in (("plain", None), ("clipped", 0.05)):
        model = dist.DataParallel(mlp())
        model.build(seed=rank + 1)  # different seeds: DataParallel must take rank 0's values
        result[name] = train(model, sgd(model), "mlp", K, part, clip)
    for name, clip in (("syncbn", None), ("syncbn_clipped", 0.05)):
        model = dist.DataParallel(bn_net(sync=True))
        model.build(seed=1)
        result[name] = train(model, sgd(model), "conv", K, part, clip)
        result[name + "_buffers"] = model.store.buffers.copy()
    result.update(syncbn_layer(rank))
    result["mean_loss"] = model.mean_over_ranks(np.float32(rank + 1))  # the trainer's loss checks use it
    try:  # ranks that built different networks are refused
        dist.DataParallel(nn.Sequential(nn.Linear(5, 7 + rank))).build(seed=0)
    except dist.DistributedError as e:
        result["different"] = np.array(str(e))
    try:  # parameters that differ are refused when they are not broadcast
        dist.DataParallel(mlp(), broadcast=False).build(seed=rank)
    except dist.DistributedError as e:
        result["mismatch"] = np.array(str(e))
    # ZeRO-1 against the unsharded optimizer on the same averaged gradients, every rule, with
    # and without clipping.
    for rule, (cls, options) in RULES.items():
        for clip in (None, 0.05):
            ref = dist.DataParallel(mlp())
            ref.build(seed=3)
            ref_opt = cls(ref.store.param_groups(0.01), **options)
            zero = mlp()
            zero.build(seed=3)
            zero_opt = dist.ZeroOptimizer(zero, zero.store.param_groups(0.01), cls, **options)
            key = f"zero_{rule}_{'clipped' if clip else 'plain'}"
            result[key + "_ref"] = train(ref, ref_opt, "mlp", 3, part, clip)
            result[key] = train(zero, zero_opt, "mlp", 3, part, clip)


UNEVEN = (slice(0, 3), slice(3, 8))  # SyncBatchNorm alone: 3 samples on rank 0, 5 on rank 1


def syncbn_layer(rank, sync=True):
    """One (Sync)BatchNorm's output, input gradient, affine gradients and running statistics for
    rows `UNEVEN[rank]` of a fixed batch (all rows with rank=None) and a fixed upstream gradient."""
    from fastopt.distributed import SyncBatchNorm

    rng = np.random.default_rng(3)
    x = (rng.standard_normal((8, 3, 2, 2)) * 2 + 1).astype(np.float32)
    dy = rng.standard_normal((8, 3, 2, 2)).astype(np.float32)
    rows = slice(0, 8) if rank is None else UNEVEN[rank]
    net = nn.Sequential(SyncBatchNorm(3) if sync else nn.BatchNorm2d(3))
    store = net.build(seed=0, input_grad=True)
    store.load(rng.standard_normal(store.size).astype(np.float32))  # a non-trivial affine
    y = net.forward(np.ascontiguousarray(x[rows]), training=True)
    dx = net.backward(np.ascontiguousarray(dy[rows]))
    return {"sbn_y": y, "sbn_dx": dx, "sbn_grad": store.grad.copy(), "sbn_buffers": store.buffers.copy()}


def zero_run(dist, seed=5):
    model = mlp()
    model.build(seed=seed)
    return model, dist.ZeroOptimizer(model, model.store.param_groups(0.01), optim.AdamW, lr=0.01)


def scenario_checkpoint(dist, rank, world, part, result, out):
    """K steps, checkpoint, K more; then a fresh model and optimizer resumed from the file."""
    model, opt = zero_run(dist)
    train(model, opt, "mlp", K, part, 0.5)
    dist.save_checkpoint(f"{out}.ckpt.npz", model, opt, meta={"step": K})
    result["continued"] = train(model, opt, "mlp", K, part, 0.5, first=K)
    model, opt = zero_run(dist, seed=11)
    meta = dist.load_checkpoint(f"{out}.ckpt.npz", model, opt)
    result["resumed"] = train(model, opt, "mlp", K, part, 0.5, first=meta["step"])


def scenario_resume(dist, rank, world, part, result, out):
    model, opt = zero_run(dist, seed=11)
    meta = dist.load_checkpoint(os.environ["FASTOPT_TEST_CKPT"], model, opt)
    result["resumed"] = train(model, opt, "mlp", K, part, 0.5, first=meta["step"])


def scenario_killed(dist, rank, world, part, result, out):
    model = dist.DataParallel(mlp())
    model.build(seed=1)
    opt = sgd(model)
    for step in range(100):
        train(model, opt, "mlp", 1, part, first=step)
        dist.save_checkpoint(f"{out}.ckpt.npz", model, opt, meta={"step": step + 1})
        if step == 2 and rank == 1:
            os.kill(os.getpid(), signal.SIGKILL)


SCENARIOS = {
    "equivalence": scenario_equivalence,
    "checkpoint": scenario_checkpoint,
    "resume": scenario_resume,
    "killed": scenario_killed,
}


# ---------------------------------------------------------------------- the launcher
def launch(scenario, out, world=2, env=None, timeout=60, script=HERE):
    """Start `world` ranks of `script` as torchrun would; wait for all; return their exit codes
    and stderr."""
    port = free_port()
    procs = [
        subprocess.Popen(
            [sys.executable, script, scenario, str(out)],
            env={**rank_env(rank, world, port, threads=1), **(env or {})},
            stderr=subprocess.PIPE,
        )
        for rank in range(world)
    ]
    deadline = time.monotonic() + timeout
    codes, errors = [], []
    for p in procs:
        try:
            _, err = p.communicate(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise AssertionError(f"{scenario}: the ranks did not finish within {timeout} s (a hang)") from None
        codes.append(p.returncode)
        errors.append(err.decode(errors="replace"))
    return codes, errors


def results(out, world=2):
    return [dict(np.load(f"{out}.rank{r}.npz")) for r in range(world)]


@pytest.fixture(scope="module")
def equivalence(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist") / "eq"
    codes, errors = launch("equivalence", out)
    assert codes == [0, 0], errors
    return results(out)


def reference(kind, clip):
    """One process, the whole 2B batch each step, BatchNorm in place of SyncBatchNorm."""
    model = mlp() if kind == "mlp" else bn_net(sync=False)
    initial = model.build(seed=1).numpy()
    return train(model, sgd(model), kind, K, slice(0, 2 * B), clip), model.store.buffers.copy(), initial


@pytest.mark.parametrize(
    "name,kind,clip",
    [("plain", "mlp", None), ("clipped", "mlp", 0.05), ("syncbn", "conv", None), ("syncbn_clipped", "conv", 0.05)],
)
def test_two_ranks_equal_one_rank_with_the_whole_batch(equivalence, name, kind, clip):
    r0, r1 = equivalence
    np.testing.assert_array_equal(r0[name], r1[name])  # the ranks agree bit for bit
    params, buffers, initial = reference(kind, clip)
    assert np.abs(params - initial).max() > 10 * ATOL  # it trained: the comparison is not vacuous
    np.testing.assert_allclose(r0[name], params, rtol=0, atol=ATOL)
    if kind == "conv":  # running statistics merged across ranks as one batch's
        np.testing.assert_array_equal(r0[name + "_buffers"], r1[name + "_buffers"])
        np.testing.assert_allclose(r0[name + "_buffers"], buffers, rtol=0, atol=ATOL)


def test_sync_batch_norm_with_uneven_batches_equals_batch_norm_over_all(equivalence):
    ref = syncbn_layer(None, sync=False)
    # Statistics in float64 on both sides, rounded once to float32: y to a few float32 ulps.
    # dx is composed (eval-mode backward minus the per-channel correction) where the native
    # kernel fuses it: each element is a few float32 operations on values of order 1, so the
    # two differ by a few ulps (1e-6 absolute here).
    for rank, r in enumerate(equivalence):
        rows = UNEVEN[rank]
        np.testing.assert_allclose(r["sbn_y"], ref["sbn_y"][rows], rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(r["sbn_dx"], ref["sbn_dx"][rows], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(r["sbn_buffers"], ref["sbn_buffers"], rtol=1e-6, atol=1e-7)
    # Each rank's affine gradients are its share: their sum is the whole batch's.
    np.testing.assert_allclose(
        equivalence[0]["sbn_grad"] + equivalence[1]["sbn_grad"], ref["sbn_grad"], rtol=1e-5, atol=1e-6
    )


def test_clipping_uses_the_global_norm(equivalence):
    # The clipped run differs from the plain one (the norm was above 0.05) and still equals one
    # rank with the whole batch (above): the norm was over both ranks' gradients.
    assert np.abs(equivalence[0]["clipped"] - equivalence[0]["plain"]).max() > 10 * ATOL


def test_the_loss_the_trainer_checks_is_the_mean_over_ranks(equivalence):
    assert [float(r["mean_loss"]) for r in equivalence] == [1.5, 1.5]


def test_different_networks_are_refused(equivalence):
    assert (
        "rank 0 and rank 1 built different networks ('0.weight' of shape (7, 5) here, '0.weight' of shape "
        "(8, 5) on rank 1)"
    ) in str(equivalence[0]["different"])
    assert "rank 1 and rank 0 built different networks" in str(equivalence[1]["different"])


def test_parameters_that_differ_are_refused(equivalence):
    for r in equivalence:
        assert "parameter '0.weight' differs between rank 0 and rank 1" in str(r["mismatch"])


@pytest.mark.parametrize("rule", sorted(RULES))
def test_zero1_equals_unsharded(equivalence, rule):
    for r in equivalence:
        # Elementwise rules on the same averaged gradients: the same bits.
        np.testing.assert_array_equal(r[f"zero_{rule}_plain"], r[f"zero_{rule}_plain_ref"])
        # Clipped: the global norm is summed in another order (float64), the float32 clip
        # coefficient can move by an ulp: relative 1.2e-7 of an update.
        np.testing.assert_allclose(r[f"zero_{rule}_clipped"], r[f"zero_{rule}_clipped_ref"], rtol=1e-6, atol=1e-7)
    assert not np.array_equal(equivalence[0][f"zero_{rule}_plain"], equivalence[0][f"zero_{rule}_clipped"])


def test_checkpoint_from_two_ranks_resumes_on_one_and_on_two(tmp_path):
    out = tmp_path / "ck"
    codes, errors = launch("checkpoint", out)
    assert codes == [0, 0], errors
    r0, r1 = results(out)
    np.testing.assert_array_equal(r0["resumed"], r0["continued"])  # 2 ranks: bit for bit
    np.testing.assert_array_equal(r1["resumed"], r0["continued"])
    with np.load(f"{out}.ckpt.npz") as z:  # the full (unsharded) state, whatever the world size
        assert z["optim/0/exp_avg"].shape == (56,) and z["optim/1/exp_avg"].shape == (7,)
    codes, errors = launch("resume", tmp_path / "one", world=1, env={"FASTOPT_TEST_CKPT": f"{out}.ckpt.npz"})
    assert codes == [0], errors
    (one,) = results(tmp_path / "one", world=1)
    np.testing.assert_allclose(one["resumed"], r0["continued"], rtol=0, atol=ATOL)  # reduction order only


def test_a_killed_rank_fails_the_others_without_a_hang(tmp_path):
    out = tmp_path / "kill"
    start = time.monotonic()
    codes, errors = launch("killed", out, env={"FASTOPT_TEST_TIMEOUT": "10"}, timeout=40)
    assert codes[1] == -signal.SIGKILL
    assert codes[0] == 3, errors[0]
    message = open(f"{out}.error0").read()
    assert "failed on rank 0 of 2" in message and "another rank died" in message
    assert time.monotonic() - start < 40
    # The checkpoint is whole (the last one both ranks finished) and no temporary file is left.
    with np.load(f"{out}.ckpt.npz") as z:
        assert json.loads(bytes(z["meta"]).decode())["meta"]["step"] == 3
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_bad_backend_and_arguments_are_refused():
    import fastopt.distributed as dist

    with pytest.raises(ValueError, match="'nccl' moves CUDA arrays only"):
        dist.init(backend="nccl", rank=0, world_size=1, device="cpu", init_method="tcp://127.0.0.1:1")
    with pytest.raises(ValueError, match="'gloo' for a model on cuda:0"):
        dist.init(backend="gloo", rank=0, world_size=1, device="cuda:0", init_method="tcp://127.0.0.1:1")
    with pytest.raises(ValueError, match="rank"):
        dist.init(rank=2, world_size=2, init_method="tcp://127.0.0.1:1")
    with pytest.raises(RuntimeError, match="call fastopt.distributed.init"):
        dist.DataParallel(mlp())


def test_mismatched_world_sizes_are_refused(tmp_path):
    port = free_port()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", "import fastopt.distributed as d; d.init(timeout=10)"],
            env=dict(os.environ, RANK=str(r), WORLD_SIZE=str(w), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)),
            stderr=subprocess.PIPE,
        )
        for r, w in ((0, 2), (1, 3))
    ]
    errs = [p.communicate(timeout=40)[1].decode() for p in procs]
    assert all(p.returncode != 0 for p in procs)
    assert "rank 1 was started with world_size 3, rank 0 with 2" in errs[1]
    assert "rank 0 was started with world_size 2, rank 1 with 3" in errs[0]


def test_fastopt_train_nproc_2_writes_from_rank_0_only(tmp_path):
    out = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "fastopt.cli",
            "train",
            "--nproc",
            "2",
            "--epochs",
            "1",
            "--device",
            "cpu",
            "--sync-bn",
            "--width",
            "4",
            "8",
            "--quiet",
            "--out",
            str(out),
        ],
        env=env,
        capture_output=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert done.stdout.decode().count("wrote ") == 1  # one report: rank 0's
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["epochs_run"] == 1
    # Each rank trained on half the training split, --batch-size per rank: rank 0's log has
    # ceil(n / batch) steps for its n images, and no other rank appended to it.
    n, batch = metrics["data"]["train"], metrics["config"]["batch_size"]
    assert n == len(datasets.load_digits(seed=0).train) // 2
    steps = [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines() if line.strip()]
    assert len([s for s in steps if "loss" in s]) == -(-n // batch)
    with np.load(out / "last.npz") as z:
        assert any(k.startswith("model/") for k in z.files)
    assert not [p for p in os.listdir(out) if p.endswith(".tmp")]


if __name__ == "__main__":
    worker_main(sys.argv[1], sys.argv[2])
