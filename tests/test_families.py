"""Every family and flavour through the same spine: tiny pipeline -> glance -> stock load -> exact generate."""
import json

import numpy as np
import pytest
import torch

from conftest import PROMPT, run_ladder, spy_on, stock_glance, write_configs
from glancetune.cli import main
from glancetune.export.files import read_metadata
from glancetune.families import model_info
from glancetune.sampling.sampler import GlanceSampler, resolve_spec
from glancetune.schedule import Ladder


# tiny model -> (model_family, transformer class name, stock pipeline kwargs that `generate` must equal)
FAMILIES = {
    "flux": ("flux", "FluxTransformer2DModel", {"guidance_scale": 1.0}),
    "sd3": ("sd3", "SD3Transformer2DModel", {"guidance_scale": 7.0}),
    "flux2-klein": ("flux2", "Flux2Transformer2DModel", {"guidance_scale": 4.0}),
    "flux2-dev": ("flux2", "Flux2Transformer2DModel", {"guidance_scale": 4.0}),  # the guidance embedding
    "qwen_image": ("qwen_image", "QwenImageTransformer2DModel", {"true_cfg_scale": 5.0, "negative_prompt": " "}),
}


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family_run(request, tmp_path_factory):
    """(tiny model name, model folder, glance output folder, timesteps the transformer saw while training)"""
    name = request.param
    root = tmp_path_factory.mktemp(name)
    model = root / "model"
    assert main(["tiny", name, str(model)]) == 0
    cfg = write_configs(root, str(model), steps=6, **{"--model_family": FAMILIES[name][0],
                                                       "--timestep_sampling": "round-robin"})
    import diffusers

    cls = getattr(diffusers, FAMILIES[name][1])
    with pytest.MonkeyPatch.context() as mp:
        seen = spy_on(mp, cls, lambda *a, **k: k["timestep"].detach().clone())
        assert main(["glance", "--config", str(cfg)]) == 0
    return name, str(model), root / "output", torch.cat(seen)


ladder_of = run_ladder


def stock(name, model, run, seed):
    return stock_glance(FAMILIES[name][0], model, run, seed, 128, 128, **FAMILIES[name][2])


def adapter(model):
    """The family adapter for this folder's pipeline class (FLUX.2: klein or dev)."""
    return model_info(model).family


@pytest.mark.slow
def test_generate_equals_stock_and_sees_trained_timesteps(family_run, spy_forward):
    name, model, run, trained = family_run
    import diffusers

    cls = getattr(diffusers, FAMILIES[name][1])
    seen = spy_forward(cls, lambda *a, **k: k["timestep"].detach().clone())
    ours = GlanceSampler.from_spec(resolve_spec(run=run), device="cpu")([PROMPT], seed=3, width=128, height=128,
                                                                        output_type="np")[0]
    per_step = torch.unique_consecutive(torch.stack([t[0] for t in seen]))  # CFG may call twice per step
    assert all(torch.equal(t, t[:1].expand_as(t)) for t in seen)
    fam = adapter(model)
    assert fam.name == FAMILIES[name][0]
    assert torch.equal(per_step, fam.transformer_timestep(torch.tensor(ladder_of(run).sigmas), torch.float32))
    assert set(trained.tolist()) == set(per_step.tolist())
    seen.restore()
    assert np.abs(ours - stock(name, model, run, 3)).max() <= 1 / 255


@pytest.mark.slow
def test_stock_load_changes_output(family_run):
    name, model, run, _ = family_run
    pipe = adapter(model).pipeline_class().from_pretrained(model)
    kw = dict(num_inference_steps=2, width=128, height=128, output_type="np")
    base = pipe(prompt=PROMPT, generator=torch.Generator().manual_seed(0), **kw).images[0]
    for role in ("slow", "fast"):
        pipe.load_lora_weights(str(run / role), adapter_name=role)
        pipe.set_adapters(role)
        out = pipe(prompt=PROMPT, generator=torch.Generator().manual_seed(0), **kw).images[0]
        assert np.abs(out - base).max() > 1e-4, role
        log = json.loads((run / role / "train_log.json").read_text())
        assert log["eval_loss_after"] < log["eval_loss_before"], role


@pytest.mark.slow
def test_ladder_is_the_models_own_schedule(family_run):
    """Brute force: run the stock scheduler exactly as the stock pipeline would for a 50-step call."""
    name, model, run, _ = family_run
    from diffusers import FlowMatchEulerDiscreteScheduler

    info = model_info(model)
    sched = FlowMatchEulerDiscreteScheduler.from_config(info.scheduler_config)
    pipe = adapter(model).pipeline_class().from_pretrained(model, scheduler=sched)
    pipe(prompt=PROMPT, num_inference_steps=50, width=128, height=128, output_type="latent",
         callback_on_step_end=lambda p, i, t, kw: (setattr(p, "_interrupt", True), {})[1])
    full = sched.sigmas[:-1].tolist()
    lad = ladder_of(run)
    assert list(lad.slow) == [full[i] for i in (0, 2, 4, 6, 8)]
    assert list(lad.fast) == [full[i] for i in (10, 20, 30, 40, 49)]


