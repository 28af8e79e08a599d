"""FLUX.1 (dev, schnell): FluxPipeline, CLIP-L + T5, 16-channel VAE, 2x2-packed 64-channel tokens, sigma timesteps."""
from __future__ import annotations

from .base import DoubleSingleTread, Family


class Flux1(DoubleSingleTread, Family):
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

    def encode_prompts(self, pipe, prompts, device, max_sequence_length):
        embeds, pooled, text_ids = pipe.encode_prompt(prompt=prompts, prompt_2=None, device=device,
                                                      max_sequence_length=max_sequence_length)
        return {"encoder_hidden_states": embeds, "pooled_projections": pooled, "txt_ids": text_ids}

    def encode_images(self, pipe, pixels):
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
