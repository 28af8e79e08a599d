"""SD3 / SD3.5: StableDiffusion3Pipeline, 2x CLIP + T5, 16-channel latents NOT packed, timestep 0-1000, true CFG."""
from __future__ import annotations

from .base import Family
from .layouts import COMFY_QKV, comfy_fused, comfy_one
from .tiny_parts import clip_tokenizer, t5_tokenizer, tiny_vae

# stabilityai/stable-diffusion-3-medium-diffusers scheduler_config.json (SD3.5 uses the same shift)
SD3_SCHEDULER = dict(num_train_timesteps=1000, shift=3.0)

def build_sd3(scheduler_config: dict | None = None):
    """A tiny random StableDiffusion3Pipeline (16-channel unpacked latents, VAE scale 8, patch 2, 2x CLIP + T5)."""
    import torch
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    ct, ct2, tt = clip_tokenizer(), clip_tokenizer(), t5_tokenizer()
    clip_cfg = dict(vocab_size=len(ct), hidden_size=16, intermediate_size=37, num_attention_heads=2,
                    num_hidden_layers=2, projection_dim=32, max_position_embeddings=77, bos_token_id=0,
                    eos_token_id=1, pad_token_id=1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        transformer = SD3Transformer2DModel(sample_size=128, patch_size=2, in_channels=16, num_layers=2,
                                            attention_head_dim=8, num_attention_heads=4, caption_projection_dim=32,
                                            joint_attention_dim=32, pooled_projection_dim=64, out_channels=16,
                                            pos_embed_max_size=192)
        clip1 = CLIPTextModelWithProjection(CLIPTextConfig(**clip_cfg))
        clip2 = CLIPTextModelWithProjection(CLIPTextConfig(**clip_cfg))
        t5 = T5EncoderModel(T5Config(vocab_size=len(tt), d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
                                     relative_attention_num_buckets=8))
        vae = tiny_vae(AutoencoderKL, latent_channels=16, shift_factor=0.0609, scaling_factor=1.5305)
    scheduler = FlowMatchEulerDiscreteScheduler(**(scheduler_config or SD3_SCHEDULER))
    return StableDiffusion3Pipeline(scheduler=scheduler, vae=vae, text_encoder=clip1, tokenizer=ct,
                                    text_encoder_2=clip2, tokenizer_2=ct2, text_encoder_3=t5, tokenizer_3=tt,
                                    transformer=transformer)


class SD3(Family):
    max_sequence_length_limit = 512  # StableDiffusion3Pipeline.check_inputs
    truncating_tokenizer = "tokenizer_3"  # T5
    name = "sd3"
    flavours = {"medium": "stabilityai/stable-diffusion-3-medium-diffusers",
                "3.5-medium": "stabilityai/stable-diffusion-3.5-medium",
                "3.5-large": "stabilityai/stable-diffusion-3.5-large"}
    pipeline_class_names = ("StableDiffusion3Pipeline",)
    # diffusers' train_dreambooth_lora_sd3.py default list
    default_lora_targets = ("attn.add_k_proj", "attn.add_q_proj", "attn.add_v_proj", "attn.to_add_out", "attn.to_k",
                            "attn.to_out.0", "attn.to_q", "attn.to_v")
    lora_presets = {"all": default_lora_targets + ("ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj",
                                                   "ff_context.net.2"),
                    "attention": default_lora_targets, "mlp": ("ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj",
                                                               "ff_context.net.2"),
                    "tiny": ("attn.to_q", "attn.to_k", "attn.to_v")}
    encoder_components = ("text_encoder", "text_encoder_2", "text_encoder_3", "vae")
    default_max_sequence_length = 256
    default_cfg = 7.0  # StableDiffusion3Pipeline's default guidance_scale
    # ComfyUI (comfy.utils.mmdit_to_diffusers, MMDIT_MAP_BLOCK): diffusers name inside transformer_blocks.N ->
    # inside joint_blocks.N; the last block's context modulation is stored with its two halves swapped
    comfyui_block = {"norm1_context.linear": "context_block.adaLN_modulation.1",
                     "attn.to_add_out": "context_block.attn.proj", "ff_context.net.0.proj": "context_block.mlp.fc1",
                     "ff_context.net.2": "context_block.mlp.fc2", "norm1.linear": "x_block.adaLN_modulation.1",
                     "attn.to_out.0": "x_block.attn.proj", "ff.net.0.proj": "x_block.mlp.fc1",
                     "ff.net.2": "x_block.mlp.fc2"}
    comfyui_qkv = {"x_block.attn.qkv": COMFY_QKV["img_attn.qkv"], "context_block.attn.qkv": COMFY_QKV["txt_attn.qkv"]}

    def tiny_builders(self):
        return {"sd3": build_sd3}

    def comfyui_targets(self, transformer_config):
        out: dict[str, tuple] = {}
        h = transformer_config["num_attention_heads"] * transformer_config["attention_head_dim"]
        n = transformer_config["num_layers"]
        for i in range(n):
            b = f"transformer_blocks.{i}"
            for d, c in self.comfyui_block.items():
                comfy_one(out, f"{b}.{d}", f"joint_blocks.{i}.{c}", swap=i == n - 1 and d == "norm1_context.linear")
            for c, parts in self.comfyui_qkv.items():
                comfy_fused(out, b, f"joint_blocks.{i}.{c}", parts, (h, h, h))
        return out

    true_cfg = True

    # TREAD: the joint blocks (image and text apart; the last one returns no text); positions are added to the
    # tokens before the blocks, so there are no rotary rows to follow
    def tread_blocks_count(self, transformer_config: dict) -> int | None:
        return transformer_config["num_layers"]

    def tread_blocks(self, transformer) -> list:
        return list(transformer.transformer_blocks)

    def pipeline_class(self):
        from diffusers import StableDiffusion3Pipeline

        return StableDiffusion3Pipeline

    def alignment(self, info):
        vae_scale = 2 ** (len(info.vae_config["block_out_channels"]) - 1)
        return vae_scale * info.transformer_config.get("patch_size", 2)

    def mu(self, scheduler_config, image_seq_len, num_steps):
        if not scheduler_config.get("use_dynamic_shifting", False):
            return None
        return self.linear_mu(scheduler_config, image_seq_len, default_max_shift=1.16)  # SD3 pipeline default

    def base_sigmas(self, num_steps):
        return None  # the SD3 pipeline calls set_timesteps(num_inference_steps) without sigmas

    def encode_prompts(self, pipe, prompts, device, max_sequence_length, control=None):
        embeds, _, pooled, _ = pipe.encode_prompt(prompt=prompts, prompt_2=None, prompt_3=None, device=device,
                                                  do_classifier_free_guidance=False,
                                                  max_sequence_length=max_sequence_length)
        return {"encoder_hidden_states": embeds, "pooled_projections": pooled}

    def encode_images(self, pipe, pixels, control=None):
        vae = pipe.vae
        z = vae.encode(pixels.to(vae.device, vae.dtype)).latent_dist.mode()
        return (z - vae.config.shift_factor) * vae.config.scaling_factor, {}

    def transformer_timestep(self, sigmas, dtype):
        # StableDiffusion3Pipeline passes the scheduler's fp32 timestep (sigma * 1000) without a dtype cast
        return sigmas.float() * 1000

    def inference_guidance(self, training_guidance):
        return self.default_cfg

    def pipeline_kwargs(self, guidance, max_sequence_length):
        return {"max_sequence_length": max_sequence_length, "guidance_scale": 1.0 if guidance is None else guidance}
