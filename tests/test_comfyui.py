"""`glancetune export` (comfyui.py): ComfyUI copies of a pair. Converting back gives the same tensors; the module
names are ComfyUI's (FLUX.1/FLUX.2: the table of comfy.utils.flux_to_diffusers; SD3: comfy.utils.mmdit_to_diffusers;
Qwen-Image: the diffusers names); every part's delta is unchanged; diffusers' own readers of these layouts give the
original LoRA back (FLUX.1 double blocks: `_convert_kohya_flux_lora_to_diffusers`; Qwen-Image and FLUX.2 klein:
stock `load_lora_weights` on the copies samples generate's image)."""
import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

from conftest import run_err, write_configs
from glancetune.cli import main
from glancetune.export.comfyui import from_comfyui
from glancetune.export.files import WEIGHT_NAME
from glancetune.families import model_info

PROMPT = "a red gradient with speckles"
# comfy.utils.flux_to_diffusers, ComfyUI's own names for the tiny FLUX.1 (1 double, 1 single block) modules that
# the default FLUX.1 targets touch
NAMES = {"flux": {"double_blocks.0.img_attn.qkv", "double_blocks.0.txt_attn.qkv", "double_blocks.0.img_attn.proj",
                  "double_blocks.0.txt_attn.proj", "double_blocks.0.img_mlp.0", "double_blocks.0.img_mlp.2",
                  "double_blocks.0.txt_mlp.0", "double_blocks.0.txt_mlp.2", "single_blocks.0.linear1"},
         # tiny FLUX.2 klein: 1 double, 2 single blocks; default targets to_q/k/v, to_out.0, to_qkv_mlp_proj
         "flux2-klein": {"double_blocks.0.img_attn.qkv", "double_blocks.0.img_attn.proj", "single_blocks.0.linear1",
                         "single_blocks.1.linear1"},
         # tiny SD3: 2 joint blocks, the last one context_pre_only (no to_add_out); attention targets
         "sd3": {"joint_blocks.0.x_block.attn.qkv", "joint_blocks.0.x_block.attn.proj",
                 "joint_blocks.0.context_block.attn.qkv", "joint_blocks.0.context_block.attn.proj",
                 "joint_blocks.1.x_block.attn.qkv", "joint_blocks.1.x_block.attn.proj",
                 "joint_blocks.1.context_block.attn.qkv"}}
ALPHA = {"flux": 4, "qwen_image": 8, "flux2-klein": 8, "sd3": 12}  # rank 4: alpha = rank, 2 x rank, 3 x rank


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = {}
    for fam, alpha in ALPHA.items():
        root = tmp_path_factory.mktemp(f"cx-{fam}")
        cfg = write_configs(root, f"tiny:{fam}", resolution=32, steps=3, model_family=fam.split("-")[0],
                            lora_alpha=alpha, learning_rate=0.05)
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


