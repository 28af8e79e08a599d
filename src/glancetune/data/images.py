"""Images on disk: open, honour EXIF orientation, flatten alpha, resize, crop -> [1, 3, H, W] in [-1, 1].

Formats: PNG, JPEG (also MPO, the multi-picture JPEG of some cameras) and WEBP, recognised by content; any other
format, also under a .png/.jpg name, is refused naming the file. Modes: every mode Pillow reads from those formats
becomes 8-bit RGB faithfully: 16-bit greyscale (`I;16*`, and `I` holding 0..65535) is scaled by 1/257 (not clipped);
`1`, `L`, `P`, `CMYK`, `YCbCr` are converted by Pillow; alpha (`RGBA`, `LA`, `PA`, or a `transparency` key on `P`,
`L`, `RGB`, 16-bit grey) is flattened onto white with a notice. Anything else (`F`, `I` outside 0..65535, ...) is
refused naming the file and the mode.

A `Crop` is the exact, deterministic description of what happens to one file: the oriented size it was planned
for, the size it is resized to, and the box cut from the resized image. It is plain data (hashable, JSON-able),
so a cache key can be derived from it; pixels are only decoded when `load_pixels` is called.
"""
from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import GlanceError

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")
# image files we recognise by name but do not read: reported as "format not supported" instead of being ignored
UNSUPPORTED_EXTENSIONS = (".gif", ".bmp", ".dib", ".tif", ".tiff", ".heic", ".heif", ".avif", ".jxl", ".jp2", ".j2k",
                          ".jpx", ".jfif", ".pjpeg", ".apng", ".tga", ".ico", ".icns", ".psd", ".ppm", ".pgm", ".pbm",
                          ".pnm", ".pcx", ".dds", ".exr", ".hdr", ".qoi", ".svg", ".dng", ".cr2", ".cr3", ".nef",
                          ".arw", ".orf", ".rw2", ".raf", ".raw")
SUPPORTED_FORMATS = ("PNG", "JPEG", "MPO", "WEBP")  # Pillow's format names
EIGHT_BIT_MODES = ("1", "L", "P", "LA", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr")
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")
MODE_NAMES = {"F": "32-bit float", "I": "32-bit integer", "I;16S": "signed 16-bit", "LAB": "L*a*b*", "HSV": "HSV"}


class UnsupportedImage(GlanceError):
    """A file in a format or mode that cannot be decoded faithfully (the validator counts these on their own)."""


def supported_list() -> str:
    return "/".join(IMAGE_EXTENSIONS)


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
    """Decode the whole file (so truncated files fail here), check its format and mode, apply EXIF orientation."""
    from PIL import Image, ImageOps

    try:
        with warnings.catch_warnings():  # Pillow's raw warning becomes our one notice below
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(path)
        with im:
            if Image.MAX_IMAGE_PIXELS and im.width * im.height > Image.MAX_IMAGE_PIXELS:
                log.info("notice: %s: %dx%d (%.0f MP) is very large: decoding it takes time and memory (it is "
                         "resized to its bucket)", path.name, im.width, im.height, im.width * im.height / 1e6)
            fmt = im.format
            if fmt not in SUPPORTED_FORMATS:
                raise UnsupportedImage(f"{path}: image format {fmt} is not supported (the file is {fmt} whatever "
                                       f"its name says; supported: PNG, JPEG, WEBP as {supported_list()})")
            low = LOW_BYTES.get(im.tile[0].args) if fmt == "PNG" and len(im.tile) == 1 else None
            im.load()
            check_mode(im, path)
            if low is not None:
                im = _flatten_sixteen(path, im, low)
            return ImageOps.exif_transpose(im)
    except GlanceError:
        raise
    except Image.DecompressionBombError:
        raise GlanceError(f"{path}: too many pixels to decode safely (more than {2 * Image.MAX_IMAGE_PIXELS:,}, "
                          "Pillow's decompression-bomb limit); downscale it first") from None
    except Exception as e:  # Pillow raises many types on corrupt data (OSError, SyntaxError, struct.error, ...)
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e) or type(e).__name__
        raise GlanceError(f"{path}: unreadable or corrupt image ({reason})") from None


