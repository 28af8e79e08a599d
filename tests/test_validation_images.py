"""Validation images during `glance` training (train/validate.py): the final validation image equals `glancetune
generate` run afterwards on the saved LoRAs (FLUX.1, FLUX.2 dev; true-CFG SD3, Qwen-Image, FLUX.2 klein;
within 1/255), validation leaves the LoRA
files byte-identical, files / PNG metadata / JSONL / TensorBoard, resume without repeating step 0, bad keys."""
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import run_err, write_configs
from glancetune.cli import main
from glancetune.config.schema import build_config
from glancetune.export.files import WEIGHT_NAME
from glancetune.sampling.images import read_parameters

PROMPT = "a blue square on grey"
RES = 32


def train(root: Path, family: str, steps=4, **extra) -> Path:
    """`family`: a tiny model name (flux, sd3, qwen_image, flux2-klein, ...)."""
    cfg = write_configs(root, f"tiny:{family}", resolution=RES, steps=steps, model_family=family.split("-")[0],
                        **extra)
    assert main(["glance", "--config", str(cfg)]) == 0
    return root / "output"


def pixels(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB")).astype(np.int16)


@pytest.fixture(scope="module")
def flux_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("val-flux")
    # LoRA dropout on: validation must sample in eval mode (as generate) and leave the dropout RNG streams alone
    return train(root, "flux", validation_prompt=PROMPT, validation_steps=2, validation_seed=7,
                 num_validation_images=2, validation_num_inference_steps=6, report_to="tensorboard",
                 lora_dropout=0.1, checkpointing_steps=2, learning_rate=0.05)  # a LoRA big enough to see


@pytest.mark.slow
@pytest.mark.parametrize("family,extra,gen", [
    ("flux", {}, []),
    # true CFG: SD3's default guidance (7.0) with a negative prompt, and an explicit guidance + size
    ("sd3", {"validation_negative_prompt": "blurry"}, ["--negative-prompt", "blurry"]),
    ("sd3", {"validation_guidance": 3.5, "validation_resolution": "48x32"},
     ["--guidance", "3.5", "--width", "48", "--height", "32"]),
    ("qwen_image", {}, []),  # true CFG with the family's negative prompt " " and its embedding mask
    ("flux2-klein", {}, []),  # true CFG, the pipeline's fixed "" negative prompt
    ("flux2-dev", {}, []),  # guidance embedding, Mistral prompt embeddings
])
def test_final_validation_image_equals_generate(flux_run, tmp_path, family, extra, gen):
    out = flux_run if family == "flux" and not extra else train(
        tmp_path, family, validation_prompt=PROMPT, validation_seed=7, validation_num_inference_steps=4, **extra)
    final = out / "validation" / "step-4" / "validation-7.png"
    target = tmp_path / "gen.png"
    assert main(["generate", "--run", str(out), "--prompt", PROMPT, "--seed", "7", "--output", str(target),
                 *gen]) == 0
    a, b = pixels(final), pixels(target)
    assert a.shape == b.shape
    assert np.abs(a - b).max() <= 1, np.abs(a - b).max()
    other = tmp_path / "other.png"  # negative control: another seed is another image
    assert main(["generate", "--run", str(out), "--prompt", PROMPT, "--seed", "8", "--output", str(other), *gen]) == 0
    assert np.abs(pixels(other) - b).max() > 8
    if "--negative-prompt" in gen:  # the negative prompt took part: the pipeline's own ("") gives another image
        plain = tmp_path / "plain.png"
        assert main(["generate", "--run", str(out), "--prompt", PROMPT, "--seed", "7", "--output", str(plain)]) == 0
        assert np.abs(pixels(plain) - a).max() > 8
    meta = read_parameters(final)
    assert meta["prompt"] == PROMPT and meta["seed"] == 7 and meta["step"] == 4
    assert meta["ladder"] == read_parameters(target)["ladder"]
    assert meta["base_model"] == read_parameters(target)["base_model"] == f"tiny:{family}"
    assert read_parameters(target)["step"] == 4  # generate's PNGs carry the LoRAs' training step too


@pytest.mark.slow
def test_step_image_equals_generate_on_that_checkpoint(flux_run, tmp_path):
    """Mid-run (transformer in training mode, LoRA dropout on): the step-2 image is generate's on checkpoint-2."""
    ck = flux_run / "checkpoint-2"
    target = tmp_path / "gen.png"
    assert main(["generate", "--slow", str(ck / "slow"), "--fast", str(ck / "fast"), "--prompt", PROMPT, "--seed", "8",
                 "--output", str(target)]) == 0
    assert np.abs(pixels(flux_run / "validation" / "step-2" / "validation-8.png") - pixels(target)).max() <= 1
    assert read_parameters(target)["step"] == 2  # a checkpoint's LoRAs record the step they were saved at


@pytest.mark.slow
def test_validation_leaves_loras_byte_identical(flux_run, tmp_path):
    plain = train(tmp_path, "flux", lora_dropout=0.1, learning_rate=0.05)
    for role in ("slow", "fast"):
        assert (plain / role / WEIGHT_NAME).read_bytes() == (flux_run / role / WEIGHT_NAME).read_bytes()
    assert not (plain / "validation").exists()


@pytest.mark.slow
def test_files_grid_metadata_log_and_tensorboard(flux_run):
    v = flux_run / "validation"
    assert sorted(p.name for p in v.iterdir()) == ["step-0", "step-2", "step-4"]  # 0, every 2, the end (no twin)
    assert sorted(p.name for p in (v / "step-0").iterdir()) == sorted(
        ["grid.png", "validation-7.png", "validation-8.png", "validation-7-base-6.png", "validation-8-base-6.png",
         "validation-7-base-ladder-10.png", "validation-8-base-ladder-10.png"])
    assert sorted(p.name for p in (v / "step-2").iterdir()) == ["grid.png", "validation-7.png", "validation-8.png"]
    base50, base10 = pixels(v / "step-0" / "validation-7-base-6.png"), pixels(v / "step-0" / "validation-7-base-ladder-10.png")
    assert np.abs(base50 - base10).max() > 0  # two different samplers
    with Image.open(v / "step-2" / "grid.png") as g:  # 3 columns of 32 px + padding, 2 rows
        assert g.width >= 3 * RES and g.height >= 2 * RES
    meta = read_parameters(v / "step-0" / "validation-8-base-6.png")
    assert meta["seed"] == 8 and meta["step"] == 0 and meta["image"] == "base-6"
    lines = [json.loads(x) for x in (flux_run / "train_log.jsonl").read_text().splitlines()]
    events = [x for x in lines if x.get("event") == "validation"]
    assert [e["step"] for e in events] == [0, 2, 4]
    assert events[1]["images"] == ["validation/step-2/validation-7.png", "validation/step-2/validation-8.png"]
    assert all((flux_run / p).is_file() for e in events for p in e["images"] + [e["grid"]])
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(flux_run / "logs"), size_guidance={"images": 0})
    acc.Reload()
    tags = acc.Tags()["images"]
    assert "validation/grid" in tags and "validation/validation-7" in tags
    assert [e.step for e in acc.Images("validation/grid")] == [0, 2, 4]