@pytest.mark.slow
@pytest.mark.parametrize("fam", list(ALPHA))
def test_back_conversion_gives_the_same_tensors(runs, fam):
    run = runs[fam]
    config = model_info(f"tiny:{fam}").transformer_config
    family = fam.split("-")[0]
    for role in ("slow", "fast"):
        original = load_file(str(run / role / WEIGHT_NAME))
        path = run / "comfyui" / f"glance-{role}.safetensors"
        comfy = load_file(str(path))
        meta = header(path)
        back = from_comfyui(comfy, family, config, json.loads(meta["glancetune.comfyui.parts"]), ALPHA[fam])
        assert back.keys() == original.keys()
        assert all(torch.equal(back[k], original[k]) for k in original)
        assert all(k.startswith("diffusion_model.") for k in comfy)
        assert meta["glancetune.role"] == role and meta["glancetune.partner"] == \
            f"glance-{'fast' if role == 'slow' else 'slow'}.safetensors"
        assert meta["glancetune.run"] == header(run / role / WEIGHT_NAME)["glancetune.run"]
        assert "switch after step 5 of 10" in meta["modelspec.usage_hint"]
        assert meta["modelspec.timestep_range"] and "lora_adapter_metadata" not in meta
    if fam in NAMES:
        assert modules(comfy) == NAMES[fam]
    else:
        assert modules(comfy) == {k.removeprefix("transformer.").rsplit(".", 2)[0] for k in original}


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
@pytest.mark.parametrize("fam", ["qwen_image", "flux2-klein"])
def test_stock_diffusers_loads_the_copies_and_samples_the_same_image(runs, tmp_path, fam):
    from glancetune.export.files import read_record
    from glancetune.sampling.sampler import GlanceSampler

    run = runs[fam]
    info = model_info(f"tiny:{fam}")
    rec = read_record(run / "slow")[0]
    pipe = info.family.pipeline_class().from_pretrained(info.path)
    for role in ("slow", "fast"):  # alpha 2 x rank: diffusers folds the .alpha scale into the weights (Qwen)
        pipe.load_lora_weights(str(run / "comfyui"), weight_name=f"glance-{role}.safetensors", adapter_name=role)
    sampler = GlanceSampler(pipe, info, rec.ladder, info.family.inference_guidance(rec.guidance),
                            rec.max_sequence_length, rec.resolution)
    mine = np.asarray(sampler([PROMPT], seed=3, output_type="pil")[0]).astype(np.int16)
    assert main(["generate", "--run", str(run), "--prompt", PROMPT, "--seed", "3", "--output",
                 str(tmp_path / "g.png")]) == 0
    ref = np.asarray(Image.open(tmp_path / "g.png").convert("RGB")).astype(np.int16)
    assert np.abs(mine - ref).max() <= 1


def test_sd3_last_block_modulation_is_swapped():
    from glancetune.export.comfyui import to_comfyui

    config = model_info("tiny:sd3").transformer_config
    a, b = torch.randn(4, 8), torch.randn(2 * 32, 4)
    sd = {"transformer.transformer_blocks.1.norm1_context.linear.lora_A.weight": a,
          "transformer.transformer_blocks.1.norm1_context.linear.lora_B.weight": b}
    out, _ = to_comfyui(sd, "sd3", config, 4)
    up = out["diffusion_model.joint_blocks.1.context_block.adaLN_modulation.1.lora_up.weight"]
    assert torch.equal(up[:32], b[32:]) and torch.equal(up[32:], b[:32])  # comfy.utils.swap_scale_shift
    assert torch.equal(from_comfyui(out, "sd3", config, {})[
        "transformer.transformer_blocks.1.norm1_context.linear.lora_B.weight"], b)


@pytest.mark.slow
def test_export_errors_are_one_line(tmp_path, capsys):
    err = run_err(capsys, ["export", "--run", str(tmp_path)])
    assert "slow: no LoRA file" in err
    cfg = write_configs(tmp_path / "f", "tiny:flux", resolution=32, steps=1, lora_targets=["attn.to_q", "proj_out"])
    assert main(["glance", "--config", str(cfg)]) == 0
    err = run_err(capsys, ["export", "--run", str(tmp_path / "f" / "output")])
    assert "LoRA module proj_out has no ComfyUI name" in err
    assert not (tmp_path / "f" / "output" / "comfyui").exists()


def test_the_comfyui_download_zip_stores_0644_whatever_the_files_mode(tmp_path):
    """An export made before the mode fix left 0600 copies: the zip still hands them out readable (0644)."""
    import os
    import zipfile

    from glancetune.server.downloads import _zip

    f = tmp_path / "glance-slow.safetensors"
    f.write_bytes(b"x" * 100)
    os.chmod(f, 0o600)
    path = _zip([(f, f.name)])
    try:
        with zipfile.ZipFile(path) as z:
            info = z.getinfo(f.name)
            assert (info.external_attr >> 16) & 0o777 == 0o644
            assert z.read(f.name) == b"x" * 100
    finally:
        os.unlink(path)
