"""The seeds' `simple` backend helpers under their historical names (kept for callers and tests).

The code lives in backends.py (JSON), discovery.py (files and captions), images.py (pixels) and buckets.py
(sizes); these wrappers keep the old signatures.
"""
from __future__ import annotations

from pathlib import Path

import torch

from .backends import DatasetSpec, load_backends  # noqa: F401
from .buckets import file_rng, plan_crop, target_size  # noqa: F401
from .discovery import Problems, discover, read_caption  # noqa: F401
from .images import IMAGE_EXTENSIONS, _open, load_pixels, probe_image, to_rgb  # noqa: F401
from .samples import Sample, load_samples  # noqa: F401


def discover_pairs(image_dir: Path, caption_ext: str) -> list[tuple[Path, Path]]:
    """(image, caption file) pairs in `image_dir`; the first problem raises a GlanceError naming the file."""
    found = discover(Path(image_dir), Problems(), captions="textfile", caption_ext=caption_ext)
    return [(f.image, f.image.with_name(f.caption_source)) for f in found]


def load_image(path: Path, resolution: float, align: int) -> torch.Tensor:
    """The simple backend's sizing: aspect kept, area resolution^2, sides multiples of `align`, centre crop."""
    path = Path(path)
    size = probe_image(path)
    spec = DatasetSpec(id="image", where=str(path), backend="simple", resolution=resolution)
    crop = plan_crop(spec, size, target_size(*size, resolution, align), file_rng(0, spec.id, path.stem))
    return load_pixels(path, crop)


def open_image(path: Path):
    """Open as an RGB PIL image: EXIF orientation honoured, alpha flattened onto white (with a notice)."""
    return to_rgb(_open(Path(path)), Path(path))
