"""`glancetune server` in a real browser: headless Chromium (Debian's `chromium`, driven by Playwright for Python)
against a real server process (`python -m glancetune server`). It fills the New run form from presets, sees a bad
value named at the top of the form and at its field (in view), sees the plan and the ladder plot, starts the run,
watches its phase label and the log following its newest line, sees the validation grids (labelled with their
step and prompt, enlarged in a lightbox that Esc closes and the arrow keys step through, two steps side by side)
and the loss chart's axes, downloads the LoRA pair, evaluates it (the eval table on the run page), generates two
images while the page says what the server is doing (their captions name their own prompt and seed, still there
after a reload; "reuse seed" fills the form; a bad ladder file is refused in one line), and checks every page at
390 px for sideways overflow.

Chromium missing is a failure, not a skip (CI installs it: .ci/run). GLANCETUNE_NO_BROWSER=1 skips this file on
a machine without a browser. GLANCETUNE_SCREENSHOTS=DIR also saves the pages' screenshots there (docs/ holds
the ones docs/server.md shows, at 1280 px and as NAME-390.png at 390 px).
"""
from __future__ import annotations

import json
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


def shot(page, tmp_path, name, full_page=False, anchor=None):
    """A screenshot at 1280 px wide, and one at 390 px (`NAME-390`), where the page must not scroll sideways
    (`anchor`: an element scrolled into view at each width)."""
    for width, suffix in ((1280, ""), (390, "-390")):
        page.set_viewport_size({"width": width, "height": 820})
        page.wait_for_timeout(150)
        if anchor:
            page.eval_on_selector(anchor, "e => e.scrollIntoView()")
        wide = page.evaluate("document.documentElement.scrollWidth")
        assert wide <= width, f"{name} at {width} px: the page is {wide} px wide"
        page.screenshot(path=str(tmp_path / f"{name}{suffix}.png"), full_page=full_page)
        if os.environ.get("GLANCETUNE_SCREENSHOTS"):
            shutil.copy(tmp_path / f"{name}{suffix}.png",
                        Path(os.environ["GLANCETUNE_SCREENSHOTS"]) / f"server-{name}{suffix}.png")
    page.set_viewport_size({"width": 1280, "height": 820})


def in_viewport(page, selector) -> bool:
    return page.eval_on_selector(selector, """e => { const r = e.getBoundingClientRect();
        return r.height > 0 && r.top >= 0 && r.bottom <= window.innerHeight; }""")


# On the run page: every phase label shown, with the step and ETA beside it, and whether the log box was at its
# end each time its text changed (it follows new lines unless the user scrolled up).
WATCH = """document.addEventListener("DOMContentLoaded", () => {
  if (document.body.dataset.page !== "run") return;
  window.seen = { phases: [], follow: [] };
  new MutationObserver(() => {
    const p = document.querySelector("#phase").textContent, last = window.seen.phases.at(-1);
    const row = [p, document.querySelector("#step").textContent, document.querySelector("#eta").textContent];
    if (p && (!last || last[0] !== p)) window.seen.phases.push(row);
    const log = document.querySelector("#log");
    if (log.textContent && log.dataset.user !== "up")
      window.seen.follow.push(log.scrollHeight <= log.clientHeight || log.scrollHeight - log.scrollTop - log.clientHeight < 2);
  }).observe(document.querySelector("main"), { subtree: true, childList: true, characterData: true });
});
document.addEventListener("DOMContentLoaded", () => {  // the Generate page: every progress line shown
  if (document.body.dataset.page !== "generate") return;
  window.progress = [];
  const busy = document.querySelector("#gen-busy");
  new MutationObserver(() => { if (window.progress.at(-1) !== busy.textContent) window.progress.push(busy.textContent); })
    .observe(busy, { subtree: true, childList: true, characterData: true });
});"""


def png_bytes(w: int, h: int) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (w, h), (30, 120, 200)).save(buf, "PNG")
    return buf.getvalue()


DROP = """([files]) => {
  const dt = new DataTransfer();
  for (const [name, b64, type] of files)
    dt.items.add(new File([Uint8Array.from(atob(b64), c => c.charCodeAt(0))], name, { type }));
  document.querySelector("#drop").dispatchEvent(new DragEvent("drop", { dataTransfer: dt, bubbles: true, cancelable: true }));
}"""


