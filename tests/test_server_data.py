"""The web UI's data and run-file routes (server/uploads.py, server/run_files.py) on the real app, without job
processes: a ZIP of images + captions unpacked for the form (and zip bombs, escaping entries and too many files
refused with one line), the bucket preview equal to the data plan's own training sizes, a config file read into
the form as `glancetune glance --config` reads it, a run's config download and duplicate, its checkpoints (list
and zip), its note (size limit, escaped on the page), queue positions, and run ids / checkpoint names that try to
leave the runs folder (404)."""
from __future__ import annotations

import base64
import io
import json
import zipfile
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from glancetune.config.schema import load_config
from glancetune.data.backends import load_backends
from glancetune.data.samples import build_plan
from glancetune.errors import GlanceError
from glancetune.server.app import create_app

ASSET = Path(__file__).parents[1] / "src" / "glancetune" / "assets" / "glance.png"
BASE = "http://127.0.0.1:8001"


@pytest.fixture
def server(tmp_path):
    app, srv = create_app(tmp_path / "runs", hosts={"127.0.0.1:8001"}, start_queue=False)
    srv.jobs.device_busy = lambda: True  # queued runs stay queued: no process is started here
    yield TestClient(app, base_url=BASE), srv
    srv.jobs.close()


def png(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (200, 30, 30)).save(buf, "PNG")
    return buf.getvalue()


