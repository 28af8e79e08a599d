"""Tiny random pipelines built in code (no downloads), saved with `save_pretrained`, loaded via `from_pretrained`.

`tiny:flux` resolves to a cached folder holding such a pipeline; `glancetune tiny flux DIR` writes one anywhere.
Architectures keep the real channel counts, VAE scale (8) and packing, and the scheduler carries the real model's
config, so token counts and ladders at a given resolution equal the full-size model's. Weights are random: the
images are noise-like, but every code path (tokenise, encode, pack, LoRA, sample, decode) is the production one.
"""
from __future__ import annotations

import os
import shutil
import string
import tempfile
from pathlib import Path

from .errors import GlanceError
from .process import cache_root

# FLUX.1-dev's scheduler_config.json (black-forest-labs/FLUX.1-dev), verbatim values.
FLUX1_DEV_SCHEDULER = dict(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5,
                           max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096)
# FLUX.1-schnell's scheduler_config.json: no shift at all.
FLUX1_SCHNELL_SCHEDULER = dict(num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=False, base_shift=0.5,
                               max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096)
# Qwen-Image's scheduler_config.json (Qwen/Qwen-Image).
QWEN_IMAGE_SCHEDULER = dict(num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=True, base_shift=0.5,
                            max_shift=0.9, base_image_seq_len=256, max_image_seq_len=8192, shift_terminal=0.02,
                            time_shift_type="exponential", invert_sigmas=False, stochastic_sampling=False,
                            use_karras_sigmas=False, use_exponential_sigmas=False, use_beta_sigmas=False)

TINY_VERSION = "2"  # 2: FLUX.2-dev's Mistral-3 lm_head untied, as in the real model


def _byte_symbols() -> list[str]:
    from tokenizers import pre_tokenizers

    return sorted(pre_tokenizers.ByteLevel.alphabet())


def clip_tokenizer():
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in _byte_symbols():
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def t5_tokenizer():
    from transformers import T5Tokenizer

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    for c in string.ascii_letters + string.digits + string.punctuation:
        pieces += [(c, -3.0), ("\u2581" + c, -3.5)]
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=512)


def _tiny_vae(cls, **kwargs):
    """A 4-level (scale 8) VAE with 4 channels per level: real geometry, toy width."""
    return cls(down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
               block_out_channels=(4, 4, 4, 4), layers_per_block=1, norm_num_groups=1, use_quant_conv=False,
               use_post_quant_conv=False, **kwargs)


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
        vae = _tiny_vae(AutoencoderKL, latent_channels=16, shift_factor=0.1159, scaling_factor=0.3611)
    scheduler = FlowMatchEulerDiscreteScheduler(**(scheduler_config or FLUX1_DEV_SCHEDULER))
    return FluxPipeline(scheduler=scheduler, vae=vae, text_encoder=clip, tokenizer=ct, text_encoder_2=t5,
                        tokenizer_2=tt, transformer=transformer)


# stabilityai/stable-diffusion-3-medium-diffusers scheduler_config.json (SD3.5 uses the same shift)
SD3_SCHEDULER = dict(num_train_timesteps=1000, shift=3.0)


def build_sd3(scheduler_config: dict | None = None):
    """A tiny random StableDiffusion3Pipeline (16-channel unpacked latents, VAE scale 8, patch 2, 2x CLIP + T5)."""
    import torch
    from diffusers import (AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel,
                           StableDiffusion3Pipeline)
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
        vae = _tiny_vae(AutoencoderKL, latent_channels=16, shift_factor=0.0609, scaling_factor=1.5305)
    scheduler = FlowMatchEulerDiscreteScheduler(**(scheduler_config or SD3_SCHEDULER))
    return StableDiffusion3Pipeline(scheduler=scheduler, vae=vae, text_encoder=clip1, tokenizer=ct,
                                    text_encoder_2=clip2, tokenizer_2=ct2, text_encoder_3=t5, tokenizer_3=tt,
                                    transformer=transformer)


