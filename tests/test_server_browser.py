"""`glancetune server` in a real browser: headless Chromium (Debian's `chromium`, driven by Playwright for Python)
against a real server process (`python -m glancetune server`). It creates a tiny-model run from the form, sees the
plan and the ladder plot, starts it, watches it finish, sees the validation grids, generates an image and
downloads the LoRA pair.

Chromium missing is a failure, not a skip (CI installs it: .ci/run). GLANCETUNE_NO_BROWSER=1 skips this file on
a machine without a browser. GLANCETUNE_SCREENSHOTS=DIR also saves the pages' screenshots there (docs/ holds
the ones docs/server.md shows).
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

if os.environ.get("GLANCETUNE_NO_BROWSER") == "1":
    pytest.skip("GLANCETUNE_NO_BROWSER=1: the browser test is switched off", allow_module_level=True)

ROOT = Path(__file__).parents[1]
ASSET = ROOT / "src" / "glancetune" / "assets" / "glance.png"
CHROMIUM = os.environ.get("GLANCETUNE_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(tmp_path):
    import httpx

    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    log = open(tmp_path / "server.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "glancetune", "server", "--port", str(port), "--runs-dir",
                             str(tmp_path / "runs")], env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    end = time.monotonic() + 120
    while True:
        try:
            if httpx.get(base + "/api/runs").status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert proc.poll() is None and time.monotonic() < end, (tmp_path / "server.log").read_text()
        time.sleep(0.2)
    yield base, tmp_path
    proc.terminate()
    proc.wait(30)
    log.close()


@pytest.fixture
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("playwright is not installed (pip install -e '.[test]'; or GLANCETUNE_NO_BROWSER=1 to skip)")
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"no Chromium at {CHROMIUM} (apt-get install chromium; or GLANCETUNE_NO_BROWSER=1 to skip)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield b
        b.close()


def shot(page, tmp_path, name):
    page.screenshot(path=str(tmp_path / f"{name}.png"))
    if os.environ.get("GLANCETUNE_SCREENSHOTS"):
        shutil.copy(tmp_path / f"{name}.png", Path(os.environ["GLANCETUNE_SCREENSHOTS"]) / f"server-{name}.png")


def test_create_watch_generate_download(server, browser):
    base, tmp_path = server
    page = browser.new_page(viewport={"width": 1100, "height": 820}, accept_downloads=True)
    page.on("dialog", lambda d: d.accept())
    page.goto(base + "/new")
    page.fill("#f-name", "browser run")
    page.set_input_files("#f-images", str(ASSET))
    page.fill("#f-caption", "a small glance test image")
    page.fill("#f-resolution", "64")
    for key, value in (("pretrained_model_name_or_path", "tiny:flux"), ("max_train_steps", "20"),
                       ("lora_rank", "4"), ("validation_prompt", "a red fox"), ("validation_steps", "10")):
        page.fill(f"#f-{key}", value)
    shot(page, tmp_path, "new-form")
    page.click("#plan-btn")
    page.wait_for_selector("#plan:not([hidden])", timeout=120_000)
    assert "phase slow: 5 sigmas" in page.inner_text("#plan-text")
    assert page.locator("#ladder svg circle.slow").count() == 5
    assert page.locator("#ladder svg circle.fast").count() == 5
    page.locator("#plan").scroll_into_view_if_needed()
    shot(page, tmp_path, "new-run")

    page.click("#start-btn")
    page.wait_for_url("**/runs/browser-run-*", timeout=30_000)
    run_id = page.url.rsplit("/", 1)[1]
    page.wait_for_function("document.querySelector('#status').textContent === 'done'", timeout=240_000)
    assert page.inner_text("#step") == "20" and page.inner_text("#total") == "20"
    page.wait_for_function("document.querySelectorAll('#validation figure.grid').length === 3", timeout=30_000)
    loaded = page.eval_on_selector_all("#validation img", "imgs => imgs.map(i => i.complete && i.naturalWidth)")
    assert len(loaded) == 3 and all(w > 0 for w in loaded)
    assert page.locator("#loss polyline.loss-slow").count() == 1
    assert "wrote " in page.inner_text("#log")
    shot(page, tmp_path, "run")

    with page.expect_download() as dl:
        page.click("#dl-diffusers")
    path = tmp_path / "pair.zip"
    dl.value.save_as(path)
    names = sorted(zipfile.ZipFile(path).namelist())
    assert names == ["fast/pytorch_lora_weights.safetensors", "glancetune_config.json",
                     "slow/pytorch_lora_weights.safetensors"]
    assert zipfile.ZipFile(path).read("slow/pytorch_lora_weights.safetensors") == (
        tmp_path / "runs" / run_id / "output" / "slow" / "pytorch_lora_weights.safetensors").read_bytes()

    page.goto(base + "/")
    page.wait_for_selector(f"tr[data-run='{run_id}'] td.status.done", timeout=30_000)
    shot(page, tmp_path, "runs")

    page.goto(base + f"/generate?run={run_id}")
    assert page.input_value("#g-run") == run_id
    page.fill("#g-prompts", "a red fox in the snow")
    page.fill("#g-seed", "7")
    page.click("#generate-btn")
    page.wait_for_selector("#images figure.generated img", timeout=120_000)
    page.wait_for_function("document.querySelector('#images img').naturalWidth > 0", timeout=30_000)
    caption = page.inner_text("#images figcaption")
    assert 'prompt: "a red fox in the snow"' in caption.splitlines() and "seed: 7" in caption.splitlines()
    assert len(list((tmp_path / "runs" / run_id / "generated").glob("gen-*.png"))) == 1
    shot(page, tmp_path, "generate")