def check_new_run_data(browser, base):
    """New run's data in a page of its own: images and a .txt caption dropped (a caption box each, prefilled from
    the .txt), the bucket preview (the server's bucket code), a ZIP added (its caption prefilled, a typed caption
    kept), a config file loaded into the form and a bad one named at the top."""
    import base64
    import io

    from glancetune.server.uploads import bucket_preview

    page = browser.new_page(viewport={"width": 1280, "height": 820})
    page.goto(base + "/new")
    b64 = lambda data: base64.b64encode(data).decode()  # noqa: E731
    page.evaluate(DROP, [[["fox.png", b64(png_bytes(64, 64)), "image/png"],
                          ["wide.png", b64(png_bytes(96, 64)), "image/png"],
                          ["fox.txt", b64(b"a fox in the snow\n"), "text/plain"]]])
    page.wait_for_function("document.querySelectorAll('#captions textarea').length === 2", timeout=10_000)
    assert page.input_value("#f-caption-0") == "a fox in the snow" and page.input_value("#f-caption-1") == ""
    page.wait_for_function("document.querySelectorAll('#buckets tbody tr').length === 2", timeout=20_000)
    want = bucket_preview({"resolution": 1024, "sizes": [[64, 64], [96, 64]]})["images"]
    cells = page.eval_on_selector_all("#buckets tbody tr", "rows => rows.map(r => r.cells[2].textContent)")
    assert cells == ["{}×{}".format(*w["target"]) for w in want] and want[0]["target"] != want[1]["target"]
    page.fill("#f-caption-1", "a wide blue image")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("set/bird.png", png_bytes(64, 96))
        z.writestr("set/bird.txt", "a small bird")
    page.set_input_files("#f-zip", files=[{"name": "set.zip", "mimeType": "application/zip",
                                           "buffer": buf.getvalue()}])
    page.wait_for_function("document.querySelectorAll('#captions textarea').length === 3", timeout=20_000)
    assert [page.input_value(f"#f-caption-{k}") for k in range(3)] == [
        "a fox in the snow", "a wide blue image", "a small bird"]
    page.wait_for_function("document.querySelectorAll('#buckets tbody tr').length === 3", timeout=20_000)
    page.set_input_files("#f-config", files=[{"name": "mine.yaml", "mimeType": "text/yaml",
                                              "buffer": b"pretrained_model_name_or_path: tiny:flux\nlora_rank: 8\n"}])
    page.wait_for_function("document.querySelector('#f-lora_rank').value === '8'", timeout=10_000)
    assert page.input_value("#f-pretrained_model_name_or_path") == "tiny:flux"
    assert "mine.yaml" in page.inner_text("#preset-note")
    page.set_input_files("#f-config", files=[{"name": "bad.json", "mimeType": "application/json",
                                              "buffer": b'{"lora_rnak": 8}'}])
    page.wait_for_selector("#form-error:not([hidden])", timeout=10_000)
    assert "bad.json" in page.inner_text("#form-error") and "lora_rnak" in page.inner_text("#form-error")
    page.close()


