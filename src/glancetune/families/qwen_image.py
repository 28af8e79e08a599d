"""Qwen-Image: QwenImagePipeline, Qwen2.5-VL text encoder (embeds + mask), 3-D VAE with per-channel latent
normalisation, 2x2-packed 64-channel tokens with `img_shapes`, sigma timesteps, true CFG at inference."""
from __future__ import annotations

import torch

from .base import Family, PublishedLoras
from .tiny_parts import qwen2_tokenizer

# Qwen-Image's scheduler_config.json (Qwen/Qwen-Image).
QWEN_IMAGE_SCHEDULER = dict(num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=True, base_shift=0.5,
                            max_shift=0.9, base_image_seq_len=256, max_image_seq_len=8192, shift_terminal=0.02,
                            time_shift_type="exponential", invert_sigmas=False, stochastic_sampling=False,
                            use_karras_sigmas=False, use_exponential_sigmas=False, use_beta_sigmas=False)

def _qwen_image_components(scheduler_config: dict | None = None) -> dict:
    """Tiny random Qwen-Image components (Qwen2.5-VL text encoder with a vision tower, 3-D VAE scale 8, 2x2-packed
    64-channel transformer), shared by the text-to-image and the Edit pipelines."""
    import torch
    from diffusers import AutoencoderKLQwenImage, FlowMatchEulerDiscreteScheduler, QwenImageTransformer2DModel
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    tok = qwen2_tokenizer()
    ids = {k: tok.convert_tokens_to_ids(k) for k in ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>",
                                                     "<|vision_end|>", "<|im_start|>", "<|endoftext|>")}
    text = dict(vocab_size=len(tok), hidden_size=16, intermediate_size=16, num_hidden_layers=2,
                num_attention_heads=2, num_key_value_heads=2, bos_token_id=ids["<|im_start|>"],
                eos_token_id=ids["<|endoftext|>"], pad_token_id=ids["<|endoftext|>"],
                rope_parameters={"rope_type": "default", "mrope_section": [1, 1, 2], "rope_theta": 1000000.0})
    cfg = Qwen2_5_VLConfig(text_config=text, vision_config=dict(depth=2, hidden_size=16, intermediate_size=16,
                                                                num_heads=2, out_hidden_size=16,
                                                                fullatt_block_indexes=[1]),
                           image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
                           vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        text_encoder = Qwen2_5_VLForConditionalGeneration(cfg)
        transformer = QwenImageTransformer2DModel(patch_size=2, in_channels=64, out_channels=16, num_layers=2,
                                                  attention_head_dim=16, num_attention_heads=2,
                                                  joint_attention_dim=16, axes_dims_rope=(8, 4, 4))
        vae = AutoencoderKLQwenImage(base_dim=4, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=1,
                                     temperal_downsample=[False, True, True],
                                     latents_mean=[0.1 * (i % 4) for i in range(16)],
                                     latents_std=[1.0 + 0.25 * (i % 3) for i in range(16)])
    scheduler = FlowMatchEulerDiscreteScheduler(**(scheduler_config or QWEN_IMAGE_SCHEDULER))
    return dict(scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tok, transformer=transformer)

def build_qwen_image(scheduler_config: dict | None = None):
    """A tiny random QwenImagePipeline (Qwen2.5-VL text encoder, 3-D VAE scale 8, 2x2-packed 64-channel tokens)."""
    from diffusers import QwenImagePipeline

    return QwenImagePipeline(**_qwen_image_components(scheduler_config))


class QwenImage(Family):
    max_sequence_length_limit = 1024  # QwenImage(Edit)(Plus)Pipeline.check_inputs
    name = "qwen_image"
    flavours = {None: "Qwen/Qwen-Image", "v1.0": "Qwen/Qwen-Image"}
    # Edit models have their own pipelines (families in qwen_image_edit.py); SimpleTuner's names are aliases
    flavour_families = {"edit": "qwen_image_edit", "edit-v1": "qwen_image_edit",
                        "edit-plus": "qwen_image_edit_plus", "edit-v2": "qwen_image_edit_plus",
                        "edit-2511": "qwen_image_edit_plus:2511"}
    pipeline_class_names = ("QwenImagePipeline",)
    # the official Glance Qwen LoRAs: attention (image + text streams), MLP outputs, modulation
    default_lora_targets = ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj",
                            "to_add_out", "img_mlp.net.2", "txt_mlp.net.2", "img_mod.1", "txt_mod.1")
    lora_presets = {"all": default_lora_targets + ("img_mlp.net.0.proj", "txt_mlp.net.0.proj"),
                    "attention": ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj",
                                  "to_add_out"),
                    "mlp": ("img_mlp.net.0.proj", "img_mlp.net.2", "txt_mlp.net.0.proj", "txt_mlp.net.2"),
                    "tiny": ("to_q", "to_k", "to_v")}
    encoder_components = ("text_encoder", "vae")
    default_cfg = 5.0  # true_cfg_scale of the official Glance Qwen recipe (both phases)
    negative_prompt = " "

    def comfyui_targets(self, transformer_config):
        return None  # ComfyUI's QwenImage key map reads the diffusers module names

    def tiny_builders(self):
        return {"qwen_image": build_qwen_image}

    # CSU-JPG/Glance train_Glance_qwen.py: LoraConfig(r=rank, lora_alpha=rank*4, the 12 targets above), saved by
    # QwenImagePipeline.save_lora_weights without adapter metadata; timesteps from its custom_timesteps lists
    published = (PublishedLoras(
        name="glance-qwen", source="huggingface.co/CSU-JPG/Glance glance_qwen_slow/fast.safetensors",
        base_model="Qwen/Qwen-Image", blocks="transformer_blocks",
        module_types=("attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "attn.add_q_proj", "attn.add_k_proj",
                      "attn.add_v_proj", "attn.to_add_out", "img_mlp.net.2", "txt_mlp.net.2", "img_mod.1",
                      "txt_mod.1"),
        rank=32, alpha_per_rank=4.0,
        slow_timesteps=(1000.0, 979.1915, 957.5157, 934.9171, 911.3354),
        fast_timesteps=(886.7053, 745.0728, 562.9505, 320.0802, 20.0),
        guidance=5.0),)

    true_cfg = True

    def pipeline_class(self):
        from diffusers import QwenImagePipeline

        return QwenImagePipeline

    def alignment(self, info):
        return 2 ** len(info.vae_config["temperal_downsample"]) * 2

    def mu(self, scheduler_config, image_seq_len, num_steps):
        return self.linear_mu(scheduler_config, image_seq_len)

    def encode_prompts(self, pipe, prompts, device, max_sequence_length, control=None):
        embeds, mask = pipe.encode_prompt(prompt=prompts, device=device, max_sequence_length=max_sequence_length)
        if mask is None:
            mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device)
        return {"encoder_hidden_states": embeds, "encoder_hidden_states_mask": mask}

    def encode_images(self, pipe, pixels, control=None):
        vae = pipe.vae
        z = vae.encode(pixels.unsqueeze(2).to(vae.device, vae.dtype)).latent_dist.mode()  # [B, C, 1, h, w]
        mean = torch.tensor(vae.config.latents_mean, device=z.device, dtype=z.dtype).view(1, -1, 1, 1, 1)
        std = torch.tensor(vae.config.latents_std, device=z.device, dtype=z.dtype).view(1, -1, 1, 1, 1)
        z = (z - mean) / std
        b, c, _, h, w = z.shape
        return pipe._pack_latents(z, b, c, h, w), {"img_shapes": [[(1, h // 2, w // 2)]] * b}

    def training_text(self, text):
        """As the pipeline's `encode_prompt`: a mask without padding (every token attended) is dropped, so the
        joint attention runs without a mask (torch's SDPA can then use its flash kernel) during training as in
        sampling. The same values: a mask of ones changes nothing (bit-identical on the CPU, tested)."""
        mask = text.get("encoder_hidden_states_mask")
        return {**text, "encoder_hidden_states_mask": None} if mask is not None and bool(mask.all()) else text

    def collate(self, items):
        """Captions of different lengths: pad embeddings with zeros and masks with 0 (as the pipeline does); a
        sample without a mask (`training_text`) attends to all its tokens."""
        if "encoder_hidden_states" not in items[0]:
            return super().collate(items)
        n = max(it["encoder_hidden_states"].shape[1] for it in items)
        if all(it["encoder_hidden_states_mask"] is None and it["encoder_hidden_states"].shape[1] == n for it in items):
            return super().collate(items)
        padded = []
        for it in items:
            e, m = it["encoder_hidden_states"], it["encoder_hidden_states_mask"]
            if m is None:
                m = torch.ones(e.shape[:2], dtype=torch.long, device=e.device)
            pad = n - e.shape[1]
            padded.append({**it, "encoder_hidden_states": torch.nn.functional.pad(e, (0, 0, 0, pad)),
                           "encoder_hidden_states_mask": torch.nn.functional.pad(m, (0, pad))})
        return super().collate(padded)

    # TREAD: the 60 dual-stream blocks (joint: image and text apart); the rotary embedding is (image rows, text
    # rows), so the kept tokens take their image rows and the text keeps its own; the joint attention mask is built
    # inside each block from the image tokens it is given
    def tread_blocks_count(self, transformer_config: dict) -> int | None:
        return transformer_config["num_layers"]

    def tread_blocks(self, transformer) -> list:
        return list(transformer.transformer_blocks)

    def tread_rope_rows(self, rope, text_tokens: int, keep):
        return rope[0].index_select(0, keep), rope[1]

    def transformer_timestep(self, sigmas, dtype):
        # QwenImagePipeline: timestep = t.to(latents.dtype); passes timestep / 1000
        return (sigmas.float() * 1000).to(dtype) / 1000

    def inference_guidance(self, training_guidance):
        return self.default_cfg

    def pipeline_kwargs(self, guidance, max_sequence_length):
        kw = {"max_sequence_length": max_sequence_length}
        if guidance is not None and guidance > 1:
            kw.update(true_cfg_scale=guidance, negative_prompt=self.negative_prompt)
        return kw
