"""FLUX.2 klein (4B / 9B): Flux2KleinPipeline, Qwen3 text encoder (hidden layers 9/18/27 stacked), 32-channel VAE
patchified 2x2 to 128 channels and BatchNorm-normalised, packed [B, HW, 128] tokens with 4-axis ids, empirical mu
(depends on token count AND step count), no guidance embedding; base klein uses true CFG at inference."""
from __future__ import annotations

import torch

from .base import Family


class Flux2Klein(Family):
    name = "flux2"
    flavours = {None: "black-forest-labs/FLUX.2-klein-base-9B", "klein-9b": "black-forest-labs/FLUX.2-klein-base-9B",
                "klein-4b": "black-forest-labs/FLUX.2-klein-base-4B"}
    unsupported_flavours = {"dev": "Flux2Pipeline with the Mistral-3 text encoder"}
    pipeline_class_names = ("Flux2KleinPipeline",)
    # diffusers' FLUX.2 LoRA script default: attention of both block types + the fused single-block projection
    _attention = ("attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "attn.add_q_proj", "attn.add_k_proj",
                  "attn.add_v_proj", "attn.to_add_out", "attn.to_qkv_mlp_proj")
    _mlp = ("ff.linear_in", "ff.linear_out", "ff_context.linear_in", "ff_context.linear_out")
    default_lora_targets = ("attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "attn.to_qkv_mlp_proj")
    lora_presets = {"all": _attention + _mlp, "attention": _attention, "mlp": _mlp,
                    "tiny": ("attn.to_q", "attn.to_k", "attn.to_v")}
    encoder_components = ("text_encoder", "vae")
    default_cfg = 4.0  # Flux2KleinPipeline's default guidance_scale (true CFG on base, ignored when distilled)

    true_cfg = True

    def pipeline_class(self):
        from diffusers import Flux2KleinPipeline

        return Flux2KleinPipeline

    def alignment(self, info):
        return 2 ** (len(info.vae_config["block_out_channels"]) - 1) * 2

    def mu(self, scheduler_config, image_seq_len, num_steps):
        from diffusers.pipelines.flux2.pipeline_flux2_klein import compute_empirical_mu

        return compute_empirical_mu(image_seq_len=image_seq_len, num_steps=num_steps)

    def encode_prompts(self, pipe, prompts, device, max_sequence_length):
        embeds, text_ids = pipe.encode_prompt(prompt=prompts, device=device, max_sequence_length=max_sequence_length)
        return {"encoder_hidden_states": embeds, "txt_ids": text_ids}

    def encode_images(self, pipe, pixels):
        vae = pipe.vae
        z = vae.encode(pixels.to(vae.device, vae.dtype)).latent_dist.mode()
        z = pipe._patchify_latents(z)
        mean = vae.bn.running_mean.view(1, -1, 1, 1).to(z.device, z.dtype)
        std = torch.sqrt(vae.bn.running_var.view(1, -1, 1, 1) + vae.config.batch_norm_eps).to(z.device, z.dtype)
        z = (z - mean) / std
        return pipe._pack_latents(z), {"img_ids": pipe._prepare_latent_ids(z).to(z.device)}

    def transformer_timestep(self, sigmas, dtype):
        # Flux2KleinPipeline: timestep = t.to(latents.dtype); passes timestep / 1000
        return (sigmas.float() * 1000).to(dtype) / 1000

    def predict(self, transformer, noisy, timestep, text, image, guidance):
        return transformer(hidden_states=noisy, timestep=timestep, guidance=None, return_dict=False,
                           **text, **image)[0]

    def resume_latents(self, pipe, latents):
        # the klein pipeline returns unpatchified, de-normalised latents; `latents=` takes [B, 128, H/16, W/16]
        z = pipe._patchify_latents(latents)
        mean = pipe.vae.bn.running_mean.view(1, -1, 1, 1).to(z.device, z.dtype)
        std = torch.sqrt(pipe.vae.bn.running_var.view(1, -1, 1, 1) + pipe.vae.config.batch_norm_eps).to(z.device,
                                                                                                     z.dtype)
        return (z - mean) / std

    def inference_guidance(self, training_guidance):
        return self.default_cfg

    def pipeline_kwargs(self, guidance, max_sequence_length):
        return {"max_sequence_length": max_sequence_length, "guidance_scale": 1.0 if guidance is None else guidance}
