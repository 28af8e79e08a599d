"""SIGKILL between writing a file under its temp name and renaming it (cache entries, images): nothing that loads
as valid is left half-written, and the next run recovers (recomputes the entry, writes the image)."""
import os
import subprocess
import sys
from pathlib import Path

from safetensors.torch import load_file

from conftest import PROMPT, write_configs
from glancetune.cli import main

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
