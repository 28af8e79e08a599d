"""A run's searched ladder files for the Generate page: the `*.json` files in the run's `ladders/` folder (uploaded
from the page, or put there by hand, e.g. `glancetune search-ladder --output <run>/ladders/NAME.json`).

Every file is read by the project's own reader (`ladder.LadderFile`); an upload is at most `MAX_BYTES`, checked
whole under a temporary name inside `ladders/` and renamed into place only when it reads as a ladder file, so a
bad one leaves nothing behind. Names are the server's: the uploaded name's letters, digits, `.`, `_`, `-`.
"""
from __future__ import annotations

import os
import re
import secrets
from pathlib import Path

from ..errors import GlanceError
from ..ladder import LadderFile

FOLDER = "ladders"
MAX_BYTES = 64 * 1024  # a searched ladder is a few hundred bytes
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,79}\.json$")


def _folder(run_dir: Path) -> Path:
    """The run's `ladders/` folder; a link out of the run folder is refused."""
    d = run_dir / FOLDER
    if d.exists() and not d.resolve().is_relative_to(run_dir.resolve()):
        raise GlanceError(f"ladder: {FOLDER}/ lies outside the run folder")
    return d


def _read(path: Path, name: str) -> LadderFile:
    """`LadderFile.read`, its one-line error naming the file as the page knows it (not the server's path)."""
    try:
        return LadderFile.read(path, key="ladder")
    except GlanceError as e:
        raise GlanceError(str(e).replace(str(path), name)) from None


def describe(found: LadderFile, name: str) -> dict:
    ladder = found.ladder()
    return {"name": name, "sigmas": list(found.sigmas), "slow": len(ladder.slow), "fast": len(ladder.fast),
            "model": found.model, "family": found.family, "width": found.width, "height": found.height}


def list_ladders(run_dir: Path) -> list[dict]:
    """The run's ladder files, by name; one that does not read has its one-line `error` instead of its sigmas."""
    d = _folder(run_dir)
    out = []
    for p in sorted(d.glob("*.json")) if d.is_dir() else []:
        if not NAME.match(p.name) or not p.is_file() or not p.resolve().is_relative_to(run_dir.resolve()):
            continue
        try:
            out.append(describe(_read(p, p.name), p.name))
        except GlanceError as e:
            out.append({"name": p.name, "error": str(e)})
    return out


def ladder_path(run_dir: Path, name: str | None) -> Path | None:
    """The file a generate request names (None or "": the run's own ladder), checked by the reader."""
    if not name:
        return None
    p = _folder(run_dir) / name
    if not isinstance(name, str) or not NAME.match(name) or not p.is_file() \
            or not p.resolve().is_relative_to(run_dir.resolve()):
        raise GlanceError(f"ladder: {name!r} is not a ladder file of this run (see its list)")
    _read(p, name)
    return p


def server_name(filename: str, taken: set[str]) -> str:
    """The uploaded name's stem, reduced to safe characters, `.json`, made unique (`-2`, `-3`, ...)."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(filename.replace("\\", "/")).stem)[:60].strip(".-_") or "ladder"
    name, k = f"{stem}.json", 2
    while name in taken:
        name, k = f"{stem}-{k}.json", k + 1
    return name


def save_upload(run_dir: Path, filename: str, data: bytes) -> dict:
    """Store an uploaded ladder file in the run's `ladders/` when it reads as one; else one line, nothing kept."""
    shown = Path((filename or "upload").replace("\\", "/")).name or "upload"
    if len(data) > MAX_BYTES:
        raise GlanceError(f"ladder: {shown}: {len(data)} bytes; a ladder file may have at most {MAX_BYTES}")
    d = _folder(run_dir)
    d.mkdir(exist_ok=True)
    tmp = d / f".upload-{secrets.token_hex(6)}.tmp"
    try:
        tmp.write_bytes(data)
        found = _read(tmp, shown)
        name = server_name(shown, {p.name for p in d.iterdir()})
        os.replace(tmp, d / name)
    finally:
        tmp.unlink(missing_ok=True)
    return describe(found, name)