def check_mode(im, path: Path) -> None:
    """Refuse (one line naming the file and the mode) what cannot become 8-bit RGB faithfully."""
    if im.mode in EIGHT_BIT_MODES or im.mode in SIXTEEN_BIT_MODES:
        return
    if im.mode == "I":
        lo, hi = im.getextrema()
        if 0 <= lo and hi <= 65535:
            return  # 16-bit greyscale held as 32-bit integers (older Pillow's way of reading 16-bit PNGs)
        raise UnsupportedImage(f"{path}: image mode I (32-bit integer) with values {lo}..{hi} outside 0..65535 "
                               "cannot be converted to 8-bit RGB faithfully; save it as an 8- or 16-bit PNG")
    name = MODE_NAMES.get(im.mode, "no 8-bit RGB equivalent")
    raise UnsupportedImage(f"{path}: image mode {im.mode} ({name}) cannot be converted to 8-bit RGB faithfully; "
                           "save it as an 8- or 16-bit PNG, or a JPEG/WEBP")


# 16-bit PNGs with alpha: Pillow keeps only the high byte of each sample (off by up to 2 levels once flattened);
# decoding the file again with these raw modes (Pillow's own decoder) yields the low bytes / all bytes
LOW_BYTES = {"RGBA;16B": "RGBA;16L", "LA;16B": "RGBA"}
FLATTENED = "glancetune.flattened"


def _flatten_sixteen(path: Path, im, low_mode: str):
    """A 16-bit PNG with alpha, flattened onto white from its full 16-bit samples: an RGB image."""
    from PIL import Image

    with Image.open(path) as low:
        low.tile = [t._replace(args=low_mode) for t in low.tile]
        low.load()
        lo = np.asarray(low, dtype=np.float64)
    if low_mode == "RGBA":  # LA;16B read as RGBA: the bytes L-high, L-low, A-high, A-low
        grey = lo[..., 0] * 256 + lo[..., 1]
        colour, alpha = np.repeat(grey[..., None], 3, axis=-1), lo[..., 2] * 256 + lo[..., 3]
    else:
        v = np.asarray(im, dtype=np.float64) * 256 + lo
        colour, alpha = v[..., :3], v[..., 3]
    a = alpha[..., None] / 65535.0
    out = Image.fromarray(np.rint((colour / 65535.0 * a + 1.0 - a) * 255.0).astype(np.uint8), "RGB")
    out.info.update({k: v for k, v in im.info.items() if k != "transparency"}, **{FLATTENED: True})
    return out


def has_alpha(im) -> bool:
    return im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info


def _sixteen_to_eight(im):
    """16-bit greyscale (I;16*, or I within 0..65535) -> L (or LA when a transparent grey value is set): v / 257."""
    from PIL import Image

    arr = np.asarray(im).astype(np.float64)
    grey = np.clip(np.rint(arr / 257.0), 0, 255).astype(np.uint8)
    if "transparency" in im.info and isinstance(im.info["transparency"], int):
        alpha = np.where(arr == im.info["transparency"], 0, 255).astype(np.uint8)
        return Image.fromarray(np.stack([grey, alpha], axis=-1), "LA")
    return Image.fromarray(grey, "L")


def probe_image(path: Path) -> tuple[int, int]:
    """(W, H) after EXIF orientation. Decodes the file once to catch corrupt data; keeps no pixels."""
    im = _open(path)
    size = im.size
    im.close()
    return size


def open_image(path: Path):
    """Open as an RGB PIL image: EXIF orientation honoured, alpha flattened onto white (with a notice)."""
    return to_rgb(_open(Path(path)), Path(path))


def to_rgb(im, path: Path):
    """Alpha flattened onto white (with a notice), then RGB; 16-bit greyscale scaled to 8 bits first.

    The flattening is c * a + 255 * (1 - a) in float, rounded once (Pillow's alpha_composite rounds twice: off by
    up to 2 levels for 16-bit sources, which Pillow already reduces to 8 bits)."""
    from PIL import Image

    check_mode(im, path)
    if im.mode in SIXTEEN_BIT_MODES or im.mode == "I":
        im = _sixteen_to_eight(im)
    if im.info.get(FLATTENED):
        log.info("notice: %s: alpha channel flattened onto white", path.name)
    if has_alpha(im):
        log.info("notice: %s: alpha channel flattened onto white", path.name)
        rgba = np.asarray(im.convert("RGBA"), dtype=np.float64)
        a = rgba[..., 3:] / 255.0
        return Image.fromarray(np.rint(rgba[..., :3] * a + 255.0 * (1.0 - a)).astype(np.uint8), "RGB")
    return im.convert("RGB")


def to_tensor(im) -> torch.Tensor:
    import torch  # here: validate-dataset reads images without torch

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
