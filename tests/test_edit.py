"""Qwen-Image-Edit and Edit-Plus through the family spine: image/ + control/ data -> one glance job -> stock load ->
`generate --image` equal to the stock edit pipeline, with training conditioned exactly as inference.

Two test-only measures keep this offline and fast:
- the pipelines' control-image sizes (~1 MP) are lowered by patching the diffusers modules' sizing
  (`calculate_dimensions` / CONDITION_IMAGE_SIZE / VAE_IMAGE_SIZE) for this module; training and inference read
  the same module attributes, so both see the patched sizes;
- a Qwen2VLProcessor cannot be built under transformers 5 without torchvision (its video processor needs it): the
  processor is built here with video_processor=None while ProcessorMixin's class check accepts None, and handed to
  `load_pipeline` / `Job` / `GlanceSampler.from_spec` as `components={"processor": ...}` (tiny folders are saved
  without one where torchvision is missing; with torchvision they carry a stock processor and load as they are,
  checked once on a GPU machine, see docs/models.md "Edit models and torchvision").
"""
import functools
import json

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import make_image, run_err, spy_on
from glancetune.cli import main
from glancetune.config.schema import build_config, load_config
from glancetune.errors import GlanceError
from glancetune.export.files import WEIGHT_NAME
from glancetune.families import get_family, model_info
from glancetune.sampling.sampler import GlanceSampler, resolve_spec
from glancetune.train.job import Job

pytestmark = pytest.mark.slow

CAPTION = "make the gradient blue"
AREA = 96 * 96  # control-image area in this module instead of the pipelines' 1024*1024 / 384*384
ORIGINAL_CALCULATE_DIMENSIONS = []
VARIANTS = {  # family -> (config model_flavour exercising the SimpleTuner alias, pipeline class name)
    "qwen_image_edit": ("edit-v1", "QwenImageEditPipeline"),
    "qwen_image_edit_plus": ("edit-v2", "QwenImageEditPlusPipeline"),
}


@pytest.fixture(scope="module", autouse=True)
def small_control_sizes():
    import diffusers.pipelines.qwenimage.pipeline_qwenimage_edit as edit
    import diffusers.pipelines.qwenimage.pipeline_qwenimage_edit_plus as plus

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # speed only: these toy shapes run several times faster on one thread on a busy CPU
    with pytest.MonkeyPatch.context() as mp:
        orig = edit.calculate_dimensions
        ORIGINAL_CALCULATE_DIMENSIONS.append(orig)
        mp.setattr(edit, "calculate_dimensions", lambda area, ratio: orig(AREA, ratio))
        mp.setattr(plus, "CONDITION_IMAGE_SIZE", AREA)
        mp.setattr(plus, "VAE_IMAGE_SIZE", AREA)
        yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def processor():
    from transformers import Qwen2VLProcessor
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
    from transformers.processing_utils import ProcessorMixin

    from glancetune.families.tiny_parts import qwen2_tokenizer

    orig = ProcessorMixin.check_argument_for_proper_class
    with pytest.MonkeyPatch.context() as mp:  # TEST-ONLY: accept the missing video processor
        mp.setattr(ProcessorMixin, "check_argument_for_proper_class",
                   lambda self, name, arg: None if arg is None else orig(self, name, arg))
        return Qwen2VLProcessor(image_processor=Qwen2VLImageProcessorPil(), tokenizer=qwen2_tokenizer(),
                                video_processor=None)


def make_edit_dataset(root, n=1):
    """image/imgK.png + image/imgK.txt (64x64 targets) and control/imgK.jpg (96x64 controls: another aspect)."""
    (root / "image").mkdir(parents=True, exist_ok=True)
    (root / "control").mkdir(exist_ok=True)
    for k in range(n):
        make_image(root / "image" / f"img{k}.png", (64, 64), seed=k)
        (root / "image" / f"img{k}.txt").write_text(CAPTION)
        make_image(root / "control" / f"img{k}.jpg", (96, 64), seed=10 + k)
    return root


