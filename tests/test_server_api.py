"""`glancetune server` through its HTTP API (FastAPI's TestClient on the real app; the runs are real `glancetune
glance` processes on the tiny model): create + plan (equal to --dry-run), start, a server restart while the run
trains (the new server finds it), stop (SIGINT: checkpoint, interrupted), resume (continues, no step twice),
downloads equal to the run's files, generate equal to `glancetune generate`, an eval job and its report, delete."""
from __future__ import annotations

import io
import json
import time
import zipfile
from pathlib import Path

import pytest

from fastapi.testclient import TestClient  # the [server] extra; the test extra installs it

from glancetune.cli import main
from glancetune.config.schema import TrainConfig
from glancetune.export.files import WEIGHT_NAME
from glancetune.server.app import create_app
from glancetune.server.forms import SERVER_KEYS

pytestmark = pytest.mark.slow

ASSET = Path(__file__).parents[1] / "src" / "glancetune" / "assets" / "glance.png"
BASE = "http://127.0.0.1:8001"


def make_client(runs: Path):
    app, srv = create_app(runs, hosts={"127.0.0.1:8001"})
    return TestClient(app, base_url=BASE), srv


@pytest.fixture
def server(tmp_path):
    client, srv = make_client(tmp_path / "runs")
    yield client, srv
    srv.jobs.close()


def create(client, start=False, steps=20, images=None, **settings):
    settings = {"pretrained_model_name_or_path": "tiny:flux", "max_train_steps": str(steps), "lora_rank": "4",
                **settings}
    data = {"name": "test run", "captions": "a red gradient", "resolution": "64", "settings": json.dumps(settings),
            "start": "1" if start else "0"}
    files = images if images is not None else [("images", ("mine.png", ASSET.read_bytes(), "image/png"))]
    return client.post("/api/runs", data=data, files=files)


