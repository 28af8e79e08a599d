"""What the New run page sends before a run exists: a ZIP of images + captions unpacked for the form, the aspect
bucket (training size) each image lands in, and a config file read into the form's settings.

- ZIP: at most `MAX_FILES` files, no entry outside the archive's own folder (absolute, `..`, drive names), no
  zip bomb (declared and actually read sizes are bounded, and the compression ratio is capped); each image is
  decoded completely (runs.check_image); `<stem>.txt` beside an image is its caption. Hidden files and macOS
  `__MACOSX/` folders are skipped; anything else is refused, one line naming the entry.
- Buckets: the project's own bucket code (data/buckets.py `plan_target` / `plan_crop`) on the server's simple
  dataloader entry (`resolution` as a pixel area), with the model's alignment (16 when no model is named yet).
- Config: `config.schema.read_config_file` + `build_config`, as `glancetune glance --config` reads it (the same
  one-line errors); the keys the server sets per run are left out and named.
"""
from __future__ import annotations

import base64
import io
import json
import os
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from ..config.schema import build_config, normalise_key, read_config_file
from ..data.backends import DatasetSpec
from ..data.buckets import file_rng, plan_crop, plan_target
from ..errors import GlanceError
from .forms import SERVER_KEYS, schema, whole_number
from .runs import check_image

MAX_FILES = 64
MAX_UNPACKED = 256 * 2**20  # bytes of all files together, once unpacked
MAX_RATIO = 200  # a larger compression ratio (on entries above 1 MiB) is treated as a bomb
DEFAULT_ALIGN = 16  # the alignment of every shipped family (FLUX.1, FLUX.2, SD3, Qwen-Image)
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp"}
MIME = {".png": "image/png", ".jpg": "image/jpeg", ".webp": "image/webp"}
CONFIG_SUFFIXES = (".json", ".toml", ".yaml", ".yml")


@dataclass
class Unpacked:
    name: str  # the entry's name in the archive
    data: bytes
    ext: str  # the real format's extension
    caption: str  # "" without a same-stem .txt


def _entry_path(name: str) -> PurePosixPath:
    """The entry's path inside the archive, or a one-line error for one escaping it."""
    p = PurePosixPath(name.replace("\\", "/"))
    if p.is_absolute() or ".." in p.parts or (p.parts and ":" in p.parts[0]):
        raise GlanceError(f"archive: entry {name!r} escapes the archive's folder")
    return p


def _read(z: zipfile.ZipFile, info: zipfile.ZipInfo, budget: int) -> bytes:
    """An entry's bytes, reading no more than it declares (and no more than the budget left)."""
    if info.compress_size and info.file_size > 2**20 and info.file_size / info.compress_size > MAX_RATIO:
        raise GlanceError(f"archive: entry {info.filename!r} is compressed {info.file_size // info.compress_size}:1 "
                          f"(a zip bomb?); at most {MAX_RATIO}:1")
    if info.file_size > budget:
        raise GlanceError(f"archive: more than {MAX_UNPACKED // 2**20} MiB once unpacked")
    with z.open(info) as f:
        data = f.read(info.file_size + 1)
    if len(data) > info.file_size:
        raise GlanceError(f"archive: entry {info.filename!r} is larger than its header says")
    return data


def unpack_zip(data: bytes) -> list[Unpacked]:
    """The images of a ZIP, each with the caption of its same-stem .txt; one-line errors (module docstring)."""
    try:
        z = zipfile.ZipFile(io.BytesIO(data))
        infos = [i for i in z.infolist() if not i.is_dir()]
    except (zipfile.BadZipFile, OSError, ValueError):
        raise GlanceError("archive: not a readable ZIP file") from None
    infos = [i for i in infos if not _entry_path(i.filename).parts[0] == "__MACOSX"
             and not _entry_path(i.filename).name.startswith(".")]
    if len(infos) > MAX_FILES:
        raise GlanceError(f"archive: {len(infos)} files; at most {MAX_FILES} (images and captions together)")
    budget, images, captions = MAX_UNPACKED, [], {}
    for info in infos:
        path = _entry_path(info.filename)
        suffix = path.suffix.lower()
        if suffix not in IMAGE_SUFFIXES | {".txt"}:
            raise GlanceError(f"archive: entry {info.filename!r} is not an image (PNG, JPEG, WEBP) or a .txt caption")
        try:
            raw = _read(z, info, budget)
        except (zipfile.BadZipFile, NotImplementedError, RuntimeError, OSError, EOFError) as e:
            raise GlanceError(f"archive: entry {info.filename!r} cannot be read ({type(e).__name__})") from None
        budget -= len(raw)
        key = str(path.with_suffix(""))
        if suffix == ".txt":
            try:
                captions[key] = raw.decode("utf-8-sig").strip()
            except UnicodeDecodeError:
                raise GlanceError(f"archive: caption {info.filename!r} is not UTF-8 text") from None
        else:
            images.append((key, info.filename, raw, check_image(raw, f"archive: {info.filename}")))
    if not images:
        raise GlanceError("archive: no images (PNG, JPEG or WEBP) in it")
    return [Unpacked(name, raw, ext, captions.get(key, "")) for key, name, raw, ext in sorted(images)]


