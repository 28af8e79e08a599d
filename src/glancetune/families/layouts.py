"""What several families share about their transformer's layout: ComfyUI key-map builders (`comfy_one`,
`comfy_fused`, the joint blocks' fused attention), and the double-then-single block layout of FLUX.1 and FLUX.2
(`DoubleSingle`: TREAD's blocks and rotary rows, ComfyUI's BFL names)."""
from __future__ import annotations

import torch


def comfy_one(out: dict, d: str, c: str, swap: bool = False) -> None:
    """ComfyUI key map entry: diffusers module `d` is ComfyUI module `c` (`swap`: stored with its halves swapped)."""
    out[d] = (c, 0, (d,), (0,), swap)


def comfy_fused(out: dict, block: str, c: str, parts: tuple[str, ...], rows: tuple[int, ...]) -> None:
    """ComfyUI key map entries of a fused module `c` made of the diffusers modules `block.<part>` (`rows` each)."""
    names = tuple(f"{block}.{p}" for p in parts)
    for k, n in enumerate(names):
        out[n] = (c, k, names, rows, False)


#: the fused attention projections of a joint block (ComfyUI / BFL name -> diffusers modules, in order)
COMFY_QKV = {"img_attn.qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
             "txt_attn.qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj")}


class DoubleSingle:
    """The transformers that run `transformer_blocks` then `single_transformer_blocks` (FLUX.1, FLUX.2) with one
    (cos, sin) rotary pair over the text tokens followed by the image tokens: TREAD's block list and rotary rows
    (engine/tread.py), and ComfyUI's key map in BFL names. Put before Family in the bases."""

    def tread_blocks_count(self, transformer_config: dict) -> int | None:
        return transformer_config["num_layers"] + transformer_config["num_single_layers"]

    def tread_blocks(self, transformer) -> list:
        return [*transformer.transformer_blocks, *transformer.single_transformer_blocks]

    def tread_rope_rows(self, rope, text_tokens: int, keep):
        rows = torch.cat([torch.arange(text_tokens, device=keep.device), keep + text_tokens])
        return tuple(t.index_select(0, rows) for t in rope)

    # ComfyUI (comfy.utils.flux_to_diffusers): diffusers name inside transformer_blocks.N -> inside double_blocks.N,
    # inside single_transformer_blocks.N -> inside single_blocks.N; fused single-block modules -> their parts
    comfyui_double: dict[str, str] = {}
    comfyui_single: dict[str, str] = {}
    comfyui_single_fused: dict[str, tuple[str, ...]] = {}
    comfyui_single_fused_rows: tuple[int, ...] = ()  # multiples of the hidden size, per part

    def comfyui_targets(self, transformer_config: dict) -> dict[str, tuple]:
        out: dict[str, tuple] = {}
        h = transformer_config["num_attention_heads"] * transformer_config["attention_head_dim"]
        for i in range(transformer_config["num_layers"]):
            b = f"transformer_blocks.{i}"
            for d, c in self.comfyui_double.items():
                comfy_one(out, f"{b}.{d}", f"double_blocks.{i}.{c}")
            for c, parts in COMFY_QKV.items():
                comfy_fused(out, b, f"double_blocks.{i}.{c}", parts, (h, h, h))
        for i in range(transformer_config["num_single_layers"]):
            b = f"single_transformer_blocks.{i}"
            for d, c in self.comfyui_single.items():
                comfy_one(out, f"{b}.{d}", f"single_blocks.{i}.{c}")
            for c, parts in self.comfyui_single_fused.items():
                comfy_fused(out, b, f"single_blocks.{i}.{c}", parts, tuple(r * h for r in self.comfyui_single_fused_rows))
        return out