def qwen2_tokenizer():
    """Byte-level Qwen2 tokenizer (one token per byte) with the chat/vision special tokens the pipelines use."""
    from transformers import Qwen2Tokenizer

    vocab = {"<|endoftext|>": 0}
    for c in _byte_symbols():
        vocab[c] = len(vocab)
    tok = Qwen2Tokenizer(vocab=vocab, merges=[], unk_token=None, bos_token=None, eos_token="<|endoftext|>",
                         pad_token="<|endoftext|>")
    tok.add_special_tokens({"additional_special_tokens": [
        "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]})
    return tok


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


def qwen2vl_processor(tokenizer):
    """A stock Qwen2VLProcessor for the Edit pipelines, or None where it cannot be built: under transformers 5 its
    video processor needs torchvision (not installable on every machine, e.g. CPU-only test machines)."""
    try:
        import torchvision  # noqa: F401
        from transformers import Qwen2VLImageProcessor, Qwen2VLProcessor, Qwen2VLVideoProcessor

        return Qwen2VLProcessor(image_processor=Qwen2VLImageProcessor(), tokenizer=tokenizer,
                                video_processor=Qwen2VLVideoProcessor())
    except Exception:  # ImportError, or a torchvision build that does not match torch
        return None


def build_qwen_image_edit(plus: bool = False):
    """A tiny random QwenImageEditPipeline (QwenImageEditPlusPipeline with `plus`): the Qwen-Image components
    (Qwen-Image-Edit's scheduler config equals Qwen-Image's) plus a stock Qwen2VLProcessor where torchvision is
    available. Without torchvision the folder is saved with `processor: null` and loads only with a processor given
    (`components={"processor": ...}`, see README "Pointing at a real model")."""
    from diffusers import QwenImageEditPipeline, QwenImageEditPlusPipeline

    parts = _qwen_image_components()
    cls = QwenImageEditPlusPipeline if plus else QwenImageEditPipeline
    return cls(processor=qwen2vl_processor(parts["tokenizer"]), **parts)


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
    vae = _tiny_vae(AutoencoderKLFlux2, latent_channels=32)
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


# Mistral-Small-3.1's special tokens, at their real ids ([IMG] 10, <pad> 11)
MISTRAL_SPECIALS = ("<unk>", "<s>", "</s>", "[INST]", "[/INST]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]",
                    "[TOOL_RESULTS]", "[/TOOL_RESULTS]", "[TOOL_CALLS]", "[IMG]", "<pad>", "[IMG_BREAK]", "[IMG_END]",
                    "[PREFIX]", "[MIDDLE]", "[SUFFIX]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]", "[TOOL_CONTENT]")
# Mistral-Small-3.1's chat layout: bos, [SYSTEM_PROMPT]..[/SYSTEM_PROMPT], [INST]..[/INST], content as a string or
# a list of {"type": "text" | "image"} blocks (Flux2Pipeline sends lists)
MISTRAL_CHAT_TEMPLATE = (
    "{%- macro render(content) -%}{%- if content is string -%}{{ content }}{%- else -%}{%- for c in content -%}"
    "{%- if c['type'] == 'text' -%}{{ c['text'] }}{%- elif c['type'] == 'image' -%}[IMG]{%- endif -%}{%- endfor -%}"
    "{%- endif -%}{%- endmacro -%}"
    "{{ bos_token }}{%- for m in messages -%}"
    "{%- if m['role'] == 'system' -%}[SYSTEM_PROMPT]{{ render(m['content']) }}[/SYSTEM_PROMPT]"
    "{%- elif m['role'] == 'user' -%}[INST]{{ render(m['content']) }}[/INST]"
    "{%- else -%}{{ render(m['content']) }}{{ eos_token }}{%- endif -%}{%- endfor -%}")


def mistral_tokenizer():
    """Byte-level BPE (one token per byte) with Mistral-3's special tokens and chat template. The real FLUX.2-dev
    folder holds a PixtralProcessor, which transformers 5 cannot build without torchvision; the pipeline only calls
    `apply_chat_template`, which a tokenizer has too."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {s: i for i, s in enumerate(MISTRAL_SPECIALS)}
    for c in _byte_symbols():
        vocab[c] = len(vocab)
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tk.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="<pad>", additional_special_tokens=list(MISTRAL_SPECIALS[3:]),
                                   chat_template=MISTRAL_CHAT_TEMPLATE, model_max_length=512)


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


BUILDERS = {"flux2-klein": build_flux2_klein, "flux2-dev": build_flux2_dev, "qwen_image": build_qwen_image,
            "sd3": build_sd3, "flux": build_flux,
            "flux-schnell": lambda: build_flux(FLUX1_SCHNELL_SCHEDULER, guidance_embeds=False),
            "qwen_image_edit": build_qwen_image_edit,
            "qwen_image_edit_plus": lambda: build_qwen_image_edit(plus=True)}


TMP_MARK = ".tmp-"  # temp folders: .<name>.tmp-<pid>-<random>, beside the target


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def clean_stale_temps(directory: Path) -> list[Path]:
    """Remove the temp folders that earlier `write_tiny`s of `directory` left when killed: only ours (named
    `.<name>.tmp-<pid>-...`), and only those whose writing process is gone (a concurrent writer's stays)."""
    removed = []
    if not directory.parent.is_dir():
        return removed
    for tmp in directory.parent.glob(f".{directory.name}{TMP_MARK}*"):
        pid = tmp.name[len(f".{directory.name}{TMP_MARK}"):].split("-", 1)[0]
        if tmp.is_dir() and pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(tmp, ignore_errors=True)
            removed.append(tmp)
    return removed


def write_tiny(family: str, directory: str | os.PathLike) -> Path:
    """Build the tiny pipeline for `family` and save it to `directory` atomically: into a temp folder beside it,
    renamed when complete, so a kill at any point leaves no folder that loads as an incomplete model (the next
    write removes the temp folders of killed writers)."""
    if family not in BUILDERS:
        raise GlanceError(f"tiny: unknown family {family!r}; available: {', '.join(sorted(BUILDERS))}")
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise GlanceError(f"tiny: {directory} is a file; give a new or empty folder")
    if directory.exists() and any(directory.iterdir()):
        raise GlanceError(f"tiny: {directory} already exists and is not empty")
    try:
        directory.parent.mkdir(parents=True, exist_ok=True)
        clean_stale_temps(directory)
        tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}{TMP_MARK}{os.getpid()}-", dir=directory.parent))
    except OSError as e:
        raise GlanceError(f"tiny: cannot write {directory} ({e.strerror or type(e).__name__}: "
                          f"{e.filename or directory.parent})") from None
    try:
        BUILDERS[family]().save_pretrained(tmp)
        if directory.exists():
            directory.rmdir()  # empty (checked above); fails if a concurrent writer filled it meanwhile
        os.replace(tmp, directory)
    except OSError as e:  # disk full, or another process wrote `directory` meanwhile
        raise GlanceError(f"tiny: could not write {directory} ({e.strerror or type(e).__name__})") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return directory


def resolve_tiny(ref: str) -> Path:
    """`tiny:<family>` -> path of a cached tiny pipeline folder, built on first use."""
    family = ref.split(":", 1)[1]
    path = cache_root() / "tiny" / f"{family}-v{TINY_VERSION}"
    if not (path / "model_index.json").exists():
        if family not in BUILDERS:
            raise GlanceError(f"{ref}: unknown tiny model; available: "
                              + ", ".join(f"tiny:{f}" for f in sorted(BUILDERS)))
        shutil.rmtree(path, ignore_errors=True)
        try:
            write_tiny(family, path)
        except GlanceError:
            if not (path / "model_index.json").exists():  # a concurrent builder did not win the race either
                raise
    return path


def add_parser(sub) -> None:
    t = sub.add_parser("tiny", help="write a tiny random pipeline folder (offline tests, demos)")
    t.add_argument("family")
    t.add_argument("dir")
    t.set_defaults(handler=cmd_tiny)


def cmd_tiny(args) -> int:
    print(f"wrote {write_tiny(args.family, args.dir)}")
    return 0