@pytest.mark.slow
def test_resume_does_not_repeat_step_zero(tmp_path):
    out = train(tmp_path, "flux", steps=6, validation_prompt=PROMPT, validation_steps=2, checkpointing_steps=2,
                validation_num_inference_steps=2)
    zero = {p.name: p.stat().st_mtime_ns for p in (out / "validation" / "step-0").iterdir()}
    before = (out / "slow" / WEIGHT_NAME).read_bytes()
    cfg = tmp_path / "config" / "glance.json"
    assert main(["glance", "--config", str(cfg)]) == 0  # resumes from checkpoint-4 (latest)
    assert {p.name: p.stat().st_mtime_ns for p in (out / "validation" / "step-0").iterdir()} == zero
    events = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in events if e.get("event") == "validation"] == [0, 2, 4, 6]
    assert (out / "slow" / WEIGHT_NAME).read_bytes() == before


@pytest.mark.slow
def test_prompt_library_and_names(tmp_path):
    lib = tmp_path / "library.json"
    lib.write_text(json.dumps({"cat photo": "a <subject> on a sofa", "dog": "a dog"}))
    out = train(tmp_path, "flux", steps=2, user_prompt_library=str(lib), validation_prompts=["a tree"],
                validation_num_inference_steps=2)
    names = sorted(p.name for p in (out / "validation" / "step-2").iterdir())
    assert names == ["cat_photo-0.png", "dog-0.png", "grid.png", "prompt-0-0.png"]
    assert read_parameters(out / "validation" / "step-2" / "cat_photo-0.png")["prompt"] == "a <subject> on a sofa"


def test_dry_run_describes_validation(tmp_path, capsys):
    cfg = write_configs(tmp_path, "tiny:flux", resolution=RES, steps=2, validation_prompt=PROMPT,
                        validation_resolution=64, num_validation_images=3)
    assert main(["glance", "--config", str(cfg), "--dry-run"]) == 0
    assert "validation: 1 prompt(s) (validation) x 3 seed(s) from 0 at 64x64, at step 0, every 100 steps" \
        in capsys.readouterr().out


@pytest.mark.slow
def test_disabled_and_train_command(tmp_path):
    out = train(tmp_path / "a", "flux", steps=2, validation_prompt=PROMPT, disable_validation=True)
    assert not (out / "validation").exists()
    cfg = write_configs(tmp_path / "b", "tiny:flux", resolution=RES, steps=2, validation_prompt=PROMPT,
                        flow_custom_timesteps="1000,500")
    assert main(["train", "--config", str(cfg)]) == 0  # one LoRA: a notice, no images
    assert not (tmp_path / "b" / "output" / "validation").exists()


