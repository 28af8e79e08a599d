"""Writes killed with SIGKILL half-way: a `tiny` model folder, a cache entry, a generated image. Nothing that loads
as valid is left half-written, and the next run recovers (cleans the dead writer's temp files, recomputes the
entry, writes the image). Training runs killed and resumed: test_resume.py."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from conftest import PROMPT, write_configs
from glancetune.cli import main
from glancetune.errors import GlanceError

pytestmark = pytest.mark.slow

SRC = str(Path(__file__).resolve().parents[1] / "src")


# --- a `tiny` folder --------------------------------------------------------------------------------------------------
class FakePipe:
    """Writes a tiny pipeline's files slowly (model_index.json first, as save_pretrained does)."""

    def __init__(self, delay=0.0):
        self.delay = delay

    def save_pretrained(self, d):
        d = Path(d)
        (d / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
        (d / "started").write_text("")
        time.sleep(self.delay)
        (d / "transformer").mkdir()
        (d / "transformer" / "config.json").write_text("{}")


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def killed_write(target: Path, home: Path | None = None) -> None:
    """A `tiny` write (write_tiny, or resolve_tiny under `home`) killed with SIGKILL in the middle of saving."""
    import inspect

    code = ("import json, time\nfrom pathlib import Path\nfrom glancetune.families import tiny\n" + inspect.getsource(FakePipe)
            + "tiny.builders()['flux'] = lambda: FakePipe(60)\n"
            + ("tiny.resolve_tiny('tiny:flux')" if home else f"tiny.write_tiny('flux', {str(target)!r})"))
    env = {**os.environ, "PYTHONPATH": SRC, **({"GLANCETUNE_HOME": str(home)} if home else {})}
    proc = subprocess.Popen([sys.executable, "-c", code], env=env)
    try:
        for _ in range(600):
            if list(target.parent.glob(f".{target.name}.tmp-*/started")):
                break
            assert proc.poll() is None, "the writer ended early"
            time.sleep(0.05)
        else:
            raise AssertionError("the writer never started")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()


@pytest.mark.parametrize("where", ["beside", "home"])
def test_killed_tiny_write_leaves_nothing_loadable_and_is_cleaned(tmp_path, monkeypatch, capsys, where):
    from glancetune.families import tiny
    from glancetune.families import model_info

    home = tmp_path / "home" if where == "home" else None
    target = home / "tiny" / f"flux-v{tiny.TINY_VERSION}" if home else tmp_path / "models" / "t"
    killed_write(target, home)
    temps = list(target.parent.glob(f".{target.name}.tmp-*"))
    assert len(temps) == 1 and (temps[0] / "model_index.json").exists()  # killed half-way
    assert not target.exists()
    with pytest.raises(GlanceError):
        model_info(str(target))
    # the next write removes the killed writer's temp folder, not a live writer's nor another target's
    live = target.parent / f".{target.name}.tmp-{os.getpid()}-live"
    other = target.parent / f".{target.name}x.tmp-{dead_pid()}-other"
    live.mkdir()
    other.mkdir()
    monkeypatch.setitem(tiny.builders(), "flux", FakePipe)
    if home:
        monkeypatch.setenv("GLANCETUNE_HOME", str(home))
        assert tiny.resolve_tiny("tiny:flux") == target
    else:
        assert main(["tiny", "flux", str(target)]) == 0
    assert (target / "transformer" / "config.json").exists()
    assert sorted(p.name for p in target.parent.iterdir()) == sorted([target.name, live.name, other.name])


# --- cache entries and images (tests/kill_driver.py kills at the n-th replace) ----------------------------------------
DRIVER = Path(__file__).with_name("kill_driver.py")


def killed(n, *argv):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    r = subprocess.run([sys.executable, str(DRIVER), "kill-replace", str(n), "--", *argv], env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == -9, r.stderr[-2000:]


def test_cache_killed_mid_write_recovers(tiny_flux, tmp_path):
    cache = tmp_path / "cache"
    cfg = write_configs(tmp_path, tiny_flux, steps=2, cache_dir=str(cache))
    killed(2, "cache", "--config", str(cfg))  # the text entry was renamed in; the latent was written, not renamed
    entries = list(cache.rglob("*.safetensors"))
    assert len(entries) == 1 and load_file(str(entries[0]))  # only complete entries under their real names
    assert len(list(cache.rglob(".*.tmp"))) == 1  # the dead writer's temp file
    assert main(["cache", "--config", str(cfg)]) == 0  # recomputes the missing entry, removes the temp file
    assert len(list(cache.rglob("*.safetensors"))) == 2 and not list(cache.rglob(".*.tmp"))
    assert main(["glance", "--config", str(cfg)]) == 0


def test_generate_killed_mid_write_leaves_no_image(glance_run, tmp_path):
    out = tmp_path / "img.png"
    killed(1, "generate", "--run", str(glance_run), "--prompt", PROMPT, "--output", str(out))
    assert not out.exists()
    assert main(["generate", "--run", str(glance_run), "--prompt", PROMPT, "--output", str(out)]) == 0
    assert out.is_file() and not list(tmp_path.glob(".*.tmp"))
