"""The seeds' `simple` dataloader backend: a folder of images with same-basename caption files.

Discovery is one function (`discover_pairs`) so that any validator and the loader always agree. Images are
resized (aspect kept) to the area resolution^2, snapped to the family's alignment, then centre-cropped.
Captions: UTF-8 (a BOM is tolerated); a multi-line caption file is one caption with its lines joined by spaces.
"""
from __future__ import annotations

import difflib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import GlanceError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")
SIMPLE_KEYS = {"backend": "simple", "image_dir": None, "caption_extension": ".txt", "resolution": 1024,
               "shuffle": True, "id": None, "disabled": False}


@dataclass
class Sample:
    image_path: Path
    caption: str
    width: int
    height: int
    pixels: torch.Tensor  # [1, 3, H, W] in [-1, 1]


def load_backends(path: str | Path) -> list[dict]:
    """Read the dataloader JSON: a list of backends (only the seeds' `simple` backend exists today)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except FileNotFoundError:
        raise GlanceError(f"{path}: data_backend_config file not found") from None
    except json.JSONDecodeError as e:
        raise GlanceError(f"{path}: JSON syntax error at line {e.lineno}, column {e.colno}: {e.msg}") from None
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list) or not all(isinstance(b, dict) for b in data):
        raise GlanceError(f"{path}: expected a list of backend objects")
    backends = []
    for i, b in enumerate(data):
        where = f"{path}: backend {i}"
        kind = b.get("backend", b.get("type", "simple"))
        if kind != "simple":
            raise GlanceError(f"{where}: backend type {kind!r} is not implemented yet (only 'simple')")
        for key in b:
            if key not in SIMPLE_KEYS:
                hint = difflib.get_close_matches(key, SIMPLE_KEYS, n=1)
                raise GlanceError(f"{where}: unknown key {key!r}" + (f"; did you mean {hint[0]!r}?" if hint else ""))
        cfg = {**SIMPLE_KEYS, **b}
        if cfg["disabled"]:
            continue
        if not cfg["image_dir"]:
            raise GlanceError(f"{where}: key 'image_dir' is required")
        res = cfg["resolution"]
        if isinstance(res, bool) or not isinstance(res, (int, float)) or res <= 0:
            raise GlanceError(f"{where}: key 'resolution' must be a positive number of pixels, got {res!r}")
        if not str(cfg["caption_extension"]).startswith("."):
            cfg["caption_extension"] = "." + str(cfg["caption_extension"])
        backends.append(cfg)
    if not backends:
        raise GlanceError(f"{path}: no enabled backend")
    return backends


def discover_pairs(image_dir: Path, caption_ext: str) -> list[tuple[Path, Path]]:
    """(image, caption) pairs in `image_dir`; a lone image or lone caption is an error naming the file."""
    if not image_dir.is_dir():
        raise GlanceError(f"{image_dir}: image_dir does not exist")
    images: dict[str, Path] = {}
    captions: dict[str, Path] = {}
    for f in sorted(image_dir.iterdir()):
        if not f.is_file():
            continue
        suffix = f.suffix.lower()
        if suffix in IMAGE_EXTENSIONS:
            if f.stem in images:
                raise GlanceError(f"{f}: duplicate basename (also {images[f.stem].name}); keep one image per caption")
            images[f.stem] = f
        elif suffix == caption_ext.lower():
            captions[f.stem] = f
    for stem, cap in captions.items():
        if stem not in images:
            raise GlanceError(f"{cap}: caption without an image ({'/'.join(IMAGE_EXTENSIONS)})")
    for stem, img in images.items():
        if stem not in captions:
            raise GlanceError(f"{img}: no caption file {img.with_suffix(caption_ext).name}")
    if not images:
        raise GlanceError(f"{image_dir}: no image/caption pairs ({', '.join(IMAGE_EXTENSIONS)} + {caption_ext})")
    return [(images[s], captions[s]) for s in sorted(images)]


def read_caption(path: Path) -> str:
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise GlanceError(f"{path}: caption is not UTF-8 ({e.reason} at byte {e.start})") from None
    caption = " ".join(text.split())
    if not caption:
        raise GlanceError(f"{path}: caption is empty")
    return caption


def target_size(width: int, height: int, resolution: float, align: int) -> tuple[int, int]:
    """Keep the aspect ratio, make the area about resolution^2, snap both sides to multiples of `align`."""
    scale = resolution / math.sqrt(width * height)
    return (max(align, round(width * scale / align) * align), max(align, round(height * scale / align) * align))


def open_image(path: Path):
    """Open as an RGB PIL image: EXIF orientation honoured, alpha flattened onto white (with a notice)."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            im = ImageOps.exif_transpose(im)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise GlanceError(f"{path}: unreadable or corrupt image ({e})") from None
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        print(f"notice: {path.name}: alpha channel flattened onto white")
        rgba = im.convert("RGBA")
        im = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    return im.convert("RGB")


def load_image(path: Path, resolution: float, align: int) -> torch.Tensor:
    """`open_image`, then resize to cover the target size and centre-crop.

    Returns [1, 3, H, W] in [-1, 1] with (W, H) = target_size(...) of the (oriented) image.
    """
    from PIL import Image

    im = open_image(path)
    w, h = target_size(im.width, im.height, resolution, align)
    scale = max(w / im.width, h / im.height)
    rw, rh = max(w, round(im.width * scale)), max(h, round(im.height * scale))
    im = im.resize((rw, rh), Image.Resampling.LANCZOS)
    left, top = (rw - w) // 2, (rh - h) // 2
    im = im.crop((left, top, left + w, top + h))
    arr = torch.from_numpy(np.asarray(im, dtype=np.float32).copy()) / 127.5 - 1.0
    return arr.permute(2, 0, 1).unsqueeze(0)


def load_samples(backends: list[dict], align: int) -> list[Sample]:
    """All samples of all backends, each sized for training. One training size for the whole run."""
    samples = []
    for b in backends:
        for img, cap in discover_pairs(Path(b["image_dir"]), b["caption_extension"]):
            caption = read_caption(cap)
            pixels = load_image(img, float(b["resolution"]), align)
            samples.append(Sample(img, caption, pixels.shape[3], pixels.shape[2], pixels))
    sizes = {(s.width, s.height) for s in samples}
    if len(sizes) > 1:
        listing = ", ".join(f"{s.image_path.name} {s.width}x{s.height}" for s in samples[:4])
        raise GlanceError(f"dataset: images give different training sizes ({listing}); aspect buckets are not "
                          "implemented yet: crop them to one aspect ratio or train them separately")
    return samples