def zipped(entries: dict[str, bytes], compression=zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as z:
        for name, data in entries.items():
            z.writestr(name, data)
    return buf.getvalue()


def one_line_400(r, *words):
    assert r.status_code == 400, r.text
    msg = r.json()["error"]
    assert "\n" not in msg and all(w in msg for w in words), msg
    return msg


def unpack(client, data: bytes):
    return client.post("/api/unpack", files={"archive": ("data.zip", data, "application/zip")})


def test_zip_upload_unpacks_images_and_captions(server):
    client, _ = server
    a, b = png(32, 16), png(16, 32)
    r = unpack(client, zipped({"set/a.png": a, "set/a.txt": "a red bar\n", "b.png": b, ".DS_Store": b"x",
                               "__MACOSX/set/._a.png": b"junk"}))
    assert r.status_code == 200, r.text
    got = r.json()["images"]
    assert [(i["name"], i["caption"]) for i in got] == [("b.png", ""), ("a.png", "a red bar")]
    assert base64.b64decode(got[1]["data"].split(",", 1)[1]) == a and got[1]["data"].startswith("data:image/png")
    two = unpack(client, zipped({"x/a.png": a, "y/a.png": b, "y/a.txt": b"the second"})).json()["images"]
    assert [(i["name"], i["caption"]) for i in two] == [("x_a.png", ""), ("y_a.png", "the second")]


@pytest.mark.parametrize("entries, words", [
    ({"../evil.png": png(8, 8)}, ("archive", "'../evil.png'", "escapes")),
    ({"/etc/evil.png": png(8, 8)}, ("archive", "escapes")),
    ({"ok/../../evil.png": png(8, 8)}, ("archive", "escapes")),
    ({f"i{k}.txt": b"c" for k in range(65)}, ("archive", "65 files", "at most 64")),
    ({"a.png": png(8, 8), "run.sh": b"rm -rf /"}, ("archive", "'run.sh'", "not an image")),
    ({"a.png": b"not an image"}, ("archive: a.png", "not a readable image")),
    ({"a.txt": b"caption only"}, ("archive", "no images")),
])
def test_zip_upload_refuses_bad_archives(server, entries, words):
    client, srv = server
    one_line_400(unpack(client, zipped(entries)), *words)
    assert srv.store.ids() == []  # nothing written


def test_zip_bomb_and_non_zip_refused(server):
    client, _ = server
    bomb = zipped({"big.png": b"\0" * (40 * 2**20)})  # 40 MiB of zeros compress about 1000:1
    assert len(bomb) < 2**20
    one_line_400(unpack(client, bomb), "archive", "'big.png'", "zip bomb")
    one_line_400(unpack(client, b"PK\x03\x04 not really"), "archive: not a readable ZIP")
    one_line_400(client.post("/api/unpack", files={"images": ("x.zip", b"", "application/zip")}), "archive")


def test_bucket_preview_is_the_data_plans_own(server, tmp_path):
    client, _ = server
    sizes = [(640, 480), (64, 64), (480, 640), (300, 1000), (1000, 990)]
    r = client.post("/api/buckets", json={"resolution": 64, "model": "tiny:flux",
                                          "sizes": [list(s) for s in sizes]})
    assert r.status_code == 200, r.text
    got = r.json()
    assert got["alignment"] == 16
    # the same images through the trainer's data plan (a real folder and the server's dataloader entry)
    folder = tmp_path / "imgs"
    folder.mkdir()
    for k, (w, h) in enumerate(sizes):
        Image.new("RGB", (w, h)).save(folder / f"img-{k}.png")
        (folder / f"img-{k}.txt").write_text("x")
    backend = tmp_path / "backend.json"
    backend.write_text(json.dumps([{"backend": "simple", "resolution": 64, "image_dir": str(folder)}]))
    plan = build_plan(load_backends(backend), 16)
    by_name = {s.image_path.name: s for s in plan.samples}
    for k, im in enumerate(got["images"]):
        s = by_name[f"img-{k}.png"]
        assert [s.width, s.height] == im["target"] and s.bucket == "{}x{}".format(*im["target"])
        assert list(s.crop.resize) == im["resize"] and list(s.crop.box) == im["box"]
    assert got["images"][0]["target"] == [80, 48] and got["images"][1]["target"] == [64, 64]
    assert got["images"][4]["bucket"] == got["images"][1]["bucket"] == 2  # one training size, one bucket
    assert got["buckets"][0] == [80, 48]
    no_model = client.post("/api/buckets", json={"resolution": 64, "sizes": [[640, 480]]}).json()
    assert no_model["images"][0]["target"] == [80, 48] and "no model" in no_model["note"]
    one_line_400(client.post("/api/buckets", json={"resolution": 10, "sizes": []}), "resolution")
    one_line_400(client.post("/api/buckets", json={"resolution": 64, "sizes": [[0, 5]]}), "sizes")
    one_line_400(client.post("/api/buckets", json={"resolution": 64, "sizes": [], "model": "tiny:nope"}), "tiny:nope")


def read_config(client, name: str, text: str):
    return client.post("/api/config", files={"config": (name, text.encode(), "application/octet-stream")})


def test_config_file_into_the_form(server, tmp_path):
    client, _ = server
    r = read_config(client, "mine.toml", 'pretrained_model_name_or_path = "tiny:flux"\nlora_rank = 8\n'
                    'validation_prompts = ["a cat", "a dog"]\nvae_enable_tiling = true\noutput_dir = "/somewhere"\n'
                    'data_backend_config = "mine.json"\n')
    assert r.status_code == 200, r.text
    got = r.json()
    assert got["settings"] == {"pretrained_model_name_or_path": "tiny:flux", "lora_rank": "8",
                               "validation_prompts": '["a cat", "a dog"]', "vae_enable_tiling": "true"}
    assert got["left_out"] == ["data_backend_config", "output_dir"]
    y = read_config(client, "c.yaml", "--lora-rank: 4\nlearning_rate: 1.0e-4\n").json()
    assert y["settings"] == {"lora_rank": "4", "learning_rate": "0.0001"}
    bad = '{"lora_rank": 4, "lora_rnak": 8, "data_backend_config": "d.json"}'
    msg = one_line_400(read_config(client, "mine.json", bad), "mine.json", "lora_rnak")
    (tmp_path / "mine.json").write_text(bad)
    with pytest.raises(GlanceError) as cli:  # the same line as `glancetune glance --config mine.json`
        load_config(tmp_path / "mine.json")
    assert msg == str(cli.value).replace(str(tmp_path / "mine.json"), "mine.json")
    one_line_400(read_config(client, "c.json", '{"lora_rank": 4,'), "c.json", "JSON syntax error at line 1")
    one_line_400(read_config(client, "c.exe", "x"), "config", "not a .json, .toml or .yaml")
    one_line_400(read_config(client, "c.yaml", "- 1\n- 2\n"), "c.yaml", "mapping")


def create(client, start=False, **extra):
    settings = {"pretrained_model_name_or_path": "tiny:flux", "max_train_steps": "5", "lora_rank": "4", **extra}
    r = client.post("/api/runs", data={"name": "my run", "captions": ["one", "two"], "resolution": "64",
                                       "settings": json.dumps(settings), "start": "1" if start else "0"},
                    files=[("images", ("a.png", ASSET.read_bytes(), "image/png")),
                           ("images", ("b.png", png(96, 64), "image/png"))])
    assert r.status_code == 200, r.text
    return r.json()["id"]


def test_config_download_and_duplicate(server):
    client, srv = server
    run_id = create(client, seed="7")
    r = client.get(f"/api/runs/{run_id}/config")
    assert r.status_code == 200 and r.content == srv.store.config_path(run_id).read_bytes()
    assert f'filename="{run_id}-glance.json"' in r.headers["content-disposition"]
    r = client.post(f"/api/runs/{run_id}/duplicate")
    assert r.status_code == 200, r.text
    copy = r.json()
    assert copy["id"] != run_id and copy["status"] == "draft" and copy["name"] == "my run (copy)"
    assert copy["plan"]["text"] == srv.store.read(run_id)["plan"]["text"].replace(run_id, copy["id"])
    old, new = (json.loads(srv.store.config_path(i).read_text()) for i in (run_id, copy["id"]))
    assert new["seed"] == 7 and new["output_dir"] == str(srv.store.output(copy["id"]))
    assert {k: v for k, v in old.items() if k not in ("output_dir", "data_backend_config")} == \
           {k: v for k, v in new.items() if k not in ("output_dir", "data_backend_config")}
    for name in ("image-001.png", "image-001.txt", "image-002.png", "image-002.txt"):
        assert (srv.store.dir(copy["id"]) / "data" / name).read_bytes() == \
               (srv.store.dir(run_id) / "data" / name).read_bytes()
    assert client.post("/api/runs/nope-1/duplicate").status_code == 404


def test_checkpoints_listed_and_zipped(server):
    client, srv = server
    run_id = create(client)
    out = srv.store.output(run_id)
    (out / "checkpoint-10" / "slow").mkdir(parents=True)
    (out / "checkpoint-10" / "slow" / "w.safetensors").write_bytes(b"x" * 1000)
    (out / "checkpoint-10" / "state.json").write_text("{}")
    (out / "checkpoint-20").mkdir()
    (out / "checkpoint-20" / "w").write_bytes(b"y" * 10)
    (out / ".checkpoint-30.tmp-123").mkdir()  # being written: not listed
    r = client.get(f"/api/runs/{run_id}/checkpoints").json()["checkpoints"]
    assert [(c["step"], c["bytes"]) for c in r] == [(20, 10), (10, 1002)]
    z = client.get(r[1]["url"])
    assert z.status_code == 200 and z.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(z.content)) as f:
        assert sorted(f.namelist()) == ["checkpoint-10/slow/w.safetensors", "checkpoint-10/state.json"]
        assert f.read("checkpoint-10/slow/w.safetensors") == b"x" * 1000
    for step in ("30", "..", "%2e%2e", "10%2f..", "-1", "abc"):
        assert client.get(f"/api/runs/{run_id}/checkpoints/{step}/download").status_code == 404, step


