"""The per-model pieces of bench/measure/train_step.py (`--model`): for FLUX.1-dev, Qwen-Image, FLUX.2-klein-9B and
FLUX.2-dev, the full-size transformer architecture (constructor kwargs, with where each number comes from), the
glancetune family adapter, and one training sample (`Prepared`) with exactly the keys, shapes and dtypes that the
adapter's `encode_prompts` / `encode_images` produce at a resolution.

Full size: the architecture is built with random weights and `full_sample` shapes the sample (no encoder exists).
`--tiny` (CPU logic check): FLUX.1 keeps its own tiny architecture (train_step's numbers stay as they were); the
other models take the transformer of the family's tiny random pipeline (glancetune.families.tiny, the classes of the real
models) and encode the sample with the family's own `encode_prompts` / `encode_images`, then `check_same` asserts
that `full_sample` would have built the same keys, shapes and dtypes at that size: the shapes of the full-size path
are checked against the adapters' real output on every tiny run.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from glancetune.families.flux import Flux1
from glancetune.families.flux2 import Flux2Dev, Flux2Klein
from glancetune.families.qwen_image import QwenImage
from glancetune.train.loop import Prepared


@dataclass(frozen=True)
class Model:
    label: str  # printed name
    family: type  # glancetune family adapter
    cls: str  # diffusers transformer class
    arch: dict  # full-size constructor kwargs
    text_tokens: int  # text tokens at full size
    tiny: str  # glancetune.families.tiny.builders() key of the family's tiny pipeline


# FLUX.1-dev: the anchor's constructor args (bench/measure/anchor_loop.py); 512 T5 tokens (FluxPipeline's default)
FLUX1_ARCH = dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
                  num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True,
                  axes_dims_rope=(16, 56, 56))
FLUX1_TINY = dict(patch_size=1, in_channels=64, num_layers=2, num_single_layers=2, attention_head_dim=16,
                  num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=16, guidance_embeds=True,
                  axes_dims_rope=(4, 6, 6))
# Qwen-Image (20.4B): Qwen/Qwen-Image transformer/config.json, as in bench/measure/anchor_loop.py (the same values appear in
# several public copies of that config); guidance_embeds false is the class default. 256 text tokens: the anchor's
# (the pipeline keeps only a caption's own tokens, up to max_sequence_length, after dropping the 34 template tokens)
QWEN_ARCH = dict(patch_size=2, in_channels=64, out_channels=16, num_layers=60, attention_head_dim=128,
                 num_attention_heads=24, joint_attention_dim=3584, axes_dims_rope=(16, 56, 56))
# FLUX.2 (Flux2Transformer2DModel, diffusers 0.42). Values: huggingface/diffusers
# scripts/convert_flux2_to_diffusers.py get_flux2_transformer_config(), entries "flux2-dev" (model_id
# black-forest-labs/FLUX.2-dev) and "klein-9b" (converted from a BFL checkpoint named *klein-9b*). The dev values also
# equal BFL's own Flux2Params (github.com/black-forest-labs/flux2 src/flux2/model.py: hidden 6144 = 48 x 128, depth 8,
# single 48, context_in_dim 15360 = 3 x 5120 Mistral hidden) and Flux2Transformer2DModel's defaults. The hub
# config.json files themselves were not readable here: klein-9B's values are confirmed by independent re-implementations
# (VincentGourbin/flux-2-swift-mlx Flux2Config.swift klein9B: 8 + 24 blocks, 32 heads, 12288 = 3 x 4096 Qwen3-8B
# hidden; an mflux 0.20 model_config for FLUX.2-klein-base-9B quoted in a public test), one public snippet says
# 6 + 30 blocks (in the minority). Text: 512 tokens, Flux2Pipeline's and Flux2KleinPipeline's max_sequence_length.
FLUX2_COMMON = dict(patch_size=1, in_channels=128, attention_head_dim=128, timestep_guidance_channels=256,
                    mlp_ratio=3.0, axes_dims_rope=(32, 32, 32, 32), rope_theta=2000, eps=1e-6)
FLUX2_DEV_ARCH = dict(FLUX2_COMMON, num_layers=8, num_single_layers=48, num_attention_heads=48,
                      joint_attention_dim=15360, guidance_embeds=True)
FLUX2_KLEIN9B_ARCH = dict(FLUX2_COMMON, num_layers=8, num_single_layers=24, num_attention_heads=32,
                          joint_attention_dim=12288, guidance_embeds=False)

MODELS = {
    "flux1": Model("FLUX.1-dev", Flux1, "FluxTransformer2DModel", FLUX1_ARCH, 512, "flux"),
    "qwen": Model("Qwen-Image", QwenImage, "QwenImageTransformer2DModel", QWEN_ARCH, 256, "qwen_image"),
    "flux2-klein-9b": Model("FLUX.2-klein-9B", Flux2Klein, "Flux2Transformer2DModel", FLUX2_KLEIN9B_ARCH, 512,
                            "flux2-klein"),
    "flux2-dev": Model("FLUX.2-dev", Flux2Dev, "Flux2Transformer2DModel", FLUX2_DEV_ARCH, 512, "flux2-dev"),
}
TINY_TEXT_TOKENS = 16
TINY_PROMPT = "a photo of a red cube on a wooden table, soft studio light, highly detailed"


def build_random(cls_name: str, arch: dict, dev, dtype):
    """The transformer with random weights, made directly on `dev` in `dtype`."""
    import diffusers

    torch.set_default_dtype(dtype)
    try:
        with torch.device(dev):
            return getattr(diffusers, cls_name)(**arch)
    finally:
        torch.set_default_dtype(torch.float32)


def tiny_encoded(name: str, res: int, dev, dtype):
    """(transformer, sample) from the family's tiny random pipeline: its transformer on `dev` in `dtype`, and a
    sample made by the family's own encode_prompts / encode_images (random pixels, one caption)."""
    from glancetune.families.tiny import builders

    m = MODELS[name]
    family = m.family()
    pipe = builders()[m.tiny]()
    g = torch.Generator("cpu").manual_seed(1)
    with torch.no_grad():
        text = family.encode_prompts(pipe, [TINY_PROMPT], torch.device("cpu"), TINY_TEXT_TOKENS)
        x0, image = family.encode_images(pipe, torch.rand(1, 3, res, res, generator=g) * 2 - 1)
    transformer = pipe.transformer.to(dev)
    if transformer.dtype != dtype:  # (a cast that is not needed only earns a diffusers warning)
        transformer = transformer.to(dtype)
    return transformer, Prepared(x0.float().to(dev), _to(text, dev, dtype), _to(image, dev, dtype))


