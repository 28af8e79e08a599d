"""Bad `generate` / `tiny` inputs: one line, exit 2, checked before any weights load; image formats and their
parameters; killed `tiny` writes; incomplete model folders; offline hub ids; docs/export.md's stock-diffusers
snippet."""
from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import PROMPT, run_err
from glancetune.cli import main
from glancetune.errors import GlanceError
from glancetune.export.files import read_record
from glancetune.sampling.images import read_parameters
from glancetune.sampling.sampler import GlanceSampler, check_request, resolve_spec

SRC = str(Path(__file__).resolve().parents[1] / "src")


@pytest.fixture
def no_load(monkeypatch):
    """Fail the test if any pipeline weights are loaded."""
    from glancetune.families.base import Family

    def refuse(*a, **k):
        raise AssertionError("weights were loaded before the bad argument was reported")

    monkeypatch.setattr(Family, "load_pipeline", refuse)


def gen(run, out, *extra):
    return ["generate", "--run", str(run), "--prompt", PROMPT, "--output", str(out), "--width", "64", "--height",
            "64", *extra]


# --- 1. device -------------------------------------------------------------------------------------------------
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


# --- 2. seed, size, guidance, prompt -----------------------------------------------------------------------------
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


# --- 3. output -------------------------------------------------------------------------------------------------
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


# --- 4. tiny ---------------------------------------------------------------------------------------------------
def test_tiny_onto_a_file(tmp_path, capsys):
    (tmp_path / "f").write_text("keep")
    err = run_err(capsys, ["tiny", "flux", str(tmp_path / "f")])
    assert f"tiny: {tmp_path / 'f'} is a file" in err and (tmp_path / "f").read_text() == "keep"
    err = run_err(capsys, ["tiny", "flux", str(tmp_path / "f" / "sub")])
    assert "tiny: cannot write" in err


def test_tiny_unknown_name_and_full_folder(tmp_path, capsys):
    err = run_err(capsys, ["tiny", "flux3", str(tmp_path / "t")])
    assert "unknown family 'flux3'" in err and "flux2-klein" in err and not (tmp_path / "t").exists()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    assert "already exists and is not empty" in run_err(capsys, ["tiny", "flux", str(tmp_path / "full")])


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
            + "tiny.BUILDERS['flux'] = lambda: FakePipe(60)\n"
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
    monkeypatch.setitem(tiny.BUILDERS, "flux", FakePipe)
    if home:
        monkeypatch.setenv("GLANCETUNE_HOME", str(home))
        assert tiny.resolve_tiny("tiny:flux") == target
    else:
        assert main(["tiny", "flux", str(target)]) == 0
    assert (target / "transformer" / "config.json").exists()
    assert sorted(p.name for p in target.parent.iterdir()) == sorted([target.name, live.name, other.name])


# --- 5. incomplete model folders ---------------------------------------------------------------------------------
WEIGHTS = Path("transformer") / "diffusion_pytorch_model.safetensors"


