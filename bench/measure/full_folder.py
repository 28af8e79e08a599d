"""Full-size random pipeline folders for whole-job memory runs (issue 10: encode + train + save in one `glance`
process, `bench/measure/memory_job.py --family ...`) of the families whose folder fits the GPU machine's 64 GiB disk:

  qwen   QwenImagePipeline: the 20.4B transformer (bench/measure/step_models.py QWEN_ARCH), Qwen2.5-VL-7B as text encoder
         (text 28 x 3584, vision tower 32 x 1280: the real configuration, 8.29B), the Qwen-Image VAE (the class
         defaults are the real architecture). ~57 GB in bf16.
  klein  Flux2KleinPipeline: the 9.1B transformer (step_models FLUX2_KLEIN9B_ARCH), Qwen3-8B (36 x 4096, 8.19B), the FLUX.2 VAE
         (class defaults). ~35 GB.

FLUX.1-dev has its own builder (bench/measure/seed_recipe.py --build-only); FLUX.2-dev (32B + 24B, ~110 GB) does not fit the
disk (its step and its encoder are measured apart: bench/gpu/memory_models.sh, bench/gpu/encoder_24b.sh).

Everything but the sizes is glancetune.tiny's pipeline of the family: the byte-level tokenizer with the pipelines'
special tokens, the scheduler, the classes. The text encoder's vocabulary is the real one (152064 / 151936 rows);
the tokenizer uses the first few hundred ids. Weights are random, made on the GPU in bf16 (CPU with --tiny), saved
as 5 GB safetensors shards.

    python3 bench/measure/full_folder.py --family qwen|klein --dir DIR [--tiny]    one JSON line: sizes and seconds
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from step_models import MODELS  # noqa: E402

# Qwen/Qwen2.5-VL-7B-Instruct config.json (the Qwen-Image text encoder): text and vision sizes as printed by
# Qwen2_5_VLForConditionalGeneration in public module dumps (embed 152064 x 3584, k/v 512 = 4 kv heads x 128, MLP
# 18944; vision 32 blocks x 1280, MLP 3420, merger 5120 -> 3584) and public copies of its config
QWEN25VL_7B_TEXT = dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                        num_key_value_heads=4, vocab_size=152064, rms_norm_eps=1e-6, max_position_embeddings=128000,
                        rope_parameters={"rope_type": "default", "mrope_section": [16, 24, 24],
                                         "rope_theta": 1000000.0})
QWEN25VL_7B_VISION = dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=3584,
                          patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112,
                          fullatt_block_indexes=[7, 15, 23, 31])
# Qwen/Qwen3-8B config.json (FLUX.2-klein-9B's text encoder: joint_attention_dim 12288 = 3 x 4096)
QWEN3_8B = dict(hidden_size=4096, intermediate_size=12288, num_hidden_layers=36, num_attention_heads=32,
                num_key_value_heads=8, head_dim=128, vocab_size=151936, rms_norm_eps=1e-6, rope_theta=1000000.0)


def shrink(d: dict, tiny: bool, **small) -> dict:
    return {**d, **small} if tiny else dict(d)


def qwen(tiny: bool, device):
    from diffusers import AutoencoderKLQwenImage, QwenImagePipeline, QwenImageTransformer2DModel
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from glancetune.families.qwen_image import build_qwen_image

    small = build_qwen_image()
    old = small.text_encoder.config
    text = shrink(QWEN25VL_7B_TEXT, tiny, hidden_size=64, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, vocab_size=1024,
                  rope_parameters={"rope_type": "default", "mrope_section": [2, 2, 4], "rope_theta": 1000000.0})
    text.update(bos_token_id=old.text_config.bos_token_id, eos_token_id=old.text_config.eos_token_id,
                pad_token_id=old.text_config.pad_token_id)
    vision = shrink(QWEN25VL_7B_VISION, tiny, depth=2, hidden_size=32, intermediate_size=32, num_heads=2,
                    out_hidden_size=64, fullatt_block_indexes=[1])
    cfg = Qwen2_5_VLConfig(text_config=text, vision_config=vision, image_token_id=old.image_token_id,
                           video_token_id=old.video_token_id, vision_start_token_id=old.vision_start_token_id,
                           vision_end_token_id=old.vision_end_token_id, tie_word_embeddings=False)
    arch = dict(MODELS["qwen"].arch, joint_attention_dim=cfg.text_config.hidden_size)
    if tiny:
        arch.update(num_layers=2, num_attention_heads=2, attention_head_dim=16, axes_dims_rope=(8, 4, 4))
    encoder = random(Qwen2_5_VLForConditionalGeneration, cfg, device)
    transformer = random(QwenImageTransformer2DModel, arch, device)
    vae = random(AutoencoderKLQwenImage, dict(base_dim=8) if tiny else {}, device)
    return QwenImagePipeline(scheduler=small.scheduler, vae=vae, text_encoder=encoder, tokenizer=small.tokenizer,
                             transformer=transformer)


def klein(tiny: bool, device):
    from diffusers import AutoencoderKLFlux2, Flux2KleinPipeline, Flux2Transformer2DModel
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from glancetune.families.flux2 import build_flux2_klein

    small = build_flux2_klein()
    old = small.text_encoder.config
    text = shrink(QWEN3_8B, tiny, hidden_size=64, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2,
                  head_dim=16, vocab_size=1024)  # klein stacks layers 9/18/27: 36 layers even when tiny
    cfg = Qwen3Config(**text, bos_token_id=old.bos_token_id, eos_token_id=old.eos_token_id,
                      pad_token_id=old.pad_token_id, tie_word_embeddings=False)
    arch = dict(MODELS["flux2-klein-9b"].arch, joint_attention_dim=3 * cfg.hidden_size)
    if tiny:
        arch.update(num_layers=1, num_single_layers=2, num_attention_heads=2, attention_head_dim=16,
                    axes_dims_rope=(4, 4, 4, 4))
    encoder = random(Qwen3ForCausalLM, cfg, device)
    transformer = random(Flux2Transformer2DModel, arch, device)
    vae = random(AutoencoderKLFlux2, dict(block_out_channels=(8, 16, 16, 16), norm_num_groups=4) if tiny else {},
                 device)
    return Flux2KleinPipeline(scheduler=small.scheduler, vae=vae, text_encoder=encoder, tokenizer=small.tokenizer,
                              transformer=transformer, is_distilled=False)


def random(cls, cfg, device):
    """`cls` built directly on `device` in bf16 (random init there); `cfg`: a transformers config or kwargs."""
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            return (cls(**cfg) if isinstance(cfg, dict) else cls(cfg)).eval()
    finally:
        torch.set_default_dtype(torch.float32)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--family", choices=("qwen", "klein"), required=True)
    ap.add_argument("--dir", required=True)
    ap.add_argument("--tiny", action="store_true", help="small sizes, same classes and folder layout (CPU check)")
    a = ap.parse_args()
    directory = Path(a.dir)
    if (directory / "model_index.json").exists():  # a warm machine's earlier build: used as it is
        print(json.dumps({"build": str(directory), "reused": True}), flush=True)
        return
    if directory.exists() and any(directory.iterdir()):
        raise SystemExit(f"--dir: {directory} exists and is not empty")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    t0 = time.perf_counter()
    pipe = {"qwen": qwen, "klein": klein}[a.family](a.tiny, device)
    built = time.perf_counter() - t0
    pipe.save_pretrained(directory, max_shard_size="5GB")
    sizes = {c: sum(p.numel() for p in getattr(pipe, c).parameters()) for c in ("transformer", "text_encoder", "vae")}
    disk = sum(f.stat().st_size for f in directory.rglob("*.safetensors"))
    print(json.dumps({"build": str(directory), "family": a.family, "tiny": a.tiny, "device": device,
                      "params_b": {c: round(n / 1e9, 3) for c, n in sizes.items()}, "disk_gib": round(disk / 2**30, 2),
                      "build_s": round(built, 1), "save_s": round(time.perf_counter() - t0 - built, 1)}), flush=True)


if __name__ == "__main__":
    main()
