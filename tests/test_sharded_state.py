"""The FSDP2 state helpers on DTensors (CPU, a one-process gloo group): a phase state of sharded parameters is
saved as plain local tensors and restored into DTensor optimizer state that continues bit for bit."""
import os
import tempfile

import pytest
import torch
import torch.distributed as dist

from glancetune.train.loop import local, reshard_optimizer_state, whole


@pytest.fixture(scope="module")
def mesh():
    from torch.distributed.device_mesh import init_device_mesh

    store = tempfile.mktemp(prefix="glancetune-gloo-")
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=0, world_size=1)
    try:
        yield init_device_mesh("cpu", (1,))
    finally:
        dist.destroy_process_group()
        if os.path.exists(store):
            os.remove(store)


def sharded_params(mesh, seed):
    from torch.distributed.tensor import Shard, distribute_tensor

    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(distribute_tensor(torch.randn(8, 4, generator=g), mesh, [Shard(0)]))
            for _ in range(2)]


def steps(params, opt, n, seed):
    g = torch.Generator().manual_seed(seed)
    for _ in range(n):
        for p in params:
            p.grad = type(p).from_local(torch.randn(p.to_local().shape, generator=g), p.device_mesh, p.placements)
        opt.step()
        opt.zero_grad()


def test_sharded_optimizer_state_round_trips(mesh):
    from torch.distributed.tensor import DTensor

    a = sharded_params(mesh, 0)
    opt_a = torch.optim.AdamW(a, lr=1e-2)
    steps(a, opt_a, 3, 1)
    saved = local(opt_a.state_dict())
    weights = [whole(p).detach().clone() for p in a]
    assert all(type(v) is torch.Tensor for st in saved["state"].values() for v in st.values())
    assert all(type(w) is torch.Tensor for w in weights)

    b = sharded_params(mesh, 5)  # other values: everything must come from the saved state
    with torch.no_grad():
        for p, w in zip(b, weights):
            p.copy_(type(p).from_local(w, p.device_mesh, p.placements))
    opt_b = torch.optim.AdamW(b, lr=1e-2)
    opt_b.load_state_dict(saved)
    reshard_optimizer_state(opt_b)
    assert all(isinstance(opt_b.state[p]["exp_avg"], DTensor) for p in b)
    steps(a, opt_a, 2, 7)
    steps(b, opt_b, 2, 7)
    assert all(torch.equal(whole(x), whole(y)) for x, y in zip(a, b))