def broken_copy(tiny_flux, tmp_path, how) -> Path:
    d = tmp_path / "broken"
    shutil.copytree(tiny_flux, d)
    f = d / WEIGHTS
    data = f.read_bytes()
    if how == "deleted":
        f.unlink()
    elif how == "truncated":
        f.write_bytes(data[:len(data) // 2])
    elif how == "header":
        f.write_bytes(data[:10])
    elif how == "shard":
        f.unlink()
        (d / "transformer" / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(
            {"metadata": {}, "weight_map": {"a": "diffusion_pytorch_model-00001-of-00002.safetensors"}}))
    return d


@pytest.mark.parametrize("how, needle", [
    ("deleted", "transformer: no weights file"), ("truncated", "diffusion_pytorch_model.safetensors: truncated ("),
    ("header", "truncated or not a safetensors file"), ("shard", "00001-of-00002.safetensors: missing")])
def test_incomplete_model_folder(glance_run, tiny_flux, tmp_path, capsys, how, needle):
    d = broken_copy(tiny_flux, tmp_path, how)
    err = run_err(capsys, gen(glance_run, tmp_path / "o.png", "--model", str(d)))
    assert str(d) in err and needle in err and "download it again" in err
    assert not (tmp_path / "o.png").exists()


def test_incomplete_model_folder_in_training(tiny_flux, tmp_path, capsys):
    from conftest import write_configs

    d = broken_copy(tiny_flux, tmp_path, "truncated")
    cfg = write_configs(tmp_path / "job", str(d))
    assert "truncated (" in run_err(capsys, ["glance", "--config", str(cfg)])


def test_stock_loader_errors_wrapped_others_not(tiny_flux, tmp_path, monkeypatch):
    from glancetune.families import model_info

    d = broken_copy(tiny_flux, tmp_path, "none")
    (d / WEIGHTS).rename(d / "transformer" / "diffusion_pytorch_model.fp16.safetensors")  # a variant only
    fam = model_info(str(d)).family
    with pytest.raises(GlanceError, match="Error no file named diffusion_pytorch_model") as e:
        fam.load_pipeline(str(d), torch.float32)
    assert str(d) in str(e.value) and "\n" not in str(e.value)
    cls = fam.pipeline_class()

    def boom(*a, **k):
        raise OSError("disk on fire")

    monkeypatch.setattr(cls, "from_pretrained", boom)
    with pytest.raises(OSError, match="disk on fire"):
        fam.load_pipeline(tiny_flux, torch.float32)


# --- 6. hub ids that cannot be fetched ---------------------------------------------------------------------------
@pytest.mark.parametrize("cmd", ["generate", "schedule"])
def test_offline_hub_id_fails_fast(glance_run, tmp_path, capsys, no_load, cmd):
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    argv = (gen(glance_run, tmp_path / "o.png", "--model", "nobody/not-a-model") if cmd == "generate"
            else ["schedule", "--model", "nobody/not-a-model"])
    t0 = time.perf_counter()
    err = run_err(capsys, argv)
    assert time.perf_counter() - t0 < 5
    assert "nobody/not-a-model: not a local folder, and not downloaded" in err and "HF_HUB_OFFLINE" in err


def test_unreachable_hub_fails_fast(capsys, monkeypatch):
    from huggingface_hub import constants

    import glancetune.families as fams

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(fams, "_hub_reachable", lambda endpoint: False)
    t0 = time.perf_counter()
    err = run_err(capsys, ["schedule", "--model", "nobody/not-a-model"])
    assert time.perf_counter() - t0 < 5 and "is unreachable" in err and "nobody/not-a-model" in err


def test_offline_hub_id_in_load_pipeline():
    from glancetune.families.flux import Flux1

    t0 = time.perf_counter()
    with pytest.raises(GlanceError, match="^nobody/not-a-model: not downloaded"):
        Flux1().load_pipeline("nobody/not-a-model", torch.float32)
    assert time.perf_counter() - t0 < 30  # no retries (the imports are most of it)


@pytest.mark.parametrize("ref, needle", [("./no/such/model", "no such folder"), ("__FILE__", "a file, not")])
def test_local_looking_refs(capsys, ref, needle):
    ref = __file__ if ref == "__FILE__" else ref
    assert needle in run_err(capsys, ["schedule", "--model", ref])


# --- 7. one default size -----------------------------------------------------------------------------------------
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


# --- 8. the stock-diffusers snippet of docs/export.md -------------------------------------------------------------
def readme_snippet() -> str:
    """docs/export.md's "Reproducing our images with stock diffusers" code block, as written there."""
    readme = (Path(__file__).parents[1] / "docs" / "export.md").read_text(encoding="utf-8")
    section = readme.split("## Reproducing our images with stock diffusers", 1)[1]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


README_SNIPPET = readme_snippet()



def test_readme_snippet_equals_generate(glance_run, tiny_flux, tmp_path, monkeypatch):
    code = README_SNIPPET
    for old, new in (('"black-forest-labs/FLUX.1-dev"', repr(tiny_flux)), ('"output/glance"', repr(str(glance_run))),
                     ('"a fox in the snow"', repr(PROMPT)), ("seed = 0", "seed = 5")):
        assert code.count(old) == 1
        code = code.replace(old, new)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README snippet", "exec"), {})
    assert main(["generate", "--run", str(glance_run), "--prompt", PROMPT, "--seed", "5", "--output", "ours.png"]) == 0
    assert main(["generate", "--run", str(glance_run), "--prompt", PROMPT, "--seed", "5", "--output", "stock.png",
                 "--lora-load", "stock"]) == 0
    theirs = np.asarray(Image.open("fox.png"), dtype=np.int16)
    ours, stock = (np.asarray(Image.open(f), dtype=np.int16) for f in ("ours.png", "stock.png"))
    assert theirs.shape[1::-1] == tuple(read_record(glance_run / "slow")[0].resolution)
    assert np.array_equal(theirs, stock)  # exactly what `generate --lora-load stock` writes
    assert np.abs(theirs - ours).max() <= 1  # our loader: float reordering only (as test_glance)


def test_readme_ladder_only_recipe_equals_eval_ladder_column(glance_run, tiny_flux, tmp_path, monkeypatch):
    """docs/export.md's "ladder without LoRAs" instruction (the stock block without load_lora_weights, set_adapters
    and the callback) samples what `glancetune eval` calls base-L-ladder (the Glance sampler with the adapters off)."""
    from glancetune.sampling.compare import base_on_ladder

    lines = [ln for ln in README_SNIPPET.splitlines()
             if "load_lora_weights" not in ln and "set_adapters" not in ln and "def switch" not in ln
             and ln.strip() != "return {}"]
    code = "\n".join(lines).replace(",\n             callback_on_step_end=switch)", ")")
    assert "switch" not in code and "adapter" not in code
    for old, new in (('"black-forest-labs/FLUX.1-dev"', repr(tiny_flux)), ('"output/glance"', repr(str(glance_run))),
                     ('"a fox in the snow"', repr(PROMPT)), ("seed = 0", "seed = 5")):
        code = code.replace(old, new)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README ladder-only", "exec"), {})
    sampler = GlanceSampler.from_spec(resolve_spec(run=glance_run), device="cpu")
    w, h = sampler.size
    ladder = np.asarray(base_on_ladder(sampler, [PROMPT], 5, w, h)[0], dtype=np.int16)
    glance = np.asarray(sampler([PROMPT], seed=5)[0], dtype=np.int16)
    theirs = np.asarray(Image.open("fox.png"), dtype=np.int16)
    assert np.abs(theirs - ladder).max() <= 1  # 0 seen; float reordering at most
    assert np.abs(theirs - glance).max() > 1  # and it is not the Glance image


def test_quickstart_png_carries_every_parameter(tmp_path):
    assert main(["quickstart", "--dir", str(tmp_path / "qs"), "--steps", "2", "--resolution", "64"]) == 0
    info = read_parameters(tmp_path / "qs" / "glance.png")
    rec = read_record(tmp_path / "qs" / "output" / "glance" / "slow")[0]
    assert info["ladder"] == rec.ladder.to_dict() and info["base_model"] == rec.base_model
    assert info["size"] == list(rec.resolution) and info["guidance"] == rec.guidance
    assert info["sampler"] == "exact" and info["seed"] == 0 and info["prompt"]
