"""The published Glance Qwen LoRAs: their key layout and alpha, auto-detection, and `--sampler official-compat`.

The real files cannot be downloaded here, so each test builds SYNTHETIC files against the tiny Qwen-Image model
exactly as the official trainer (CSU-JPG/Glance train_Glance_qwen.py) writes them: peft `LoraConfig(r=32,
lora_alpha=128, init_lora_weights="gaussian", 12 targets)`, `convert_state_dict_to_diffusers(
get_peft_model_state_dict(model))`, `QwenImagePipeline.save_lora_weights(dir, state_dict)` (no adapter metadata).
"""
import json
import logging
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from glancetune.cli import main
from glancetune.families import get_family
from glancetune.sampling.sampler import GlanceSampler, resolve_spec
from glancetune.schedule import Ladder

QWEN = get_family("qwen_image")
PUB = QWEN.published[0]
TARGETS = ["to_q", "to_k", "to_v", "add_q_proj", "add_k_proj", "add_v_proj", "to_out.0", "to_add_out",
           "img_mlp.net.2", "img_mod.1", "txt_mlp.net.2", "txt_mod.1"]  # the official LoraConfig, verbatim
PROMPT = "a red fox in the snow"
SIZE = ["--width", "64", "--height", "64"]


def lora_transformer(model, seed, alpha=128):
    """The tiny transformer with one trained-looking official adapter (lora_B random instead of zero)."""
    from diffusers import QwenImageTransformer2DModel
    from peft import LoraConfig

    tr = QwenImageTransformer2DModel.from_pretrained(f"{model}/transformer")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        tr.add_adapter(LoraConfig(r=32, lora_alpha=alpha, init_lora_weights="gaussian", target_modules=TARGETS))
        for n, p in tr.named_parameters():
            if "lora_B" in n:
                p.data.normal_(0, 0.02)
    return tr.eval()


def save_official(tr, path):
    """What the official trainer writes, renamed to the published file name."""
    from diffusers import QwenImagePipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    tmp = path.parent / f".{path.stem}"
    QwenImagePipeline.save_lora_weights(tmp, convert_state_dict_to_diffusers(get_peft_model_state_dict(tr)),
                                        safe_serialization=True)
    shutil.move(tmp / "pytorch_lora_weights.safetensors", path)
    tmp.rmdir()
    return path


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("published")
    model = root / "qwen"
    assert main(["tiny", "qwen_image", str(model)]) == 0
    files = {}
    for role, seed in (("slow", 1), ("fast", 2)):
        files[role] = save_official(lora_transformer(model, seed), root / f"glance_qwen_{role}.safetensors")
    return str(model), files["slow"], files["fast"]


def argv(pair, out, *extra):
    model, slow, fast = pair
    return ["generate", "--slow", str(slow), "--fast", str(fast), "--model", model, "--prompt", PROMPT,
            *SIZE, "--output", str(out), *extra]


def transformer_out(tr, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 64, 64, generator=g)  # 64 tokens of 64 channels = a 64x64 image on the tiny model
    emb = torch.randn(1, 7, tr.config.joint_attention_dim, generator=g)
    with torch.no_grad():
        return tr(hidden_states=x, timestep=torch.tensor([0.75]), encoder_hidden_states=emb,
                  encoder_hidden_states_mask=torch.ones(1, 7, dtype=torch.long), img_shapes=[[(1, 8, 8)]],
                  return_dict=False)[0]


def test_official_layout(pair):
    """The layout the official save path produces: `transformer.` prefix, to_q/to_k/to_v/to_out.0 as
    lora.down/lora.up (convert_state_dict_to_diffusers renames only those), the other 8 as lora_A/lora_B,
    no .alpha tensors, no adapter metadata."""
    from safetensors import safe_open

    with safe_open(str(pair[1]), framework="pt") as f:
        keys, meta = list(f.keys()), f.metadata()
    assert meta == {"format": "pt"}
    assert all(k.startswith("transformer.transformer_blocks.") for k in keys) and not any("alpha" in k for k in keys)
    block0 = sorted(k[len("transformer.transformer_blocks.0."):] for k in keys if "_blocks.0." in k)
    assert [k for k in block0 if ".lora.down." in k] == [f"attn.{m}.lora.down.weight"
                                                        for m in ("to_k", "to_out.0", "to_q", "to_v")]
    assert len(block0) == 24 and sum(".lora_A." in k for k in block0) == 8
    assert keys[0].endswith("add_k_proj.lora_A.weight")  # the first key diffusers looks at