@pytest.mark.parametrize("key,value,expect", [
    ("validation_resolution", "1024x", "validation_resolution"),
    ("validation_resolution", "512x512,768x768", "several resolutions"),
    ("validation_steps", 0, "validation_steps"),
    ("num_validation_images", 0, "num_validation_images"),
    ("validation_prompt", "  ", "validation_prompt: the prompt is empty"),
    ("validation_prompts", {"a": ""}, "prompt 'a' is empty"),
])
def test_bad_keys_are_named(key, value, expect):
    from glancetune.errors import GlanceError

    with pytest.raises(GlanceError) as e:
        build_config({"data_backend_config": "x.json", key: value}, "cfg.json")
    assert expect in str(e.value) and "\n" not in str(e.value)


def test_bad_library_and_size_fail_before_training(tmp_path, capsys):
    cfg = write_configs(tmp_path, "tiny:flux", resolution=RES, steps=2, user_prompt_library=str(tmp_path / "no.json"))
    err = run_err(capsys, ["glance", "--config", str(cfg)])
    assert "user_prompt_library" in err and "no.json" in err and "not found" in err
    (tmp_path / "bad.json").write_text('{"a": 3}')
    cfg = write_configs(tmp_path, "tiny:flux", resolution=RES, steps=2, user_prompt_library=str(tmp_path / "bad.json"))
    assert "prompt 'a' is empty or not text" in run_err(capsys, ["glance", "--config", str(cfg)])
    cfg = write_configs(tmp_path, "tiny:flux", resolution=RES, steps=2, validation_prompt="x",
                        validation_resolution="30x30")
    assert "validation_resolution: 30x30 must be multiples of" in run_err(capsys, ["glance", "--config", str(cfg)])
    assert not (tmp_path / "output").exists()


@pytest.mark.slow
def test_a_dropout_lora_samples_without_dropout_in_stock_diffusers(flux_run):
    """The saved adapter config says lora_dropout 0: stock load_lora_weights builds its layers from it (in
    training mode), so a LoRA trained with dropout would otherwise sample dropout noise."""
    import json

    import torch
    from diffusers import FluxPipeline
    from safetensors import safe_open

    with safe_open(str(flux_run / "slow" / WEIGHT_NAME), "pt") as f:
        assert json.loads(f.metadata()["lora_adapter_metadata"])["transformer.lora_dropout"] == 0.0
    from glancetune.families.tiny import resolve_tiny

    model = json.loads((flux_run / "glancetune_config.json").read_text())["record"]["base_model"]
    pipe = FluxPipeline.from_pretrained(resolve_tiny(model) if model.startswith("tiny:") else model)
    pipe.load_lora_weights(str(flux_run / "slow"))
    kw = dict(num_inference_steps=2, width=64, height=64, output_type="np", guidance_scale=1.0)
    a, b = (pipe(PROMPT, generator=torch.Generator().manual_seed(0), **kw).images[0] for _ in range(2))
    assert np.array_equal(a, b)


@pytest.mark.slow
def test_searched_ladder_column(tmp_path):
    """validation_ladder_file: step 0 adds the base model on that ladder (generate --ladder-file's image), later
    grids read it back as a fourth column; a bad file fails before training."""
    from glancetune.ladder import LadderFile

    ladder = LadderFile((1.0, 0.8, 0.55, 0.3, 0.1), "tiny:flux", "flux", RES, RES, 1.0).write(tmp_path / "l.json")
    out = train(tmp_path / "run", "flux", steps=2, validation_prompt=PROMPT, validation_seed=3,
                validation_num_inference_steps=4, validation_ladder_file=str(ladder))
    zero = out / "validation" / "step-0"
    assert (zero / "validation-3-base-searched-5.png").is_file()
    assert not (out / "validation" / "step-2" / "validation-3-base-searched-5.png").exists()
    lad = read_parameters(zero / "validation-3-base-searched-5.png")["ladder"]
    assert lad["slow"] + lad["fast"] == pytest.approx([1.0, 0.8, 0.55, 0.3, 0.1])
    gen = tmp_path / "gen.png"
    assert main(["generate", "--model", "tiny:flux", "--ladder-file", str(ladder), "--prompt", PROMPT, "--seed", "3",
                 "--output", str(gen)]) == 0
    assert np.abs(pixels(gen) - pixels(zero / "validation-3-base-searched-5.png")).max() <= 1
    with Image.open(out / "validation" / "step-2" / "grid.png") as g:
        assert g.width >= 4 * RES
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    cfg = write_configs(tmp_path / "b", "tiny:flux", resolution=RES, steps=1, validation_prompt=PROMPT,
                        validation_ladder_file=str(bad))
    assert main(["glance", "--config", str(cfg)]) == 2 and not (tmp_path / "b" / "output").exists()
