"""Validation images and `glancetune eval` on the edit families (Qwen-Image-Edit, Edit-Plus), tiny models.

The final validation image equals `glancetune generate --image` on the saved LoRAs within 1/255, with the default
control image (the first training pair's) and with `validation_image`; the control image really takes part (another
control gives another image); `eval --image` end to end (its Glance image is generate's, transformer passes
counted); bad keys fail before any weights load. The test-only measures of test_edit.py apply (its fixtures are
imported: smaller control-image sizes in the diffusers modules, a processor built without torchvision).
"""
import functools
import json

import numpy as np
import pytest
from PIL import Image

from conftest import make_image, run_err, write_configs
from glancetune.plan.describe import describe
from glancetune.cli import main
from glancetune.config.schema import load_config
from glancetune.errors import GlanceError
from glancetune.families import get_family
from glancetune.sampling.images import read_parameters
from glancetune.train.job import Job
from test_edit import VARIANTS, edit_config, processor, small_control_sizes  # noqa: F401 (fixtures)

pytestmark = pytest.mark.slow

PROMPT = "turn the gradient green"  # not the caption: validation encodes it itself (with the control image)
STEPS = 4


def pixels(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB")).astype(np.int16)


@pytest.fixture
def with_processor(monkeypatch, processor):  # noqa: F811
    """The CLI loads the tiny Edit folders (saved without a processor here) with the test's processor."""
    for name in VARIANTS:
        cls = type(get_family(name))
        monkeypatch.setattr(cls, "load_pipeline", functools.partialmethod(cls.load_pipeline, processor=processor))


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def val_run(request, tmp_path_factory, processor):  # noqa: F811
    """Edit: the default control image (the training pair's); Edit-Plus: `validation_image`, another picture."""
    name = request.param
    root = tmp_path_factory.mktemp(f"val-{name}")
    model = root / "model"
    assert main(["tiny", name, str(model)]) == 0
    extra = {}
    if name == "qwen_image_edit_plus":
        other = root / "other.png"  # another aspect (other control token count) and content
        Image.new("RGB", (64, 96), (20, 220, 40)).save(other)
        extra["validation_image"] = str(other)
    cfg = edit_config(root, model, VARIANTS[name][0], steps=STEPS, validation_prompt=PROMPT, validation_seed=7,
                      validation_num_inference_steps=3, learning_rate=0.05, **extra)
    job = Job(load_config(cfg), "glance", components={"processor": processor})
    assert "control image " in describe(job.plan)
    job.run(quiet=True)
    control = extra.get("validation_image") or str(root / "data" / "control" / "img0.jpg")
    return name, root / "output", control, root / "data" / "control" / "img0.jpg", job


def cached_prompt(job, control) -> bool:
    """Whether the text cache holds PROMPT encoded with this control image (the key validation computes)."""
    from glancetune.data.cache import digest, file_digest
    from glancetune.engine.encode import default_caches, text_description

    from glancetune.engine.runtime import compute_dtype, select

    plan = job.plan
    dtype = compute_dtype(select(plan.cfg.device, plan.cfg.mixed_precision)[1])
    desc = text_description(plan.info, PROMPT, dtype, plan.max_sequence_length, file_digest(control), cfg=plan.cfg)
    return default_caches(plan.cfg)[0].get(digest(desc)) is not None


def generate(run, control, out, seed=7, prompt=PROMPT):
    assert main(["generate", "--run", str(run), "--prompt", prompt, "--seed", str(seed), "--image", str(control),
                 "--output", str(out)]) == 0
    return pixels(out)


def test_final_validation_image_equals_generate_image(val_run, tmp_path, with_processor):
    name, run, control, pair_control, job = val_run
    final = run / "validation" / f"step-{STEPS}" / "validation-7.png"
    ours = pixels(final)
    gen = generate(run, control, tmp_path / "gen.png")
    assert ours.shape == gen.shape == (64, 64, 3)
    assert np.abs(ours - gen).max() <= 1, np.abs(ours - gen).max()  # exact (0) on this CPU
    meta = read_parameters(final)
    assert meta["control_image"] == control and meta["prompt"] == PROMPT and meta["step"] == STEPS
    assert meta["image"] == "glance" and meta["guidance"] == 4.0  # the edit models' true CFG, as generate's
    assert np.abs(generate(run, control, tmp_path / "seed.png", seed=8) - gen).max() > 8  # another seed
    # the prompt was encoded with this control image (the text cache key holds its content) ...
    assert cached_prompt(job, control)
    if control != str(pair_control):  # ... and not with the training pair's (Edit-Plus: validation_image)
        assert not cached_prompt(job, pair_control)
        # the tiny transformer responds weakly to the control image (2/255 here), but it does respond
        assert np.abs(generate(run, pair_control, tmp_path / "pair.png") - ours).max() > 0


def test_step_zero_files_and_grid_with_control_column(val_run):
    name, run, control, *_ = val_run
    v = run / "validation"
    assert sorted(p.name for p in v.iterdir()) == ["step-0", f"step-{STEPS}"]
    assert sorted(p.name for p in (v / "step-0").iterdir()) == sorted(
        ["grid.png", "validation-7.png", "validation-7-base-3.png", "validation-7-base-ladder-10.png"])
    base, lad = (pixels(v / "step-0" / f"validation-7-{k}.png") for k in ("base-3", "base-ladder-10"))
    assert base.shape == lad.shape == (64, 64, 3) and np.abs(base - lad).max() > 0
    assert read_parameters(v / "step-0" / "validation-7-base-3.png")["control_image"] == control
    with Image.open(v / f"step-{STEPS}" / "grid.png") as g:  # control | base-3 | base-ladder-10 | Glance@4
        assert g.width >= 4 * 96 and g.height >= 64  # cells as wide as the 96x64 control
    lines = [json.loads(x) for x in (run / "train_log.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines if x.get("event") == "validation"] == [0, STEPS]


def test_eval_with_image_end_to_end(val_run, tmp_path, with_processor, capsys):
    name, run, control, *_ = val_run
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps({"green": PROMPT}))
    report = tmp_path / "report"
    argv = ["eval", "--run", str(run), "--prompts", str(prompts), "--seed", "7", "--steps-base", "3",
            "--image", control, "--output", str(report)]
    assert main(argv) == 0
    data = json.loads((report / "eval.json").read_text())
    names = ["base-3", "base-10", "base-10-ladder", "glance"]
    assert list(data["samplers"]) == names and data["family"] == name and data["control_image"] == control
    assert [data["samplers"][n]["passes_per_image"] for n in names] == [6, 20, 20, 20]  # true CFG: 2 per step
    glance = pixels(report / "images" / "green-7-glance.png")
    assert np.abs(glance - generate(run, control, tmp_path / "gen.png")).max() <= 1
    assert np.abs(glance - pixels(report / "images" / "green-7-base-10-ladder.png")).max() > 0
    meta = read_parameters(report / "images" / "green-7-base-3.png")
    assert meta["control_image"] == control and meta["image"] == "base-3"
    # the validation run's step-0 base images are eval's (same sampler, seed, size, control)
    zero = run / "validation" / "step-0"
    base = pixels(report / "images" / "green-7-base-3.png")
    assert np.abs(base - pixels(zero / "validation-7-base-3.png")).max() <= 1
    err = run_err(capsys, argv[:-4] + ["--output", str(tmp_path / "r2")])  # no --image
    assert err == f"error: --image: {name} is an edit model; give the control image to edit (--image PATH)"
    assert not (tmp_path / "r2").exists()


def test_bad_validation_image(tmp_path, processor, capsys):  # noqa: F811
    model = tmp_path / "model"
    assert main(["tiny", "qwen_image_edit", str(model)]) == 0
    cfg = edit_config(tmp_path / "a", model, "edit", steps=1, validation_prompt=PROMPT,
                      validation_image=str(tmp_path / "none.png"))
    with pytest.raises(GlanceError, match=f"^validation_image: {tmp_path / 'none.png'}: file not found$"):
        Job(load_config(cfg), "glance", components={"processor": processor}).run(quiet=True)
    (tmp_path / "text.png").write_text("not an image")
    cfg = edit_config(tmp_path / "b", model, "edit", steps=1, validation_prompt=PROMPT,
                      validation_image=str(tmp_path / "text.png"))
    with pytest.raises(GlanceError, match="text.png"):
        Job(load_config(cfg), "glance", components={"processor": processor}).run(quiet=True)
    assert not (tmp_path / "a" / "output").exists() and not (tmp_path / "b" / "output").exists()
    # a text-to-image model refuses the key (when validation is on), in one line before any weights load
    cfg = write_configs(tmp_path / "c", "tiny:flux", resolution=32, steps=1, validation_prompt=PROMPT,
                        validation_image=str(tmp_path / "text.png"))
    err = run_err(capsys, ["glance", "--config", str(cfg)])
    assert err == "error: validation_image: flux is not an edit model; the key is only for edit models " \
                  "(Qwen-Image-Edit / Edit-Plus)"
    assert not (tmp_path / "c" / "output").exists()