def test_stock_diffusers_mis_loads_them(pair):
    """What `QwenImagePipeline.load_lora_weights(file)` does with that layout (docs/export.md claims this): alpha = rank
    (scale 1 instead of 4) and the 4 lora.down/lora.up module types silently not loaded."""
    from diffusers import QwenImagePipeline

    pipe = QwenImagePipeline.from_pretrained(pair[0])
    pipe.load_lora_weights(str(pair[1].parent), weight_name=pair[1].name, adapter_name="slow")
    cfg = pipe.transformer.peft_config["slow"]
    assert (cfg.r, cfg.lora_alpha) == (32, 32)
    block = pipe.transformer.transformer_blocks[0]
    assert not hasattr(block.attn.to_q, "lora_A") and hasattr(block.attn.add_q_proj, "lora_A")


def test_auto_detected_and_loaded_with_the_training_alpha(pair, caplog):
    model, slow, fast = pair
    spec = resolve_spec(slow=slow, fast=fast, model=model)
    assert spec.published == PUB and spec.guidance == 5.0 and (spec.width, spec.height) == (1024, 1024)
    seeds = Ladder(tuple(float(np.float32(t / 1000)) for t in PUB.slow_timesteps),
                   tuple(float(np.float32(t / 1000)) for t in PUB.fast_timesteps))
    assert spec.ladder == seeds and spec.ladder.slow[1] == float(np.float32(0.9791915))
    assert resolve_spec(slow=slow, fast=fast).base_model == "Qwen/Qwen-Image"  # --model may be left out
    caplog.set_level("INFO", logger="glancetune")
    sampler = GlanceSampler.from_spec(spec, device="cpu")
    out = caplog.text
    assert "alpha 128 = 4 x rank 32 (scale 4)" in out and "lora.down/lora.up" in out
    assert sampler.guidance == 5.0 and sampler.pipe.transformer.peft_config["fast"].lora_alpha == 128
    from diffusers import QwenImageTransformer2DModel

    tr = sampler.pipe.transformer
    base = transformer_out(QwenImageTransformer2DModel.from_pretrained(f"{model}/transformer"))
    for role, seed in (("slow", 1), ("fast", 2)):
        tr.set_adapter(role)
        ours = transformer_out(tr)
        ref = transformer_out(lora_transformer(model, seed))  # peft adapter, lora_alpha=128, applied directly
        assert torch.allclose(ours, ref, rtol=0, atol=1e-6), (role, (ours - ref).abs().max())
        scale1 = transformer_out(lora_transformer(model, seed, alpha=32))
        assert (ours - base).abs().max() > 1e-2 and (scale1 - ours).abs().max() > 1e-2, role


def test_generate_from_the_two_files(pair, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="glancetune")
    out = tmp_path / "g.png"
    assert main(argv(pair, out)) == 0
    info = json.loads(Image.open(out).text["glancetune"])
    assert info["preset"] == "glance-qwen" and info["guidance"] == 5.0 and info["sampler"] == "exact"
    assert info["ladder"]["fast"][-1] == float(np.float32(0.02))
    stock = tmp_path / "s.png"
    assert main(argv(pair, stock, "--lora-load", "stock")) == 0
    printed = caplog.text  # a notice: logged (stderr through process.setup_logging)
    assert "stock diffusers loading skipped 8 of 24 modules (attn.to_k, attn.to_out.0, attn.to_q, attn.to_v), " \
           "alpha 32 (scale 1)" in printed
    a, b = (np.asarray(Image.open(p), dtype=np.int16) for p in (out, stock))
    assert np.abs(a - b).max() > 2  # loading as trained changes the image


