"""Checkpoints and resume: a run killed (SIGKILL) at any point and resumed writes LoRA files tensor-for-tensor equal
to an uninterrupted run; SIGINT/SIGTERM write a checkpoint and exit 130/143 with one line; a changed config or
dataset is refused naming what differs; pruning keeps the newest complete checkpoints."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import make_image, run_err, write_configs
from glancetune.cli import main
from glancetune.export.files import WEIGHT_NAME

pytestmark = pytest.mark.slow

DRIVER = Path(__file__).with_name("kill_driver.py")
STEPS = 8


def run_cli(mode, n, cfg):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, str(DRIVER), mode, str(n), "--", *cfg], env=env, capture_output=True,
                          text=True, timeout=600)


def loras(out: Path, command: str) -> dict:
    roles = ("slow", "fast") if command == "glance" else ("",)
    return {r: load_file(str(out / r / WEIGHT_NAME)) for r in roles}


def assert_same(a: dict, b: dict):
    assert a.keys() == b.keys()
    for role in a:
        assert a[role].keys() == b[role].keys()
        for k in a[role]:
            assert torch.equal(a[role][k], b[role][k]), (role, k)


@pytest.fixture(scope="module")
def reference(tiny_flux, tmp_path_factory):
    """Uninterrupted glance and train runs (checkpoints every 2 steps, cosine LR with warmup)."""
    out = {}
    for command in ("glance", "train"):
        root = tmp_path_factory.mktemp(f"ref-{command}")
        cfg = write_configs(root, tiny_flux, steps=STEPS, checkpointing_steps=2, lr_scheduler="cosine",
                            lr_warmup_steps=2, timestep_sampling="uniform")
        assert main([command, "--config", str(cfg)]) == 0
        out[command] = (cfg, loras(root / "output", command))
    return out


@pytest.mark.parametrize("command,mode,n", [
    ("glance", "kill-step", 4),    # steps 1-3 done: resumes from checkpoint-2
    ("glance", "kill-write", 6),   # during checkpoint-6's write: resumes from checkpoint-4
    ("glance", "kill-step", 8),    # in the last step: resumes from checkpoint-6
    ("train", "kill-step", 3),
])
def test_sigkill_then_resume_equals_uninterrupted(reference, tiny_flux, tmp_path, command, mode, n):
    cfg = write_configs(tmp_path, tiny_flux, steps=STEPS, checkpointing_steps=2, lr_scheduler="cosine",
                        lr_warmup_steps=2, timestep_sampling="uniform")
    r = run_cli(mode, n, [command, "--config", str(cfg)])
    assert r.returncode == -9, r.stderr[-2000:]
    out = tmp_path / "output"
    done = sorted(int(p.name.split("-")[1]) for p in out.glob("checkpoint-*"))
    expect_last = (n - 1) // 2 * 2 if mode == "kill-step" else n - 2
    assert done and done[-1] == expect_last
    assert not (out / "slow").exists() and not (out / WEIGHT_NAME).exists()  # nothing finished was written
    assert main([command, "--config", str(cfg)]) == 0  # resume_from_checkpoint: latest (the default)
    assert_same(loras(out, command), reference[command][1])
    assert not list(out.glob(".checkpoint-*"))  # the half-written one was cleaned up
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    phases = 2 if command == "glance" else 1
    assert [r["step"] for r in log] == sorted([s for s in range(1, STEPS + 1)] * phases)  # no step twice


@pytest.mark.parametrize("mode,code", [("sigint", 130), ("sigterm", 143)])
def test_signal_writes_checkpoint_and_one_line(reference, tiny_flux, tmp_path, mode, code):
    cfg = write_configs(tmp_path, tiny_flux, steps=STEPS, checkpointing_steps=2, lr_scheduler="cosine",
                        lr_warmup_steps=2, timestep_sampling="uniform")
    r = run_cli(mode, 5, ["glance", "--config", str(cfg)])
    assert r.returncode == code, r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    lines = [line for line in r.stderr.splitlines() if line.startswith("interrupted at step")]
    assert lines == [f"interrupted at step 5: checkpoint written in {tmp_path / 'output'}; run the same command "
                     "again to resume (resume_from_checkpoint: latest)"]
    assert (tmp_path / "output" / "checkpoint-5" / "checkpoint.json").is_file()
    assert main(["glance", "--config", str(cfg)]) == 0
    assert_same(loras(tmp_path / "output", "glance"), reference["glance"][1])


def test_checkpoint_holds_loadable_loras_and_prunes(reference, tiny_flux, tmp_path):
    cfg = write_configs(tmp_path, tiny_flux, steps=STEPS, checkpointing_steps=2, checkpoints_total_limit=2)
    assert main(["glance", "--config", str(cfg)]) == 0
    out = tmp_path / "output"
    assert sorted(p.name for p in out.glob("*checkpoint-*")) == ["checkpoint-4", "checkpoint-6"]
    from diffusers import FluxPipeline

    pipe = FluxPipeline.from_pretrained(tiny_flux)
    pipe.load_lora_weights(str(out / "checkpoint-6" / "slow"), adapter_name="slow")  # the stock loader
    state = torch.load(out / "checkpoint-6" / "training_state.pt", weights_only=False)
    assert state["step"] == 6 and set(state["ranks"][0]) == {"slow", "fast"}
    assert state["ranks"][0]["slow"]["step"] == 6 and len(state["ranks"][0]["fast"]["losses"]) == 6


def test_resume_refuses_changed_config_and_data(reference, tiny_flux, tmp_path, capsys):
    cfg = write_configs(tmp_path, tiny_flux, steps=STEPS, checkpointing_steps=2)
    r = run_cli("kill-step", 5, ["glance", "--config", str(cfg)])
    assert r.returncode == -9
    err = run_err(capsys, ["glance", "--config", str(cfg), "--set", "learning_rate=0.01", "--set", "lora_rank=8"])
    assert "config keys differ: learning_rate, lora_rank" in err and "checkpoint-4" in err
    err = run_err(capsys, ["glance", "--config", str(cfg), "--set", "max_train_steps=10"])
    assert "max_train_steps" in err
    # an explicit allowance for a harmless change: continues from checkpoint-4 to the new end (compile_transformer
    # may change without one: it only reorders float operations)
    assert main(["glance", "--config", str(cfg), "--set", "max_train_steps=10",
                 "--set", "resume_allow_changes=[max_train_steps]", "--set", "compile_transformer=false"]) == 0
    assert json.loads((tmp_path / "output" / "slow" / "train_log.json").read_text())["steps"] == 10
    # a changed image: named
    cfg2 = write_configs(tmp_path / "b", tiny_flux, steps=STEPS, checkpointing_steps=2)
    r = run_cli("kill-step", 5, ["glance", "--config", str(cfg2)])
    make_image(tmp_path / "b" / "data" / "img0.png", seed=5)
    capsys.readouterr()
    err = run_err(capsys, ["glance", "--config", str(cfg2)])
    assert "data files differ: simple-0/img0.png" in err


def test_ctrl_c_outside_the_loop_is_one_line(tiny_flux, tmp_path, capsys, monkeypatch):
    """Ctrl-C while loading (before the loop installs its handler): exit 130, one line, nothing written."""
    from glancetune.train import job

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(job.Job, "load_transformer", interrupted)
    cfg = write_configs(tmp_path, tiny_flux, steps=4)
    capsys.readouterr()
    assert main(["glance", "--config", str(cfg)]) == 130
    err = capsys.readouterr().err.strip()
    assert err.startswith("interrupted: ") and "\n" not in err
    assert not (tmp_path / "output").exists()
