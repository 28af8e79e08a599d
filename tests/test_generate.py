"""`glancetune generate`: its arguments checked before any weights load (device, seed, size, guidance, prompt,
output path; one line, exit 2), the image files it writes and the parameters they carry (PNG text, EXIF for JPEG and
WebP), the sampler's default size, LoRA folders without metadata or with unexpected keys."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import PROMPT, gen, run_err
from glancetune.cli import main
from glancetune.errors import GlanceError
from glancetune.export.files import read_metadata, read_record
from glancetune.sampling.images import read_parameters
from glancetune.sampling.sampler import GlanceSampler, check_request, resolve_spec


# --- device -----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("device", ["tpu", "cuda:x", "xla"])
def test_unknown_device(glance_run, tmp_path, capsys, no_load, device):
    err = run_err(capsys, gen(glance_run, tmp_path / "o.png", "--device", device))
    assert err.startswith("error: --device:") and repr(device) in err and "cpu" in err


@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_cuda_without_cuda(glance_run, tmp_path, capsys, no_load, monkeypatch, device):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    err = run_err(capsys, gen(glance_run, tmp_path / "o.png", "--device", device))
    assert err.startswith("error: --device:") and "no CUDA device" in err
    assert not (tmp_path / "o.png").exists()


def test_select_is_the_one_rule(monkeypatch, tiny_flux, tmp_path, capsys):
    from conftest import write_configs
    from glancetune.engine.runtime import select

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert select("cpu") == (torch.device("cpu"), "no") and select(None)[0].type == "cpu"
    with pytest.raises(GlanceError, match="^device: 'tpu'"):
        select("tpu")
    # training reports the same line (config key `device`)
    cfg = write_configs(tmp_path, tiny_flux)
    err = run_err(capsys, ["cache", "--config", str(cfg), "device=tpu"])
    assert "device: 'tpu' is not a device" in err


# --- seed, size, guidance, prompt -------------------------------------------------------------------------------------
@pytest.mark.parametrize("extra, needle", [
    (["--seed", "-1"], "--seed: -1 is outside"),
    (["--seed", str(2**64)], f"--seed: {2**64} is outside"),
    (["--seed", str(2**64 - 1), "--prompt", "second"], "uses seed+k"),
    (["--width", "0"], "--width: 0 is not a positive"),
    (["--height", "-64"], "--height: -64 is not a positive"),
    (["--width", "72"], "must be multiples of 16"),
    (["--guidance", "-1"], "--guidance: -1.0 must be"),
    (["--guidance", "nan"], "--guidance: nan must be"),
])
def test_bad_numbers_before_loading(glance_run, tmp_path, capsys, no_load, extra, needle):
    err = run_err(capsys, gen(glance_run, tmp_path / "o.png", *extra))
    assert needle in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("prompts, needle", [([""], "--prompt: prompt is empty"),
                                             ([PROMPT, "  "], "--prompt: prompt 2 of 2 is empty")])
def test_empty_prompt(glance_run, tmp_path, capsys, no_load, prompts, needle):
    argv = ["generate", "--run", str(glance_run), "--output", str(tmp_path / "o.png")]
    for p in prompts:
        argv += ["--prompt", p]
    assert needle in run_err(capsys, argv)


def test_seed_range_edges():
    check_request(["a"], 0, 64, 64, 0.0)
    check_request(["a"], 2**64 - 1, None, None, None)  # the largest seed torch.Generator takes
    torch.Generator().manual_seed(2**64 - 1)
    with pytest.raises(GlanceError):
        check_request(["a", "b"], 2**64 - 1, None, None, None)
    with pytest.raises(GlanceError):
        check_request(["a"], 0, 64, 64, math.inf)


def test_generate_bad_size_and_missing_dir(glance_run, tmp_path, capsys):
    err = run_err(capsys, ["generate", "--run", str(glance_run), "--prompt", "x", "--width", "100",
                           "--output", str(tmp_path / "o.png")])
    assert "--width/--height" in err and "16" in err
    err = run_err(capsys, ["generate", "--run", str(tmp_path / "nothing"), "--prompt", "x"])
    assert "nothing" in err and "no such folder" in err


# --- output -----------------------------------------------------------------------------------------------------------
def test_output_is_a_folder(glance_run, tmp_path, capsys, no_load):
    err = run_err(capsys, gen(glance_run, tmp_path))
    assert f"--output: {tmp_path} is a folder" in err


@pytest.mark.parametrize("name, needle", [("o.gif", "extension '.gif'"), ("o", "has no extension"),
                                          ("o.PNG.txt", "extension '.txt'")])
def test_output_extension_refused(glance_run, tmp_path, capsys, no_load, name, needle):
    err = run_err(capsys, gen(glance_run, tmp_path / name))
    assert needle in err and ".jpg" in err and not (tmp_path / name).exists()


def test_output_in_read_only_folder(glance_run, tmp_path, capsys, no_load):
    if os.geteuid() == 0:  # root writes through permission bits: use a folder no one can write in
        ro = Path("/sys")
    else:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
    err = run_err(capsys, gen(glance_run, ro / "sub" / "o.png"))
    assert f"--output: cannot write in {ro}" in err
    assert not (ro / "sub").exists()


def test_output_parent_is_a_file(glance_run, tmp_path, capsys, no_load):
    (tmp_path / "f").write_text("x")
    err = run_err(capsys, gen(glance_run, tmp_path / "f" / "o.png"))
    assert f"{tmp_path / 'f'} is a file" in err


def test_batch_name_taken_by_a_folder(glance_run, tmp_path, capsys, no_load):
    (tmp_path / "o-1.png").mkdir()
    err = run_err(capsys, gen(glance_run, tmp_path / "o.png", "--prompt", "a cat"))
    assert "o-1.png (image 1 of the batch) is a folder" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o-1.png"]


def test_png_carries_every_parameter_and_parents_are_created(glance_run, tmp_path, capsys, caplog):
    out = tmp_path / "new" / "deeper" / "o.png"
    assert main(gen(glance_run, out, "--seed", "3")) == 0
    assert "notice: created the folder" in caplog.text
    im = Image.open(out)
    assert im.format == "PNG" and im.size == (64, 64)
    info = json.loads(im.text["glancetune"])
    rec = read_record(glance_run / "slow")[0]
    assert info == read_parameters(out)
    assert info["ladder"] == rec.ladder.to_dict() and info["base_model"] == rec.base_model
    assert info["seed"] == 3 and info["prompt"] == PROMPT and info["size"] == [64, 64]
    assert info["sampler"] == "exact" and info["guidance"] == rec.guidance
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temp file left


@pytest.mark.parametrize("ext, fmt", [(".jpg", "JPEG"), (".jpeg", "JPEG"), (".webp", "WEBP")])
def test_extension_names_the_format(glance_run, tmp_path, ext, fmt):
    assert main(gen(glance_run, tmp_path / "ref.png", "--seed", "4")) == 0
    assert main(gen(glance_run, tmp_path / f"o{ext}", "--seed", "4")) == 0
    im = Image.open(tmp_path / f"o{ext}")
    assert im.format == fmt and "glancetune" not in getattr(im, "text", {})
    info = read_parameters(tmp_path / f"o{ext}")
    assert info == read_parameters(tmp_path / "ref.png")  # the same parameters, in the EXIF UserComment
    import io

    buf = io.BytesIO()  # the same image: the PNG's pixels encoded as this format gives the same pixels
    Image.open(tmp_path / "ref.png").save(buf, format=fmt, quality=95)
    assert np.array_equal(np.asarray(im), np.asarray(Image.open(buf)))


@pytest.mark.slow
def test_quickstart_png_carries_every_parameter(tmp_path, capsys, monkeypatch):
    assert main(["quickstart", "--dir", str(tmp_path / "qs"), "--steps", "2", "--resolution", "64"]) == 0
    # it ends with the commands to go on with, runnable as printed (the generate one here)
    import shlex

    line = next(x for x in capsys.readouterr().out.splitlines() if x.strip().startswith("glancetune generate"))
    monkeypatch.chdir(tmp_path)
    assert main(shlex.split(line)[1:]) == 0 and (tmp_path / "fox.png").is_file()
    info = read_parameters(tmp_path / "qs" / "glance.png")
    rec = read_record(tmp_path / "qs" / "output" / "glance" / "slow")[0]
    assert info["ladder"] == rec.ladder.to_dict() and info["base_model"] == rec.base_model
    assert info["size"] == list(rec.resolution) and info["guidance"] == rec.guidance
    assert info["sampler"] == "exact" and info["seed"] == 0 and info["prompt"]


# --- one default size -------------------------------------------------------------------------------------------------
def test_sampler_defaults_to_the_trained_size(glance_run):
    spec = resolve_spec(run=glance_run, width=64, height=96)
    sampler = GlanceSampler.from_spec(spec, device="cpu")
    assert sampler.size == (64, 96)
    default = sampler([PROMPT], seed=2, output_type="np")[0]
    assert default.shape == (96, 64, 3)
    assert np.array_equal(default, sampler([PROMPT], seed=2, width=64, height=96, output_type="np")[0])
    bare = GlanceSampler(sampler.pipe, sampler.info, sampler.ladder, sampler.guidance)
    with pytest.raises(GlanceError, match="--width/--height: give both"):
        bare([PROMPT])
    with pytest.raises(GlanceError, match="--seed"):
        sampler([PROMPT], seed=-5)


# --- LoRA folders -----------------------------------------------------------------------------------------------------
def test_generate_lora_without_metadata(glance_run, tiny_flux, tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    for role in ("slow", "fast"):
        (tmp_path / role).mkdir()
        sd = load_file(str(glance_run / role / "pytorch_lora_weights.safetensors"))
        save_file(sd, str(tmp_path / role / "pytorch_lora_weights.safetensors"))
    argv = ["generate", "--slow", str(tmp_path / "slow"), "--fast", str(tmp_path / "fast"), "--prompt", "x",
            "--output", str(tmp_path / "o.png")]
    err = run_err(capsys, argv)
    assert "no glancetune metadata" in err and "--slow-timesteps" in err and "--model" in err
    assert not (tmp_path / "o.png").exists()
    assert main(argv + ["--slow-timesteps", "1000,990,980,970,960", "--fast-timesteps", "900,700,500,300,60",
                        "--model", tiny_flux, "--width", "64", "--height", "64"]) == 0
    assert (tmp_path / "o.png").is_file()


def test_lora_with_unexpected_keys_is_named(glance_run, tmp_path, capsys):
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    run = tmp_path / "run"
    shutil.copytree(glance_run, run)
    f = run / "fast" / "pytorch_lora_weights.safetensors"
    sd = load_file(str(f))
    sd["transformer.transformer_blocks.0.attn.to_zz.lora_A.weight"] = torch.zeros(4, 32)
    save_file(sd, str(f), metadata=read_metadata(f))
    err = run_err(capsys, ["generate", "--run", str(run), "--prompt", "x", "--output", str(tmp_path / "o.png")])
    assert "fast" in err and "1 LoRA keys match no module" in err and "to_zz" in err
    assert not (tmp_path / "o.png").exists()
