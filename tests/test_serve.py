"""`glancetune serve` and `generate` through it: the same PNG bytes as in-process (cold and warm, batch and single,
another guidance in between), the same one-line errors (exit 2), the state file (written while it runs, removed
after; a stale one ignored, a gone server one notice and the in-process path), `--server URL` that does not answer
is one line. The server runs in a thread of the test process, on a free port."""
from __future__ import annotations

import json
import os
import socket
import threading
import time

import pytest
from conftest import PROMPT, run_err

from glancetune.cli import main
from glancetune.sampling import remote
from glancetune.server.serve import Serve


@pytest.fixture
def served():
    srv = Serve("127.0.0.1", 0)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert srv.server.started
    yield srv
    srv.stop()
    thread.join(30)


def gen(run, out, *extra):
    return ["generate", "--run", str(run), "--prompt", PROMPT, "--output", str(out), "--width", "64", "--height",
            "64", *extra]


def test_same_bytes_through_the_server(glance_run, tmp_path, served, capsys, monkeypatch):
    state = json.loads(remote.state_path().read_text())
    assert state == {"url": served.url, "token": None, "pid": os.getpid()}
    assert oct(remote.state_path().stat().st_mode & 0o777) == "0o600"
    calls = []
    monkeypatch.setattr(served.warm, "generate", lambda body, f=served.warm.generate: calls.append(body) or f(body))
    batch = ["--prompt", "a second prompt", "--seed", "7"]
    assert main(gen(glance_run, tmp_path / "local.png", *batch, "--no-server")) == 0
    assert not calls
    assert main(gen(glance_run, tmp_path / "cold.png", *batch)) == 0  # loads the run
    out = capsys.readouterr().out
    assert f"(on {served.url})" in out and len(calls) == 1
    assert main(gen(glance_run, tmp_path / "other.png", "--guidance", "2.5")) == 0  # warm, another guidance
    assert main(gen(glance_run, tmp_path / "warm.png", *batch)) == 0
    assert len(calls) == 3 and served.warm.key is not None
    for k in range(2):  # NAME-k.png of a batch of 2
        local = (tmp_path / f"local-{k}.png").read_bytes()
        assert (tmp_path / f"cold-{k}.png").read_bytes() == local
        assert (tmp_path / f"warm-{k}.png").read_bytes() == local
    assert (tmp_path / "other.png").read_bytes() != (tmp_path / "local-0.png").read_bytes()


def test_relative_paths_and_errors_read_as_in_process(glance_run, tmp_path, served, capsys, monkeypatch):
    monkeypatch.chdir(glance_run.parent)
    rel = glance_run.name
    assert main(gen(rel, "sub/out.png")) == 0  # read and written relative to the client's folder
    assert (glance_run.parent / "sub" / "out.png").is_file()
    for extra in (["--width", "72"], ["--seed", "-1"], ["--guidance", "nan"]):
        there = run_err(capsys, gen(rel, tmp_path / "x.png", *extra))
        here = run_err(capsys, gen(rel, tmp_path / "x.png", *extra, "--no-server"))
        assert there == here
    there = run_err(capsys, gen("nothing-here", tmp_path / "x.png"))
    assert there == run_err(capsys, gen("nothing-here", tmp_path / "x.png", "--no-server"))
    assert "--run: nothing-here: no such folder" in there
    assert not (tmp_path / "x.png").exists()


def test_bad_request_bodies_are_one_line(served):
    import urllib.error
    import urllib.request

    for body, needle in (({"prompt": ["a"], "steps": 3}, "steps: not an argument"),
                         ({"prompt": [["a"]]}, "prompt: expected a string"),
                         ({"prompt": ["a"], "seed": "x"}, "invalid int value"),
                         ({"prompt": ["a"], "compile": "yes"}, "compile: expected true or false"),
                         ([1, 2], "expected a JSON object")):
        req = urllib.request.Request(served.url + remote.API, json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req)
        assert e.value.code == 400
        msg = json.loads(e.value.read())["error"]
        assert needle in msg and "\n" not in msg


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_stale_state_falls_back(glance_run, tmp_path, capsys):
    import subprocess
    import sys

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    try:
        remote.write_state(f"http://127.0.0.1:{free_port()}", None, dead.pid)  # its process has exited
        assert main(gen(glance_run, tmp_path / "a.png")) == 0
        out = capsys.readouterr().out
        assert "not answering" not in out and "(on http" not in out and (tmp_path / "a.png").is_file()
        # a live process but nothing listening: one notice, then in-process
        remote.write_state(f"http://127.0.0.1:{free_port()}", None, os.getpid())
        assert main(gen(glance_run, tmp_path / "b.png")) == 0
        out = capsys.readouterr().out
        assert out.count("is not answering; sampling in this process") == 1
        assert (tmp_path / "b.png").read_bytes() == (tmp_path / "a.png").read_bytes()
    finally:
        remote.state_path().unlink(missing_ok=True)


