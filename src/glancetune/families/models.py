"""Model references (`tiny:<family>`, a local diffusers folder, or a hub id) resolved to their family and configs,
and the family lookup by name (`model_family` / `model_flavour`)."""
from __future__ import annotations

import difflib
from dataclasses import dataclass

from ..errors import GlanceError
from .base import Family, FamilyGroup  # noqa: F401
from .hub import check_weights, hub_offline_reason, read_config  # noqa: F401 (read through the package)
from .registry import FAMILIES


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
        from .tiny import resolve_tiny

        return str(resolve_tiny(ref))
    return ref


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