@pytest.mark.slow
def test_cfg_phases(family_run, spy_forward):
    """Per-phase CFG: the two-call chaining is exact, and the pass counts are what `nfe` reports."""
    name, model, run, _ = family_run
    sampler = GlanceSampler.from_spec(resolve_spec(run=run), device="cpu")
    kw = dict(seed=2, width=128, height=128, output_type="np")
    if not sampler.family.true_cfg:
        with pytest.raises(Exception, match=f"--cfg-phases: {FAMILIES[name][0]} uses a guidance embedding"):
            sampler([PROMPT], cfg_phases="slow", **kw)
        check_resume_latents(sampler, ladder_of(run))
        return
    one_call = sampler([PROMPT], cfg_phases="none", **kw)[0]
    sampler.guidance = None  # CFG off in both calls: the chained path must reproduce the single call
    chained = sampler([PROMPT], cfg_phases="slow", **kw)[0]
    assert np.abs(chained - one_call).max() <= 1 / 255
    sampler.guidance = sampler.family.default_cfg
    import diffusers

    cls = getattr(diffusers, FAMILIES[name][1])
    calls = spy_forward(cls, lambda *a, **k: k["hidden_states"].shape[0])
    for phases, nfe in (("both", 20), ("slow", 15), ("fast", 15), ("none", 10)):
        calls.clear()
        out = sampler([PROMPT], cfg_phases=phases, **kw)[0]
        assert sampler.nfe(phases) == nfe and sum(calls) == nfe, phases  # SD3 batches cond+uncond in one call
        if phases == "slow":
            assert np.abs(out - one_call).max() > 1e-5  # CFG in the slow phase changed the image



def check_resume_latents(sampler, lad):
    """Guidance-embedding families never chain two calls in `generate`; check their `resume_latents` directly: the
    stock pipeline stopped after the slow steps (latent output), then continued on the fast sigmas from
    `resume_latents(...)`, equals one call (FLUX.2 dev returns packed tokens but takes [B, 128, h, w])."""
    pipe, fam = sampler.pipe, sampler.family
    kw = dict(prompt=[PROMPT], width=128, height=128, **fam.pipeline_kwargs(sampler.guidance, 512))
    pipe.set_adapters("slow")  # one adapter throughout: the chaining itself is what is checked
    one = pipe(sigmas=list(lad.sigmas), num_inference_steps=10, output_type="np",
               generator=torch.Generator().manual_seed(5), **kw).images[0]

    def stop(p, i, t, k):
        if i == lad.boundary - 1:
            p._interrupt = True
        return {}

    first = pipe(sigmas=list(lad.sigmas), num_inference_steps=10, output_type="latent", callback_on_step_end=stop,
                 generator=torch.Generator().manual_seed(5), **kw).images
    second = pipe(sigmas=list(lad.fast), num_inference_steps=len(lad.fast), output_type="np",
                  latents=fam.resume_latents(pipe, first, 128, 128), **kw).images[0]
    assert np.abs(second - one).max() <= 1 / 255
    jumped = pipe(sigmas=list(lad.slow), num_inference_steps=len(lad.slow), output_type="latent",
                  generator=torch.Generator().manual_seed(5), **kw).images  # the naive chaining: ends at sigma 0
    naive = pipe(sigmas=list(lad.fast), num_inference_steps=len(lad.fast), output_type="np",
                 latents=fam.resume_latents(pipe, jumped, 128, 128), **kw).images[0]
    assert np.abs(naive - one).max() > 1 / 255  # so the check can fail


def test_qwen_training_attends_without_a_mask_like_the_pipeline():
    """QwenImagePipeline.encode_prompt drops a prompt mask of all ones before its transformer; training does the
    same (`training_text`, once per sample), so SDPA may use its flash kernel. No value changes: the transformer's
    output with a mask of ones equals the output without, bit for bit (CPU, fp32). A padded caption keeps its
    mask, and a batch mixing the two gets padded masks again (ones for the unmasked sample)."""
    from glancetune.families import tiny
    from glancetune.families.qwen_image import QwenImage

    fam, t = QwenImage(), tiny.builders()["qwen_image"]().transformer.eval()
    g = torch.Generator().manual_seed(0)
    x, e = torch.randn(1, 64, t.config.in_channels, generator=g), torch.randn(1, 7, t.config.joint_attention_dim,
                                                                               generator=g)
    ones, padded = torch.ones(1, 7, dtype=torch.long), torch.tensor([[1, 1, 1, 1, 1, 0, 0]])
    assert fam.training_text({"encoder_hidden_states": e, "encoder_hidden_states_mask": ones}) == {
        "encoder_hidden_states": e, "encoder_hidden_states_mask": None}
    kept = fam.training_text({"encoder_hidden_states": e, "encoder_hidden_states_mask": padded})
    assert kept["encoder_hidden_states_mask"] is padded
    with torch.no_grad():
        def out(mask):
            return t(hidden_states=x, encoder_hidden_states=e, encoder_hidden_states_mask=mask,
                     timestep=torch.tensor([0.5]), img_shapes=[[(1, 8, 8)]], return_dict=False)[0]
        assert torch.equal(out(ones), out(None))
    short = {"encoder_hidden_states": e[:, :4], "encoder_hidden_states_mask": None}
    same = fam.collate([{"encoder_hidden_states": e, "encoder_hidden_states_mask": None}] * 2)
    assert same["encoder_hidden_states_mask"] is None and same["encoder_hidden_states"].shape == (2, 7, e.shape[2])
    mixed = fam.collate([short, kept])
    assert mixed["encoder_hidden_states_mask"].tolist() == [[1, 1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 0, 0]]
    assert torch.equal(mixed["encoder_hidden_states"][0, 4:], torch.zeros(3, e.shape[2]))
