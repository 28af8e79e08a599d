"""The web UI's live status read from a run folder (server/activity.py, no processes): the phase label from the
job's log lines, the ETA held back until this job's own steps flow (a resumed job too), loss and s/step, the eval
report's table and progress; generated images' own prompts (server/generate.py); the presets read from examples/;
and, on the real app, a run being evaluated stays on the Generate page (busy, not "has not finished") and a busy
run refuses Delete before asking for the confirmation."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from glancetune.server.activity import activity, eval_progress, eval_report, job_lines, phase
from glancetune.server.app import create_app
from glancetune.server.generate import gallery, own_parameters
from glancetune.server.jobs import process_start_time
from glancetune.server.presets import EXAMPLES, presets

PLAN = """model tiny:flux (flux), 1 sample(s) at 64x64, guidance 1.0
data: 1 image(s) in 1 dataset(s)
phase slow: 5 sigmas 1, 0.934417, 0.863618, 0.786956, 0.703671
validation: 1 prompt(s) (validation) x 1 seed(s) from 0 at 64x64, at step 0, every 10 steps and the end, into x/
"""
STEPS = [{"step": s, "phase": p, "loss": 0.5 / s, "seconds": 0.25} for s in range(1, 21) for p in ("slow", "fast")]


def label(text: str, tmp_path: Path, total: int = 30, status: str = "running") -> str | None:
    return phase(job_lines(text), tmp_path, total, status)


def test_phase_follows_the_job_lines(tmp_path):
    old = "$ python -m glancetune glance --config c\n" + PLAN + "step 30/30 (100%) loss slow 0.1\nwrote out\n"
    new = old + "\n$ python -m glancetune glance --config c\n"
    assert label(new, tmp_path) == "starting"  # only the newest job's lines count
    assert label(new + PLAN, tmp_path) == "loading"
    assert label(new + PLAN + "ladder: searching the 10 sigmas that best ...", tmp_path) == "searching the ladder"
    assert label(new + PLAN + "ladder: 1.0000, 0.9 (distance ...) -> x.json\n", tmp_path) == "loading"
    assert label(new + PLAN + "encoders loaded in 0.2s\n", tmp_path) == "caching"
    assert label(new + PLAN + "teacher: 2 trajectories\ncompile: off\n", tmp_path) == "validating"  # step 0's
    assert label(new + PLAN + "validation step 0: 1 image(s) in x (1.0s)\n", tmp_path) == "training"
    assert label(new + PLAN + "step 10/30 (33%) loss slow 0.1\n", tmp_path) == "validating"
    assert label(new + PLAN + "step 12/30 (40%) loss slow 0.1\n", tmp_path) == "training"
    assert label(new + PLAN + "resuming from out/checkpoint-10 (step 10 of 30)\n", tmp_path) == "resuming"
    assert label(new + PLAN + "trained 30 step(s) in 0:00:03\n", tmp_path) == "saving"
    assert label(new, tmp_path, status="done") is None
    assert label(new, tmp_path, status="evaluating") == "evaluating"
    (tmp_path / ".checkpoint-20.tmp-123").mkdir()
    assert label(new + PLAN + "step 20/30 (66%)\n", tmp_path) == "checkpointing"


def test_eta_waits_for_this_jobs_steps(tmp_path):
    log = "$ glance\n" + PLAN + "encoders loaded in 0.2s\n"
    a = activity(log, STEPS[:4], tmp_path, 40, "running")  # a fresh job still caching: no ETA, no pace
    assert a.phase == "caching" and not a.flowing and a.per_step is None
    a = activity(log + "step 2/40 (5%) x\n", STEPS[:4], tmp_path, 40, "running")
    assert a.phase == "training" and a.flowing and a.per_step == pytest.approx(0.5)
    assert a.loss == {"slow": 0.25, "fast": 0.25}
    # resumed from step 20: the earlier job's steps say nothing about this one's pace
    resumed = log + "\n$ glance\n" + PLAN + "resuming from out/checkpoint-20 (step 20 of 40)\n"
    a = activity(resumed, STEPS, tmp_path, 40, "running")
    assert a.phase == "resuming" and a.start_step == 20 and not a.flowing and a.per_step is None
    later = STEPS + [{"step": 21, "phase": "slow", "loss": 0.1, "seconds": 2.0}]
    a = activity(resumed + "validation step 20: 1 image(s)\n", later, tmp_path, 40, "running")
    assert a.flowing and a.per_step == pytest.approx(2.0)


def test_eval_report_and_progress(tmp_path):
    assert eval_report(tmp_path, []) is None
    (tmp_path / "eval.json").write_text(json.dumps({
        "reference": "base-50", "verdict": "the pair beats base-10", "pairs": 2, "step": 30,
        "samplers": {"base-50": {"passes_per_image": 50.0, "seconds_median": 0.6},
                     "glance": {"passes_per_image": 10.0, "psnr_mean": 49.2, "ssim_mean": 0.9996, "alarms": 0}}}))
    rep = eval_report(tmp_path, ["eval/eval.json", "eval/grid.png"])
    assert [r["sampler"] for r in rep["rows"]] == ["base-50", "glance"] and rep["rows"][1]["psnr_mean"] == 49.2
    assert rep["grid"] == "eval/grid.png" and rep["verdict"] == "the pair beats base-10"
    prompts = tmp_path / "p.json"
    prompts.write_text(json.dumps({"prompt-1": "a fox", "prompt-2": "a cat"}))
    log = "$ eval\neval: prompt-1 seed 0 done\neval: prompt-1 seed 1 done\n"
    assert eval_progress("eval: x seed 0 done\n" + log, str(prompts), 2) == {"done": 2, "total": 4}
    assert eval_progress(log, None, 1)["total"] == 32


def test_generated_images_keep_their_own_prompt(tmp_path):
    batch = {"prompt": ["a fox", "a bird"], "seed": 8}
    assert own_parameters(batch, "generated/gen-20261206-190000-0000-1.png")["prompt"] == "a bird"
    assert own_parameters(batch, "generated/gen-20261206-190000-0000-0.png")["prompt"] == "a fox"
    assert own_parameters({"prompt": "a cat", "seed": 3}, "generated/gen-20261206-190000-0002.png")["prompt"] == "a cat"
    from PIL import Image

    from glancetune.sampling.images import save_images

    run = tmp_path / "r1"
    paths = save_images([Image.new("RGB", (8, 8))] * 2, run / "generated" / "gen-20261206-190000-0000.png",
                        {"prompt": ["a fox", "a bird"], "seed": 7})
    later = save_images([Image.new("RGB", (8, 8))], run / "generated" / "gen-20261206-190100-0002.png",
                        {"prompt": "a cat", "seed": 1})
    files = [p.relative_to(run).as_posix() for p in paths + later]
    got = [(im["url"].rsplit("/", 1)[1], im["parameters"]["prompt"], im["parameters"]["seed"])
           for im in gallery(run, files)]
    assert got == [("gen-20261206-190100-0002.png", "a cat", 1), ("gen-20261206-190000-0000-0.png", "a fox", 7),
                   ("gen-20261206-190000-0000-1.png", "a bird", 8)]


@pytest.mark.skipif(not (EXAMPLES / "qwen-image-24gb.json").is_file(), reason="no examples/ (not a source checkout)")
def test_presets_are_the_examples():
    found = {p.name: p for p in presets()}
    assert found["tiny-cpu"].settings["pretrained_model_name_or_path"] == "tiny:flux"
    for name in ("flux1-dev-24gb", "qwen-image-24gb"):
        example = json.loads((EXAMPLES / f"{name}.json").read_text())
        want = {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in example.items()
                if k not in ("data_backend_config", "output_dir")}
        assert found[name].settings == want and found[name].resolution == 1024
    assert found["qwen-image-24gb"].settings["optimizer"] == "adamw8bit"


def fake_run(root: Path, run_id: str, **record) -> Path:
    """A run folder whose job is this test process (alive), with both LoRAs written."""
    d = root / run_id
    for role in ("slow", "fast"):
        (d / "output" / role).mkdir(parents=True)
        (d / "output" / role / "pytorch_lora_weights.safetensors").write_bytes(b"x")
    (d / "config").mkdir()
    (d / "config" / "glance.json").write_text("{}")
    (d / "run.json").write_text(json.dumps({"id": run_id, "name": run_id, "created": time.time(), **record}))
    return d


def test_busy_runs_on_generate_and_delete(tmp_path):
    me = {"state": "running", "pid": os.getpid(), "pid_start": process_start_time(os.getpid())}
    fake_run(tmp_path / "runs", "evaluated", job="eval", **me)
    fake_run(tmp_path / "runs", "queued-one", state="queued", queued=time.time())
    app, srv = create_app(tmp_path / "runs", hosts={"127.0.0.1:8001"}, start_queue=False)
    assert srv.jobs.status(srv.store.read("queued-one")) == "queued"
    client = TestClient(app, base_url="http://127.0.0.1:8001")
    detail = client.get("/api/runs/evaluated").json()
    assert detail["status"] == "evaluating" and detail["phase"] == "evaluating"
    assert detail["eval_progress"] == {"done": 0, "total": 32}
    assert 'value="evaluated"' in client.get("/generate").text  # still listed: done, and busy for now
    r = client.post("/api/generate", json={"run": "evaluated", "prompts": ["a fox"]})
    assert r.status_code == 409 and "busy" in r.json()["error"] and "has not finished" not in r.json()["error"]
    r = client.delete("/api/runs/queued-one")  # no confirmation asked for what cannot be deleted now
    assert r.status_code == 409 and "queued" in r.json()["error"]
    assert client.get("/api/runs/queued-one").json()["eta"] is None


def test_validation_box_and_favicon(tmp_path):
    """"none yet (set validation_prompt)" only without a validation prompt; the favicon is served locally."""
    fake_run(tmp_path / "runs", "without", state="draft")
    with_prompt = fake_run(tmp_path / "runs", "with", state="draft")
    (with_prompt / "config" / "glance.json").write_text(json.dumps({"validation_prompt": "a fox"}))
    app, _ = create_app(tmp_path / "runs", hosts={"127.0.0.1:8001"}, start_queue=False)
    client = TestClient(app, base_url="http://127.0.0.1:8001")
    assert client.get("/api/runs/with").json()["validation_set"] is True
    assert client.get("/api/runs/without").json()["validation_set"] is False
    assert '<link rel="icon" href="/static/favicon.svg"' in client.get("/runs/with").text
    icon = client.get("/static/favicon.svg")
    assert icon.status_code == 200 and icon.text.startswith("<svg")


def test_objective_dependent_defaults_start_empty_in_the_form():
    """learning_rate and max_train_steps depend on the objective (distill: 5e-4 and 200): the form leaves them empty
    with the defaults named, so an untouched field gets the objective's default and a typed value is sent as typed
    (before, the field showed 2e-3 while the run used 5e-4, and a typed 2e-3 was dropped as "the default")."""
    from glancetune.server.forms import parse_settings, render_fields

    page = render_fields()
    assert ('data-key="learning_rate" data-default="" value="" placeholder="default: 0.0005 with distill, 0.002 '
            'otherwise"') in page
    assert 'data-key="max_train_steps" data-default="" value="" placeholder="default: 200 with distill"' in page
    assert parse_settings('{"learning_rate": "0.002", "max_train_steps": ""}') == {"learning_rate": 0.002}
