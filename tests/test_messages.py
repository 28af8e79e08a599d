"""Messages that name the real cause: a missing --run folder, swapped or mixed LoRAs, eval's number arguments one
by one, --preset's names once each, a control character in a caption."""
from types import SimpleNamespace

import pytest

from conftest import make_dataset, run_err, write_configs
from glancetune.errors import GlanceError
from glancetune.sampling.sampler import check_pair


def test_run_folder_messages(tmp_path, capsys):
    base = ["generate", "--prompt", "x", "--output", str(tmp_path / "x.png")]
    assert "--run: " in run_err(capsys, [*base, "--run", str(tmp_path / "nope")])
    assert "no such folder" in run_err(capsys, [*base, "--run", str(tmp_path / "nope")])
    (tmp_path / "empty").mkdir()
    assert "holds no slow/ and fast/ LoRA folders" in run_err(capsys, [*base, "--run", str(tmp_path / "empty")])


def test_swapped_loras_are_named(glance_run, tmp_path, capsys):
    err = run_err(capsys, ["generate", "--slow", str(glance_run / "fast"), "--fast", str(glance_run / "slow"),
                           "--prompt", "x", "--output", str(tmp_path / "x.png")])
    assert "--slow/--fast: swapped" in err
    err = run_err(capsys, ["generate", "--slow", str(glance_run / "slow"), "--fast", str(glance_run / "slow"),
                           "--prompt", "x", "--output", str(tmp_path / "x.png")])
    assert "--fast: " in err and "holds a slow LoRA, not a fast one" in err


def test_a_family_mix_is_named():
    flux, sd3 = SimpleNamespace(model_family="flux"), SimpleNamespace(model_family="sd3")
    with pytest.raises(GlanceError, match="the slow LoRA .* is for flux, the fast one .* for sd3"):
        check_pair("a", "b", (flux, "slow"), (sd3, "fast"))
    check_pair("a", "b", (flux, "slow"), (flux, "fast"))  # a pair of one run passes


def test_eval_number_arguments_each_named(glance_run, tmp_path, capsys):
    base = ["eval", "--run", str(glance_run), "--output", str(tmp_path / "r")]
    assert "--seeds: 0 must be at least 1" in run_err(capsys, [*base, "--seeds", "0"])
    assert "--steps-base: 0 must be at least 1" in run_err(capsys, [*base, "--steps-base", "0"])
    assert "--grid-rows: -1 must be at least 0" in run_err(capsys, [*base, "--grid-rows", "-1"])


def test_preset_names_listed_once(glance_run, tmp_path, capsys):
    err = run_err(capsys, ["generate", "--run", str(glance_run), "--preset", "nope", "--prompt", "x",
                           "--output", str(tmp_path / "x.png")])
    names = err.split("valid: ")[1].split(", ")
    assert len(names) == len(set(names)) and "glance-qwen" in names


def test_a_control_character_in_a_caption_is_refused(tiny_flux, tmp_path, capsys):
    make_dataset(tmp_path / "data")
    (tmp_path / "data" / "img0.txt").write_bytes(b"a red\x00 gradient")
    cfg = write_configs(tmp_path, tiny_flux)
    err = run_err(capsys, ["glance", "--config", str(cfg), "--dry-run"])
    assert "img0.txt: caption holds a control character (U+0000 at character 5)" in err


def test_a_huge_image_is_one_notice_not_pillows_warning(tmp_path, monkeypatch, caplog):
    import warnings

    from PIL import Image

    from glancetune.data.images import open_image

    Image.new("RGB", (64, 64)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 3000)  # 4096 pixels: Pillow's warning band
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with caplog.at_level("INFO", logger="glancetune"):
            assert open_image(tmp_path / "big.png").size == (64, 64)
    assert "big.png: 64x64 (0 MP) is very large" in caplog.text
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # beyond twice the limit: Pillow refuses
    with pytest.raises(GlanceError, match="big.png: too many pixels to decode safely"):
        open_image(tmp_path / "big.png")


@pytest.mark.slow
def test_the_python_api_is_quiet(glance_run):
    """generate.md's Python block in a fresh interpreter writes nothing to stderr (no library notices or bars)."""
    import os
    import subprocess
    import sys

    code = ("from glancetune.sampling.sampler import GlanceSampler, resolve_spec\n"
            f"sampler = GlanceSampler.from_spec(resolve_spec(run={str(glance_run)!r}))\n"
            "images = sampler(['a fox in the snow'], seed=0)\nprint(images[0].size)\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and r.stderr == "", r.stderr
