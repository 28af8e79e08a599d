"""Issue 15's FSDP2 table: a FLUX.2-dev-layout folder whose transformer is the full-size FLUX.2-dev architecture
(32.2B parameters, random bf16 weights, 60 GiB in 5 GB shards; bench/measure/step_models.py FLUX2_DEV_ARCH) and whose text
encoder is a narrow Mistral-3 with the real hidden width (5120, so the transformer's 3 x 5120 context fits; 31 layers
so hidden states 10/20/30 exist; 2 heads of 8, MLP 16: ~20M parameters), with glancetune.tiny's tokenizer, scheduler
and scale-8 VAE. The transformer is what FSDP2 shards; the encoder only has to give embeddings of the right shape.

    python bench/measure/fsdp_flux2.py --build DIR [--tiny]     write the folder (--tiny: a small transformer, CPU check)
    python bench/measure/fsdp_flux2.py --config DIR --out RUN   write a one-image `train` config for it under RUN

bench/gpu/fsdp_flux2.sh runs the table.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
NARROW_TEXT = dict(hidden_size=5120, intermediate_size=16, num_hidden_layers=31, num_attention_heads=2,
                   num_key_value_heads=1, head_dim=8, tie_word_embeddings=False)


def build(directory: Path, tiny: bool) -> dict:
    import torch
    from diffusers import Flux2Pipeline, Flux2Transformer2DModel
    from transformers import Mistral3Config, Mistral3ForConditionalGeneration

    from glancetune.families.flux2 import build_flux2_dev
    from step_models import FLUX2_DEV_ARCH

    if (directory / "model_index.json").exists():
        return {"build": str(directory), "reused": True}
    t0 = time.perf_counter()
    small = build_flux2_dev()  # tokenizer, scheduler, VAE; its text encoder's config is widened
    text = dict(small.text_encoder.config.text_config.to_dict(), **NARROW_TEXT)
    if tiny:
        text["hidden_size"] = 64
    cfg = Mistral3Config(**{**small.text_encoder.config.to_dict(), "text_config": text})
    device = "cuda" if torch.cuda.is_available() else "cpu"
    arch = dict(small.transformer.config) if tiny else dict(FLUX2_DEV_ARCH)
    arch["joint_attention_dim"] = 3 * text["hidden_size"]
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            encoder = Mistral3ForConditionalGeneration(cfg).eval()
            transformer = Flux2Transformer2DModel.from_config(arch)
    finally:
        torch.set_default_dtype(torch.float32)
    pipe = Flux2Pipeline(scheduler=small.scheduler, vae=small.vae, text_encoder=encoder, tokenizer=small.tokenizer,
                         transformer=transformer)
    built = time.perf_counter() - t0
    pipe.save_pretrained(directory, max_shard_size="5GB")
    files = sum(f.stat().st_size for f in (directory / "transformer").glob("*.safetensors"))
    return {"build": str(directory), "tiny": tiny, "device": device,
            "transformer_params_b": round(sum(p.numel() for p in transformer.parameters()) / 1e9, 3),
            "text_encoder_params_m": round(sum(p.numel() for p in encoder.parameters()) / 1e6, 1),
            "transformer_disk_gib": round(files / 2**30, 2), "build_s": round(built, 1),
            "save_s": round(time.perf_counter() - t0 - built, 1)}


def config(model: Path, out: Path, res: int, steps: int, rank: int, cpu: bool) -> Path:
    """One smooth random image with a caption, and a `train` config (one phase, gc on) under `out`."""
    data = out / "data"
    data.mkdir(parents=True, exist_ok=True)
    small = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    Image.fromarray(small).resize((res, res), Image.BICUBIC).save(data / "img.png")
    (data / "img.txt").write_text("a smooth colour field")
    backend = out / "multidatabackend.json"
    backend.write_text(json.dumps([{"backend": "simple", "resolution": res, "image_dir": str(data),
                                    "caption_extension": ".txt"}]))
    cfg = {"model_type": "lora", "model_family": "flux2", "model_flavour": "dev",
           "pretrained_model_name_or_path": str(model), "data_backend_config": str(backend),
           "max_train_steps": steps, "lora_rank": rank, "cache_dir": str(out / "cache"),
           "gradient_checkpointing": True, "mixed_precision": "no" if cpu else "bf16", "seed": 0,
           "flow_custom_timesteps": [900, 500, 100], "output_dir": str(out / "single")}
    path = out / "train.json"
    path.write_text(json.dumps(cfg))
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--build", metavar="DIR")
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--config", metavar="DIR", help="the folder --build wrote")
    ap.add_argument("--out", default="/tmp/fsdp_flux2")
    ap.add_argument("--res", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--rank", type=int, default=32)
    ap.add_argument("--cpu", action="store_true")
    a = ap.parse_args()
    if a.build:
        print(json.dumps(build(Path(a.build), a.tiny)), flush=True)
    elif a.config:
        print(config(Path(a.config), Path(a.out), a.res, a.steps, a.rank, a.cpu))
    else:
        ap.error("give --build or --config")


if __name__ == "__main__":
    main()
