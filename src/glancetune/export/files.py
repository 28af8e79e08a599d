"""Writing results: LoRA files with our metadata, deterministic headers, and atomic output folders.

A LoRA folder holds `pytorch_lora_weights.safetensors` written by the family pipeline's stock
`save_lora_weights` (with `transformer_lora_adapter_metadata`, so alpha survives a reload) and our keys added to
the safetensors header under `glancetune.*` and SAI `modelspec.*`. The header is re-serialised with sorted keys,
so the same run gives byte-identical files (safetensors itself writes metadata in hash order).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import struct
import tempfile
from pathlib import Path
from typing import Any

from ..errors import GlanceError
from ..record import RunRecord, from_header

WEIGHT_NAME = "pytorch_lora_weights.safetensors"
CONFIG_NAME = "glancetune_config.json"
JSONL_NAME = "train_log.jsonl"  # the training log, one JSON line per record
# a checkpoint: `checkpoint-<step>/` holding the LoRA files, the training state and the manifest (written last)
STATE_NAME = "training_state.pt"
MANIFEST = "checkpoint.json"
NAME = re.compile(r"^checkpoint-(\d+)$")


def _jsonable(value: Any) -> Any:
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def save_lora(pipeline_class, directory: Path, transformer, adapter_name: str, metadata: dict[str, str],
              state_dict: dict | None = None) -> Path:
    """Save one adapter of `transformer` in diffusers format, then add `metadata` to the file header.
    `state_dict`: the adapter's weights by parameter name (gathered from other processes or shards); default:
    the transformer's own."""
    from peft.utils import get_peft_model_state_dict

    state = {k: v.detach().to("cpu").contiguous() for k, v in get_peft_model_state_dict(
        transformer, state_dict=state_dict, adapter_name=adapter_name).items()}
    # dropout is a training choice: a reload (stock load_lora_weights builds its layers from this config, in
    # training mode) must not apply it while sampling
    adapter_meta = {**_jsonable(transformer.peft_config[adapter_name].to_dict()), "lora_dropout": 0.0}
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


def replace_folder(built: Path, target: Path) -> None:
    """Put the folder `built` at `target` (on the same file system), replacing what is there: the old folder is
    renamed aside first and removed after, so an interruption leaves one whole folder at `target` or beside it."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
    os.replace(built, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)


OWN_FILES = (WEIGHT_NAME, CONFIG_NAME, "train_log.json", JSONL_NAME)
OWN_DIRS = ("slow", "fast")
# folders only glancetune names so: checkpoints, their temp/retired forms, staging of the final files, retired
# LoRA folders, validation images (train/validate.py), ComfyUI copies (comfyui.py), and (versions before the trainer core) the temp/retired
# siblings of a whole output folder
OWN_PATTERN = re.compile(r"^(checkpoint-\d+|validation|comfyui|\.checkpoint-\d+\.(tmp|old)-\d+|\.staging-.+|"
                         r"\.(slow|fast)\.old-\d+)$")


def contents(folder: Path) -> dict[str, dict]:
    """Every file under a checkpoint folder but its manifest: relative path -> size and SHA-256 (written into the
    manifest at save time, checked before a resume chooses it)."""
    out = {}
    for f in sorted(q for q in folder.rglob("*") if q.is_file() and q.name != MANIFEST):
        with open(f, "rb") as fh:
            out[f.relative_to(folder).as_posix()] = {"size": f.stat().st_size,
                                                     "sha256": hashlib.file_digest(fh, "sha256").hexdigest()}
    return out


def checkpoint_problem(folder: Path) -> str | None:
    """What is wrong with a checkpoint folder, in a few words, or None when it is whole: its manifest readable, and
    every file the manifest lists present with its size and digest (a checkpoint written before digests existed:
    its manifest and training state present)."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return f"no {MANIFEST}"
    except (OSError, ValueError):
        return f"{MANIFEST} unreadable"
    if not isinstance(manifest, dict):
        return f"{MANIFEST} unreadable"
    listed = manifest.get("contents")
    if listed is None:
        return None if (folder / STATE_NAME).is_file() else f"no {STATE_NAME}"
    if not isinstance(listed, dict) or not all(isinstance(w, dict) and {"size", "sha256"} <= set(w)
                                               for w in listed.values()):
        return f"{MANIFEST} unreadable (its contents list)"
    for rel, want in sorted(listed.items()):
        f = folder / rel
        if not f.is_file():
            return f"{rel} missing"
        if f.stat().st_size != want["size"]:
            return f"{rel} is {f.stat().st_size} bytes, {want['size']} when written"
        with open(f, "rb") as fh:
            if hashlib.file_digest(fh, "sha256").hexdigest() != want["sha256"]:
                return f"{rel} changed since it was written (digest differs)"
    return None


def newest_good_checkpoint(output_dir: Path) -> tuple[Path | None, list[tuple[Path, str]]]:
    """(the newest whole checkpoint or None, [(damaged folder, what is wrong)] of the newer ones skipped)."""
    skipped = []
    folders = sorted((int(m.group(1)), p) for p in Path(output_dir).iterdir() if (m := NAME.match(p.name))
                     and p.is_dir()) if Path(output_dir).is_dir() else []
    for _, p in reversed(folders):
        problem = checkpoint_problem(p)
        if problem is None:
            return p, skipped
        skipped.append((p, problem))
    return None, skipped


