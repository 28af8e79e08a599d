"""`glancetune export` (comfyui.py): ComfyUI copies of a pair. Converting back gives the same tensors; the module
names are ComfyUI's (FLUX.1: the table of comfy.utils.flux_to_diffusers; Qwen-Image: the diffusers names); every
part's delta is unchanged; diffusers' own readers of these layouts give the original LoRA back (FLUX.1 double
blocks: `_convert_kohya_flux_lora_to_diffusers`; Qwen-Image: `load_lora_weights` samples the same image)."""
import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

from conftest import run_err, write_configs
from glancetune.cli import main
from glancetune.comfyui import from_comfyui
from glancetune.export import WEIGHT_NAME
from glancetune.families import model_info

PROMPT = "a red gradient with speckles"
# comfy.utils.flux_to_diffusers, ComfyUI's own names for the tiny FLUX.1 (1 double, 1 single block) modules that
# the default FLUX.1 targets touch
FLUX_NAMES = {"double_blocks.0.img_attn.qkv", "double_blocks.0.txt_attn.qkv", "double_blocks.0.img_attn.proj",
              "double_blocks.0.txt_attn.proj", "double_blocks.0.img_mlp.0", "double_blocks.0.img_mlp.2",
              "double_blocks.0.txt_mlp.0", "double_blocks.0.txt_mlp.2", "single_blocks.0.linear1"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = {}
    for fam, alpha in (("flux", 4), ("qwen_image", 8)):  # rank 4: alpha = rank, and alpha = 2 x rank
        root = tmp_path_factory.mktemp(f"cx-{fam}")
        cfg = write_configs(root, f"tiny:{fam}", resolution=32, steps=3, model_family=fam, lora_alpha=alpha,
                            learning_rate=0.05)
        assert main(["glance", "--config", str(cfg)]) == 0
        assert main(["export", "--run", str(root / "output")]) == 0
        out[fam] = root / "output"
    return out


def header(path):
    with safe_open(str(path), "pt") as f:
        return f.metadata()


def modules(sd):
    return {k.removeprefix("diffusion_model.").rsplit(".", 2)[0] if k.endswith(".weight") else
            k.removeprefix("diffusion_model.").removesuffix(".alpha") for k in sd}


@pytest.mark.parametrize("fam", ["flux", "qwen_image"])
def test_back_conversion_gives_the_same_tensors(runs, fam):
    run = runs[fam]
    config = model_info(f"tiny:{fam}").transformer_config
    for role in ("slow", "fast"):
        original = load_file(str(run / role / WEIGHT_NAME))
        path = run / "comfyui" / f"glance-{role}.safetensors"
        comfy = load_file(str(path))
        meta = header(path)
        back = from_comfyui(comfy, fam, config, json.loads(meta["glancetune.comfyui.parts"]))
        assert back.keys() == original.keys()
        assert all(torch.equal(back[k], original[k]) for k in original)
        assert all(k.startswith("diffusion_model.") for k in comfy)
        assert meta["glancetune.role"] == role and meta["glancetune.partner"] == \
            f"glance-{'fast' if role == 'slow' else 'slow'}.safetensors"
        assert meta["glancetune.run"] == header(run / role / WEIGHT_NAME)["glancetune.run"]
        assert "switch after step 5 of 10" in meta["modelspec.usage_hint"]
        assert meta["modelspec.timestep_range"] and "lora_adapter_metadata" not in meta
    if fam == "flux":
        assert modules(comfy) == FLUX_NAMES
    else:
        assert modules(comfy) == {k.removeprefix("transformer.").rsplit(".", 2)[0] for k in original}


def test_flux_fused_deltas_are_the_parts(runs):
    """linear1 = [q; k; v; mlp] rows: each part's delta is the diffusers module's (mlp untrained: zero)."""
    config = model_info("tiny:flux").transformer_config
    h = config["num_attention_heads"] * config["attention_head_dim"]
    orig = load_file(str(runs["flux"] / "slow" / WEIGHT_NAME))
    comfy = load_file(str(runs["flux"] / "comfyui" / "glance-slow.safetensors"))
    p = "diffusion_model.single_blocks.0.linear1"
    up, down, alpha = comfy[f"{p}.lora_up.weight"], comfy[f"{p}.lora_down.weight"], comfy[f"{p}.alpha"].item()
    delta = up @ down * (alpha / down.shape[0])
    assert delta.shape[0] == 7 * h and alpha == 12.0  # 3 parts of rank 4, alpha 4 each
    for j, part in enumerate(("to_q", "to_k", "to_v")):
        m = f"transformer.single_transformer_blocks.0.attn.{part}"
        want = orig[f"{m}.lora_B.weight"] @ orig[f"{m}.lora_A.weight"]  # alpha = rank: scale 1
        assert torch.allclose(delta[j * h:(j + 1) * h], want, atol=1e-7)
    assert torch.count_nonzero(delta[3 * h:]) == 0


def test_diffusers_reads_the_flux_double_blocks_back(runs):
    """diffusers' ComfyUI/kohya FLUX reader (its single-block table is fixed to the full model's 3072 rows, so only
    the double blocks are fed to it) recovers the original q/k/v LoRAs from the block-diagonal layout."""
    from diffusers.loaders.lora_conversion_utils import _convert_kohya_flux_lora_to_diffusers

    orig = load_file(str(runs["flux"] / "fast" / WEIGHT_NAME))
    comfy = load_file(str(runs["flux"] / "comfyui" / "glance-fast.safetensors"))
    double = {k: v for k, v in comfy.items() if ".double_blocks." in k}
    back = _convert_kohya_flux_lora_to_diffusers(double)
    want = {k: v for k, v in orig.items() if ".transformer_blocks." in k}
    assert back.keys() == want.keys()
    assert all(torch.equal(back[k], want[k]) for k in want)


def test_stock_diffusers_loads_the_qwen_copies_and_samples_the_same_image(runs, tmp_path):
    from glancetune.record import read_record
    from glancetune.sample import GlanceSampler

    run = runs["qwen_image"]
    info = model_info("tiny:qwen_image")
    rec = read_record(run / "slow")[0]
    pipe = info.family.pipeline_class().from_pretrained(info.path)
    for role in ("slow", "fast"):  # alpha 2 x rank: diffusers folds the .alpha scale into the weights
        pipe.load_lora_weights(str(run / "comfyui"), weight_name=f"glance-{role}.safetensors", adapter_name=role)
    sampler = GlanceSampler(pipe, info, rec.ladder, info.family.inference_guidance(rec.guidance),
                            rec.max_sequence_length, rec.resolution)
    mine = np.asarray(sampler([PROMPT], seed=3, output_type="pil")[0]).astype(np.int16)
    assert main(["generate", "--run", str(run), "--prompt", PROMPT, "--seed", "3", "--output",
                 str(tmp_path / "g.png")]) == 0
    ref = np.asarray(Image.open(tmp_path / "g.png").convert("RGB")).astype(np.int16)
    assert np.abs(mine - ref).max() <= 1


def test_export_errors_are_one_line(tmp_path, capsys):
    err = run_err(capsys, ["export", "--run", str(tmp_path)])
    assert "slow: no LoRA file" in err
    cfg = write_configs(tmp_path / "sd3", "tiny:sd3", resolution=32, steps=1, model_family="sd3")
    assert main(["glance", "--config", str(cfg)]) == 0
    err = run_err(capsys, ["export", "--run", str(tmp_path / "sd3" / "output")])
    assert "built for FLUX.1 and Qwen-Image, not sd3" in err
    assert not (tmp_path / "sd3" / "output" / "comfyui").exists()
