"""The torch front on 2 CPU processes (gloo): fastopt.torch.optim's optimizers under torch's
DistributedDataParallel, unchanged, equal one process with the whole batch; and
fastopt.torch.optim.ZeroRedundancy equals the unsharded optimizer, its consolidated checkpoint
resuming on 1 rank (the plain optimizer) and on 2. The launcher and the tolerance (ATOL, derived
there) are test_distributed's."""

import os
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
if not torch.distributed.is_available():
    pytest.skip("this PyTorch has no torch.distributed", allow_module_level=True)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_distributed import ATOL, B, K, launch, results  # noqa: E402

import fastopt.torch.optim as fo  # noqa: E402

HERE = os.path.abspath(__file__)
CLASSES = {
    "sgd": (fo.SGD, dict(lr=0.1, momentum=0.9)),
    "adagrad": (fo.Adagrad, dict(lr=0.1)),
    "rmsprop": (fo.RMSprop, dict(lr=0.01, centered=True)),
    "adam": (fo.Adam, dict(lr=0.01)),
    "adamw": (fo.AdamW, dict(lr=0.01, weight_decay=0.1)),
}


def net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.ReLU(), torch.nn.Linear(7, 3))


def batch(step):
    g = torch.Generator().manual_seed(100 + step)
    return torch.randn(2 * B, 5, generator=g), torch.randint(0, 3, (2 * B,), generator=g)


def train(model, opt, part, steps, first=0, sched=None):
    for step in range(first, first + steps):
        x, y = batch(step)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x[part]), y[part]).backward()
        opt.step()
        if sched is not None:
            sched.step()
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()]).numpy().copy()


def worker(out):
    import fastopt.distributed as fdist

    rank, world = fdist.init(timeout=20)
    part = slice(rank * B, (rank + 1) * B)
    ddp = torch.nn.parallel.DistributedDataParallel
    result = {}
    model = ddp(net())
    result["ddp"] = train(model, fo.SGD(model.parameters(), lr=0.1, momentum=0.9, max_grad_norm=0.5), part, K)
    for name, (cls, options) in CLASSES.items():
        for clip in (None, 0.05):
            key = f"{name}_{'clipped' if clip else 'plain'}"
            ref = ddp(net())
            result[key + "_ref"] = train(ref, cls(ref.parameters(), max_grad_norm=clip, **options), part, K)
            model = ddp(net())
            opt = fo.ZeroRedundancy(model.parameters(), cls, max_grad_norm=clip, **options)
            result[key] = train(model, opt, part, K)
    for key, make in (("sched_ref", fo.AdamW), ("sched", lambda ps, **kw: fo.ZeroRedundancy(ps, fo.AdamW, **kw))):
        model = ddp(net())  # an LR scheduler edits the wrapper's groups; the shard follows
        opt = make(model.parameters(), **CLASSES["adamw"][1])
        result[key] = train(model, opt, part, K, sched=torch.optim.lr_scheduler.StepLR(opt, 1, gamma=0.1))
    model = ddp(net())
    opt = fo.ZeroRedundancy(model.parameters(), fo.AdamW, lr=0.01, max_grad_norm=0.5)
    train(model, opt, part, K)
    opt.consolidate_state_dict(to=0)
    if rank == 0:
        torch.save({"model": model.module.state_dict(), "optim": opt.state_dict()}, f"{out}.ckpt.pt")
    torch.distributed.barrier()
    result["continued"] = train(model, opt, part, K, first=K)
    saved = torch.load(f"{out}.ckpt.pt")
    model = ddp(net())
    model.module.load_state_dict(saved["model"])
    opt = fo.ZeroRedundancy(model.parameters(), fo.AdamW, lr=0.5, max_grad_norm=0.5)
    opt.load_state_dict(saved["optim"])
    result["resumed"] = train(model, opt, part, K, first=K)
    np.savez(f"{out}.rank{rank}.npz", **result)
    fdist.destroy()


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("torchdist") / "t"
    codes, errors = launch("torch", out, script=HERE)
    assert codes == [0, 0], errors
    return out, results(out)


def test_fastopt_torch_optimizer_under_ddp_equals_one_process(run):
    _, (r0, r1) = run
    np.testing.assert_array_equal(r0["ddp"], r1["ddp"])
    model = net()
    initial = torch.cat([p.detach().reshape(-1) for p in model.parameters()]).numpy().copy()
    single = train(model, fo.SGD(model.parameters(), lr=0.1, momentum=0.9, max_grad_norm=0.5), slice(0, 2 * B), K)
    assert np.abs(single - initial).max() > 10 * ATOL
    np.testing.assert_allclose(r0["ddp"], single, rtol=0, atol=ATOL)


@pytest.mark.parametrize("name", sorted(CLASSES))
def test_zero_redundancy_equals_the_unsharded_optimizer(run, name):
    _, ranks = run
    for r in ranks:
        np.testing.assert_array_equal(r[f"{name}_plain"], r[f"{name}_plain_ref"])
        # The norm summed in another order may move the float32 clip coefficient by an ulp.
        np.testing.assert_allclose(r[f"{name}_clipped"], r[f"{name}_clipped_ref"], rtol=1e-6, atol=1e-7)


def test_zero_redundancy_follows_an_lr_scheduler(run):
    _, (r0, _) = run
    np.testing.assert_array_equal(r0["sched"], r0["sched_ref"])
    assert not np.array_equal(r0["sched"], r0["adamw_plain"])  # the same run without the schedule differs


def test_consolidated_checkpoint_resumes_on_two_ranks_and_in_the_plain_optimizer(run):
    out, (r0, r1) = run
    np.testing.assert_array_equal(r0["resumed"], r0["continued"])
    np.testing.assert_array_equal(r1["resumed"], r0["continued"])
    saved = torch.load(f"{out}.ckpt.pt")
    model = net()
    model.load_state_dict(saved["model"])
    opt = fo.AdamW(model.parameters(), lr=0.01, max_grad_norm=0.5)
    opt.load_state_dict(saved["optim"])  # torch's format, the unsharded layout
    np.testing.assert_allclose(train(model, opt, slice(0, 2 * B), K, first=K), r0["continued"], rtol=0, atol=ATOL)


if __name__ == "__main__":
    worker(sys.argv[2])
