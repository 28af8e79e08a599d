"""`glancetune server`'s guards: the token (every request, event streams included; the cookie handshake), the
Host / Origin checks of a loopback server, files only under names the server lists (traversal, absolute paths,
links out of the run: 404), uploads checked by decoding, the body size limit, and malformed requests answered
with a 4xx and one message while the server keeps running. No training process is started here."""
from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest
from fastapi.testclient import TestClient  # the [server] extra; the test extra installs it
from PIL import Image

from glancetune.cli import main
from glancetune.errors import GlanceError
from glancetune.server.app import create_app
from glancetune.server.security import server_token

BASE = "http://127.0.0.1:8001"
TOKEN = "s3cret-token-of-the-test"


def png(size=(32, 32), fmt="PNG") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(buf, format=fmt)
    return buf.getvalue()


def settings(**extra):
    return json.dumps({"pretrained_model_name_or_path": "tiny:flux", "max_train_steps": "2", **extra})


@pytest.fixture
def local(tmp_path):
    app, srv = create_app(tmp_path / "runs", hosts={"127.0.0.1:8001", "localhost:8001"}, max_body=2**20,
                          start_queue=False)
    return TestClient(app, base_url=BASE), srv


@pytest.fixture
def draft(local):
    client, srv = local
    r = client.post("/api/runs", data={"captions": "c", "resolution": "64", "settings": settings()},
                    files=[("images", ("a.png", png(), "image/png"))])
    assert r.status_code == 200, r.text
    return client, srv, r.json()["id"]


def assert_error(r, status, *words):
    assert r.status_code == status, r.text
    msg = r.json()["error"]
    assert "Traceback" not in r.text and "\n" not in msg
    for w in words:
        assert w in msg, msg


