"""Small compositions of the data API that tests compare against (not part of the package)."""
from __future__ import annotations

from pathlib import Path

import torch

from glancetune.data.backends import DatasetSpec
from glancetune.data.buckets import file_rng, plan_crop, target_size
from glancetune.data.discovery import Problems, discover
from glancetune.data.images import load_pixels, probe_image


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