def edit_config(root, model, flavour, steps=4, **extra):
    data = root / "data"
    if not data.exists():
        make_edit_dataset(data)
    (root / "config").mkdir(parents=True, exist_ok=True)
    backend = root / "config" / "multidatabackend.json"
    backend.write_text(json.dumps([{"backend": "simple", "resolution": 64, "image_dir": str(data)}]))
    cfg = {"model_family": "qwen_image", "model_flavour": flavour, "pretrained_model_name_or_path": str(model),
           "data_backend_config": str(backend), "max_train_steps": steps, "lora_rank": 4,
           "output_dir": str(root / "output"), **extra}
    path = root / "config" / "glance.json"
    path.write_text(json.dumps(cfg))
    return path


def record(monkeypatch, cls_name, key="timestep"):
    import diffusers

    return spy_on(monkeypatch, getattr(diffusers, cls_name),
                  lambda *a, **k: k if key is None else k[key].detach().clone())


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def edit_run(request, tmp_path_factory, processor):
    name = request.param
    root = tmp_path_factory.mktemp(name)
    model = root / "model"
    assert main(["tiny", name, str(model)]) == 0
    cfg = edit_config(root, model, VARIANTS[name][0], timestep_sampling="round-robin")
    with pytest.MonkeyPatch.context() as mp:
        seen = record(mp, "QwenImageTransformer2DModel")
        job = Job(load_config(cfg), "glance", components={"processor": processor})
        assert job.plan.family.name == name
        job.run(quiet=True)
    return name, model, root / "output", torch.cat(seen), root / "data" / "control" / "img0.jpg"


def stock_pipe(name, model, processor):
    return get_family(name).pipeline_class().from_pretrained(str(model), processor=processor)


def control_image(path):
    return Image.open(path).convert("RGB")


def test_tiny_pipeline_reloads_and_needs_a_processor(edit_run, processor):
    name, model, _, _, _ = edit_run
    from glancetune.families.tiny import builders

    from glancetune.families.tiny_parts import qwen2_tokenizer, qwen2vl_processor

    index = json.loads((model / "model_index.json").read_text())
    assert index["_class_name"] == VARIANTS[name][1]
    built = builders()[name]().transformer.state_dict()
    fam = get_family(name)
    pipe = fam.load_pipeline(str(model), torch.float32, processor=processor)
    assert type(pipe).__name__ == VARIANTS[name][1] and pipe.processor is processor
    assert all(torch.equal(v, built[k]) for k, v in pipe.transformer.state_dict().items())
    if qwen2vl_processor(qwen2_tokenizer()) is None:  # no torchvision here: the folder has no processor
        assert index["processor"] == [None, None]
        with pytest.raises(GlanceError, match=f"{model}: the pipeline has no processor"):
            fam.load_pipeline(str(model), torch.float32)
    else:  # with torchvision the tiny folder carries a stock processor, like a hub folder
        assert index["processor"] == ["transformers", "Qwen2VLProcessor"]