def test_create_watch_generate_download(server, browser):
    base, tmp_path = server
    check_new_run_data(browser, base)
    page = browser.new_page(viewport={"width": 1280, "height": 820}, accept_downloads=True)
    page.add_init_script(WATCH)
    page.on("dialog", lambda d: d.accept())
    page.goto(base + "/new")
    # a preset fills the form (the tiny CPU smoke test); the 24 GB Qwen-Image one is examples/'s config
    page.click("#preset-qwen-image-24gb")
    assert page.input_value("#f-model_family") == "qwen_image" and page.input_value("#f-optimizer") == "adamw8bit"
    assert page.input_value("#f-pretrained_model_name_or_path") == "Qwen/Qwen-Image"
    assert '"optimizer": "adamw8bit"' in page.inner_text("#command")
    page.click("#preset-tiny-cpu")
    assert page.input_value("#f-pretrained_model_name_or_path") == "tiny:flux"
    assert page.input_value("#f-optimizer") == "adamw" and page.input_value("#f-resolution") == "64"
    assert page.input_value("#f-max_train_steps") == "20" and page.input_value("#f-validation_prompt") == "a red fox"
    page.fill("#f-name", "browser run")
    page.set_input_files("#f-images", str(ASSET))
    page.fill("#f-caption", "a small glance test image")
    assert page.locator("#thumbs img.upload-thumb").count() == 1
    command = page.inner_text("#command")  # the config file the form makes, and the command that runs it
    assert command.rstrip().endswith("glancetune glance --config config/glance.json")
    config = json.loads(command.split("# config/glance.json\n", 1)[1].split("\n# ", 1)[0])
    assert config == {"pretrained_model_name_or_path": "tiny:flux", "max_train_steps": 20, "lora_rank": 4,
                      "validation_prompt": "a red fox", "validation_steps": 10, "device": "cpu",
                      "data_backend_config": "config/multidatabackend.json", "output_dir": "output"}

    # a bad value: named at the top of the form and at its field (highlighted), and the field is in view
    page.fill("#f-lora_rank", "four")
    page.click("#plan-btn")
    page.wait_for_selector("#form-error:not([hidden])", timeout=60_000)
    assert "lora_rank" in page.inner_text("#form-error")
    assert page.locator(".field.invalid #f-lora_rank").count() == 1
    assert "lora_rank" in page.inner_text(".field.invalid .field-error")
    assert in_viewport(page, ".field.invalid .field-error") and in_viewport(page, "#f-lora_rank")
    page.fill("#f-lora_rank", "4")  # editing the named field clears the error
    assert page.is_hidden("#form-error") and page.locator(".field.invalid, .field-error").count() == 0
    page.evaluate("window.scrollTo(0, 0)")
    shot(page, tmp_path, "new-form")
    page.click("#plan-btn")
    page.wait_for_selector("#plan:not([hidden])", timeout=120_000)
    assert page.locator(".field.invalid").count() == 0
    assert "phase slow: 5 sigmas" in page.inner_text("#plan-text")
    assert page.locator("#ladder svg circle.slow").count() == 5
    assert page.locator("#ladder svg circle.fast").count() == 5
    shot(page, tmp_path, "new-run", anchor="#plan")

    page.click("#start-btn")
    page.wait_for_url("**/runs/browser-run-*", timeout=30_000)
    run_id = page.url.rsplit("/", 1)[1]
    page.wait_for_function("document.querySelector('#status').textContent === 'done'", timeout=240_000)
    seen = page.evaluate("window.seen")
    phases = [p for p, _, _ in seen["phases"]]
    # before the first step: a phase other than "training", at step 0 with no ETA; then training
    assert phases[0] in ("starting", "loading", "searching the ladder", "caching", "validating"), phases
    assert all(eta == "" for p, step, eta in seen["phases"] if step == "0"), seen["phases"]
    assert "training" in phases, phases
    assert seen["follow"] and all(seen["follow"]), seen["follow"]  # the log box stayed at its newest line
    assert page.evaluate("(l => l.scrollHeight > l.clientHeight)(document.querySelector('#log'))")
    assert page.inner_text("#step") == "20" and page.inner_text("#total") == "20"
    assert page.is_hidden("#phase") and page.inner_text("#eta") == ""
    page.wait_for_function("document.querySelectorAll('#validation figure.grid').length === 3", timeout=30_000)
    loaded = page.eval_on_selector_all("#validation img", "imgs => imgs.map(i => i.complete && i.naturalWidth)")
    assert len(loaded) == 3 and all(w > 0 for w in loaded)
    # the viewer: each grid labelled (step, prompt); a lightbox (Esc, arrows); two steps side by side
    page.wait_for_function("document.querySelectorAll('#validation figcaption .v-step').length === 3", timeout=30_000)
    label = page.inner_text("#validation figure.grid[data-step='10'] figcaption")
    assert [line for line in label.splitlines() if line.strip()] == ["step 10", '"a red fox" · seed 0'], label
    page.click("#validation figure.grid[data-step='20'] img")
    assert page.is_visible("#lightbox") and page.inner_text("#lightbox .v-step") == "step 20"
    page.wait_for_function("document.querySelector('#lightbox img').naturalWidth > 0", timeout=30_000)
    page.keyboard.press("ArrowLeft")
    assert page.inner_text("#lightbox .v-step") == "step 10" and "a red fox" in page.inner_text("#lightbox figcaption")
    page.keyboard.press("ArrowRight")
    page.keyboard.press("ArrowRight")  # past the newest: back to the first
    assert page.inner_text("#lightbox .v-step") == "step 0"
    page.keyboard.press("Escape")
    assert page.is_hidden("#lightbox")
    assert page.is_visible("#compare") and page.input_value("#cmp-a") == "0" and page.input_value("#cmp-b") == "2"
    page.select_option("#cmp-a", "1")
    assert [page.inner_text(f"#cmp-fig-{x} .v-step") for x in "ab"] == ["step 10", "step 20"]
    page.wait_for_function("[...document.querySelectorAll('#compare img')].every(i => i.naturalWidth > 0)",
                           timeout=30_000)
    assert page.locator("#loss polyline.loss-slow").count() == 1
    assert page.locator("#loss text.tick-x").count() >= 3 and page.locator("#loss text.tick-y").count() >= 2
    assert "wrote " in page.inner_text("#log")
    assert page.is_hidden("#stop-btn") and page.is_visible("#delete-btn")

    with page.expect_download() as dl:
        page.click("#dl-diffusers")
    path = tmp_path / "pair.zip"
    dl.value.save_as(path)
    names = sorted(zipfile.ZipFile(path).namelist())
    assert names == ["fast/pytorch_lora_weights.safetensors", "glancetune_config.json",
                     "slow/pytorch_lora_weights.safetensors"]
    assert zipfile.ZipFile(path).read("slow/pytorch_lora_weights.safetensors") == (
        tmp_path / "runs" / run_id / "output" / "slow" / "pytorch_lora_weights.safetensors").read_bytes()

    # eval: the user scrolls the log up (it no longer follows), the run is busy, the table appears on the page
    page.eval_on_selector("#log", "l => { l.dataset.user = 'up'; l.scrollTop = 0; }")
    page.fill("#e-prompts", "a red fox")
    page.click("#eval-btn")
    page.wait_for_function("document.querySelector('#status').textContent === 'evaluating'", timeout=30_000)
    assert page.is_hidden("#stop-btn") and page.is_hidden("#delete-btn") and page.is_visible("#cancel-eval-btn")
    page.wait_for_selector("#eval-table tbody tr[data-sampler='glance']", timeout=240_000)
    page.wait_for_function("document.querySelector('#status').textContent === 'done'", timeout=30_000)
    samplers = page.eval_on_selector_all("#eval-table tbody tr", "rows => rows.map(r => r.dataset.sampler)")
    assert samplers[0] == "base-50" and "glance" in samplers
    assert page.inner_text("#eval-table tr[data-sampler='base-50'] td:nth-child(4)") == "reference"
    page.wait_for_function("document.querySelector('#eval-grid').naturalWidth > 0", timeout=30_000)
    assert "eval: prompt-1 seed 0 done" in page.inner_text("#log")
    assert page.eval_on_selector("#log", "l => l.scrollTop") == 0  # scrolled up by the user: left there
    page.evaluate("window.scrollTo(0, 0)")
    shot(page, tmp_path, "run", full_page=True)

    page.goto(base + "/")
    page.wait_for_selector(f"tr[data-run='{run_id}'] td.status.done", timeout=30_000)
    page.wait_for_function(f"document.querySelector(\"tr[data-run='{run_id}'] td.thumb img\").naturalWidth > 0")
    shot(page, tmp_path, "runs")

    page.goto(base + f"/generate?run={run_id}")
    assert page.input_value("#g-run") == run_id
    page.fill("#g-prompts", "a red fox in the snow\na blue bird")
    page.fill("#g-seed", "7")
    page.click("#generate-btn")
    page.wait_for_function("document.querySelectorAll('#images figure.generated').length === 2", timeout=120_000)
    page.wait_for_function("document.querySelector('#images img').naturalWidth > 0", timeout=30_000)
    shown = page.evaluate("window.progress")  # the server's progress, then the result
    assert f"loading the pipeline of {run_id}…" in shown, shown
    assert shown[-1].startswith("done: 2 image(s) in "), shown

    def captions():
        return [page.inner_text(f"#images figure.generated:nth-of-type({k}) .caption").splitlines() for k in (1, 2)]

    assert captions() == [['prompt: "a red fox in the snow"', "seed: 7"], ['prompt: "a blue bird"', "seed: 8"]]
    assert len(list((tmp_path / "runs" / run_id / "generated").glob("gen-*.png"))) == 2
    page.reload()  # the images are the run's files: still there, with their own captions
    page.wait_for_function("document.querySelectorAll('#images figure.generated').length === 2", timeout=30_000)
    assert captions() == [['prompt: "a red fox in the snow"', "seed: 7"], ['prompt: "a blue bird"', "seed: 8"]]
    box = page.eval_on_selector("#images figure.generated", "f => f.getBoundingClientRect().right")
    page.click("#images figure.generated summary")
    params = page.eval_on_selector("#images figure.generated pre.params", "p => p.getBoundingClientRect().right")
    assert params <= box + 1  # the ladder's JSON wraps inside its own caption
    shot(page, tmp_path, "generate")
    second = "#images figure.generated:nth-of-type(2)"
    assert page.get_attribute(f"{second} a.download", "href") == page.get_attribute(f"{second} img", "src")
    with page.expect_download() as dl:
        page.click(f"{second} a.download")
    assert dl.value.suggested_filename.endswith("-1.png")
    page.click(f"{second} button.reuse")
    assert page.input_value("#g-prompts") == "a blue bird" and page.input_value("#g-seed") == "8"
    page.set_input_files("#g-ladder-file", files=[{"name": "bad.json", "mimeType": "application/json",
                                                   "buffer": b'{"format": "glancetune-ladder/1", "sigmas": [0.2, 0.9]}'}])
    page.wait_for_selector("#gen-error:not([hidden])", timeout=30_000)
    assert page.inner_text("#gen-error").startswith("ladder: bad.json: \"sigmas\" must be")
    assert page.eval_on_selector_all("#g-ladder option", "os => os.map(o => o.value)") == [""]
