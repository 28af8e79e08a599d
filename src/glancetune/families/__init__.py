"""Model families and model references (`tiny:<family>`, a local diffusers folder, or a hub id)."""
from __future__ import annotations

import difflib
import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import GlanceError
from .base import Family, FamilyGroup
from .flux import Flux1
from .flux2 import Flux2Dev, Flux2Klein
from .qwen_image import QwenImage
from .qwen_image_edit import QwenImageEdit, QwenImageEditPlus
from .sd3 import SD3

# model_family -> family; FLUX.2's flavours use two pipeline classes, so its entry is a group of two adapters
FAMILIES: dict[str, Family] = {f.name: f for f in (Flux1(), FamilyGroup(Flux2Klein(), Flux2Dev()), SD3(),
                                                   QwenImage(), QwenImageEdit(), QwenImageEditPlus())}


def get_family(name: str) -> Family:
    if name not in FAMILIES:
        hint = difflib.get_close_matches(name, FAMILIES, n=1)
        extra = f" (did you mean {hint[0]!r}?)" if hint else ""
        raise GlanceError(f"model_family: unknown family {name!r}{extra}; valid: {', '.join(sorted(FAMILIES))}")
    return FAMILIES[name]


def resolve_family(name: str, flavour: str | None = None) -> tuple[Family, str | None]:
    """(family, its own flavour) for a config's model_family + model_flavour: a flavour served by another family
    (qwen_image `edit` / `edit-v1` -> qwen_image_edit, `edit-plus` / `edit-v2` -> qwen_image_edit_plus) resolves
    to that family's default flavour."""
    family = get_family(name)
    if flavour is not None and flavour in family.flavour_families:
        target, _, own = family.flavour_families[flavour].partition(":")  # "family" or "family:flavour"
        return get_family(target), own or None
    return family, flavour


@dataclass
class ModelInfo:
    """A resolved model reference and the configs that the schedule needs (no weights loaded)."""

    ref: str  # what the user wrote
    path: str  # local folder or hub id handed to from_pretrained
    family: Family  # the adapter for this folder's pipeline class (a member of a FamilyGroup)
    scheduler_config: dict
    vae_config: dict
    transformer_config: dict


def resolve_ref(ref: str) -> str:
    if ref.startswith("tiny:"):
        from ..tiny import resolve_tiny

        return str(resolve_tiny(ref))
    return ref


def read_config(path: str, filename: str) -> dict:
    """Read a JSON config file of a pipeline: from a local folder, or fetched alone from the hub."""
    local = Path(path)
    if local.is_dir():
        f = local / filename
        if not f.is_file():
            raise GlanceError(f"{local}: not a diffusers pipeline folder ({filename} is missing)")
    else:
        from huggingface_hub import hf_hub_download

        try:
            f = Path(hf_hub_download(path, filename))
        except Exception as e:  # offline, unknown repo, gated...: one line is what the user needs
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            raise GlanceError(f"{path}: not a local folder, and {filename} could not be fetched from the hub "
                              f"({type(e).__name__}: {first})") from None
    try:
        return json.loads(f.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise GlanceError(f"{f}: unreadable config ({e})") from None


def model_info(ref: str, family_name: str | None = None, flavour: str | None = None) -> ModelInfo:
    """Resolve `ref`, detect (or check) its family from model_index.json, pick the adapter for its pipeline class
    (checked against `flavour` when given), read scheduler, VAE and transformer configs."""
    path = resolve_ref(ref)
    index = read_config(path, "model_index.json")
    cls = index.get("_class_name", "?")
    detected = next((f for f in FAMILIES.values() if cls in f.pipeline_class_names), None)
    if family_name is not None:
        family = get_family(family_name)
        if detected is not None and detected.name in {f.partition(":")[0] for f in family.flavour_families.values()}:
            family = detected  # e.g. model_family qwen_image with a Qwen-Image-Edit folder and no model_flavour
        elif cls not in family.pipeline_class_names:
            raise GlanceError(f"{ref}: pipeline class {cls} does not match model_family {family_name!r} "
                              f"(expected {', '.join(family.pipeline_class_names)})")
    elif detected is None:
        raise GlanceError(f"{ref}: pipeline class {cls} is not supported; supported families: "
                          f"{', '.join(sorted(FAMILIES))}")
    else:
        family = detected
    adapter = family.adapter(cls)
    if flavour is not None:
        wanted = family.flavour_adapter(flavour)
        if wanted is not adapter:
            raise GlanceError(f"{ref}: model_flavour {flavour!r} needs a {' or '.join(wanted.pipeline_class_names)} "
                              f"folder, but its model_index.json names {cls}")
    return ModelInfo(ref=ref, path=path, family=adapter,
                     scheduler_config=read_config(path, "scheduler/scheduler_config.json"),
                     vae_config=read_config(path, "vae/config.json"),
                     transformer_config=read_config(path, "transformer/config.json"))