def unpacked_json(items: list[Unpacked]) -> dict:
    """The unpacked images for the page: name (the file name; the path with `_` for `/` where two share one),
    caption and the bytes as a data: URL (turned back into files)."""
    short = [PurePosixPath(u.name).name for u in items]
    names = [n if short.count(n) == 1 else u.name.replace("/", "_") for n, u in zip(short, items)]  # kept apart
    return {"images": [{"name": name, "caption": u.caption,
                        "data": f"data:{MIME[u.ext]};base64,{base64.b64encode(u.data).decode()}"}
                       for name, u in zip(names, items)]}


def _alignment(body: dict) -> tuple[int, str]:
    """The model's alignment (its family's own rule on its configs), or the shipped families' 16 without one."""
    model = body.get("model")
    if model in (None, ""):
        return DEFAULT_ALIGN, f"sides in multiples of {DEFAULT_ALIGN} (no model named yet)"
    if not isinstance(model, str):
        raise GlanceError("model: expected a model name")
    from ..families.models import model_info, resolve_family

    family = body.get("model_family") or None
    flavour = body.get("model_flavour") or None
    if family is not None:
        fam, flavour = resolve_family(family, flavour)
        family = fam.name
    info = model_info(model, family, flavour)
    align = info.family.alignment(info)
    return align, f"sides in multiples of {align} ({model})"


def bucket_preview(body: Any) -> dict:
    """{resolution, sizes: [[w, h], ...], model?, model_family?, model_flavour?} -> each image's training size
    and crop, and its bucket (images of one training size share one)."""
    if not isinstance(body, dict) or set(body) - {"resolution", "sizes", "model", "model_family", "model_flavour"}:
        raise GlanceError("buckets: expected a JSON object with resolution, sizes and the model")
    res = whole_number(body.get("resolution", 1024), "resolution", 64, 8192, " of pixels")
    sizes = body.get("sizes")
    if not isinstance(sizes, list) or len(sizes) > MAX_FILES or not all(
            isinstance(s, list) and len(s) == 2 and all(type(v) is int and 1 <= v <= 65536 for v in s) for s in sizes):
        raise GlanceError(f"sizes: expected up to {MAX_FILES} [width, height] pairs of whole pixels")
    align, note = _alignment(body)
    spec = DatasetSpec(id="simple-0", where="upload", backend="simple", resolution=res, resolution_type="pixel_area")
    buckets: list[tuple[int, int]] = []
    out = []
    for k, (w, h) in enumerate(sizes):
        rng = file_rng(0, spec.id, str(k))
        target = plan_target(spec, (w, h), align, rng)
        crop = plan_crop(spec, (w, h), target, rng)
        if target not in buckets:
            buckets.append(target)
        out.append({"size": [w, h], "target": list(target), "resize": list(crop.resize), "box": list(crop.box),
                    "bucket": buckets.index(target) + 1})
    return {"images": out, "buckets": [list(b) for b in buckets], "alignment": align, "note": note}


def form_text(value: Any) -> str:
    """A config value as the form's field holds it (app.js reads it back the same way)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(value)


def read_config_upload(filename: str, data: bytes) -> dict:
    """A config file sent from the page, read as `glancetune glance --config` reads it: the form's settings (key
    -> text), the dataloader resolution left to the form, and the server's own keys that were left out."""
    name = PurePosixPath((filename or "config").replace("\\", "/")).name
    suffix = PurePosixPath(name).suffix.lower()
    if suffix not in CONFIG_SUFFIXES:
        raise GlanceError(f"config: {name!r} is not a .json, .toml or .yaml file")
    fd, tmp = tempfile.mkstemp(suffix=suffix, prefix="glancetune-config-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        try:
            raw = read_config_file(tmp)
        except GlanceError as e:  # the message names the temp file: name the uploaded one instead
            raise GlanceError(str(e).replace(tmp, name)) from None
    finally:
        os.unlink(tmp)
    given = {normalise_key(str(k)) for k in raw}
    placeholders = {k: v for k, v in (("data_backend_config", "config/multidatabackend.json"), ("output_dir", "output"))
                    if k not in given}  # the server's own, set per run
    build_config({**raw, **placeholders}, name)  # unknown keys, bad values: the same one line as the CLI
    props = schema()["properties"]
    settings, left_out = {}, []
    for key, value in raw.items():
        k = normalise_key(str(key))
        if k in SERVER_KEYS:
            left_out.append(k)
        elif k in props and value is not None:
            settings[k] = form_text(value)
    return {"name": name, "settings": settings, "left_out": sorted(left_out)}
