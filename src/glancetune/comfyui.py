"""ComfyUI copies of a slow/fast pair: `glancetune export --run DIR` writes `DIR/comfyui/glance-slow.safetensors`
and `glance-fast.safetensors` in the key layout ComfyUI's LoRA loader reads natively.

Layout: `diffusion_model.<module>.lora_down.weight` / `.lora_up.weight` / `.alpha` (ComfyUI's "regular" LoRA
names, comfy/lora.py `load_lora`; its generic key map turns every model weight `diffusion_model.<module>.weight`
into the LoRA key `diffusion_model.<module>`), with the ORIGINAL model's module names:
  - Qwen-Image (and Edit, Edit-Plus): the same names as diffusers (ComfyUI's QwenImage key map, comfy/lora.py;
    diffusers `_convert_non_diffusers_qwen_lora_to_diffusers` reads `diffusion_model.` + the diffusers names);
  - FLUX.1: BFL names from ComfyUI's `comfy.utils.flux_to_diffusers` (the same table as diffusers'
    `_convert_sd_scripts_to_ai_toolkit` in `_convert_kohya_flux_lora_to_diffusers`): `double_blocks.N.img_attn.qkv`
    fuses to_q/to_k/to_v, `txt_attn.qkv` fuses add_q/k/v_proj, `single_blocks.N.linear1` fuses to_q/to_k/to_v and
    proj_mlp ([h, h, h, 4h] rows), and the one-to-one names of its `block_map`.
A fused module gets the LoRAs of its parts side by side: A = [A_q; A_k; A_v] (rank p*r for the p parts trained)
and a block-diagonal B (zero rows for an untrained part), alpha = p * alpha, so scale = alpha / rank and every
part's delta are unchanged. The header keeps the pair's metadata (glancetune.run, role, modelspec.*, the
partner's ComfyUI file) and `glancetune.comfyui.parts` (which diffusers modules each fused one holds), which
`from_comfyui` uses to give back exactly the original tensors. FLUX.2 and SD3 are not built yet.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from .errors import GlanceError
from .export import WEIGHT_NAME, read_metadata

FOLDER = "comfyui"
QWEN = ("qwen_image", "qwen_image_edit", "qwen_image_edit_plus")
# comfy.utils.flux_to_diffusers: diffusers name inside transformer_blocks.N -> name inside double_blocks.N
FLUX_DOUBLE = {"attn.to_out.0": "img_attn.proj", "norm1.linear": "img_mod.lin", "norm1_context.linear": "txt_mod.lin",
               "attn.to_add_out": "txt_attn.proj", "ff.net.0.proj": "img_mlp.0", "ff.net.2": "img_mlp.2",
               "ff_context.net.0.proj": "txt_mlp.0", "ff_context.net.2": "txt_mlp.2"}
FLUX_DOUBLE_FUSED = {"img_attn.qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
                     "txt_attn.qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj")}
FLUX_SINGLE = {"norm.linear": "modulation.lin", "proj_out": "linear2"}
FLUX_SINGLE_FUSED = {"linear1": ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")}


def flux_targets(config: dict) -> dict[str, tuple[str, int, tuple[str, ...], tuple[int, ...]]]:
    """diffusers module -> (ComfyUI module, part index, the fused module's parts, their row counts)."""
    h = config["num_attention_heads"] * config["attention_head_dim"]
    out = {}
    for i in range(config["num_layers"]):
        for d, c in FLUX_DOUBLE.items():
            n = f"transformer_blocks.{i}.{d}"
            out[n] = (f"double_blocks.{i}.{c}", 0, (n,), (0,))
        for c, parts in FLUX_DOUBLE_FUSED.items():
            names = tuple(f"transformer_blocks.{i}.{p}" for p in parts)
            for k, n in enumerate(names):
                out[n] = (f"double_blocks.{i}.{c}", k, names, (h, h, h))
    for i in range(config["num_single_layers"]):
        for d, c in FLUX_SINGLE.items():
            n = f"single_transformer_blocks.{i}.{d}"
            out[n] = (f"single_blocks.{i}.{c}", 0, (n,), (0,))
        for c, parts in FLUX_SINGLE_FUSED.items():
            names = tuple(f"single_transformer_blocks.{i}.{p}" for p in parts)
            for k, n in enumerate(names):
                out[n] = (f"single_blocks.{i}.{c}", k, names, (h, h, h, 4 * h))  # FluxSingleTransformerBlock mlp_ratio 4
    return out


def _modules(sd: dict) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """diffusers LoRA state dict (`transformer.<m>.lora_A.weight`, ...) -> module -> (A, B)."""
    out = {}
    for k, a in sd.items():
        if k.endswith(".lora_A.weight"):
            m = k.removeprefix("transformer.").removesuffix(".lora_A.weight")
            out[m] = (a, sd[k.replace(".lora_A.", ".lora_B.")])
    return out


def to_comfyui(sd: dict, family: str, config: dict, alpha: float) -> tuple[dict, dict]:
    """(ComfyUI state dict, {fused ComfyUI module: [its diffusers modules present]})."""
    mods = _modules(sd)
    if family in QWEN:
        out = {}
        for m, (a, b) in mods.items():
            out.update({f"diffusion_model.{m}.lora_down.weight": a, f"diffusion_model.{m}.lora_up.weight": b,
                        f"diffusion_model.{m}.alpha": torch.tensor(float(alpha))})
        return out, {}
    if family != "flux":
        raise GlanceError(f"export: the ComfyUI layout is built for FLUX.1 and Qwen-Image, not {family} yet")
    targets = flux_targets(config)
    groups: dict[str, list[str]] = {}
    for m in mods:
        if m not in targets:
            raise GlanceError(f"export: LoRA module {m} has no ComfyUI name (comfy.utils.flux_to_diffusers)")
        groups.setdefault(targets[m][0], []).append(m)
    out, parts = {}, {}
    for comfy, found in groups.items():
        _, _, names, rows = targets[found[0]]
        present = [n for n in names if n in found]  # the fused module's own order
        a = torch.cat([mods[n][0] for n in present])
        if len(names) == 1:
            b = mods[present[0]][1]
        else:
            r = mods[present[0]][0].shape[0]
            b = torch.zeros(sum(rows), r * len(present), dtype=a.dtype)
            for j, n in enumerate(present):
                k = names.index(n)
                b[sum(rows[:k]):sum(rows[:k + 1]), j * r:(j + 1) * r] = mods[n][1]
            parts[comfy] = present
        out.update({f"diffusion_model.{comfy}.lora_down.weight": a.contiguous(),
                    f"diffusion_model.{comfy}.lora_up.weight": b.contiguous(),
                    f"diffusion_model.{comfy}.alpha": torch.tensor(float(alpha) * len(present))})
    return out, parts


def from_comfyui(sd: dict, family: str, config: dict, parts: dict) -> dict:
    """The inverse of `to_comfyui`: the diffusers LoRA state dict (alpha is the per-part one of the header)."""
    out = {}
    targets = flux_targets(config) if family == "flux" else {}
    for k, a in sd.items():
        if not k.endswith(".lora_down.weight"):
            continue
        comfy = k.removeprefix("diffusion_model.").removesuffix(".lora_down.weight")
        b = sd[k.replace(".lora_down.", ".lora_up.")]
        if comfy not in parts:
            m = comfy if family in QWEN else next(d for d, t in targets.items() if t[0] == comfy)
            out[f"transformer.{m}.lora_A.weight"], out[f"transformer.{m}.lora_B.weight"] = a, b
            continue
        present = parts[comfy]
        r = a.shape[0] // len(present)
        _, _, names, rows = targets[present[0]]
        for j, n in enumerate(present):
            k0 = names.index(n)
            out[f"transformer.{n}.lora_A.weight"] = a[j * r:(j + 1) * r]
            out[f"transformer.{n}.lora_B.weight"] = b[sum(rows[:k0]):sum(rows[:k0 + 1]), j * r:(j + 1) * r]
    return {k: v.contiguous() for k, v in out.items()}


def converted(run: Path, role: str) -> tuple[dict, dict]:
    """(ComfyUI state dict, header) of one LoRA of a glance run."""
    from safetensors.torch import load_file

    from .families import model_info
    from .record import read_record

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


def cmd_export(args) -> int:
    for p in export_run(args.run):
        print(f"wrote {p}")
    return 0
