"""ComfyUI copies of a slow/fast pair: `glancetune export --run DIR` writes `DIR/comfyui/glance-slow.safetensors`
and `glance-fast.safetensors` in the key layout ComfyUI's LoRA loader reads natively.

Keys: `diffusion_model.<module>.lora_down.weight` / `.lora_up.weight` / `.alpha` (ComfyUI's "regular" LoRA names,
comfy/lora.py; its generic key map turns every model weight `diffusion_model.<module>.weight` into the LoRA key
`diffusion_model.<module>`), with the ORIGINAL model's module names. Sources of the name tables:
  - Qwen-Image (Edit, Edit-Plus): the diffusers names (ComfyUI's QwenImage key map, comfy/lora.py; diffusers'
    `_convert_non_diffusers_qwen_lora_to_diffusers` reads `diffusion_model.` + these names);
  - FLUX.1 and FLUX.2: BFL names, ComfyUI's `comfy.utils.flux_to_diffusers` (for FLUX.1 also diffusers'
    `_convert_kohya_flux_lora_to_diffusers`, for FLUX.2 `_convert_non_diffusers_flux2_lora_to_diffusers`);
  - SD3: MMDiT names, ComfyUI's `comfy.utils.mmdit_to_diffusers` (the last block's context modulation is stored
    with its halves swapped, `swap_scale_shift`: lora_up's rows are swapped alike).
Fused modules (`img_attn.qkv`, `txt_attn.qkv`, SD3's `x_block/context_block.attn.qkv`, FLUX.1's single-block
`linear1` = q, k, v, mlp) get their parts' LoRAs side by side: A = [A_q; A_k; A_v] (rank p*r for the p parts
trained), a block-diagonal B (zero rows for an untrained part) and alpha = p * alpha, so every part's delta is
unchanged. FLUX.2 copies use `lora_A` / `lora_B` with alpha / rank folded into lora_B and no `.alpha` keys (both
ComfyUI and diffusers' FLUX.2 reader take that; the latter refuses `.alpha`). The header keeps the pair's
metadata (glancetune.run, role, modelspec.*, the partner's ComfyUI file) and `glancetune.comfyui.parts` (which
diffusers modules each fused one holds), with which `from_comfyui` gives back the original tensors.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import GlanceError
from .files import WEIGHT_NAME, read_metadata

if TYPE_CHECKING:
    import torch

FOLDER = "comfyui"
QWEN = ("qwen_image", "qwen_image_edit", "qwen_image_edit_plus")
# comfy.utils.flux_to_diffusers: diffusers name inside transformer_blocks.N -> name inside double_blocks.N
FLUX_DOUBLE = {"flux": {"attn.to_out.0": "img_attn.proj", "norm1.linear": "img_mod.lin",
                        "norm1_context.linear": "txt_mod.lin", "attn.to_add_out": "txt_attn.proj",
                        "ff.net.0.proj": "img_mlp.0", "ff.net.2": "img_mlp.2", "ff_context.net.0.proj": "txt_mlp.0",
                        "ff_context.net.2": "txt_mlp.2"},
               "flux2": {"attn.to_out.0": "img_attn.proj", "attn.to_add_out": "txt_attn.proj",
                         "ff.linear_in": "img_mlp.0", "ff.linear_out": "img_mlp.2",
                         "ff_context.linear_in": "txt_mlp.0", "ff_context.linear_out": "txt_mlp.2"}}
QKV = {"img_attn.qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
       "txt_attn.qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj")}
FLUX_SINGLE = {"flux": {"norm.linear": "modulation.lin", "proj_out": "linear2"},
               "flux2": {"attn.to_qkv_mlp_proj": "linear1", "attn.to_out": "linear2"}}
FLUX_SINGLE_FUSED = {"linear1": ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")}  # FLUX.1
# comfy.utils.mmdit_to_diffusers (MMDIT_MAP_BLOCK): diffusers name inside transformer_blocks.N -> joint_blocks.N
SD3_BLOCK = {"norm1_context.linear": "context_block.adaLN_modulation.1", "attn.to_add_out": "context_block.attn.proj",
             "ff_context.net.0.proj": "context_block.mlp.fc1", "ff_context.net.2": "context_block.mlp.fc2",
             "norm1.linear": "x_block.adaLN_modulation.1", "attn.to_out.0": "x_block.attn.proj",
             "ff.net.0.proj": "x_block.mlp.fc1", "ff.net.2": "x_block.mlp.fc2"}
SD3_QKV = {"x_block.attn.qkv": QKV["img_attn.qkv"], "context_block.attn.qkv": QKV["txt_attn.qkv"]}
#: families whose copies use lora_A / lora_B with alpha folded into lora_B and no `.alpha` keys: diffusers' reader
#: of `diffusion_model.` FLUX.2 files (`_convert_non_diffusers_flux2_lora_to_diffusers`) refuses `.alpha` keys
FOLDED = ("flux2",)
SWAP = "swap_scale_shift"  # ComfyUI stores the last SD3 block's context modulation with its two halves swapped


def _one(out: dict, d: str, c: str, swap: bool = False) -> None:
    out[d] = (c, 0, (d,), (0,), swap)


def _fused(out: dict, block: str, c: str, parts: tuple[str, ...], rows: tuple[int, ...]) -> None:
    names = tuple(f"{block}.{p}" for p in parts)
    for k, n in enumerate(names):
        out[n] = (c, k, names, rows, False)


def targets(family: str, config: dict) -> dict[str, tuple]:
    """diffusers module -> (ComfyUI module, part index, the fused module's parts, their rows, swap halves)."""
    out: dict[str, tuple] = {}
    h = config["num_attention_heads"] * config["attention_head_dim"]
    if family in ("flux", "flux2"):
        for i in range(config["num_layers"]):
            b = f"transformer_blocks.{i}"
            for d, c in FLUX_DOUBLE[family].items():
                _one(out, f"{b}.{d}", f"double_blocks.{i}.{c}")
            for c, parts in QKV.items():
                _fused(out, b, f"double_blocks.{i}.{c}", parts, (h, h, h))
        for i in range(config["num_single_layers"]):
            b = f"single_transformer_blocks.{i}"
            for d, c in FLUX_SINGLE[family].items():
                _one(out, f"{b}.{d}", f"single_blocks.{i}.{c}")
            if family == "flux":  # FluxSingleTransformerBlock: mlp_ratio 4
                _fused(out, b, f"single_blocks.{i}.linear1", FLUX_SINGLE_FUSED["linear1"], (h, h, h, 4 * h))
    elif family == "sd3":
        n = config["num_layers"]
        for i in range(n):
            b = f"transformer_blocks.{i}"
            for d, c in SD3_BLOCK.items():
                _one(out, f"{b}.{d}", f"joint_blocks.{i}.{c}", swap=i == n - 1 and d == "norm1_context.linear")
            for c, parts in SD3_QKV.items():
                _fused(out, b, f"joint_blocks.{i}.{c}", parts, (h, h, h))
    return out


def _swap(t: torch.Tensor) -> torch.Tensor:
    import torch

    shift, scale = t.chunk(2, dim=0)
    return torch.cat([scale, shift], dim=0)


def _modules(sd: dict) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """diffusers LoRA state dict (`transformer.<m>.lora_A.weight`, ...) -> module -> (A, B)."""
    out = {}
    for k, a in sd.items():
        if k.endswith(".lora_A.weight"):
            m = k.removeprefix("transformer.").removesuffix(".lora_A.weight")
            out[m] = (a, sd[k.replace(".lora_A.", ".lora_B.")])
    return out


def _keys(family: str, comfy: str) -> tuple[str, str]:
    down, up = ("lora_A", "lora_B") if family in FOLDED else ("lora_down", "lora_up")
    return f"diffusion_model.{comfy}.{down}.weight", f"diffusion_model.{comfy}.{up}.weight"


def to_comfyui(sd: dict, family: str, config: dict, alpha: float) -> tuple[dict, dict]:
    """(ComfyUI state dict, {fused ComfyUI module: [its diffusers modules present]})."""
    import torch  # here, not at the module's top: the CLI's parser imports this module for every command

    mods = _modules(sd)
    if family in QWEN:
        table = {m: (m, 0, (m,), (0,), False) for m in mods}
    elif family in ("flux", "flux2", "sd3"):
        table = targets(family, config)
    else:
        raise GlanceError(f"export: the ComfyUI layout is not built for {family}")
    groups: dict[str, list[str]] = {}
    for m in mods:
        if m not in table:
            raise GlanceError(f"export: LoRA module {m} has no ComfyUI name in ComfyUI's {family} key map")
        groups.setdefault(table[m][0], []).append(m)
    out, parts = {}, {}
    for comfy, found in groups.items():
        _, _, names, rows, swap = table[found[0]]
        present = [n for n in names if n in found]  # the fused module's own order
        r = mods[present[0]][0].shape[0]
        a = torch.cat([mods[n][0] for n in present])
        if len(names) == 1:
            b = _swap(mods[present[0]][1]) if swap else mods[present[0]][1]
        else:
            b = torch.zeros(sum(rows), r * len(present), dtype=a.dtype)
            for j, n in enumerate(present):
                k = names.index(n)
                b[sum(rows[:k]):sum(rows[:k + 1]), j * r:(j + 1) * r] = mods[n][1]
            parts[comfy] = present
        down, up = _keys(family, comfy)
        if family in FOLDED:
            b = b * (float(alpha) / r)  # scale alpha / rank folded in (no .alpha key: diffusers reads scale 1)
        else:
            out[f"diffusion_model.{comfy}.alpha"] = torch.tensor(float(alpha) * len(present))
        out[down], out[up] = a.contiguous(), b.contiguous()
    return out, parts


def from_comfyui(sd: dict, family: str, config: dict, parts: dict, alpha: float | None = None) -> dict:
    """The inverse of `to_comfyui`: the diffusers LoRA state dict (`alpha`: the LoRA's, needed where it was
    folded into lora_B)."""
    out = {}
    table = targets(family, config) if family not in QWEN else {}
    by_comfy = {t[0]: d for d, t in table.items()}
    down_name = ".lora_A.weight" if family in FOLDED else ".lora_down.weight"
    for k, a in sd.items():
        if not k.endswith(down_name):
            continue
        comfy = k.removeprefix("diffusion_model.").removesuffix(down_name)
        b = sd[_keys(family, comfy)[1]]
        present = parts.get(comfy) or [comfy if family in QWEN else by_comfy[comfy]]
        r = a.shape[0] // len(present)
        if family in FOLDED:
            b = b / (float(alpha) / r)
        if comfy not in parts:
            swap = table.get(present[0], (None,) * 5)[4]
            out[f"transformer.{present[0]}.lora_A.weight"] = a
            out[f"transformer.{present[0]}.lora_B.weight"] = _swap(b) if swap else b
            continue
        _, _, names, rows, _ = table[present[0]]
        for j, n in enumerate(present):
            k0 = names.index(n)
            out[f"transformer.{n}.lora_A.weight"] = a[j * r:(j + 1) * r]
            out[f"transformer.{n}.lora_B.weight"] = b[sum(rows[:k0]):sum(rows[:k0 + 1]), j * r:(j + 1) * r]
    return {k: v.contiguous() for k, v in out.items()}


def converted(run: Path, role: str) -> tuple[dict, dict]:
    """(ComfyUI state dict, header) of one LoRA of a glance run."""
    from safetensors.torch import load_file

    from ..families import model_info
    from .files import read_record

    found = read_record(run / role)
    if found is None:
        raise GlanceError(f"export: {run / role}: no glancetune metadata (export needs a run of `glance`)")
    rec = found[0]
    meta = read_metadata(run / role)
    cfg = json.loads(meta.get("lora_adapter_metadata", "{}"))  # diffusers: "transformer.<LoraConfig key>"
    alpha = cfg.get("transformer.lora_alpha")
    if alpha is None or cfg.get("transformer.alpha_pattern") or cfg.get("transformer.rank_pattern"):
        raise GlanceError(f"export: {run / role}: no single LoRA alpha in the header (lora_adapter_metadata)")
    info = model_info(rec.base_model, rec.model_family)
    sd, parts = to_comfyui(load_file(str(run / role / WEIGHT_NAME)), rec.model_family, info.transformer_config,
                           alpha)
    other = "fast" if role == "slow" else "slow"
    header = {k: v for k, v in meta.items() if k != "lora_adapter_metadata"}
    header.update({"glancetune.partner": f"glance-{other}.safetensors", "glancetune.format": "comfyui",
                   "glancetune.comfyui.parts": json.dumps(parts, sort_keys=True),
                   "modelspec.implementation": "comfyui"})
    return sd, dict(sorted(header.items()))


def export_run(run: str | Path) -> list[Path]:
    """The ComfyUI copies of a run's slow and fast LoRAs into `run/comfyui/`: both converted first, then each
    written to a temporary name and renamed into place."""
    from safetensors.torch import save_file

    run = Path(run)
    done = {role: converted(run, role) for role in ("slow", "fast")}
    folder = run / FOLDER
    folder.mkdir(exist_ok=True)
    written = []
    for role, (sd, header) in done.items():
        path = folder / f"glance-{role}.safetensors"
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            save_file(sd, str(tmp), metadata=header)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        written.append(path)
    return written


def add_parser(sub) -> None:
    x = sub.add_parser("export", help="write ComfyUI copies of a slow+fast pair (RUN/comfyui/)")
    x.add_argument("--run", required=True, help="folder written by `glancetune glance`")
    x.add_argument("--format", choices=["comfyui"], default="comfyui")
    x.set_defaults(handler=cmd_export)


def cmd_export(args) -> int:
    for p in export_run(args.run):
        print(f"wrote {p}")
    return 0