def test_token_on_every_request(tmp_path):
    app, srv = create_app(tmp_path / "runs", token=TOKEN, start_queue=False)
    c = TestClient(app, base_url="http://10.1.2.3:8001")
    for path in ("/", "/new", "/api/runs", "/api/events?once=1", "/static/app.js", "/runs/x/file/data/image-001.png"):
        assert_error(c.get(path), 401, "token required")
        assert_error(c.get(path, headers={"Authorization": "Bearer wrong-token-wrong-token"}), 401)
    assert_error(c.post("/api/runs", data={}), 401)
    ok = {"Authorization": f"Bearer {TOKEN}"}
    assert c.get("/api/runs", headers=ok).json() == []
    r = c.get("/api/events?once=1", headers=ok)
    assert r.status_code == 200 and r.text == "data: []\n\n"
    # the printed URL: ?token= once, answered with a cookie and the same page without the token
    r = c.get(f"/new?x=1&token={TOKEN}", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/new?x=1"
    assert "HttpOnly" in r.headers["set-cookie"] and "SameSite=Strict" in r.headers["set-cookie"]
    assert c.get("/new").status_code == 200  # the client kept the cookie
    assert c.get("/api/events?once=1").status_code == 200


def test_token_rules(capsys):
    assert server_token("127.0.0.1", None) is None and server_token("::1", None) is None
    generated = server_token("0.0.0.0", None)
    assert len(generated) >= 24 and generated != server_token("0.0.0.0", None)
    assert server_token("0.0.0.0", TOKEN) == TOKEN
    with pytest.raises(GlanceError, match="at least 16 characters"):
        server_token("0.0.0.0", "short")
    capsys.readouterr()
    assert main(["server", "--host", "0.0.0.0", "--token", "short"]) == 2  # refuses to start
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --token:") and "\n" not in err


def test_loopback_host_and_origin(local):
    client, _ = local
    assert client.get("/").status_code == 200
    assert_error(client.get("/", headers={"Host": "evil.example:8001"}), 400, "Host")
    r = client.post("/api/runs", data={}, headers={"Origin": "http://evil.example"})
    assert_error(r, 403, "cross-site")
    assert_error(client.post("/api/runs", data={}, headers={"Origin": BASE}), 400)  # ours: reaches the form check


def test_files_only_under_listed_names(draft, tmp_path):
    client, srv, run_id = draft
    d = srv.store.dir(run_id)
    assert client.get(f"/runs/{run_id}/file/data/image-001.png").content == (d / "data" / "image-001.png").read_bytes()
    (tmp_path / "secret.png").write_bytes(png())
    (d / "generated").mkdir()
    os.symlink(tmp_path / "secret.png", d / "generated" / "link.png")  # a link out of the run
    other = tmp_path / "runs" / "other"
    other.mkdir()
    for name in ("config/glance.json", "run.json", "data/image-001.txt", "../run.json", "data/../run.json",
                 "%2e%2e/%2e%2e/secret.png", "..%2f..%2fsecret.png", "/etc/passwd", "%2Fetc%2Fpasswd",
                 "generated/link.png", "data/image-999.png", "output/slow/pytorch_lora_weights.safetensors"):
        r = client.get(f"/runs/{run_id}/file/{name}")
        assert r.status_code == 404, (name, r.status_code)
    for run in ("..", "other", "%2e%2e", "UPPER", "x" * 100):
        assert client.get(f"/runs/{run}/file/data/image-001.png").status_code == 404, run
        assert client.get(f"/api/runs/{run}").status_code == 404
    assert srv.store.files(run_id) == ["data/image-001.png"]  # the link is not offered either
    from glancetune.server.runs import NotFound

    for name in ("../run.json", "data/../../other/x.png", str(d / "data" / "image-001.png"), "generated/link.png"):
        with pytest.raises(NotFound):
            srv.store.file(run_id, name)


def test_uploads_are_decoded(local):
    client, srv = local

    def post(files, **data):
        return client.post("/api/runs", data={"captions": "c", "resolution": "64", "settings": settings(), **data},
                           files=files)

    assert_error(post([("images", ("x.png", b"not an image at all", "image/png"))]), 400, "image 1 (x.png)",
                 "not a readable image")
    assert_error(post([("images", ("x.png", png()[:60], "image/png"))]), 400, "not a readable image")
    assert_error(post([("images", ("x.gif", png(fmt="GIF"), "image/gif"))]), 400, "GIF images are not accepted")
    assert_error(post([("images", ("x.png", b"", "image/png"))]), 400, "empty")
    assert_error(post([("images", ("big.png", b"\0" * (2**20 + 10), "image/png"))]), 413, "too large")

    def chunks():  # no Content-Length: counted while it streams
        yield b"--x\r\nContent-Disposition: form-data; name=\"images\"; filename=\"a.png\"\r\n\r\n"
        for _ in range(40):
            yield b"\0" * 2**15
    r = client.post("/api/runs", content=chunks(), headers={"Content-Type": "multipart/form-data; boundary=x"})
    assert "content-length" not in {k.lower() for k in r.request.headers}
    assert_error(r, 413, "too large")
    r = post([("images", ("photo.jpeg", png(fmt="JPEG"), "image/jpeg"))])
    assert r.status_code == 200, r.text
    assert [p.name for p in sorted((srv.store.dir(r.json()["id"]) / "data").iterdir())] == ["image-001.jpg",
                                                                                             "image-001.txt"]
    assert not [p for p in srv.store.root.iterdir() if p.name.startswith(".")]  # nothing half-written


def test_bad_requests_are_4xx_with_one_message(draft):
    client, srv, run_id = draft
    form = {"captions": "c", "resolution": "64"}
    image = [("images", ("a.png", png(), "image/png"))]
    cases = [
        (client.post("/api/runs", data={**form, "settings": settings(lora_rank="abc")}, files=image), 400,
         ["lora_rank"]),
        (client.post("/api/runs", data={**form, "settings": settings(lora_rnak="4")}, files=image), 400,
         ["unknown key 'lora_rnak'"]),
        (client.post("/api/runs", data={**form, "settings": settings(output_dir="/tmp/x")}, files=image), 400,
         ["output_dir is set by the server"]),
        (client.post("/api/runs", data={**form, "settings": "{not json"}, files=image), 400, ["settings"]),
        (client.post("/api/runs", data={**form, "settings": settings(model_family="nope")}, files=image), 400,
         ["nope"]),
        (client.post("/api/runs", data={**form, "resolution": "huge", "settings": settings()}, files=image), 400,
         ["resolution"]),
        (client.post("/api/runs", data={**form, "settings": settings()}), 400, ["upload image(s)"]),
        (client.post("/api/runs", data={**form, "captions": ["a", "b"], "settings": settings()}, files=image), 400,
         ["captions"]),
        (client.post("/api/runs", content=b"--x\r\ngarbage", headers={"Content-Type": "multipart/form-data; "
                                                                      "boundary=x"}), 400, []),
        (client.post("/api/generate", content=b"{oops", headers={"Content-Type": "application/json"}), 400,
         ["JSON"]),
        (client.post("/api/generate", json={"run": run_id, "prompts": ["a"], "seed": "x"}), 400, ["seed"]),
        (client.post("/api/generate", json={"run": run_id, "prompts": [""]}), 409, ["has not finished"]),
        (client.post("/api/generate", json={"run": "nope", "prompts": ["a"]}), 404, []),
        (client.post("/api/generate", json={"run": run_id, "prompts": ["a"], "steps": 3}), 400, ["steps"]),
        (client.post(f"/api/runs/{run_id}/stop"), 409, ["draft"]),
        (client.post(f"/api/runs/{run_id}/eval", json={"seeds": 1}), 409, ["only a finished run"]),
        (client.post(f"/api/runs/{run_id}/eval", json={"seeds": 0}), 400, ["seeds"]),
        (client.post(f"/api/runs/{run_id}/eval", json={"prompts": [3]}), 400, ["prompts"]),
        (client.get(f"/api/runs/{run_id}/download/weights"), 400, ["weights"]),
        (client.get(f"/api/runs/{run_id}/download/diffusers"), 409, ["not finished"]),
        (client.delete(f"/api/runs/{run_id}?confirm=other"), 400, ["confirm"]),
        (client.get("/api/nothing"), 404, []),
        (client.put("/api/runs"), 405, []),
    ]
    for r, status, words in cases:
        assert_error(r, status, *words)
    assert client.get("/").status_code == 200 and client.get(f"/api/runs/{run_id}").json()["status"] == "draft"
    assert len(client.get("/api/runs").json()) == 1  # no failed creation left a run behind


def test_security_headers_on_every_response(tmp_path, local):
    client, _ = local
    app, _ = create_app(tmp_path / "t", token=TOKEN, start_queue=False)
    remote = TestClient(app, base_url="http://10.1.2.3:8001")
    for r in (client.get("/"), client.get("/api/runs"), client.get("/nope"), client.get("/static/app.js"),
              remote.get("/api/runs"), remote.get(f"/new?token={TOKEN}", follow_redirects=False)):
        assert r.headers["x-frame-options"] == "DENY" and r.headers["x-content-type-options"] == "nosniff", r.url
        assert "frame-ancestors 'none'" in r.headers["content-security-policy"]


def test_origin_checked_on_token_servers_too(tmp_path):
    app, _ = create_app(tmp_path / "runs", token=TOKEN, start_queue=False)
    c = TestClient(app, base_url="http://10.1.2.3:8001")
    ok = {"Authorization": f"Bearer {TOKEN}"}
    assert_error(c.post("/api/runs", data={}, headers={**ok, "Origin": "http://evil.example"}), 403, "cross-site")
    r = c.post("/api/generate", json={"run": "x"}, headers={**ok, "Origin": "http://10.1.2.3:8001"})
    assert r.status_code != 403  # the server's own page


def test_absurd_json_is_a_400_not_a_500(local):
    client, _ = local
    headers = {"content-type": "application/json"}
    for body, words in (('{"run": "x", "prompts": ["p"], "seed": 1e400}', ("seed:", "is not an integer")),
                        ('{"run": "x", "prompts": ["p"], "seed": 1, "guidance": "nan"}', ("guidance:",)),
                        ("[" * 100000 + "]" * 100000, ("must be JSON",))):
        assert_error(client.post("/api/generate", content=body, headers=headers), 400, *words)


def test_too_many_files_names_the_limit(local):
    client, _ = local
    files = [("images", (f"a{i}.png", png(), "image/png")) for i in range(65)]
    r = client.post("/api/runs", data={"captions": "c", "resolution": "64", "settings": settings()}, files=files)
    assert_error(r, 400, "Too many files", "64")


# --- token servers: allowed folders, the token page, wrong-token limit, addresses -------------------------------------
def token_client(tmp_path, allow=None):
    app, srv = create_app(tmp_path / "runs", token=TOKEN, start_queue=False, allow_dirs=allow)
    return TestClient(app, base_url="http://10.1.2.3:8001", headers={"Authorization": f"Bearer {TOKEN}"}), srv, app


@pytest.mark.parametrize("key", ["cache_dir", "logging_dir"])
def test_token_server_keeps_run_folders_inside(tmp_path, key):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    client, srv, _ = token_client(tmp_path)
    data = {"captions": "c", "resolution": "64", "settings": settings(**{key: str(outside)})}
    r = client.post("/api/runs", data=data, files=[("images", ("a.png", png(), "image/png"))])
    assert_error(r, 400, f"{key}: {outside} is outside the folders this server may use", "--allow-dir")
    assert srv.store.ids() == [] and not [p for p in (tmp_path / "runs").iterdir()]  # nothing half-written
    if key == "logging_dir":  # relative to output_dir: climbing out of the runs folder is outside too
        data["settings"] = settings(logging_dir="../../../elsewhere")
        r = client.post("/api/runs", data=data, files=[("images", ("a.png", png(), "image/png"))])
        assert_error(r, 400, "logging_dir: ../../../elsewhere is outside")
    # a folder named at start is allowed; so is one inside the runs folder
    client, srv, _ = token_client(tmp_path, allow=[outside.resolve()])
    r = client.post("/api/runs", data={**data, "settings": settings(**{key: str(outside / "sub")})},
                    files=[("images", ("a.png", png(), "image/png"))])
    assert r.status_code == 200, r.text
    r = client.post("/api/runs", data={**data, "settings": settings(**{key: str(tmp_path / "runs" / "c")})},
                    files=[("images", ("a.png", png(), "image/png"))])
    assert r.status_code == 200, r.text


def test_token_server_data_folder_inside(tmp_path):
    outside = tmp_path / "data-outside"
    outside.mkdir()
    client, _, _ = token_client(tmp_path)
    (tmp_path / "runs" / "data").mkdir()
    os.symlink(outside, tmp_path / "runs" / "data" / "sneaky")  # a link inside that points out
    for folder in (str(outside), str(tmp_path / "runs" / "data" / "sneaky"), "/etc", str(tmp_path / "missing")):
        r = client.post("/api/runs", data={"folder": folder, "resolution": "64", "settings": settings()})
        assert_error(r, 400, f"folder: {folder} is outside")
    # no limit without a token (a loopback server is its user's own)
    _, srv2 = create_app(tmp_path / "runs2", start_queue=False)
    assert srv2.store.allowed is None


def test_allow_dir_must_be_a_folder(tmp_path, capsys):
    capsys.readouterr()
    assert main(["server", "--host", "127.0.0.1", "--port", "8123", "--runs-dir", str(tmp_path / "r"),
                 "--allow-dir", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: --allow-dir: {tmp_path / 'nope'} is not a folder"


def test_browser_gets_a_token_page_api_gets_json(tmp_path):
    app, _ = create_app(tmp_path / "runs", token=TOKEN, start_queue=False)
    c = TestClient(app, base_url="http://10.1.2.3:8001")
    r = c.get("/new?x=1", headers={"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"})
    assert r.status_code == 401 and r.headers["content-type"].startswith("text/html")
    assert '<form method="get" action="/new"' in r.text and 'name="token"' in r.text and TOKEN not in r.text
    assert_error(c.get("/api/runs", headers={"Accept": "application/json"}), 401, "token required")
    assert_error(c.get("/api/runs"), 401, "token required")
    assert_error(c.post("/new", headers={"Accept": "text/html"}), 401, "token required")  # not a page request
    # the form sends ?token=: the handshake sets the cookie
    r = c.get(f"/new?token={TOKEN}", headers={"Accept": "text/html"}, follow_redirects=False)
    assert r.status_code == 303 and "set-cookie" in r.headers


def test_wrong_tokens_are_rate_limited(tmp_path):
    from glancetune.server import security

    app, _ = create_app(tmp_path / "runs", token=TOKEN, start_queue=False)
    now = [1000.0]
    app.clock = lambda: now[0]
    c = TestClient(app, base_url="http://10.1.2.3:8001")
    ok = {"Authorization": f"Bearer {TOKEN}"}
    for k in range(security.MAX_WRONG - 1):
        assert_error(c.get("/api/runs", headers={"Authorization": f"Bearer wrong-{k:020d}"}), 401)
    for _ in range(5):  # the same wrong token again (a stale cookie) does not count again
        assert_error(c.get("/api/runs", headers={"Authorization": "Bearer wrong-00000000000000000000"}), 401)
    assert c.get("/api/runs", headers=ok).status_code == 200
    assert_error(c.get("/api/runs", headers={"Authorization": "Bearer the-last-wrong-one!"}), 401)
    r = c.get("/api/runs", headers=ok)  # locked: even the right token waits
    assert_error(r, 429, "too many wrong tokens")
    assert int(r.headers["retry-after"]) >= security.LOCK_S
    now[0] += security.LOCK_S + 1
    assert c.get("/api/runs", headers=ok).status_code == 200
    # tries further apart than the window do not add up
    for k in range(2 * security.MAX_WRONG):
        now[0] += security.WRONG_WINDOW_S / (security.MAX_WRONG - 2)
        assert_error(c.get("/api/runs", headers={"Authorization": f"Bearer spaced-{k:020d}"}), 401)
    assert c.get("/api/runs", headers=ok).status_code == 200


def test_start_line_names_reachable_addresses(monkeypatch):
    import socket
    from types import SimpleNamespace

    import psutil

    from glancetune.server.access import urls

    fake = {"lo": [SimpleNamespace(family=socket.AF_INET, address="127.0.0.1"),
                   SimpleNamespace(family=socket.AF_INET6, address="::1")],
            "eth0": [SimpleNamespace(family=socket.AF_INET, address="192.168.1.20"),
                     SimpleNamespace(family=socket.AF_INET6, address="fe80::1%eth0"),
                     SimpleNamespace(family=socket.AF_INET6, address="2001:db8::5")]}
    monkeypatch.setattr(psutil, "net_if_addrs", lambda: fake)
    assert urls("0.0.0.0", 8001) == ["http://192.168.1.20:8001/"]
    assert urls("::", 8001) == ["http://192.168.1.20:8001/", "http://[2001:db8::5]:8001/"]
    assert urls("10.0.0.7", 8001) == ["http://10.0.0.7:8001/"]
    monkeypatch.setattr(psutil, "net_if_addrs", lambda: {"lo": fake["lo"]})  # no network: loopback, not 0.0.0.0
    assert urls("0.0.0.0", 8001) == ["http://127.0.0.1:8001/"]
    # the command's start line uses them (uvicorn itself not started here)
    import uvicorn

    monkeypatch.setattr(psutil, "net_if_addrs", lambda: fake)
    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: None)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = io.StringIO()
    monkeypatch.setattr("sys.stdout", out)
    assert main(["server", "--host", "0.0.0.0", "--port", str(port), "--token", TOKEN, "--runs-dir",
                 str(Path(os.environ["GLANCETUNE_HOME"]) / "runs-start-line")]) == 0
    text = out.getvalue()
    assert f"glancetune server: http://192.168.1.20:{port}/?token={TOKEN}" in text and "0.0.0.0" not in text


def test_a_missing_page_is_a_page_for_a_browser_and_json_for_the_api(local):
    client, _ = local
    page = client.get("/runs/does-not-exist", headers={"Accept": "text/html,application/xhtml+xml"})
    assert page.status_code == 404 and page.headers["content-type"].startswith("text/html")
    assert '<a href="/">All runs</a>' in page.text and "X-Frame-Options" in page.headers  # headers on it too
    assert client.get("/no/such/page", headers={"Accept": "text/html"}).status_code == 404
    api = client.get("/api/runs/does-not-exist", headers={"Accept": "text/html"})
    assert api.status_code == 404 and api.json() == {"error": "not found"}
    assert client.get("/runs/does-not-exist").json() == {"error": "not found"}  # no Accept: html: the JSON line


def test_an_oversize_file_upload_is_413_on_every_upload_route(local):
    """A body over --max-upload-mb, streamed without Content-Length, found while the form is read: 413 on the ZIP,
    config-file and ladder uploads too (one shared reader; the ZIP and config routes answered 400 before)."""
    client, _ = local

    def chunks(field: str):
        yield f'--x\r\nContent-Disposition: form-data; name="{field}"; filename="a.zip"\r\n\r\n'.encode()
        for _ in range(40):
            yield b"\0" * 2**15

    for url, field in (("/api/unpack", "archive"), ("/api/config", "config")):
        r = client.post(url, content=chunks(field), headers={"Content-Type": "multipart/form-data; boundary=x"})
        assert r.status_code == 413 and "too large" in r.json()["error"], (url, r.status_code, r.text)