def reference_official(model, seed, w, h, slow_tr, fast_tr):
    """The official GlanceQwenSlowPipeline + GlanceQwenFastPipeline algorithm written out with stock parts:
    timesteps as bf16 tensors, Euler steps on the 50-step grid (slow) and the 5-step grid (fast), true CFG 5 with
    the norm rescale, negative prompt " ". `slow_tr`/`fast_tr`: transformers with the peft adapters applied."""
    from diffusers import FlowMatchEulerDiscreteScheduler, QwenImagePipeline
    from diffusers.pipelines.qwenimage.pipeline_qwenimage import calculate_shift

    pipe = QwenImagePipeline.from_pretrained(model)
    slow_t = torch.tensor([1000.0000, 979.1915, 957.5157, 934.9171, 911.3354], dtype=torch.bfloat16)
    fast_t = torch.tensor([886.7053, 745.0728, 562.9505, 320.0802, 20.0000], dtype=torch.bfloat16)
    with torch.no_grad():
        emb, mask = pipe.encode_prompt(prompt=[PROMPT], device="cpu", max_sequence_length=512)
        nemb, nmask = pipe.encode_prompt(prompt=[" "], device="cpu", max_sequence_length=512)
        latents = pipe.prepare_latents(1, 16, h, w, emb.dtype, "cpu", torch.Generator().manual_seed(seed), None)
        shapes = [[(1, h // pipe.vae_scale_factor // 2, w // pipe.vae_scale_factor // 2)]]
        c = pipe.scheduler.config
        mu = calculate_shift(latents.shape[1], c.get("base_image_seq_len", 256), c.get("max_image_seq_len", 4096),
                             c.get("base_shift", 0.5), c.get("max_shift", 1.15))
        for tr, ts, n in ((slow_tr, slow_t, 50), (fast_tr, fast_t, 5)):
            sched = FlowMatchEulerDiscreteScheduler.from_config(c)
            sched.set_timesteps(sigmas=np.linspace(1.0, 1 / n, n), mu=mu)
            sig = sched.sigmas
            for i, t in enumerate(ts):
                timestep = t.expand(1).to(latents.dtype) / 1000
                cond = tr(hidden_states=latents, timestep=timestep, encoder_hidden_states=emb,
                          encoder_hidden_states_mask=mask, img_shapes=shapes, return_dict=False)[0]
                unc = tr(hidden_states=latents, timestep=timestep, encoder_hidden_states=nemb,
                         encoder_hidden_states_mask=nmask, img_shapes=shapes, return_dict=False)[0]
                comb = unc + 5.0 * (cond - unc)
                pred = comb * (torch.norm(cond, dim=-1, keepdim=True) / torch.norm(comb, dim=-1, keepdim=True))
                latents = (latents.float() + (sig[i + 1] - sig[i]) * pred.float()).to(pred.dtype)
        z = pipe._unpack_latents(latents, h, w, pipe.vae_scale_factor)
        mean = torch.tensor(pipe.vae.config.latents_mean).view(1, -1, 1, 1, 1)
        inv_std = 1.0 / torch.tensor(pipe.vae.config.latents_std).view(1, -1, 1, 1, 1)
        image = pipe.vae.decode(z / inv_std + mean, return_dict=False)[0][:, :, 0]
    return pipe.image_processor.postprocess(image, output_type="np")[0]


def test_official_compat_equals_the_official_algorithm(pair, tmp_path, spy_forward):
    from diffusers import QwenImageTransformer2DModel

    model = pair[0]
    seen = spy_forward(QwenImageTransformer2DModel, lambda *a, **k: float(k["timestep"][0]))
    out = tmp_path / "o.png"
    assert main(argv(pair, out, "--sampler", "official-compat", "--seed", "4")) == 0
    bf16 = torch.tensor(list(PUB.slow_timesteps + PUB.fast_timesteps), dtype=torch.bfloat16).float() / 1000
    assert seen[::2] == seen[1::2] and seen[::2] == bf16.tolist()  # cond + uncond on 980, 956, ... per step
    seen.restore()
    ref = reference_official(model, 4, 64, 64, lora_transformer(model, 1), lora_transformer(model, 2))
    ours = np.asarray(Image.open(out), dtype=np.float32) / 255
    assert np.abs(ours - ref).max() <= 1 / 255 + 1e-6
    exact = tmp_path / "e.png"
    assert main(argv(pair, exact, "--seed", "4")) == 0
    assert np.abs(np.asarray(Image.open(exact), dtype=np.float32) / 255 - ours).max() > 0.02


def test_not_recognised_forced_or_refused(pair, tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    from conftest import run_err

    model, slow, fast = pair
    sd = load_file(str(fast))
    odd = tmp_path / "odd.safetensors"
    save_file({k: v for k, v in sd.items() if "img_mod" not in k}, str(odd))  # 11 module types: not the pair
    err = run_err(capsys, argv((model, slow, odd), tmp_path / "o.png"))
    assert "missing slow sigmas" in err and "--slow-timesteps" in err
    assert main(argv((model, slow, odd), tmp_path / "o.png", "--preset", "glance-qwen")) == 0
    err = run_err(capsys, argv(pair, tmp_path / "n.png", "--preset", "none"))
    assert "missing slow sigmas" in err
    flux = tmp_path / "flux"
    assert main(["tiny", "flux", str(flux)]) == 0
    err = run_err(capsys, argv((str(flux), slow, fast), tmp_path / "f.png"))
    assert "published LoRAs are for Qwen/Qwen-Image" in err and "flux model" in err
    assert "unknown preset 'glance'" in run_err(capsys, argv(pair, tmp_path / "p.png", "--preset", "glance"))
    assert not (tmp_path / "f.png").exists() and not (tmp_path / "n.png").exists()


@pytest.mark.parametrize("bad,named", [
    ("transformer.transformer_blocks.0.attn.to_zz.lora.down.weight", "1 LoRA keys match no module"),
    ("transformer.transformer_blocks.0.attn.to_q.lora_C.weight", "1 keys are not LoRA weights"),
    ("transformer.transformer_blocks.7.img_mod.1.lora_B.weight", "1 LoRA keys match no module"),
])
def test_unexpected_keys_are_named(pair, tmp_path, capsys, bad, named):
    from safetensors.torch import load_file, save_file

    from conftest import run_err

    model, slow, fast = pair
    sd = load_file(str(slow))
    sd[bad] = torch.zeros(32, 32)
    broken = tmp_path / "glance_qwen_slow.safetensors"
    save_file(sd, str(broken))
    err = run_err(capsys, argv((model, broken, fast), tmp_path / "o.png", "--preset", "glance-qwen"))
    assert str(broken) in err and named in err and bad in err
    assert not (tmp_path / "o.png").exists()


def test_unprefixed_keys_with_alpha_tensors(pair, tmp_path):
    """Another diffusers variant: peft key names without `transformer.`, alpha stored per module. Stock diffusers
    loads nothing from it (no key has the prefix); we load it with the stored alphas."""
    from diffusers import QwenImagePipeline
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    from glancetune.sampling.lora_files import load_adapter

    model = pair[0]
    tr = lora_transformer(model, 5, alpha=48)
    sd = dict(get_peft_model_state_dict(tr))
    sd.update({k.replace(".lora_A.weight", ".alpha"): torch.tensor(48.0) for k in list(sd) if ".lora_A." in k})
    f = tmp_path / "unprefixed.safetensors"
    save_file(sd, str(f))
    pipe = QwenImagePipeline.from_pretrained(model)
    assert load_adapter(pipe, f, "x") is None
    assert pipe.transformer.peft_config["x"].lora_alpha == 48
    assert torch.allclose(transformer_out(pipe.transformer), transformer_out(tr), rtol=0, atol=1e-6)
