"""The Generate page's server side and the run page's validation labels, on the real app (FastAPI's TestClient; a
finished tiny run, no job processes): the progress a request reports while it runs (loading the pipeline, image k
of n, done) through /api/generate/progress and its event stream; a run's searched ladder files (listed, uploaded,
a bad or oversized one refused in one line with nothing kept, a name out of the folder refused) and a generation
on one equal to `glancetune generate --ladder-file`; the validation grids' step and row prompts."""
from __future__ import annotations

import io
import json
import shutil
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from glancetune.cli import main
from glancetune.ladder import LadderFile
from glancetune.server.app import create_app

BASE = "http://127.0.0.1:8001"


def finished_run(root: Path, run_id: str, output: Path | None = None) -> Path:
    """A run folder marked done, with a copy of a trained run's output (or stand-ins for its two LoRA files)."""
    d = root / run_id
    if output is not None:
        shutil.copytree(output, d / "output")
    for role in ("slow", "fast") if output is None else ():
        (d / "output" / role).mkdir(parents=True)
        (d / "output" / role / "pytorch_lora_weights.safetensors").write_bytes(b"x")
    (d / "config").mkdir(exist_ok=True)
    (d / "config" / "glance.json").write_text("{}")
    (d / "run.json").write_text(json.dumps({"id": run_id, "name": run_id, "created": time.time(), "state": "done",
                                            "returncode": 0}))
    return d


@pytest.fixture
def app_client(tmp_path):
    app, srv = create_app(tmp_path / "runs", hosts={"127.0.0.1:8001"}, start_queue=False)
    return TestClient(app, base_url=BASE, raise_server_exceptions=False), srv


def test_progress_while_generating(glance_run, app_client, monkeypatch):
    client, srv = app_client
    finished_run(srv.store.root, "r1", glance_run)
    assert client.get("/api/generate/progress").json()["state"] == "idle"
    from glancetune.sampling.sampler import GlanceSampler

    during = []  # what the page reads while each image is being sampled
    orig = GlanceSampler.__call__

    def spy(self, *args, **kwargs):
        during.append(client.get("/api/generate/progress").json())
        return orig(self, *args, **kwargs)

    monkeypatch.setattr(GlanceSampler, "__call__", spy)
    seen = []
    srv.warm.on_progress.append(lambda p: seen.append(p.message))
    r = client.post("/api/generate", json={"run": "r1", "prompts": ["a fox", "a bird"], "seed": 5})
    assert r.status_code == 200, r.text
    assert [(d["state"], d["message"], d["image"], d["of"], d["run"]) for d in during] == [
        ("sampling", "image 1 of 2", 1, 2, "r1"), ("sampling", "image 2 of 2", 2, 2, "r1")]
    assert seen[:2] == ["starting", "loading the pipeline of r1"] and seen[2:4] == ["image 1 of 2", "image 2 of 2"]
    assert seen[-1].startswith("done: 2 image(s) in ")
    done = client.get("/api/generate/progress").json()
    assert done["state"] == "done" and done["request"] == 1 and done["seconds"] > 0
    events = client.get("/api/generate/events?once=1")
    assert events.headers["content-type"].startswith("text/event-stream")
    assert json.loads(events.text.split("data: ", 1)[1])["message"] == done["message"]
    images = r.json()["images"]
    assert [(im["parameters"]["prompt"], im["parameters"]["seed"]) for im in images] == [("a fox", 5), ("a bird", 6)]

    seen.clear()  # the pipeline is resident: no loading this time; a failure is reported too
    monkeypatch.setattr(GlanceSampler, "__call__", lambda self, *a, **k: 1 / 0)
    r = client.post("/api/generate", json={"run": "r1", "prompts": ["a fox"]})
    assert r.status_code == 500 and "Traceback" not in r.text
    assert "loading the pipeline of r1" not in seen
    failed = client.get("/api/generate/progress").json()
    assert failed["state"] == "failed" and failed["request"] == 2 and "division by zero" in failed["message"]


def ladder_bytes(sigmas=(1.0, 0.95, 0.8, 0.6, 0.3, 0.1), **fields) -> bytes:
    found = LadderFile(tuple(sigmas), "tiny:flux", "flux", 128, 128, None, {"grid": "test"})
    return json.dumps({**found.to_dict(), **fields}).encode()


def upload(client, run_id, data: bytes, name="searched.json"):
    return client.post(f"/api/runs/{run_id}/ladders", files={"file": (name, data, "application/json")})