def _to(d: dict, dev, dtype) -> dict:
    """As Job.prepared: tensors to the device; floating tensors in the encoders' dtype (the run's dtype)."""
    return {k: (v.to(dev, dtype) if v.is_floating_point() else v.to(dev)) if isinstance(v, torch.Tensor) else v
            for k, v in d.items()}


def full_sample(name: str, arch: dict, res: int, txt: int, dev, dtype) -> Prepared:
    """One sample shaped as the family adapter encodes it at res x res (VAE /8, 2x2 packing: (res/16)^2 tokens)."""
    side = res // 16
    tokens = side * side
    g = torch.Generator("cpu").manual_seed(1)
    x0 = torch.randn(1, tokens, arch["in_channels"], generator=g).float().to(dev)
    embeds = torch.randn(1, txt, arch["joint_attention_dim"], generator=g).to(dev, dtype)
    if name == "qwen":  # QwenImage.encode_prompts / encode_images
        text = {"encoder_hidden_states": embeds,
                "encoder_hidden_states_mask": torch.ones(1, txt, dtype=torch.long, device=dev)}
        return Prepared(x0, text, {"img_shapes": [[(1, side, side)]]})
    # FLUX.2 (_Flux2.encode_prompts / encode_images): the pipeline's own 4-axis ids (T, H, W, L), int64
    pipe_cls = MODELS[name].family().pipeline_class()
    text = {"encoder_hidden_states": embeds, "txt_ids": pipe_cls._prepare_text_ids(embeds).to(dev)}
    image = {"img_ids": pipe_cls._prepare_latent_ids(torch.empty(1, 0, side, side)).to(dev)}
    return Prepared(x0, text, image)


def flux1_sample(arch: dict, res: int, txt: int, dev, dtype) -> Prepared:
    """FLUX.1: shaped like Flux1.encode_prompts / encode_images output at this resolution (train_step's original)."""
    side = res // 16
    tokens = side * side
    g = torch.Generator("cpu").manual_seed(1)
    ids = torch.zeros(side, side, 3)
    ids[..., 1] = torch.arange(side)[:, None]
    ids[..., 2] = torch.arange(side)[None, :]
    return Prepared(
        x0=torch.randn(1, tokens, 64, generator=g).float().to(dev),
        text={"encoder_hidden_states": torch.randn(1, txt, arch["joint_attention_dim"], generator=g).to(dev, dtype),
              "pooled_projections": torch.randn(1, arch["pooled_projection_dim"], generator=g).to(dev, dtype),
              "txt_ids": torch.zeros(txt, 3).to(dev, dtype)},
        image={"img_ids": ids.reshape(tokens, 3).to(dev, dtype)},
    )


def layout(value):
    """Keys, shapes and dtypes (tensors), the values themselves otherwise (img_shapes lists)."""
    if isinstance(value, torch.Tensor):
        return (tuple(value.shape), value.dtype)
    if isinstance(value, dict):
        return {k: layout(v) for k, v in value.items()}
    return value


def check_same(encoded: Prepared, built: Prepared) -> None:
    for part in ("x0", "text", "image"):
        a, b = layout(getattr(encoded, part)), layout(getattr(built, part))
        if a != b:
            raise SystemExit(f"full_sample differs from the family's encoding in {part}: {b} vs {a}")


def build(name: str, tiny: bool, res: int, dev, dtype):
    """(transformer, sample, text tokens, seconds to build) for --model `name`."""
    m = MODELS[name]
    t0 = time.time()
    if name == "flux1":  # train_step's original tiny architecture and sample (its own generator: order-free)
        arch = FLUX1_TINY if tiny else m.arch
        txt = TINY_TEXT_TOKENS if tiny else m.text_tokens
        transformer = build_random(m.cls, arch, dev, dtype)
        return transformer, flux1_sample(arch, res, txt, dev, dtype), txt, time.time() - t0
    if tiny:
        transformer, sample = tiny_encoded(name, res, dev, dtype)
        txt = sample.text["encoder_hidden_states"].shape[1]
        check_same(sample, full_sample(name, transformer.config, res, txt, dev, dtype))
        return transformer, sample, txt, time.time() - t0
    transformer = build_random(m.cls, m.arch, dev, dtype)
    dt = time.time() - t0
    return transformer, full_sample(name, m.arch, res, m.text_tokens, dev, dtype), m.text_tokens, dt
