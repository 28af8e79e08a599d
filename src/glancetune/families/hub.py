"""Where a model's files come from: the hub's reachability (offline: one quick check instead of minutes of
retries), a config file from a local folder or the hub cache, and the weight files of a local folder checked whole
before `from_pretrained` reads them (missing or truncated: one line naming the file)."""
from __future__ import annotations

import functools
import json
from pathlib import Path

from ..errors import GlanceError


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