@pytest.mark.parametrize("run", ["..", "%2e%2e", "..%2f..%2fetc", "UPPER", "x" * 100])
def test_run_routes_refuse_traversal(server, run):
    client, srv = server
    for method, url in (("GET", "config"), ("POST", "duplicate"), ("GET", "checkpoints"),
                        ("GET", "checkpoints/10/download")):
        r = client.request(method, f"/api/runs/{run}/{url}")
        # ".." is resolved by the client to another route (/api/config: POST only, 405): never a run's file
        assert r.status_code in (404, 405) and "output_dir" not in r.text, (run, url, r.status_code)
    assert client.put(f"/api/runs/{run}/note", json={"note": "x"}).status_code in (404, 405)
    assert list(srv.store.root.iterdir()) == []


def test_note_and_queue_position(server):
    client, srv = server
    a, b = create(client), create(client)
    note = '<script>alert("x")</script> & more'
    r = client.put(f"/api/runs/{a}/note", json={"note": note})
    assert r.status_code == 200 and r.json()["note"] == note
    assert (srv.store.dir(a) / "note.txt").read_text() == note
    assert {x["id"]: x["note"] for x in client.get("/api/runs").json()} == {a: note, b: ""}
    page = client.get(f"/runs/{a}").text
    assert note not in page and "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; more" in page
    one_line_400(client.put(f"/api/runs/{a}/note", json={"note": "x" * 2001}), "note", "2001 characters", "2000")
    one_line_400(client.put(f"/api/runs/{a}/note", json={"text": "x"}), "note")
    assert (srv.store.dir(a) / "note.txt").read_text() == note  # a refused note changes nothing
    for run_id in (b, a):
        assert client.post(f"/api/runs/{run_id}/start").json()["status"] == "queued"
    runs = {x["id"]: x for x in client.get("/api/runs").json()}
    assert (runs[b]["queue"], runs[a]["queue"]) == (1, 2)
    assert client.get(f"/api/runs/{a}").json()["queue"] == 2
    client.post(f"/api/runs/{b}/stop")  # leaves the queue: the next one moves up
    assert client.get(f"/api/runs/{a}").json()["queue"] == 1 and client.get(f"/api/runs/{b}").json()["queue"] is None
