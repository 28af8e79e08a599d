"""On-disk caches of VAE latents and text embeddings (safetensors), keyed by everything that changes them.

An entry is one file `<dir>/<key>.safetensors` whose name is the SHA-256 of a JSON description of its inputs
(family, the encoder's identity and dtype, the image file's content and exact crop, or the caption text, ...). Change any input and the key
changes, so a stale entry is never read: it is simply not found, and the value is computed again. The header
repeats the description, and a load checks it, so a renamed or foreign file is not trusted either.

Values are the dicts of transformer kwargs that families produce: tensors are stored as tensors, anything else
(lists such as `img_shapes`) as JSON in the header. Writes go to a temporary name first and are renamed into place,
so a crash mid-write never leaves a file that later loads; a truncated or corrupt file is an error naming it.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from ..errors import GlanceError

FORMAT = "glancetune-cache/1"
_TENSOR = "t:"  # tensor keys in the file
_JSON = "glancetune.json"  # non-tensor values, JSON in the header
_KEY = "glancetune.key"


def digest(obj: Any) -> str:
    """SHA-256 of a JSON-able description (sorted keys): the cache key."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode("utf-8")).hexdigest()


def file_digest(path: Path) -> str:
    """SHA-256 of a file's bytes (an image's identity: renaming or touching it does not invalidate its entry)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_fingerprint(folder: Path) -> list:
    """Names, sizes and modification times of a component folder's files (cheap identity of local weights)."""
    out = []
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        st = f.stat()
        out.append([str(f.relative_to(folder)), st.st_size, st.st_mtime_ns])
    return out


def component_identity(model_path: str, component: str) -> Any:
    """Identity of one pipeline component (`vae`, `text_encoder`, ...): its files for a local folder, or the
    resolved hub snapshot (which names the commit) for a hub id."""
    local = Path(model_path) / component
    if local.is_dir():
        return {"path": str(local.resolve()), "files": file_fingerprint(local)}
    if Path(model_path).is_dir():  # the pipeline has no such component (e.g. text_encoder_2)
        return None
    try:
        from huggingface_hub import hf_hub_download

        cfg = Path(hf_hub_download(model_path, f"{component}/config.json"))
        return {"hub": model_path, "snapshot": cfg.parent.parent.name, "config": cfg.read_text(encoding="utf-8")}
    except Exception:  # noqa: BLE001 - no such component, or offline: fall back to the name
        return {"hub": model_path}


class TensorCache:
    """A folder of cache entries. `get` returns None on a miss; `put` writes atomically."""

    def __init__(self, directory: str | Path, kind: str):
        self.dir = Path(directory)
        self.kind = kind
        self.hits = self.misses = 0

    def path(self, key: str) -> Path:
        return self.dir / f"{key}.safetensors"

    def check_writable(self) -> None:
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            fd, probe = tempfile.mkstemp(prefix=".probe-", dir=self.dir)
            os.close(fd)
            os.unlink(probe)
        except OSError as e:
            raise GlanceError(f"{self.dir}: {self.kind} cache directory is not writable ({e.strerror or e})") from None

    def get(self, key: str) -> dict[str, Any] | None:
        from safetensors import SafetensorError, safe_open

        p = self.path(key)
        if not p.is_file():
            self.misses += 1
            return None
        try:
            with safe_open(str(p), framework="pt") as sf:
                meta = sf.metadata() or {}
                tensors = {k[len(_TENSOR):]: sf.get_tensor(k) for k in sf.keys()}
        except (SafetensorError, OSError, ValueError, RuntimeError) as e:
            raise GlanceError(f"{p}: truncated or corrupt {self.kind} cache file ({str(e).splitlines()[0]}); "
                              "delete it to rebuild") from None
        if meta.get(_KEY) != key or meta.get("format") != FORMAT:
            raise GlanceError(f"{p}: {self.kind} cache file does not belong to this key (renamed or foreign file); "
                              "delete it to rebuild")
        self.hits += 1
        return {**json.loads(meta.get(_JSON, "{}")), **tensors}

    def clean_stale(self) -> None:
        """Remove temp files of writers that died (a kill between write and rename): `.<key>.<pid>.<rand>.tmp`
        whose process is gone. Once per cache object."""
        if getattr(self, "_cleaned", False) or not self.dir.is_dir():
            return
        self._cleaned = True
        for f in self.dir.glob(".*.tmp"):
            parts = f.name.split(".")
            pid = int(parts[2]) if len(parts) > 3 and parts[2].isdigit() else None
            if pid is None:
                continue
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                f.unlink(missing_ok=True)
            except PermissionError:
                pass

    def put(self, key: str, value: dict[str, Any], description: Any) -> Path:
        from safetensors.torch import save_file

        tensors = {_TENSOR + k: v.detach().to("cpu").contiguous().clone() for k, v in value.items()
                   if isinstance(v, torch.Tensor)}
        other = {k: v for k, v in value.items() if not isinstance(v, torch.Tensor)}
        meta = {"format": FORMAT, _KEY: key, _JSON: json.dumps(other),
                "glancetune.inputs": json.dumps(description, sort_keys=True, default=str)}
        self.dir.mkdir(parents=True, exist_ok=True)
        self.clean_stale()
        fd, tmp = tempfile.mkstemp(prefix=f".{key[:16]}.{os.getpid()}.", suffix=".tmp", dir=self.dir)
        os.close(fd)
        try:
            save_file(tensors, tmp, metadata=meta)
            os.replace(tmp, self.path(key))
        except OSError as e:
            raise GlanceError(f"{self.dir}: cannot write {self.kind} cache ({e.strerror or e})") from None
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return self.path(key)