def complete_checkpoints(output_dir: Path) -> list[tuple[int, Path]]:
    """(step, folder) of every complete checkpoint, oldest first."""
    found = []
    if Path(output_dir).is_dir():
        for p in Path(output_dir).iterdir():
            m = NAME.match(p.name)
            if m and (p / MANIFEST).is_file() and (p / STATE_NAME).is_file():
                found.append((int(m.group(1)), p))
    return sorted(found)


def nearest_existing(path: Path) -> Path:
    p = path.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


class OutputDir:
    """A run's output folder. Finished LoRAs and logs are written into it atomically (temp name in the folder,
    rename), checkpoints beside them (train/checkpoint.py): the folder itself is never renamed, so a mount point
    or `.` works.

    A folder that holds a different run (its `glancetune_config.json` names another identity) is refused unless
    `overwrite`; then only what glancetune wrote is removed (LoRA folders/files, logs, checkpoints, our config). A
    folder with files glancetune did not write is refused, naming them, also with `overwrite`: they are never
    deleted.
    """

    def __init__(self, final: str | Path, identity: dict, overwrite: bool, allow: tuple[str, ...] = (),
                 logging_dir: str | None = None):
        self.final = Path(final)
        self.identity = identity
        self.overwrite = overwrite
        self.allow = set(allow)
        self.logging_dir = logging_dir if logging_dir and not Path(logging_dir).is_absolute() else None

    def differences(self) -> list[str] | None:
        """None when the folder is empty/new or holds this run; else the differing keys ([] = not ours)."""
        f = self.final
        if not f.is_dir() or not any(f.iterdir()):
            return None
        old_path = f / CONFIG_NAME
        if not old_path.is_file():
            return []
        try:
            old = json.loads(old_path.read_text(encoding="utf-8")).get("run", {})
        except ValueError:
            old = {}
        keys = sorted(k for k in set(old) | set(self.identity)
                      if k not in self.allow and old.get(k) != self.identity.get(k))
        return keys or None

    def ours(self, p: Path) -> bool:
        if p.name in OWN_FILES:
            return p.is_file()
        if p.name in OWN_DIRS:
            return p.is_dir() and {c.name for c in p.iterdir()} <= {WEIGHT_NAME, "train_log.json", CONFIG_NAME}
        return bool(OWN_PATTERN.match(p.name)) or (p.name == self.logging_dir and p.is_dir())

    def foreign(self) -> list[str]:
        return sorted(p.name + ("/" if p.is_dir() else "") for p in self.final.iterdir() if not self.ours(p))

    def check(self) -> None:
        """Before any weights load: the folder can be written, and holds this run, nothing, or (with overwrite)
        only what glancetune wrote."""
        f = self.final
        if f.exists() and not f.is_dir():
            raise GlanceError(f"output_dir {f}: exists and is not a folder")
        base = nearest_existing(f)
        if not base.is_dir():
            raise GlanceError(f"output_dir {f}: {base} is a file, not a folder")
        try:  # a real write, not os.access: root passes permission bits but not a read-only filesystem
            fd, probe = tempfile.mkstemp(prefix=".glancetune-probe-", dir=base)
            os.close(fd)
            os.unlink(probe)
        except OSError as e:
            raise GlanceError(f"output_dir {f}: {base} is not writable ({e.strerror or e})") from None
        keys = self.differences()
        if keys is None:
            return
        foreign = self.foreign()
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        if foreign and (self.overwrite or not keys):
            raise GlanceError(f"output_dir {f}: holds files glancetune did not write ({shown}); they are never "
                              "deleted, not even with --overwrite: choose another output_dir or move them")
        if not self.overwrite:
            raise GlanceError(f"output_dir {f}: already holds a different run (differs in: {', '.join(keys)}); "
                              "choose another output_dir or set overwrite_output_dir (--overwrite: replaces only "
                              "what glancetune wrote)")

    def prepare(self, record: dict) -> None:
        """Create the folder (removing our own files of a different run when overwriting) and write our config."""
        self.check()
        if self.overwrite and self.differences():  # our own earlier run of another config (check: nothing foreign)
            for p in list(self.final.iterdir()):
                shutil.rmtree(p) if p.is_dir() else p.unlink()
        self.final.mkdir(parents=True, exist_ok=True)
        write_json(self.final / CONFIG_NAME, {"run": self.identity, **record})

    def replace_dir(self, built: Path, name: str) -> Path:
        """Move a folder built inside the output folder to `<output_dir>/<name>` atomically."""
        target = self.final / name
        replace_folder(built, target)
        return target

    def staging(self) -> Path:
        return Path(tempfile.mkdtemp(prefix=".staging-", dir=self.final))

    def clean_stale(self) -> None:
        """Remove temp folders a killed run of ours left here (recognised by their names only)."""
        for p in self.final.iterdir():
            if p.is_dir() and p.name.startswith(".") and OWN_PATTERN.match(p.name):
                shutil.rmtree(p, ignore_errors=True)
        parent = self.final.absolute().parent  # versions before the trainer core built the run beside the folder
        for p in parent.glob(f".{self.final.name}.tmp-*"):
            if p.is_dir() and (p / CONFIG_NAME).is_file():
                shutil.rmtree(p, ignore_errors=True)


def read_record(path) -> tuple[RunRecord, str] | None:
    """(record, role) of a LoRA folder or file."""
    return from_header(read_metadata(path))
