"""FLUX.2: klein (4B / 9B, Flux2KleinPipeline, Qwen3 text encoder, layers 9/18/27 stacked) and dev (Flux2Pipeline,
Mistral-3 text encoder, layers 10/20/30 stacked). Both: the same Flux2Transformer2DModel, a 32-channel VAE
patchified 2x2 to 128 channels and BatchNorm-normalised, packed [B, HW, 128] tokens with 4-axis ids, empirical mu
(depends on token count AND step count). klein has no guidance embedding (base klein uses true CFG at inference);
dev has one (guidance-distilled: one pass per step, `guidance_scale` feeds the embedding).

The two flavours are two adapters in one `FamilyGroup` ("flux2"): `model_info` picks the one matching the folder's
pipeline class.
"""
from __future__ import annotations

import torch

from .base import DoubleSingleTread, Family


class _Flux2(DoubleSingleTread, Family):
    """What klein and dev share: transformer, VAE latents, ids, schedule, LoRA targets."""

    name = "flux2"
    # diffusers' FLUX.2 LoRA script default: attention of both block types + the fused single-block projection
    _attention = ("attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "attn.add_q_proj", "attn.add_k_proj",
                  "attn.add_v_proj", "attn.to_add_out", "attn.to_qkv_mlp_proj")
    _mlp = ("ff.linear_in", "ff.linear_out", "ff_context.linear_in", "ff_context.linear_out")
    default_lora_targets = ("attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "attn.to_qkv_mlp_proj")
    lora_presets = {"all": _attention + _mlp, "attention": _attention, "mlp": _mlp,
                    "tiny": ("attn.to_q", "attn.to_k", "attn.to_v")}
    encoder_components = ("text_encoder", "vae")
    comfyui_double = {"attn.to_out.0": "img_attn.proj", "attn.to_add_out": "txt_attn.proj",
                      "ff.linear_in": "img_mlp.0", "ff.linear_out": "img_mlp.2",
                      "ff_context.linear_in": "txt_mlp.0", "ff_context.linear_out": "txt_mlp.2"}
    comfyui_single = {"attn.to_qkv_mlp_proj": "linear1", "attn.to_out": "linear2"}
    # diffusers' reader of `diffusion_model.` FLUX.2 files (`_convert_non_diffusers_flux2_lora_to_diffusers`)
    # refuses `.alpha` keys; ComfyUI reads lora_A / lora_B as well
    comfyui_folded = True
    #: the diffusers module whose `compute_empirical_mu` the pipeline calls
    _pipeline_module = ""

    def alignment(self, info):
        return 2 ** (len(info.vae_config["block_out_channels"]) - 1) * 2

    def mu(self, scheduler_config, image_seq_len, num_steps):
        import importlib

        module = importlib.import_module(self._pipeline_module)
        return module.compute_empirical_mu(image_seq_len=image_seq_len, num_steps=num_steps)

    def encode_prompts(self, pipe, prompts, device, max_sequence_length):
        embeds, text_ids = pipe.encode_prompt(prompt=prompts, device=device, max_sequence_length=max_sequence_length)
        return {"encoder_hidden_states": embeds, "txt_ids": text_ids}

    @staticmethod
    def _bn_stats(pipe, z):
        vae = pipe.vae
        mean = vae.bn.running_mean.view(1, -1, 1, 1).to(z.device, z.dtype)
        std = torch.sqrt(vae.bn.running_var.view(1, -1, 1, 1) + vae.config.batch_norm_eps).to(z.device, z.dtype)
        return mean, std

    def encode_images(self, pipe, pixels):
        vae = pipe.vae
        z = vae.encode(pixels.to(vae.device, vae.dtype)).latent_dist.mode()
        z = pipe._patchify_latents(z)
        mean, std = self._bn_stats(pipe, z)
        z = (z - mean) / std
        return pipe._pack_latents(z), {"img_ids": pipe._prepare_latent_ids(z).to(z.device)}

    def transformer_timestep(self, sigmas, dtype):
        # both pipelines: timestep = t.expand(B).to(latents.dtype); they pass timestep / 1000
        return (sigmas.float() * 1000).to(dtype) / 1000


class Flux2Klein(_Flux2):
    flavours = {None: "black-forest-labs/FLUX.2-klein-base-9B", "klein-9b": "black-forest-labs/FLUX.2-klein-base-9B",
                "klein-4b": "black-forest-labs/FLUX.2-klein-base-4B"}
    pipeline_class_names = ("Flux2KleinPipeline",)
    _pipeline_module = "diffusers.pipelines.flux2.pipeline_flux2_klein"
    default_cfg = 4.0  # Flux2KleinPipeline's default guidance_scale (true CFG on base, ignored when distilled)

    true_cfg = True

    def pipeline_class(self):
        from diffusers import Flux2KleinPipeline

        return Flux2KleinPipeline

    def predict(self, transformer, noisy, timestep, text, image, guidance):
        return transformer(hidden_states=noisy, timestep=timestep, guidance=None, return_dict=False,
                           **text, **image)[0]

    def resume_latents(self, pipe, latents, height, width):
        # the klein pipeline returns unpatchified, de-normalised latents; `latents=` takes [B, 128, H/16, W/16]
        z = pipe._patchify_latents(latents)
        mean, std = self._bn_stats(pipe, z)
        return (z - mean) / std

    def inference_guidance(self, training_guidance):
        return self.default_cfg

    def pipeline_kwargs(self, guidance, max_sequence_length):
        return {"max_sequence_length": max_sequence_length, "guidance_scale": 1.0 if guidance is None else guidance}


class Flux2Dev(_Flux2):
    flavours = {"dev": "black-forest-labs/FLUX.2-dev"}
    pipeline_class_names = ("Flux2Pipeline",)
    _pipeline_module = "diffusers.pipelines.flux2.pipeline_flux2"
    # training: SimpleTuner's FLUX.2 guide (flux_guidance_value 1.0) and the official Glance FLUX recipe
    default_guidance = 1.0
    # generate: Flux2Pipeline's default guidance_scale and BFL's FLUX.2-dev card (SimpleTuner: "3.0-5.0")
    default_inference_guidance = 4.0

    true_cfg = False  # the guidance embedding: one transformer pass per step

    def pipeline_class(self):
        from diffusers import Flux2Pipeline

        return Flux2Pipeline

    def has_guidance_embedding(self, transformer_config):
        return bool(transformer_config.get("guidance_embeds", True))  # Flux2Transformer2DModel's default

    def resume_latents(self, pipe, latents, height, width):
        # output_type="latent" gives the packed tokens [B, h*w, 128] (row-major, as _prepare_latent_ids numbers
        # them); `latents=` takes [B, 128, h, w] and packs it again
        b, n, c = latents.shape
        h, w = height // (pipe.vae_scale_factor * 2), width // (pipe.vae_scale_factor * 2)
        if h * w != n:
            raise ValueError(f"resume_latents: {n} tokens do not make a {h}x{w} grid ({height}x{width} px)")
        return latents.transpose(1, 2).reshape(b, c, h, w)

    def inference_guidance(self, training_guidance):
        return self.default_inference_guidance

    def pipeline_kwargs(self, guidance, max_sequence_length):
        return {"max_sequence_length": max_sequence_length,
                "guidance_scale": self.default_inference_guidance if guidance is None else guidance}
