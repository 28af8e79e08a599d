"""FLUX.1 (dev, schnell): FluxPipeline, CLIP-L + T5, 16-channel VAE, 2x2-packed 64-channel tokens, sigma timesteps."""
from __future__ import annotations

from .base import Family
from .layouts import DoubleSingle
from .tiny_parts import clip_tokenizer, t5_tokenizer, tiny_vae

# FLUX.1-dev's scheduler_config.json (black-forest-labs/FLUX.1-dev), verbatim values.
FLUX1_DEV_SCHEDULER = dict(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5,
                           max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096)

# FLUX.1-schnell's scheduler_config.json: no shift at all.
FLUX1_SCHNELL_SCHEDULER = dict(num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=False, base_shift=0.5,
                               max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096)

def build_flux(scheduler_config: dict | None = None, guidance_embeds: bool = True):
    """A tiny random FluxPipeline (FLUX.1 layout: 64-channel packed tokens, VAE scale 8, CLIP-L + T5)."""
    import torch
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    ct, tt = clip_tokenizer(), t5_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        transformer = FluxTransformer2DModel(
            patch_size=1, in_channels=64, num_layers=1, num_single_layers=1, attention_head_dim=16,
            num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32,
            guidance_embeds=guidance_embeds, axes_dims_rope=(4, 4, 8))
        clip = CLIPTextModel(CLIPTextConfig(vocab_size=len(ct), hidden_size=32, intermediate_size=37,
                                            num_attention_heads=4, num_hidden_layers=2, projection_dim=32,
                                            max_position_embeddings=77, bos_token_id=0, eos_token_id=1,
                                            pad_token_id=1))
        t5 = T5EncoderModel(T5Config(vocab_size=len(tt), d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
                                     relative_attention_num_buckets=8))
        vae = tiny_vae(AutoencoderKL, latent_channels=16, shift_factor=0.1159, scaling_factor=0.3611)
    scheduler = FlowMatchEulerDiscreteScheduler(**(scheduler_config or FLUX1_DEV_SCHEDULER))
    return FluxPipeline(scheduler=scheduler, vae=vae, text_encoder=clip, tokenizer=ct, text_encoder_2=t5,
                        tokenizer_2=tt, transformer=transformer)


class Flux1(DoubleSingle, Family):
    max_sequence_length_limit = 512  # FluxPipeline.check_inputs
    truncating_tokenizer = "tokenizer_2"  # T5 (CLIP's 77 tokens only feed the pooled vector)
    name = "flux"
    flavours = {"dev": "black-forest-labs/FLUX.1-dev", "schnell": "black-forest-labs/FLUX.1-schnell"}
    pipeline_class_names = ("FluxPipeline",)
    # diffusers' train_dreambooth_lora_flux.py default list
    default_lora_targets = ("attn.to_k", "attn.to_q", "attn.to_v", "attn.to_out.0", "attn.add_k_proj",
                            "attn.add_q_proj", "attn.add_v_proj", "attn.to_add_out", "ff.net.0.proj", "ff.net.2",
                            "ff_context.net.0.proj", "ff_context.net.2")
    _attention = ("attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "attn.add_q_proj", "attn.add_k_proj",
                  "attn.add_v_proj", "attn.to_add_out")
    _mlp = ("ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2", "proj_mlp")
    lora_presets = {"all": _attention + _mlp, "attention": _attention, "mlp": _mlp,
                    "tiny": ("attn.to_q", "attn.to_k", "attn.to_v")}
    encoder_components = ("text_encoder", "text_encoder_2", "vae")
    shared_keys = frozenset({"txt_ids", "img_ids"})
    default_guidance = 1.0  # the official Glance FLUX recipe trains with guidance embed 1
    comfyui_double = {"attn.to_out.0": "img_attn.proj", "norm1.linear": "img_mod.lin",
                      "norm1_context.linear": "txt_mod.lin", "attn.to_add_out": "txt_attn.proj",
                      "ff.net.0.proj": "img_mlp.0", "ff.net.2": "img_mlp.2", "ff_context.net.0.proj": "txt_mlp.0",
                      "ff_context.net.2": "txt_mlp.2"}
    comfyui_single = {"norm.linear": "modulation.lin", "proj_out": "linear2"}
    comfyui_single_fused = {"linear1": ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")}
    comfyui_single_fused_rows = (1, 1, 1, 4)  # FluxSingleTransformerBlock: mlp_ratio 4

    def tiny_builders(self):
        return {"flux": build_flux, "flux-schnell": lambda: build_flux(FLUX1_SCHNELL_SCHEDULER, guidance_embeds=False)}

    def pipeline_class(self):
        from diffusers import FluxPipeline

        return FluxPipeline

    @staticmethod
    def _vae_scale(vae_config: dict) -> int:
        return 2 ** (len(vae_config["block_out_channels"]) - 1)

    def alignment(self, info):
        return self._vae_scale(info.vae_config) * 2

    def mu(self, scheduler_config, image_seq_len, num_steps):
        if not scheduler_config.get("use_dynamic_shifting", False):
            return None
        return self.linear_mu(scheduler_config, image_seq_len)

    def encode_prompts(self, pipe, prompts, device, max_sequence_length, control=None):
        embeds, pooled, text_ids = pipe.encode_prompt(prompt=prompts, prompt_2=None, device=device,
                                                      max_sequence_length=max_sequence_length)
        return {"encoder_hidden_states": embeds, "pooled_projections": pooled, "txt_ids": text_ids}

    def encode_images(self, pipe, pixels, control=None):
        vae = pipe.vae
        z = vae.encode(pixels.to(vae.device, vae.dtype)).latent_dist.mode()
        z = (z - vae.config.shift_factor) * vae.config.scaling_factor
        b, c, h, w = z.shape
        packed = pipe._pack_latents(z, b, c, h, w)
        img_ids = pipe._prepare_latent_image_ids(b, h // 2, w // 2, z.device, z.dtype)
        return packed, {"img_ids": img_ids}

    def transformer_timestep(self, sigmas, dtype):
        # FluxPipeline: t = sigma * 1000 (scheduler, fp32); timestep = t.to(latents.dtype); passes timestep / 1000
        return (sigmas.float() * 1000).to(dtype) / 1000

    def has_guidance_embedding(self, transformer_config):
        return bool(transformer_config.get("guidance_embeds", False))

    def pipeline_kwargs(self, guidance, max_sequence_length):
        kw = {"max_sequence_length": max_sequence_length}
        if guidance is not None:
            kw["guidance_scale"] = guidance
        return kw
