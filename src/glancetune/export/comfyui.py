"""ComfyUI copies of a slow/fast pair: `glancetune export --run DIR` writes `DIR/comfyui/glance-slow.safetensors`
and `glance-fast.safetensors` in the key layout ComfyUI's LoRA loader reads natively, and the workflow that samples
them (`glance-workflow-api.json`, comfy_workflow.py).

Keys: `diffusion_model.<module>.lora_down.weight` / `.lora_up.weight` / `.alpha` (ComfyUI's "regular" LoRA names,
comfy/lora.py; its generic key map turns every model weight `diffusion_model.<module>.weight` into the LoRA key
`diffusion_model.<module>`), with the ORIGINAL model's module names, from each family's key map
(`Family.comfyui_targets`, families/). Sources of the name tables:
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
import logging
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import GlanceError
from .files import WEIGHT_NAME, read_metadata

if TYPE_CHECKING:
    import torch

FOLDER = "comfyui"
NAME = "glance"  # the files' default stem: glance-slow.safetensors, glance-fast.safetensors
_STEM = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")
log = logging.getLogger(__name__)


def check_name(name: str) -> str:
    """`--name`: a safe file stem (letters, digits, `-`, `_`, `.`; not starting with `.`)."""
    if not _STEM.fullmatch(name or "") or len(name) > 100:
        raise GlanceError(f"--name {name!r}: not a safe file stem (letters, digits, '-', '_', '.'; not starting "
                          "with '.'; at most 100 characters)")
    return name


def lora_names(name: str = NAME) -> tuple[str, str]:
    """The ComfyUI file names of the slow and the fast LoRA."""
    return f"{name}-slow.safetensors", f"{name}-fast.safetensors"


def _family(name: str):
    """The family whose ComfyUI key map (`Family.comfyui_targets`) and key style (`comfyui_folded`) apply."""
    from ..families import get_family

    return get_family(name)


def targets(family: str, config: dict, modules=()) -> dict[str, tuple]:
    """diffusers module -> (ComfyUI module, part index, the fused module's parts, their rows, swap halves): the
    family's key map, or the diffusers names themselves (`modules`) where ComfyUI reads those."""
    table = _family(family).comfyui_targets(config)
    return {m: (m, 0, (m,), (0,), False) for m in modules} if table is None else table


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
    down, up = ("lora_A", "lora_B") if _family(family).comfyui_folded else ("lora_down", "lora_up")
    return f"diffusion_model.{comfy}.{down}.weight", f"diffusion_model.{comfy}.{up}.weight"


def to_comfyui(sd: dict, family: str, config: dict, alpha: float) -> tuple[dict, dict]:
    """(ComfyUI state dict, {fused ComfyUI module: [its diffusers modules present]})."""
    import torch  # here, not at the module's top: the CLI's parser imports this module for every command

    mods = _modules(sd)
    table = targets(family, config, mods)
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
        if _family(family).comfyui_folded:
            b = b * (float(alpha) / r)  # scale alpha / rank folded in (no .alpha key: diffusers reads scale 1)
        else:
            out[f"diffusion_model.{comfy}.alpha"] = torch.tensor(float(alpha) * len(present))
        out[down], out[up] = a.contiguous(), b.contiguous()
    return out, parts


def from_comfyui(sd: dict, family: str, config: dict, parts: dict, alpha: float | None = None) -> dict:
    """The inverse of `to_comfyui`: the diffusers LoRA state dict (`alpha`: the LoRA's, needed where it was
    folded into lora_B)."""
    out = {}
    folded = _family(family).comfyui_folded
    down_name = ".lora_A.weight" if folded else ".lora_down.weight"
    comfy_names = [k.removeprefix("diffusion_model.").removesuffix(down_name) for k in sd if k.endswith(down_name)]
    table = targets(family, config, comfy_names)  # where ComfyUI reads diffusers names, each is its own module
    by_comfy = {t[0]: d for d, t in table.items()}
    for k, a in sd.items():
        if not k.endswith(down_name):
            continue
        comfy = k.removeprefix("diffusion_model.").removesuffix(down_name)
        b = sd[_keys(family, comfy)[1]]
        present = parts.get(comfy) or [by_comfy[comfy]]
        r = a.shape[0] // len(present)
        if folded:
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


def converted(run: Path, role: str, name: str = NAME) -> tuple[dict, dict]:
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
    header.update({"glancetune.partner": f"{name}-{other}.safetensors", "glancetune.format": "comfyui",
                   "glancetune.comfyui.parts": json.dumps(parts, sort_keys=True),
                   "modelspec.implementation": "comfyui"})
    return sd, dict(sorted(header.items()))


def export_run(run: str | Path, ladder_file: str | None = None, ladder_slow_steps: int | None = None,
               name: str = NAME, prompt: str | None = None) -> list[Path]:
    """The ComfyUI copies of a run's slow and fast LoRAs (`{name}-slow/fast.safetensors`) and the workflow that
    samples them into `run/comfyui/`: everything read, converted and checked first (ladder file included), then
    each file written to a temporary name and renamed into place, the workflow last. `prompt`: the workflow's
    (default: the run's training caption)."""
    from safetensors.torch import save

    from .comfy_workflow import checked_workflow, plan_for_run, write_workflow

    run = Path(run)
    check_name(name)
    ladder = _ladder(ladder_file, ladder_slow_steps)
    done = {role: converted(run, role, name) for role in ("slow", "fast")}
    plan = plan_for_run(run, ladder, lora_names(name), prompt)
    graph = checked_workflow(plan)
    folder = run / FOLDER
    folder.mkdir(exist_ok=True)
    written = []
    for (role, (sd, header)), file_name in zip(done.items(), plan.loras):
        path = folder / file_name
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:  # bytes written by Python: mode 0o666 & ~umask like every file we write (save_file makes it 0600)
            tmp.write_bytes(save(sd, metadata=header))
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        written.append(path)
    written.append(write_workflow(folder, graph))
    if plan.tiny:
        log.info("notice: export: this run trained a tiny: model; the workflow names the full-size model's files, "
                 "and a tiny model's LoRAs do not fit them (the files test the layout, not a ComfyUI run)")
    return written


def _ladder(ladder_file: str | None, slow_steps: int | None):
    """A searched ladder for the workflow (`--ladder-file`, split at `--ladder-slow-steps`), or None: the run's."""
    if ladder_file is None:
        if slow_steps is not None:
            raise GlanceError("--ladder-slow-steps: only with --ladder-file")
        return None
    from ..ladder import LadderFile

    return LadderFile.read(ladder_file).ladder(slow_steps)


def add_parser(sub) -> None:
    x = sub.add_parser("export", help="write ComfyUI copies of a slow+fast pair and a workflow that samples them "
                       "(RUN/comfyui/)")
    x.add_argument("--run", required=True, help="folder written by `glancetune glance`")
    x.add_argument("--format", choices=["comfyui"], default="comfyui")
    x.add_argument("--ladder-file", metavar="FILE", help="the workflow samples on this searched ladder "
                   "(search-ladder's JSON) instead of the run's")
    x.add_argument("--ladder-slow-steps", type=int, metavar="K", help="with --ladder-file: the first K sigmas are "
                   "the slow phase (default: half)")
    x.add_argument("--name", default=NAME, help="stem of the LoRA files and of the workflow's LoRA names: "
                   "NAME-slow.safetensors, NAME-fast.safetensors (default: glance; letters, digits, - _ .)")
    x.add_argument("--prompt", metavar="TEXT", help="the workflow's prompt (default: the run's training caption)")
    x.set_defaults(handler=cmd_export)


def cmd_export(args) -> int:
    for p in export_run(args.run, args.ladder_file, args.ladder_slow_steps, args.name, args.prompt):
        print(f"wrote {p}")
    print("in ComfyUI: copy the two LoRA files into models/loras, load the workflow, pick your base model's files "
          "in its loader nodes, edit the prompt")
    return 0