def test_a_frozen_server_is_a_short_wait_then_in_process(glance_run, tmp_path, capsys, monkeypatch):
    """A server that takes the connection but never answers (a stopped process, a hung one): generate waits its
    health check's few seconds, says so in one line and samples in-process; before, it waited forever."""
    monkeypatch.setattr(remote, "HEALTH_S", 0.5)
    mute = socket.socket()
    mute.bind(("127.0.0.1", 0))
    mute.listen(8)  # connections complete in the backlog; nothing is ever read or answered
    try:
        remote.write_state(f"http://127.0.0.1:{mute.getsockname()[1]}", None, os.getpid())
        t0 = time.monotonic()
        assert main(gen(glance_run, tmp_path / "a.png")) == 0
        assert time.monotonic() - t0 < 60
        out = capsys.readouterr().out
        assert out.count("is not answering; sampling in this process") == 1 and (tmp_path / "a.png").is_file()
    finally:
        remote.state_path().unlink(missing_ok=True)
        mute.close()


def test_explicit_server_not_answering(glance_run, tmp_path, capsys, no_load):
    url = f"http://127.0.0.1:{free_port()}"
    err = run_err(capsys, gen(glance_run, tmp_path / "a.png", "--server", url))
    assert err.startswith(f"error: --server: {url} is not answering")


def test_state_file_removed_on_exit(tmp_path):
    srv = Serve("127.0.0.1", 0)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    while not srv.server.started:
        time.sleep(0.05)
    assert remote.running_server()["url"] == srv.url
    srv.stop()
    thread.join(30)
    assert not remote.state_path().exists() and remote.running_server() is None


def test_token_server_needs_the_token(tmp_path, capsys, no_load, glance_run, monkeypatch):
    srv = Serve("127.0.0.1", 0, token="a-token-of-the-serve-test", allow_dirs=[str(glance_run.parent)])
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    while not srv.server.started:
        time.sleep(0.05)
    try:
        remote.state_path().unlink()  # an explicit --server: the token comes from GLANCETUNE_TOKEN
        err = run_err(capsys, gen(glance_run, tmp_path / "a.png", "--server", srv.url, "--width", "72"))
        assert "wants a token" in err
        monkeypatch.setenv("GLANCETUNE_TOKEN", "a-token-of-the-serve-test")
        err = run_err(capsys, gen(glance_run, tmp_path / "a.png", "--server", srv.url, "--width", "72"))
        assert "--width/--height: 72x64 must be multiples of 16" in err
        # a token server reads only under --allow-dir (links followed)
        (tmp_path / "c.png").write_bytes(b"")
        err = run_err(capsys, gen(glance_run, tmp_path / "a.png", "--server", srv.url, "--image", str(tmp_path / "c.png")))
        assert f"--image: {tmp_path / 'c.png'} is outside the folders this server may read" in err
        (glance_run.parent / "out-link").symlink_to(tmp_path)
        err = run_err(capsys, ["generate", "--run", str(glance_run.parent / "out-link"), "--prompt", "x", "--server",
                               srv.url, "--output", str(tmp_path / "a.png")])
        assert "--run: " in err and "is outside the folders" in err
    finally:
        srv.stop()
        thread.join(30)
        (glance_run.parent / "out-link").unlink(missing_ok=True)


def test_serve_md_python_client_runs(glance_run, tmp_path, served, monkeypatch):
    """docs/serve.md's client block as written (only the run folder and the port replaced): the images equal
    generate's."""
    from pathlib import Path

    page = (Path(__file__).parents[1] / "docs" / "serve.md").read_text(encoding="utf-8")
    code = page.split("```python\n")[1].split("```")[0]
    code = code.replace('"output/glance"', repr(str(glance_run))).replace("http://127.0.0.1:8002", served.url)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "serve.md Python block", "exec"), {})
    assert main(["generate", "--run", str(glance_run), "--prompt", "a fox in the snow", "--prompt", "a fox at dusk",
                 "--seed", "0", "--output", str(tmp_path / "cli.png"), "--no-server"]) == 0
    for k in range(2):
        assert (tmp_path / f"fox-{k}.png").read_bytes() == (tmp_path / f"cli-{k}.png").read_bytes()


def test_openapi_describes_generate(served):
    import urllib.request

    with urllib.request.urlopen(served.url + "/openapi.json") as r:
        spec = json.load(r)
    body = spec["paths"][remote.API]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body["properties"]["prompt"]["type"] == "array" and "ladder_file" in body["properties"]
    assert "server" not in body["properties"]


def test_serve_process_removes_its_state_on_sigterm(tmp_path):
    """uvicorn re-raises the signal it caught when it stops: the state file must still be removed."""
    import signal
    import subprocess
    import sys

    env = {**os.environ, "GLANCETUNE_HOME": str(tmp_path)}
    proc = subprocess.Popen([sys.executable, "-m", "glancetune", "serve", "--port", "0"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    state = tmp_path / remote.STATE
    deadline = time.monotonic() + 60
    while not state.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert json.loads(state.read_text())["pid"] == proc.pid
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert not state.exists() and "glancetune serve: http://127.0.0.1:" in out
