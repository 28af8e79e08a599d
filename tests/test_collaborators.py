"""The training job's collaborators, each built on its own from the typed values it takes (no `Job`): the checkpoint
hook with a LoRA store, the validation hook with a model source, run record and runtime, the objectives from their
registry; and the run record's `ladder_steps` written and read back."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import main, write_configs
from safetensors.torch import load_file

from glancetune.config.schema import load_config
from glancetune.engine.adapters import add_lora
from glancetune.engine.encode import ModelSource
from glancetune.engine.runtime import Runtime
from glancetune.export.files import (MANIFEST, STATE_NAME, WEIGHT_NAME, checkpoint_problem, complete_checkpoints,
                                     read_record)
from glancetune.families import model_info
from glancetune.ladder import Phase
from glancetune.plan.build import Plan
from glancetune.record import RunRecord
from glancetune.train.checkpoint import Checkpoints
from glancetune.train.hooks import RunInfo
from glancetune.train.objectives import OBJECTIVES, make_objective, objective
from glancetune.train.store import LoraStore

SLOW, FAST = (1.0, 0.9, 0.8), (0.6, 0.3)


def transformer_with_adapters(model: str):
    from diffusers import FluxTransformer2DModel

    tr = FluxTransformer2DModel.from_pretrained(model, subfolder="transformer")
    for name in ("slow", "fast"):
        add_lora(tr, name, rank=4, alpha=4, dropout=0.0, init="gaussian", targets=["attn.to_q", "attn.to_k"], seed=0)
    with torch.no_grad():  # each adapter its own non-zero weights
        for i, (n, p) in enumerate(tr.named_parameters()):
            if "lora_B" in n:
                p.copy_(torch.full_like(p, 0.01 * (i + 1)))
    return tr


def record(model: str, **kw) -> RunRecord:
    return RunRecord(model, "flux", (64, 64), 1.0, 32, {"slow": list(SLOW), "fast": list(FAST)}, **kw)


class FakePhase:
    """A phase state: what the store gathers (the LoRA weights by name, the step, the losses)."""

    def __init__(self, store: LoraStore, name: str, step: int):
        self.store, self.name, self.step = store, name, step

    def state_dict(self) -> dict:
        named = self.store.params(self.name)
        return {"name": self.name, "step": self.step, "names": [n for n, _ in named],
                "params": [p.detach().clone() for _, p in named], "losses": [0.5] * self.step}


def runtime() -> Runtime:
    acc = SimpleNamespace(is_main_process=True, process_index=0, num_processes=1)
    return Runtime(acc, torch.device("cpu"), torch.float32, "single")


def test_checkpoint_hook_with_a_store_and_no_job(tiny_flux, tmp_path):
    from diffusers import FluxPipeline

    tr = transformer_with_adapters(tiny_flux)
    phases = [Phase("slow", SLOW, "slow"), Phase("fast", FAST, "fast")]
    store = LoraStore(tr, FluxPipeline, phases, record(tiny_flux, train_steps=10))
    states = [FakePhase(store, "slow", 0), FakePhase(store, "fast", 0)]
    manifest = {"identity": {"command": "glance"}, "files": {}, "layout": {"layout": "single", "processes": 1}}
    hook = Checkpoints(store, states, manifest, every=2, limit=2)
    run = RunInfo(str(tmp_path), ["slow", "fast"], total_steps=10, start_step=0)
    for step in range(1, 9):
        for s in states:
            s.step = step
        hook.on_step_end(run, step)
    assert [s for s, _ in complete_checkpoints(tmp_path)] == [6, 8]  # every 2 steps, the newest 2 kept
    last = tmp_path / "checkpoint-8"
    written = json.loads((last / MANIFEST).read_text())
    assert {k: v for k, v in written.items() if k != "contents"} == {"step": 8, **manifest}
    assert {STATE_NAME, "fast/" + WEIGHT_NAME, "slow/" + WEIGHT_NAME} <= set(written["contents"])
    assert checkpoint_problem(last) is None
    assert torch.load(last / STATE_NAME, weights_only=False)["ranks"][0]["slow"]["step"] == 8
    rec, role = read_record(last / "fast")
    assert role == "fast" and rec.train_steps == 8  # a checkpoint's LoRAs record its step
    # the files load back into another transformer's adapters exactly
    other = transformer_with_adapters(tiny_flux)
    with torch.no_grad():
        for n, p in other.named_parameters():
            if "lora_" in n:
                p.zero_()
    LoraStore(other, FluxPipeline, phases, record(tiny_flux)).load(last)
    for (n, a), (_, b) in zip(store.params(None), LoraStore(other, FluxPipeline, phases, record(tiny_flux)).params(None)):
        assert torch.equal(a, b), n
    assert all(k.startswith("transformer.") for k in load_file(str(last / "slow" / WEIGHT_NAME)))  # stock layout


def test_validation_hook_with_typed_values_and_no_job(tiny_flux, tmp_path):
    cfg = load_config(write_configs(tmp_path, tiny_flux, resolution=64, validation_prompt="a blue square",
                                    validation_num_inference_steps=2))
    plan = Plan.build(cfg, "glance")  # the frozen plan value: only its parts are handed over
    from glancetune.train.validate import Validation

    rt = runtime()
    val = Validation(cfg, plan.model, plan.record(), (plan.width, plan.height), plan.samples, rt, logs=[])
    assert val.off is None
    val.before_load()  # the prompt is encoded through the text cache, encoders released
    assert set(val.embeds) == {"a blue square"}
    tr = transformer_with_adapters(tiny_flux)
    # the adapters named after the plan's phases, with the plan's targets, so the record's ladder applies
    model = SimpleNamespace(transformer=tr, active="slow")  # sampling ends on "fast": the hook must restore "slow"
    tr.set_adapter("slow")
    run = RunInfo(str(tmp_path / "out"), ["slow", "fast"], total_steps=4, start_step=0, trainer=model)
    val.on_train_start(run)
    step0 = tmp_path / "out" / "validation" / "step-0"
    names = sorted(p.name for p in step0.iterdir())
    assert "grid.png" in names and any(n.endswith("-base-2.png") for n in names)
    assert tr.active_adapters() == ["slow"]  # the active adapter restored after sampling


def test_objectives_are_a_registry(tiny_flux, tmp_path):
    assert {k: cls.name for k, cls in OBJECTIVES.items()} == {k: k for k in OBJECTIVES}
    cfg = load_config(write_configs(tmp_path, tiny_flux))
    ladder = SimpleNamespace(slow=SLOW, fast=FAST)
    assert type(make_objective(cfg, ladder, "glance", "single")).name == "flow"  # the default is an objective too
    assert type(make_objective(cfg, None, "train", "single")).name == "flow"
    traj = objective("trajectory", SLOW, FAST, substeps=2)
    assert traj.next_sigma(torch.tensor([0.8])).tolist() == pytest.approx([0.6])
    with pytest.raises(Exception, match="glance_objective: 'nope' is not one of flow, trajectory, rollout"):
        objective("nope", SLOW, FAST)


def test_run_record_keeps_ladder_steps(tiny_flux, tmp_path):
    r = record(tiny_flux, ladder_steps=30)
    assert r.to_dict()["ladder_steps"] == 30 and RunRecord.from_dict(r.to_dict()).ladder_steps == 30
    assert "ladder_steps" not in record(tiny_flux).to_dict()  # the default: files as before the key existed
    assert RunRecord.from_dict(record(tiny_flux).to_dict()).ladder_steps == 50


@pytest.mark.slow
def test_glance_ladder_steps_reaches_generate_and_official_grid(tiny_flux, tmp_path):
    from glancetune.ladder import model_schedule
    from glancetune.sampling.official import step_grids
    from glancetune.sampling.sampler import resolve_spec

    cfg = write_configs(tmp_path, tiny_flux, resolution=64, steps=1, glance_ladder_steps=30)
    assert main(["glance", "--config", str(cfg)]) == 0
    spec = resolve_spec(run=tmp_path / "output")
    assert read_record(tmp_path / "output" / "slow")[0].ladder_steps == spec.ladder_steps == 30
    info = model_info(tiny_flux)
    slow, _ = step_grids(info, spec.ladder, 64, 64, spec.ladder_steps)
    assert slow == list(model_schedule(info, 64, 64, 30)[:len(spec.ladder.slow) + 1])
    assert slow != list(model_schedule(info, 64, 64, 50)[:len(spec.ladder.slow) + 1])
