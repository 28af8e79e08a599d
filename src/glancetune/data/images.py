"""Images on disk: open, honour EXIF orientation, flatten alpha, resize, crop -> [1, 3, H, W] in [-1, 1].

A `Crop` is the exact, deterministic description of what happens to one file: the oriented size it was planned
for, the size it is resized to, and the box cut from the resized image. It is plain data (hashable, JSON-able),
so a cache key can be derived from it; pixels are only decoded when `load_pixels` is called.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import GlanceError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")


@dataclass(frozen=True)
class Crop:
    source: tuple[int, int]  # (W, H) of the image after EXIF orientation, when the plan was made
    resize: tuple[int, int]  # (W, H) the oriented image is resized to (== source: no resize)
    box: tuple[int, int, int, int]  # (left, top, right, bottom) in the resized image

    @property
    def size(self) -> tuple[int, int]:
        """(W, H) of the training image."""
        return self.box[2] - self.box[0], self.box[3] - self.box[1]

    def to_dict(self) -> dict:
        return {"source": list(self.source), "resize": list(self.resize), "box": list(self.box)}

    def __str__(self) -> str:
        l, t, r, b = self.box
        return f"{self.source[0]}x{self.source[1]} -> resize {self.resize[0]}x{self.resize[1]} -> box ({l},{t},{r},{b})"


def _open(path: Path):
    """Decode the whole file (so truncated files fail here) and apply its EXIF orientation."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            return ImageOps.exif_transpose(im)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise GlanceError(f"{path}: unreadable or corrupt image ({e})") from None


def has_alpha(im) -> bool:
    return im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info)


def probe_image(path: Path) -> tuple[int, int]:
    """(W, H) after EXIF orientation. Decodes the file once to catch corrupt data; keeps no pixels."""
    im = _open(path)
    size = im.size
    im.close()
    return size


def to_rgb(im, path: Path):
    """Alpha flattened onto white (with a notice), then RGB."""
    from PIL import Image

    if has_alpha(im):
        log.info("notice: %s: alpha channel flattened onto white", path.name)
        rgba = im.convert("RGBA")
        im = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    return im.convert("RGB")


def to_tensor(im) -> torch.Tensor:
    arr = torch.from_numpy(np.asarray(im, dtype=np.float32).copy()) / 127.5 - 1.0
    return arr.permute(2, 0, 1).unsqueeze(0)


def load_pixels(path: Path, crop: Crop) -> torch.Tensor:
    """Apply `crop` to the file: [1, 3, H, W] in [-1, 1]. The file must still have the planned size."""
    from PIL import Image

    im = _open(path)
    if im.size != tuple(crop.source):
        raise GlanceError(f"{path}: image changed since the dataset was read (now {im.width}x{im.height}, "
                          f"planned for {crop.source[0]}x{crop.source[1]})")
    im = to_rgb(im, path)
    im = im.resize(tuple(crop.resize), Image.Resampling.LANCZOS)
    return to_tensor(im.crop(tuple(crop.box)))
