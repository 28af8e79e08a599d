"""Building blocks of the tiny random pipelines (families/tiny.py): tokenizers built in code from a byte alphabet
and a toy-width VAE with the real geometry. Each family's file builds its own tiny pipeline from these."""
from __future__ import annotations

import string


def byte_symbols() -> list[str]:
    from tokenizers import pre_tokenizers

    return sorted(pre_tokenizers.ByteLevel.alphabet())

def clip_tokenizer():
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in byte_symbols():
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)

def t5_tokenizer():
    from transformers import T5Tokenizer

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    for c in string.ascii_letters + string.digits + string.punctuation:
        pieces += [(c, -3.0), ("\u2581" + c, -3.5)]
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=512)

def tiny_vae(cls, **kwargs):
    """A 4-level (scale 8) VAE with 4 channels per level: real geometry, toy width."""
    return cls(down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
               block_out_channels=(4, 4, 4, 4), layers_per_block=1, norm_num_groups=1, use_quant_conv=False,
               use_post_quant_conv=False, **kwargs)

def qwen2_tokenizer():
    """Byte-level Qwen2 tokenizer (one token per byte) with the chat/vision special tokens the pipelines use."""
    from transformers import Qwen2Tokenizer

    vocab = {"<|endoftext|>": 0}
    for c in byte_symbols():
        vocab[c] = len(vocab)
    tok = Qwen2Tokenizer(vocab=vocab, merges=[], unk_token=None, bos_token=None, eos_token="<|endoftext|>",
                         pad_token="<|endoftext|>")
    tok.add_special_tokens({"additional_special_tokens": [
        "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]})
    return tok

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
    for c in byte_symbols():
        vocab[c] = len(vocab)
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tk.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="<pad>", additional_special_tokens=list(MISTRAL_SPECIALS[3:]),
                                   chat_template=MISTRAL_CHAT_TEMPLATE, model_max_length=512)
