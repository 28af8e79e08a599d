"""Model references (`tiny:<family>`, a local diffusers folder, or a hub id) resolved to their family and configs,
and the family lookup by name (`model_family` / `model_flavour`)."""
from __future__ import annotations

import difflib
import functools
import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import GlanceError
from .base import Family, FamilyGroup  # noqa: F401
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


def hub_offline_reason() -> str | None:
    """Why the hub cannot be asked now (HF_HUB_OFFLINE set, or its endpoint unreachable), or None."""
    import os

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE"):
        return "HF_HUB_OFFLINE is set"
    return None if _hub_reachable(constants.ENDPOINT) else f"{constants.ENDPOINT} is unreachable (no network?)"


@functools.lru_cache(maxsize=None)
def _hub_reachable(endpoint: str) -> bool:
    """One quick TCP connect (3 s) instead of huggingface_hub's ~25 s of retries; behind a proxy, assumed yes."""
    import os
    import socket
    from urllib.parse import urlparse

    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    url = urlparse(endpoint)
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout=3).close()
        return True
    except OSError:
        return False


def hub_file(repo: str, filename: str) -> Path:
    """A file of a hub repo: from the local cache when the hub cannot be asked (failing at once, with one line,
    when it is not there), else downloaded."""
    from huggingface_hub import hf_hub_download, try_to_load_from_cache

    offline = hub_offline_reason()
    try:
        if offline:
            cached = try_to_load_from_cache(repo, filename)
            if isinstance(cached, str):
                return Path(cached)
            raise GlanceError(f"{repo}: not a local folder, and not downloaded ({filename} is not in the hub cache; "
                              f"{offline}): download it first or give a local folder")
        return Path(hf_hub_download(repo, filename))
    except GlanceError:
        raise
    except Exception as e:  # unknown repo, gated, invalid id...: one line is what the user needs
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise GlanceError(f"{repo}: not a local folder, and {filename} could not be fetched from the hub "
                          f"({type(e).__name__}: {first})") from None


def read_config(path: str, filename: str) -> dict:
    """Read a JSON config file of a pipeline: from a local folder, or fetched alone from the hub."""
    local = Path(path)
    if local.is_dir():
        f = local / filename
        if not f.is_file():
            raise GlanceError(f"{local}: not a diffusers pipeline folder ({filename} is missing)")
    elif local.exists():
        raise GlanceError(f"{local}: a file, not a diffusers pipeline folder or hub id")
    elif path.startswith((".", "/", "~")) or path.count("/") > 1 or "\\" in path:
        raise GlanceError(f"{path}: no such folder (and not a hub id: those look like owner/name)")
    else:
        f = hub_file(path, filename)
    try:
        return json.loads(f.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise GlanceError(f"{f}: unreadable config ({e})") from None


def _weight_files(folder: Path) -> list[Path]:
    """The weight files a component folder names: the shards of its index, else its .safetensors / .bin files."""
    indexes = sorted(folder.glob("*.index.json"))
    if indexes:
        try:
            shards = sorted(set(json.loads(indexes[0].read_text(encoding="utf-8"))["weight_map"].values()))
        except (OSError, ValueError, KeyError, AttributeError) as e:
            raise GlanceError(f"{indexes[0]}: unreadable weight index ({type(e).__name__}); the download looks "
                              "incomplete: download it again") from None
        for name in shards:
            if not (folder / name).is_file():
                raise GlanceError(f"{folder / name}: missing (listed in {indexes[0].name}); the download looks "
                                  "incomplete: download it again")
        return [folder / n for n in shards]
    return sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin"))


def _check_safetensors(f: Path) -> None:
    """A .safetensors file holds its whole header and every tensor its header lists (truncated downloads do not)."""
    size = f.stat().st_size
    with open(f, "rb") as fh:
        head = fh.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        if n < 0 or n > size - 8 or n > 100_000_000:
            raise GlanceError(f"{f}: truncated or not a safetensors file ({size} bytes, no complete header); "
                              "the download looks incomplete: download it again")
        try:
            header = json.loads(fh.read(n))
            end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
        except (ValueError, KeyError, TypeError, IndexError, AttributeError):
            raise GlanceError(f"{f}: corrupt safetensors header; download it again") from None
    if 8 + n + end > size:
        raise GlanceError(f"{f}: truncated ({size} of {8 + n + end} bytes); the download looks incomplete: "
                          "download it again")


def check_weights(path: str, skip=()) -> None:
    """Every weight-holding component of a local pipeline folder (a subfolder with config.json, named in
    model_index.json, not in `skip`) has complete weight files; checked before `from_pretrained`, which would
    otherwise fail half-way with its own multi-line errors. Hub ids are left to the hub."""
    root = Path(path)
    if not (root / "model_index.json").is_file():
        return
    for name, entry in read_config(path, "model_index.json").items():
        if name.startswith("_") or name in skip or not isinstance(entry, list) or entry[0] is None:
            continue
        folder = root / name
        if not (folder / "config.json").is_file():  # tokenizers, schedulers, processors hold no weights
            continue
        files = _weight_files(folder)
        if not files:
            raise GlanceError(f"{folder}: no weights file (.safetensors or .bin); the download looks incomplete: "
                              "download it again")
        for f in files:
            if f.suffix == ".safetensors":
                _check_safetensors(f)


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
