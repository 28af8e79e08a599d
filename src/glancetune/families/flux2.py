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

from .base import Family
from .layouts import DoubleSingle
from .tiny_parts import mistral_tokenizer, qwen2_tokenizer, tiny_vae

# FLUX.2 scheduler_config.json, klein and dev alike (mu is computed empirically by the pipeline)
FLUX2_SCHEDULER = dict(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5,
                       max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096, time_shift_type="exponential")

QWEN3_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% if enable_thinking is defined and not enable_thinking %}"
    "<think>\n\n</think>\n\n{% endif %}{% endif %}")

def _flux2_transformer_vae(guidance_embeds: bool):
    """The FLUX.2 transformer (128-channel tokens, 4-axis RoPE) and 32-channel BatchNorm VAE (non-trivial stats)."""
    import torch
    from diffusers import AutoencoderKLFlux2, Flux2Transformer2DModel

    transformer = Flux2Transformer2DModel(in_channels=128, num_layers=1, num_single_layers=2, attention_head_dim=16,
                                          num_attention_heads=2, joint_attention_dim=48, axes_dims_rope=(4, 4, 4, 4),
                                          guidance_embeds=guidance_embeds)
    vae = tiny_vae(AutoencoderKLFlux2, latent_channels=32)
    vae.bn.running_mean.copy_(torch.linspace(-0.2, 0.2, vae.bn.running_mean.numel()))
    vae.bn.running_var.copy_(torch.linspace(0.5, 2.0, vae.bn.running_var.numel()))
    return transformer, vae

def build_flux2_klein(distilled: bool = False):
    """A tiny random Flux2KleinPipeline (Qwen3 encoder with 28 layers so layers 9/18/27 exist, 128-ch tokens)."""
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, Flux2KleinPipeline
    from transformers import Qwen3Config, Qwen3ForCausalLM

    tok = qwen2_tokenizer()
    tok.add_special_tokens({"additional_special_tokens": ["<think>", "</think>"]})
    tok.chat_template = QWEN3_CHAT_TEMPLATE
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        text_encoder = Qwen3ForCausalLM(Qwen3Config(
            vocab_size=len(tok), hidden_size=16, intermediate_size=16, num_hidden_layers=28, num_attention_heads=2,
            num_key_value_heads=2, head_dim=8, eos_token_id=0, pad_token_id=0, bos_token_id=0))
        transformer, vae = _flux2_transformer_vae(guidance_embeds=False)
    return Flux2KleinPipeline(scheduler=FlowMatchEulerDiscreteScheduler(**FLUX2_SCHEDULER), vae=vae,
                              text_encoder=text_encoder, tokenizer=tok, transformer=transformer,
                              is_distilled=distilled)

def build_flux2_dev():
    """A tiny random Flux2Pipeline (FLUX.2 dev): Mistral3ForConditionalGeneration with 31 text layers so hidden
    states 10/20/30 exist (hidden 16: 3 x 16 = the transformer's 48-wide context), a 1-layer Pixtral vision tower,
    and the klein transformer with a guidance embedding."""
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, Flux2Pipeline
    from transformers import Mistral3Config, Mistral3ForConditionalGeneration

    tok = mistral_tokenizer()
    ids = {t: tok.convert_tokens_to_ids(t) for t in ("<s>", "</s>", "<pad>", "[IMG]")}
    cfg = Mistral3Config(
        text_config=dict(model_type="mistral", vocab_size=len(tok), hidden_size=16, intermediate_size=16,
                         num_hidden_layers=31, num_attention_heads=4, num_key_value_heads=2, head_dim=4,
                         sliding_window=None, bos_token_id=ids["<s>"], eos_token_id=ids["</s>"],
                         pad_token_id=ids["<pad>"]),
        vision_config=dict(model_type="pixtral", hidden_size=16, intermediate_size=16, num_hidden_layers=1,
                           num_attention_heads=2, head_dim=8, image_size=30, patch_size=6),
        image_token_index=ids["[IMG]"], spatial_merge_size=2, multimodal_projector_bias=False,
        projector_hidden_act="gelu", vision_feature_layer=-1,
        tie_word_embeddings=False)  # the real Mistral-Small-3.1 keeps its own lm_head
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        text_encoder = Mistral3ForConditionalGeneration(cfg)
        transformer, vae = _flux2_transformer_vae(guidance_embeds=True)
    return Flux2Pipeline(scheduler=FlowMatchEulerDiscreteScheduler(**FLUX2_SCHEDULER), vae=vae,
                         text_encoder=text_encoder, tokenizer=tok, transformer=transformer)


class _Flux2(DoubleSingle, Family):
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

    def encode_prompts(self, pipe, prompts, device, max_sequence_length, control=None):
        embeds, text_ids = pipe.encode_prompt(prompt=prompts, device=device, max_sequence_length=max_sequence_length)
        return {"encoder_hidden_states": embeds, "txt_ids": text_ids}

    @staticmethod
    def _bn_stats(pipe, z):
        vae = pipe.vae
        mean = vae.bn.running_mean.view(1, -1, 1, 1).to(z.device, z.dtype)
        std = torch.sqrt(vae.bn.running_var.view(1, -1, 1, 1) + vae.config.batch_norm_eps).to(z.device, z.dtype)
        return mean, std

    def encode_images(self, pipe, pixels, control=None):
        vae = pipe.vae
        z = vae.encode(pixels.to(vae.device, vae.dtype)).latent_dist.mode()
        z = pipe._patchify_latents(z)
        mean, std = self._bn_stats(pipe, z)
        z = (z - mean) / std
        return pipe._pack_latents(z), {"img_ids": pipe._prepare_latent_ids(z).to(z.device)}

    def transformer_timestep(self, sigmas, dtype):
        # both pipelines: timestep = t.expand(B).to(latents.dtype); they pass timestep / 1000
        return (sigmas.float() * 1000).to(dtype) / 1000

    def loop_latents(self, pipe, latents, height, width):
        # the loop steps the packed tokens [B, h*w, 128] (row-major, as _prepare_latent_ids numbers them);
        # `latents=` takes [B, 128, h, w] and packs it again
        b, n, c = latents.shape
        h, w = height // (pipe.vae_scale_factor * 2), width // (pipe.vae_scale_factor * 2)
        if h * w != n:
            raise ValueError(f"loop_latents: {n} tokens do not make a {h}x{w} grid ({height}x{width} px)")
        return latents.transpose(1, 2).reshape(b, c, h, w)


class Flux2Klein(_Flux2):
    flavours = {None: "black-forest-labs/FLUX.2-klein-base-9B", "klein-9b": "black-forest-labs/FLUX.2-klein-base-9B",
                "klein-4b": "black-forest-labs/FLUX.2-klein-base-4B"}
    pipeline_class_names = ("Flux2KleinPipeline",)
    _pipeline_module = "diffusers.pipelines.flux2.pipeline_flux2_klein"

    def tiny_builders(self):
        return {"flux2-klein": build_flux2_klein}

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

    def tiny_builders(self):
        return {"flux2-dev": build_flux2_dev}

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
        # output_type="latent" gives the packed tokens, the loop's own layout
        return self.loop_latents(pipe, latents, height, width)

    def inference_guidance(self, training_guidance):
        return self.default_inference_guidance

    def pipeline_kwargs(self, guidance, max_sequence_length):
        return {"max_sequence_length": max_sequence_length,
                "guidance_scale": self.default_inference_guidance if guidance is None else guidance}
