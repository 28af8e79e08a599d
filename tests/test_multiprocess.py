"""Two processes on the CPU through `accelerate launch` (torchrun + gloo): DDP with per-rank draws, and Glance's
two phases on two processes whose output equals the single-process run bit for bit.

Marked slow-ish: each launch starts two Python processes (~15 s on 2 cores)."""
import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from conftest import write_configs
from glancetune.cli import main
from glancetune.export.files import WEIGHT_NAME

pytestmark = pytest.mark.slow


def launch(*args):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "MKL_CBWR": "AUTO,STRICT"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "glancetune", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


def loras(out):
    return {r: load_file(str(out / r / WEIGHT_NAME)) for r in ("slow", "fast")}


def same(a, b) -> bool:
    return all(torch.equal(a[r][k], b[r][k]) for r in a for k in a[r])


@pytest.fixture(scope="module")
def single(tiny_flux, tmp_path_factory):
    root = tmp_path_factory.mktemp("single")
    cfg = write_configs(root, tiny_flux, steps=6, checkpointing_steps=3)
    assert main(["glance", "--config", str(cfg)]) == 0
    return loras(root / "output")


def test_parallel_phases_equal_the_single_process_run(single, tiny_flux, tmp_path):
    cfg = write_configs(tmp_path, tiny_flux, steps=6, checkpointing_steps=3, parallel_phases=True)
    r = launch("glance", "--config", str(cfg))
    assert r.returncode == 0, r.stderr[-3000:]
    out = tmp_path / "output"
    assert same(loras(out), single)
    assert r.stdout.count("wrote ") == 1 and r.stdout.count("phase slow:") == 1  # the main process prints
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [(x["step"], x["phase"]) for x in log] == [(s, p) for s in range(1, 7) for p in ("slow", "fast")]
    state = torch.load(out / "checkpoint-3" / "training_state.pt", weights_only=False)
    assert [set(r) for r in state["ranks"]] == [{"slow"}, {"fast"}]  # one phase per process, one file


def test_ddp_draws_per_rank_and_syncs(single, tiny_flux, tmp_path):
    cfg = write_configs(tmp_path, tiny_flux, steps=6, checkpointing_steps=3)
    r = launch("glance", "--config", str(cfg))
    assert r.returncode == 0, r.stderr[-3000:]
    out = tmp_path / "output"
    state = torch.load(out / "checkpoint-3" / "training_state.pt", weights_only=False)
    r0, r1 = state["ranks"]
    for phase in ("slow", "fast"):
        m0, m1 = (r[phase]["optimizer"]["state"] for r in (r0, r1))  # AdamW moments: from the averaged grads
        assert all(torch.equal(m0[i]["exp_avg_sq"], m1[i]["exp_avg_sq"]) for i in m0) and len(m0) == 30
        assert not torch.equal(r0[phase]["generator"], r1[phase]["generator"])  # each rank its own draws
        assert r0[phase]["losses"] != r1[phase]["losses"]
    assert not same(loras(out), single)  # an effective batch of 2: another trajectory
    log = (out / "train_log.jsonl").read_text().splitlines()
    assert len(log) == 12  # the main process logs, once per step and phase
