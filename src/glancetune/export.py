"""Writing results: LoRA files with our metadata, deterministic headers, and atomic output folders.

A LoRA folder holds `pytorch_lora_weights.safetensors` written by the family pipeline's stock
`save_lora_weights` (with `transformer_lora_adapter_metadata`, so alpha survives a reload) and our keys added to
the safetensors header under `glancetune.*` and SAI `modelspec.*`. The header is re-serialised with sorted keys,
so the same run gives byte-identical files (safetensors itself writes metadata in hash order).
"""
from __future__ import annotations

import json
import os
import shutil
import struct
import tempfile
from pathlib import Path
from typing import Any

from .errors import GlanceError

WEIGHT_NAME = "pytorch_lora_weights.safetensors"
CONFIG_NAME = "glancetune_config.json"
META_PREFIX = "glancetune."


def _jsonable(value: Any) -> Any:
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def save_lora(pipeline_class, directory: Path, transformer, adapter_name: str, metadata: dict[str, str]) -> Path:
    """Save one adapter of `transformer` in diffusers format, then add `metadata` to the file header."""
    from peft.utils import get_peft_model_state_dict

    state = {k: v.detach().to("cpu").contiguous()
             for k, v in get_peft_model_state_dict(transformer, adapter_name=adapter_name).items()}
    adapter_meta = _jsonable(transformer.peft_config[adapter_name].to_dict())
    pipeline_class.save_lora_weights(directory, transformer_lora_layers=state,
                                     transformer_lora_adapter_metadata=adapter_meta)
    path = directory / WEIGHT_NAME
    add_metadata(path, metadata)
    return path


def add_metadata(path: Path, extra: dict[str, str]) -> None:
    """Merge string metadata into a safetensors header and rewrite it with sorted keys (data bytes untouched)."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    meta = header.pop("__metadata__", {}) or {}
    meta.update({k: str(v) for k, v in extra.items()})
    header = {"__metadata__": dict(sorted(meta.items())), **dict(sorted(header.items()))}
    blob = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    blob += b" " * (-len(blob) % 8)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(struct.pack("<Q", len(blob)) + blob + raw[8 + n:])
    os.replace(tmp, path)


def lora_file(path: str | Path) -> Path:
    p = Path(path)
    if p.is_dir():
        p = p / WEIGHT_NAME
    if not p.is_file():
        raise GlanceError(f"{path}: no LoRA file ({WEIGHT_NAME}) found")
    return p


def read_metadata(path: str | Path) -> dict[str, str]:
    from safetensors import safe_open

    f = lora_file(path)
    try:
        with safe_open(str(f), framework="pt") as sf:
            return dict(sf.metadata() or {})
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types for bad files
        raise GlanceError(f"{f}: not a readable safetensors file ({e})") from None


def write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)


class OutputDir:
    """Build a run's output in a temporary sibling folder and move it into place only when complete.

    An existing non-empty `final` folder is replaced only if it holds the same run (same resolved config) or
    `overwrite` is set; otherwise the user gets an error naming the keys that differ.
    """

    def __init__(self, final: str | Path, identity: dict, overwrite: bool):
        self.final = Path(final)
        self.identity = identity
        self.overwrite = overwrite
        self.tmp: Path | None = None

    def check(self) -> None:
        f = self.final
        if f.exists() and not f.is_dir():
            raise GlanceError(f"output_dir {f}: exists and is not a folder")
        if not f.is_dir() or not any(f.iterdir()) or self.overwrite:
            return
        old_path = f / CONFIG_NAME
        if not old_path.is_file():
            raise GlanceError(f"output_dir {f}: holds files that are not a glancetune run; choose another "
                              "output_dir or set overwrite_output_dir (--overwrite)")
        try:
            old = json.loads(old_path.read_text(encoding="utf-8")).get("run", {})
        except ValueError:
            old = {}
        if old != self.identity:
            keys = sorted(k for k in set(old) | set(self.identity) if old.get(k) != self.identity.get(k))
            raise GlanceError(f"output_dir {f}: already holds a different run (differs in: {', '.join(keys)}); "
                              "choose another output_dir or set overwrite_output_dir (--overwrite)")

    def __enter__(self) -> Path:
        self.check()
        self.final.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.final.name}.tmp-", dir=self.final.parent))
        return self.tmp

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return False
        old = None
        if self.final.exists():
            old = self.final.with_name(f".{self.final.name}.old-{os.getpid()}")
            os.replace(self.final, old)
        os.replace(self.tmp, self.final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return False