def test_training_conditioning_equals_the_pipelines(edit_run, processor):
    """What the trainer feeds the transformer for a sample (prompt embedding with the control image, control
    latents appended, img_shapes) is bit-identical to what the stock pipeline feeds it at the training size."""
    name, model, _, _, control_path = edit_run
    fam = get_family(name)
    pipe = stock_pipe(name, model, processor)
    control = control_image(control_path)
    pixels = torch.rand(1, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        text = fam.encode_prompts(pipe, [CAPTION], "cpu", 512, control=control)
        x0, image = fam.encode_images(pipe, pixels, control=control)
    with pytest.MonkeyPatch.context() as mp:
        seen = record(mp, "QwenImageTransformer2DModel", key=None)
        pipe(image=control, prompt=CAPTION, width=64, height=64, num_inference_steps=2, output_type="latent",
             true_cfg_scale=1.0)
    kw = seen[0]
    n = x0.shape[1]
    assert n == 16 and image["control_latents"].shape[1] == 32  # 96x64 control -> 128x64 at AREA -> 8x4 tokens
    assert kw["img_shapes"] == image["img_shapes"] == [[(1, 4, 4), (1, 4, 8)]]
    assert torch.equal(kw["hidden_states"][:, n:], image["control_latents"])
    assert torch.equal(kw["encoder_hidden_states"], text["encoder_hidden_states"])
    mask = kw["encoder_hidden_states_mask"]
    assert mask is None and bool(text["encoder_hidden_states_mask"].all())  # pipeline drops an all-ones mask
    # the control really enters the prompt: another control image gives another embedding
    other = fam.encode_prompts(pipe, [CAPTION], "cpu", 512, control=control.transpose(Image.FLIP_LEFT_RIGHT))
    assert not torch.equal(other["encoder_hidden_states"], text["encoder_hidden_states"])


def test_control_sizing_matches_the_pipeline_at_full_size(edit_run, processor, monkeypatch):
    """Without this module's size patch: the sizes the family gives the control image (prompt image, VAE input)
    are the ones the stock pipeline's __call__ uses (recorded from its image processor; the call stops there)."""
    name, model, _, _, control_path = edit_run
    import diffusers.pipelines.qwenimage.pipeline_qwenimage_edit as edit
    import diffusers.pipelines.qwenimage.pipeline_qwenimage_edit_plus as plus

    monkeypatch.setattr(edit, "calculate_dimensions", ORIGINAL_CALCULATE_DIMENSIONS[0])
    monkeypatch.setattr(plus, "CONDITION_IMAGE_SIZE", 384 * 384)
    monkeypatch.setattr(plus, "VAE_IMAGE_SIZE", 1024 * 1024)
    fam = get_family(name)
    pipe = stock_pipe(name, model, processor)
    control = control_image(control_path)
    prompt_image, vae_images = fam.condition_images(pipe, control)
    seen = []

    class Stop(Exception):
        pass

    def preprocess(image, height, width, **kw):
        seen.append((height, width))
        raise Stop

    monkeypatch.setattr(pipe.image_processor, "resize", lambda image, height, width, **kw: (
        seen.append((height, width)), image.resize((width, height)))[1])
    monkeypatch.setattr(pipe.image_processor, "preprocess", preprocess)
    with pytest.raises(Stop):
        pipe(image=control, prompt=CAPTION, width=64, height=64, num_inference_steps=1)
    prompt_image = prompt_image[0] if isinstance(prompt_image, list) else prompt_image
    assert seen == [prompt_image.size[::-1], tuple(vae_images[0].shape[-2:])]
    assert seen == ([(832, 1248), (832, 1248)] if name == "qwen_image_edit" else [(320, 480), (832, 1248)])


def stock_edit(name, model, processor, run, control, seed):
    from conftest import stock_chain

    pipe = stock_pipe(name, model, processor)
    return pipe(image=control, prompt=CAPTION, width=64, height=64, generator=torch.Generator().manual_seed(seed),
                true_cfg_scale=4.0, negative_prompt=" ", output_type="np", **stock_chain(pipe, run)).images[0]


def test_generate_equals_stock_and_sees_trained_timesteps(edit_run, processor):
    name, model, run, trained, control_path = edit_run
    from conftest import run_ladder

    control = control_image(control_path)
    sampler = GlanceSampler.from_spec(resolve_spec(run=run), device="cpu", components={"processor": processor})
    assert sampler.guidance == 4.0  # the edit models' true CFG default
    with pytest.MonkeyPatch.context() as mp:
        seen = record(mp, "QwenImageTransformer2DModel")
        ours = sampler([CAPTION], seed=3, width=64, height=64, output_type="np", image=control)[0]
    per_step = torch.unique_consecutive(torch.stack([t[0] for t in seen]))
    assert len(seen) == 20  # true CFG in both phases: 2 passes x 10 steps
    expected = get_family(name).transformer_timestep(torch.tensor(run_ladder(run).sigmas), torch.float32)
    assert torch.equal(per_step, expected)
    assert set(trained.tolist()) == set(per_step.tolist())
    assert np.abs(ours - stock_edit(name, model, processor, run, control, 3)).max() <= 1 / 255


def test_stock_load_changes_output(edit_run, processor):
    name, model, run, _, control_path = edit_run
    pipe = stock_pipe(name, model, processor)
    kw = dict(image=control_image(control_path), prompt=CAPTION, num_inference_steps=2, width=64, height=64,
              output_type="np", true_cfg_scale=1.0)
    base = pipe(generator=torch.Generator().manual_seed(0), **kw).images[0]
    for role in ("slow", "fast"):
        pipe.load_lora_weights(str(run / role), adapter_name=role)
        pipe.set_adapters(role)
        out = pipe(generator=torch.Generator().manual_seed(0), **kw).images[0]
        assert np.abs(out - base).max() > 1e-4, role
        log = json.loads((run / role / "train_log.json").read_text())
        assert log["eval_loss_after"] < log["eval_loss_before"], role
    resolved = json.loads((run / "glancetune_config.json").read_text())
    assert resolved["record"]["model_family"] == name and resolved["controls"] == {"img0.png": "img0.jpg"}


def test_generate_cli_image(edit_run, processor, tmp_path, monkeypatch, capsys):
    """`generate --image`: the PNGs equal the sampler's images; two prompts run one call each (seed, seed+1);
    the two-call CFG chaining (--cfg-phases slow) also carries the control image."""
    name, model, run, _, control_path = edit_run
    fam = get_family(name)
    monkeypatch.setattr(type(fam), "load_pipeline",
                        functools.partialmethod(type(fam).load_pipeline, processor=processor))
    out = tmp_path / "e.png"
    assert main(["generate", "--run", str(run), "--prompt", CAPTION, "--prompt", "another edit", "--seed", "5",
                 "--image", str(control_path), "--output", str(out)]) == 0
    sampler = GlanceSampler.from_spec(resolve_spec(run=run), device="cpu")
    control = control_image(control_path)
    for k, prompt in enumerate((CAPTION, "another edit")):
        png = Image.open(tmp_path / f"e-{k}.png")
        assert json.loads(png.text["glancetune"])["image"] == str(control_path)
        ours = sampler([prompt], seed=5 + k, width=64, height=64, image=control)[0]
        assert np.array_equal(np.asarray(png), np.asarray(ours))
    one_call = sampler([CAPTION], seed=2, width=64, height=64, output_type="np", image=control, cfg_phases="none")
    sampler.guidance = None  # CFG off in both calls: the chained path must reproduce the single call
    chained = sampler([CAPTION], seed=2, width=64, height=64, output_type="np", image=control, cfg_phases="slow")
    assert np.abs(chained[0] - one_call[0]).max() <= 1 / 255


def test_generate_image_flag_checked_before_loading(edit_run, capsys, tmp_path):
    name, model, run, _, control_path = edit_run
    err = run_err(capsys, ["generate", "--run", str(run), "--prompt", "x", "--output", str(tmp_path / "o.png")])
    assert err == f"error: --image: {name} is an edit model; give the control image to edit (--image PATH)"
    err = run_err(capsys, ["generate", "--run", str(run), "--prompt", "x", "--image", str(tmp_path / "nope.png")])
    assert err == f"error: --image: {tmp_path / 'nope.png'}: file not found"
    err = run_err(capsys, ["generate", "--run", str(run), "--model", "tiny:qwen_image", "--prompt", "x",
                           "--image", str(control_path)])
    assert "--image: qwen_image is not an edit model" in err
    assert not (tmp_path / "o.png").exists()


def test_bad_edit_datasets(edit_run, tmp_path, capsys):
    name, model, _, _, _ = edit_run
    flavour = VARIANTS[name][0]
    cfg = edit_config(tmp_path / "a", model, flavour)
    (tmp_path / "a" / "data" / "control" / "img0.jpg").unlink()
    err = run_err(capsys, ["glance", "--config", str(cfg), "--dry-run"])
    assert err == f"error: {tmp_path / 'a' / 'data' / 'image' / 'img0.png'}: no control image control/img0.* " \
                  "(.png/.jpg/.jpeg/.webp)"
    cfg = edit_config(tmp_path / "b", model, flavour)
    make_image(tmp_path / "b" / "data" / "control" / "stray.png", (64, 64))
    assert "stray.png: control image without a target image" in run_err(capsys, ["glance", "--config", str(cfg)])
    cfg = edit_config(tmp_path / "c", model, flavour)
    (tmp_path / "c" / "data" / "image" / "img0.txt").unlink()
    assert "img0.png: no caption file img0.txt" in run_err(capsys, ["glance", "--config", str(cfg)])
    cfg = edit_config(tmp_path / "d", model, flavour)
    (tmp_path / "d" / "data" / "control").rename(tmp_path / "d" / "data" / "controls")
    err = run_err(capsys, ["glance", "--config", str(cfg)])
    assert "an edit dataset needs the subfolders image/ (targets + captions) and control/" in err
    assert "control/ is missing" in err
    cfg = edit_config(tmp_path / "e", "tiny:qwen_image", None)  # an edit dataset for a text-to-image model
    err = run_err(capsys, ["glance", "--config", str(cfg)])
    assert f"{tmp_path / 'e' / 'data'}: holds image/ and control/ (an edit dataset)" in err
    cfg = edit_config(tmp_path / "f", model, flavour)  # the official README's images/ works; both at once do not
    (tmp_path / "f" / "data" / "image").rename(tmp_path / "f" / "data" / "images")
    assert main(["glance", "--config", str(cfg), "--dry-run"]) == 0
    assert "1 edit pair(s) (target + control) at 64x64" in capsys.readouterr().out
    (tmp_path / "f" / "data" / "image").mkdir()
    assert "holds both image/ and images/" in run_err(capsys, ["glance", "--config", str(cfg)])
    for sub in "abcdef":
        assert not (tmp_path / sub / "output").exists()


def test_flavours_and_family_resolution(edit_run):
    name, model, _, _, _ = edit_run

    def ref(**kw):
        return build_config({"data_backend_config": "d", **kw}, "c")

    for flav, fam, hub in (("edit", "qwen_image_edit", "Qwen/Qwen-Image-Edit"),
                           ("edit-v1", "qwen_image_edit", "Qwen/Qwen-Image-Edit"),
                           ("edit-plus", "qwen_image_edit_plus", "Qwen/Qwen-Image-Edit-2509"),
                           ("edit-v2", "qwen_image_edit_plus", "Qwen/Qwen-Image-Edit-2509"),
                           ("edit-2511", "qwen_image_edit_plus", "Qwen/Qwen-Image-Edit-2511"),
                           ("v1.0", "qwen_image", "Qwen/Qwen-Image")):
        c = ref(model_family="qwen_image", model_flavour=flav)
        assert (c.family.name, c.model_ref) == (fam, hub), flav
    assert ref(model_family="qwen_image_edit_plus", model_flavour="2511").model_ref == "Qwen/Qwen-Image-Edit-2511"
    with pytest.raises(GlanceError, match="unknown flavour 'edit-v3' for qwen_image; valid: v1.0, edit, edit-v1"):
        ref(model_family="qwen_image", model_flavour="edit-v3").model_ref
    # model_family qwen_image without a flavour accepts an Edit folder (its pipeline class decides) ...
    assert model_info(str(model), "qwen_image").family.name == name
    # ... but a flavour that names the other edit model is a mismatch
    other = "qwen_image_edit" if name == "qwen_image_edit_plus" else "qwen_image_edit_plus"
    with pytest.raises(GlanceError, match=f"does not match model_family '{other}'"):
        model_info(str(model), other)


def test_simpletuner_conditioning_json_trains_the_same_loras(edit_run, processor, tmp_path):
    """A `local` image dataset linked by `conditioning_data` to a conditioning dataset is the same edit data as the
    image/ + control/ layout: the LoRA files are byte-identical."""
    name, model, run, _, _ = edit_run
    data = make_edit_dataset(tmp_path / "data")
    backend = tmp_path / "multidatabackend.json"
    backend.write_text(json.dumps([
        {"id": "targets", "type": "local", "instance_data_dir": str(data / "image"), "caption_strategy": "textfile",
         "resolution": 64, "resolution_type": "pixel_area", "conditioning_data": ["sources"]},
        {"id": "sources", "type": "local", "dataset_type": "conditioning", "instance_data_dir": str(data / "control"),
         "conditioning_type": "reference_loose", "resolution": 64, "resolution_type": "pixel_area"}]))
    cfg = edit_config(tmp_path, model, VARIANTS[name][0], timestep_sampling="round-robin",
                      data_backend_config=str(backend))
    job = Job(load_config(cfg), "glance", components={"processor": processor})
    assert [s.control_path for s in job.plan.samples] == [data / "control" / "img0.jpg"]
    job.run(quiet=True)
    for role in ("slow", "fast"):
        assert (tmp_path / "output" / role / "pytorch_lora_weights.safetensors").read_bytes() == \
            (run / role / "pytorch_lora_weights.safetensors").read_bytes(), role


@pytest.mark.parametrize("name,zero_cond_t", [(n, False) for n in sorted(VARIANTS)] + [("qwen_image_edit_plus", True)])
def test_tread_routes_the_target_tokens_and_passes_the_control(name, zero_cond_t, tmp_path, processor, monkeypatch):
    """TREAD on the edit models: a route keeping every token through the gather / rotary rows / scatter path gives
    the plain bytes; a real route hands its window half the target's tokens and every control token, and trains.
    zero_cond_t (Edit-2511's transformer: each token modulated by its image, `modulate_index`): the index follows
    the rows (a routed block would fail on mismatched lengths otherwise)."""
    from glancetune.engine import tread

    model = tmp_path / "model"
    assert main(["tiny", name, str(model)]) == 0
    if zero_cond_t:  # the tiny transformer as Edit-2511's (the flag adds no weights)
        config = model / "transformer" / "config.json"
        config.write_text(json.dumps({**json.loads(config.read_text()), "zero_cond_t": True}))
    route = {"routes": [{"selection_ratio": 0.5, "start_layer_idx": 0, "end_layer_idx": 0}]}

    def run(sub, **extra):
        cfg = edit_config(tmp_path / sub, model, VARIANTS[name][0], steps=2, checkpointing_steps=0, **extra)
        job = Job(load_config(cfg), "glance", components={"processor": processor})
        out = job.run(quiet=True)
        return {role: (out / role / WEIGHT_NAME).read_bytes() for role in ("slow", "fast")}, job

    plain, _ = run("plain")
    with monkeypatch.context() as m:
        m.setattr(tread.Tread, "ids", lambda self, r, n, device: torch.arange(n, device=device))
        assert run("all-kept", tread_config=route)[0] == plain
    seen, build = [], Job.build_trainer

    def hooked(self, plan, rt, transformer, *a, **k):
        trainer = build(self, plan, rt, transformer, *a, **k)
        transformer.transformer_blocks[0].register_forward_pre_hook(lambda mod, args, kw: seen.append((
            torch.is_grad_enabled(), (kw["hidden_states"] if "hidden_states" in kw else args[0]).shape[1])),
            with_kwargs=True)
        return trainer

    monkeypatch.setattr(Job, "build_trainer", hooked)
    routed, job = run("routed", tread_config=route)
    target = (64 // 16) ** 2  # the 64x64 target: VAE /8, 2x2 packing
    total = {n for g, n in seen if not g}  # unrouted eval forwards: target + control
    assert len(total) == 1 and (total := total.pop()) > target
    assert {n for g, n in seen if g} == {target // 2 + total - target}
    assert routed != plain