def test_ladder_files_upload_and_refusals(app_client):
    client, srv = app_client
    d = finished_run(srv.store.root, "r1")
    assert client.get("/api/runs/r1/ladders").json() == {"ladders": []}
    bad = {"not json": b"{nope", "another format": ladder_bytes(format="other/1"),
           "rising sigmas": ladder_bytes(sigmas=(0.5, 0.9)), "a missing field": json.dumps({k: v for k, v in json.loads(ladder_bytes()).items() if k != "width"}).encode()}
    for what, data in bad.items():
        r = upload(client, "r1", data, name="bad one.json")
        assert r.status_code == 400, what
        error = r.json()["error"]
        assert error.startswith("ladder: bad one.json: ") and "\n" not in error and str(d) not in error, (what, error)
    r = upload(client, "r1", b" " * (64 * 1024 + 1))
    assert r.status_code == 400 and "at most 65536" in r.json()["error"]
    assert client.post("/api/runs/r1/ladders", data={"x": "1"}).status_code == 400  # no file
    assert not (d / "ladders").exists() or list((d / "ladders").iterdir()) == []  # nothing half-written

    r = upload(client, "r1", ladder_bytes(), name="../../../evil name.json")  # the name is the server's
    assert r.status_code == 200, r.text
    assert r.json()["name"] == "evil-name.json" and r.json()["slow"] == 3 and r.json()["fast"] == 3
    assert sorted(p.name for p in (d / "ladders").iterdir()) == ["evil-name.json"]
    assert upload(client, "r1", ladder_bytes(), name="evil name.json").json()["name"] == "evil-name-2.json"
    (d / "ladders" / "hand.json").write_text("[]")  # put there by hand: listed with its error
    listed = client.get("/api/runs/r1/ladders").json()["ladders"]
    assert [x["name"] for x in listed] == ["evil-name-2.json", "evil-name.json", "hand.json"]
    assert listed[1]["sigmas"] == [1.0, 0.95, 0.8, 0.6, 0.3, 0.1] and "not a glancetune ladder" in listed[2]["error"]
    for name, why in (("../run.json", "not a ladder file"), ("nope.json", "not a ladder file"),
                      ("hand.json", "not a glancetune ladder file")):
        r = client.post("/api/generate", json={"run": "r1", "prompts": ["a fox"], "ladder": name})
        assert r.status_code == 400 and why in r.json()["error"], r.text
    r = client.post("/api/generate", json={"run": "r1", "prompts": ["a fox"], "ladder": 3})
    assert r.status_code == 400 and r.json()["error"].startswith("ladder: ")


def test_generate_on_a_searched_ladder_equals_the_cli(glance_run, app_client, tmp_path):
    client, srv = app_client
    finished_run(srv.store.root, "r1", glance_run)
    assert upload(client, "r1", ladder_bytes()).status_code == 200
    r = client.post("/api/generate", json={"run": "r1", "prompts": ["a dog"], "seed": 2, "ladder": "searched.json"})
    assert r.status_code == 200, r.text
    params = r.json()["images"][0]["parameters"]
    assert params["ladder_file"] == "searched.json"
    assert params["ladder"]["slow"] == pytest.approx([1.0, 0.95, 0.8]) and len(params["ladder"]["fast"]) == 3
    got = client.get(r.json()["images"][0]["url"]).content
    ladder_file = srv.store.root / "r1" / "ladders" / "searched.json"
    ref = tmp_path / "ref.png"
    assert main(["generate", "--run", str(glance_run), "--prompt", "a dog", "--seed", "2", "--ladder-file",
                 str(ladder_file), "--output", str(ref)]) == 0
    assert Image.open(io.BytesIO(got)).tobytes() == Image.open(ref).tobytes()
    own = client.post("/api/generate", json={"run": "r1", "prompts": ["a dog"], "seed": 2, "ladder": ""})
    assert own.json()["images"][0]["parameters"]["ladder"] != params["ladder"]  # the run's own ladder again
    assert "ladder_file" not in own.json()["images"][0]["parameters"]


def test_validation_labels(app_client):
    client, srv = app_client
    d = finished_run(srv.store.root, "r1")
    from glancetune.sampling.images import save_images

    out = d / "output"
    lines = []
    for step in (0, 10):
        folder = out / "validation" / f"step-{step}"
        for k, (prompt, seed) in enumerate((("a red fox", 0), ("a blue bird", 0))):
            save_images([Image.new("RGB", (8, 8))], folder / f"p{k}-0.png", {"prompt": prompt, "seed": seed})
        save_images([Image.new("RGB", (16, 16))], folder / "grid.png", {"step": step})
        lines.append({"step": step, "event": "validation", "grid": f"validation/step-{step}/grid.png",
                      "images": [f"validation/step-{step}/p0-0.png", f"validation/step-{step}/p1-0.png"]})
    lines.append({"step": 20, "event": "validation", "grid": "validation/step-20/grid.png", "images": []})  # gone
    lines.append({"step": 30, "event": "validation", "grid": "validation/step-10/grid.png",
                  "images": ["../../run.json", "/etc/hostname"]})  # names out of the output folder: not read
    (out / "train_log.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    got = client.get("/api/runs/r1/validations").json()["validations"]
    assert [(v["step"], v["grid"]) for v in got] == [(0, "output/validation/step-0/grid.png"),
                                                     (10, "output/validation/step-10/grid.png"),
                                                     (30, "output/validation/step-10/grid.png")]
    assert got[1]["rows"] == [{"prompt": "a red fox", "seed": 0}, {"prompt": "a blue bird", "seed": 0}]
    assert got[2]["rows"] == [{"prompt": None, "seed": None}] * 2
    assert client.get("/api/runs/nope/validations").status_code == 404


def test_a_ladders_link_out_of_the_run_is_refused(app_client, tmp_path):
    client, srv = app_client
    d = finished_run(srv.store.root, "r1")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "x.json").write_bytes(ladder_bytes())
    (d / "ladders").symlink_to(outside, target_is_directory=True)
    r = upload(client, "r1", ladder_bytes())
    assert r.status_code == 400 and "outside the run folder" in r.json()["error"]
    assert sorted(p.name for p in outside.iterdir()) == ["x.json"]  # nothing written there
    assert client.get("/api/runs/r1/ladders").status_code == 400
    r = client.post("/api/generate", json={"run": "r1", "prompts": ["a fox"], "ladder": "x.json"})
    assert r.status_code == 400 and "outside the run folder" in r.json()["error"]