def wait(client, run_id, until, deadline=240.0):
    """Poll the run until `until(detail)` holds (a generous deadline: the machine is shared)."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        d = client.get(f"/api/runs/{run_id}").json()
        if until(d):
            return d
        time.sleep(0.1)
    raise AssertionError(f"run {run_id} never reached the state: {d['status']} step {d['step']}\n{d['log']}")


def jsonl_steps(out: Path, phase: str) -> list[int]:
    lines = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    return [d["step"] for d in lines if d.get("phase") == phase]


def test_form_is_the_config_schema(server):
    client, _ = server
    keys = client.get("/api/schema").json()["keys"]
    assert set(keys) == set(TrainConfig.model_fields) - set(SERVER_KEYS)
    page = client.get("/new").text
    for key in keys:
        assert f'data-key="{key}"' in page
    assert 'data-key="optimizer" data-default="adamw"' in page and '<option value="prodigy">' in page
    assert 'data-key="data_backend_config"' not in page
    # a key that is a name or a bool is a menu of both, and what it sends reads back as the config's type
    assert ('<select name="compile_transformer" id="f-compile_transformer" data-key="compile_transformer" '
            'data-default="auto"><option value="true">true</option><option value="false">false</option>'
            '<option value="auto" selected>auto</option></select>') in page
    from glancetune.server.forms import parse_settings

    assert parse_settings('{"compile_transformer": "false"}') == {"compile_transformer": False}
    assert parse_settings('{"compile_transformer": "auto"}') == {"compile_transformer": "auto"}


def test_plan_is_the_dry_run(server, capsys):
    client, srv = server
    r = create(client, steps=7, validation_prompt="a cat")
    assert r.status_code == 200, r.text
    run = r.json()
    assert run["status"] == "draft" and run["total"] == 7
    assert "<circle" in run["ladder_svg"] and len(run["plan"]["ladder"]["slow"]) == 5
    capsys.readouterr()
    assert main(["glance", "--config", str(srv.store.config_path(run["id"])), "--dry-run"]) == 0
    assert capsys.readouterr().out.strip() == run["plan"]["text"]
    saved = json.loads((srv.store.config_path(run["id"])).read_text())
    assert saved["output_dir"] == str(srv.store.output(run["id"])) and saved["validation_prompt"] == "a cat"
    assert (srv.store.dir(run["id"]) / "data" / "image-001.png").read_bytes() == ASSET.read_bytes()
    assert (srv.store.dir(run["id"]) / "data" / "image-001.txt").read_text() == "a red gradient\n"
    assert not (srv.store.output(run["id"])).exists()  # a draft trains nothing


def test_restart_stop_resume_download_generate(tmp_path, capsys):
    runs = tmp_path / "runs"
    a, srv_a = make_client(runs)
    r = create(a, start=True, steps=100, checkpointing_steps="0")
    assert r.status_code == 200, r.text
    run_id = r.json()["id"]
    out = srv_a.store.output(run_id)
    wait(a, run_id, lambda d: d["status"] == "running")
    srv_a.jobs.close()  # the server goes away; its run goes on

    b, srv_b = make_client(runs)  # a new server finds the run in the folder, still running
    try:
        assert [x["id"] for x in b.get("/api/runs").json()] == [run_id]
        wait(b, run_id, lambda d: d["step"] >= 10 and d["status"] == "running")
        second = create(b, start=True, steps=5).json()  # one device job at a time: this one waits
        assert second["status"] == "queued" and b.get(f"/api/runs/{second['id']}").json()["status"] == "queued"
        assert b.post(f"/api/runs/{second['id']}/stop").json()["status"] == "draft"  # leaves the queue
        assert b.delete(f"/api/runs/{second['id']}?confirm={second['id']}").status_code == 200
        assert b.post(f"/api/runs/{run_id}/stop").json()["status"] in ("stopping", "interrupted")
        d = wait(b, run_id, lambda d: d["status"] not in ("running", "stopping"))
        assert d["status"] == "interrupted", d["log"]
        ckpt = sorted(int(p.name.split("-")[1]) for p in out.glob("checkpoint-*"))
        assert len(ckpt) == 1 and 10 <= ckpt[0] < 100 and not (out / "slow").exists()
        assert f"interrupted at step {ckpt[0]}" in d["log"]

        assert b.post(f"/api/runs/{run_id}/start").json()["status"] in ("queued", "running")
        d = wait(b, run_id, lambda d: d["status"] in ("done", "failed", "interrupted"))
        assert d["status"] == "done" and d["returncode"] == 0 and d["step"] == 100, d["log"]
        assert f"resuming from {out / f'checkpoint-{ckpt[0]}'}" in d["log"]
        for phase in ("slow", "fast"):  # continued from the checkpoint: every step once
            assert jsonl_steps(out, phase) == sorted(set(jsonl_steps(out, phase))) == list(range(1, 101))

        z = zipfile.ZipFile(io.BytesIO(b.get(f"/api/runs/{run_id}/download/diffusers").content))
        assert sorted(z.namelist()) == ["fast/" + WEIGHT_NAME, "glancetune_config.json", "slow/" + WEIGHT_NAME]
        assert z.read("slow/" + WEIGHT_NAME) == (out / "slow" / WEIGHT_NAME).read_bytes()
        z = zipfile.ZipFile(io.BytesIO(b.get(f"/api/runs/{run_id}/download/comfyui").content))
        assert sorted(z.namelist()) == ["glance-fast.safetensors", "glance-slow.safetensors",
                                        "glance-workflow-api.json"]
        assert z.read("glance-fast.safetensors") == (out / "comfyui" / "glance-fast.safetensors").read_bytes()
        assert {(i.external_attr >> 16) & 0o777 for i in z.infolist()} == {0o644}  # readable by another user
        assert b.get(f"/api/runs/{run_id}/download/eval").status_code == 404  # no report written

        r = b.post("/api/generate", json={"run": run_id, "prompts": ["a dog"], "seed": 3})
        assert r.status_code == 200, r.text
        image = r.json()["images"][0]
        assert image["parameters"]["prompt"] == "a dog" and image["parameters"]["seed"] == 3
        got = b.get(image["url"])
        assert got.status_code == 200 and got.headers["content-type"] == "image/png"
        assert srv_b.warm.key == run_id  # the pipeline stays loaded for the next request
        ref = tmp_path / "ref.png"
        assert main(["generate", "--run", str(out), "--prompt", "a dog", "--seed", "3", "--output", str(ref)]) == 0
        from PIL import Image

        assert Image.open(io.BytesIO(got.content)).tobytes() == Image.open(ref).tobytes()

        assert_eval = b.post(f"/api/runs/{run_id}/eval", json={"prompts": "a dog\na cat", "seeds": 1})
        assert assert_eval.json()["status"] in ("queued", "evaluating"), assert_eval.text
        d = wait(b, run_id, lambda d: d["status"] == "done" and d["downloads"]["eval"])
        assert srv_b.warm.sampler is None  # the device job took the device: the warm pipeline was released
        z = zipfile.ZipFile(io.BytesIO(b.get(f"/api/runs/{run_id}/download/eval").content))
        assert sorted(z.namelist()) == ["eval/eval.json", "eval/eval.md", "eval/grid.png"]
        report = json.loads(z.read("eval/eval.json"))
        assert report["prompts"] == 2 and report["seeds"] == [0] and report["run"] == str(out)

        assert b.delete(f"/api/runs/{run_id}").status_code == 400  # no confirmation
        assert b.delete(f"/api/runs/{run_id}?confirm={run_id}").json() == {"deleted": run_id}
        assert not srv_b.store.root.joinpath(run_id).exists() and b.get("/api/runs").json() == []
    finally:
        srv_b.jobs.close()


def test_delete_keeps_a_server_data_folder(server, tmp_path):
    client, srv = server
    data = tmp_path / "mydata"
    data.mkdir()
    (data / "a.png").write_bytes(ASSET.read_bytes())
    (data / "a.txt").write_text("a caption")
    r = client.post("/api/runs", data={"name": "folder", "folder": str(data), "resolution": "64", "settings": json.dumps(
        {"pretrained_model_name_or_path": "tiny:flux", "max_train_steps": "3"})})
    assert r.status_code == 200, r.text
    run_id = r.json()["id"]
    assert "1 sample(s) at 64x64" in r.json()["plan"]["text"]
    assert client.delete(f"/api/runs/{run_id}?confirm={run_id}").status_code == 200
    assert sorted(p.name for p in data.iterdir()) == ["a.png", "a.txt"]


def test_server_compile_compiles_each_loaded_run_once(glance_run, tmp_path, monkeypatch):
    """`glancetune server --compile`: the Generate page's sampler is compiled when it loads a run (the compile
    itself: test_fused), once per load, not per request."""
    from glancetune.sampling.sampler import GlanceSampler
    from glancetune.server import add_parser
    import argparse

    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="command"))
    assert parser.parse_args(["server", "--compile"]).compile and not parser.parse_args(["server"]).compile
    compiled = []
    monkeypatch.setattr(GlanceSampler, "compile", lambda self: compiled.append(self))
    _, srv = create_app(tmp_path / "runs", hosts={"127.0.0.1:8001"}, start_queue=False, compile_sampler=True)
    for seed in (1, 2):
        paths, _, _ = srv.warm.generate("r1", glance_run, tmp_path / "gen", ["a dog"], seed, None, None, None)
        assert paths[0].is_file()
    assert len(compiled) == 1 and compiled[0] is srv.warm.sampler
    _, plain = create_app(tmp_path / "runs2", hosts={"127.0.0.1:8001"}, start_queue=False)
    plain.warm.generate("r1", glance_run, tmp_path / "gen2", ["a dog"], 1, None, None, None)
    assert len(compiled) == 1
