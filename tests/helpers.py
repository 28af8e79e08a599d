"""Small compositions of the data API that tests compare against (not part of the package), and the data
tests' shared helpers: hand-written PNGs, dataloader JSONs, the loader's first error, `validate-dataset`'s
report."""
from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from glancetune.cli import main
from glancetune.data import build_plan, load_backends
from glancetune.data.backends import DatasetSpec
from glancetune.data.buckets import file_rng, plan_crop, target_size
from glancetune.data.discovery import Problems, discover
from glancetune.data.images import load_pixels, probe_image
from glancetune.errors import GlanceError


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


def write_png(path: Path, arr, color_type: int, bit_depth: int = 8, chunks=()) -> Path:
    """A PNG written by hand (Pillow cannot write 16-bit RGB, RGBA or a 16-bit tRNS): grey 0, RGB 2, LA 4, RGBA 6."""
    arr = np.asarray(arr)
    h, w = arr.shape[:2]
    dt = ">u2" if bit_depth == 16 else "u1"
    raw = b"".join(b"\0" + row.astype(dt).tobytes() for row in arr.reshape(h, w, -1))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    out = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, bit_depth, color_type, 0, 0, 0))
    for kind, data in chunks:
        out += chunk(kind, data)
    path.write_bytes(out + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    return path


def make_dir(tmp_path, name="d") -> Path:
    d = tmp_path / name
    d.mkdir(parents=True, exist_ok=True)
    return d


def backend(tmp_path, entries) -> Path:
    path = tmp_path / "multidatabackend.json"
    path.write_text(json.dumps(entries))
    return path


def local(data, **keys):
    return {"id": "ds", "type": "local", "instance_data_dir": str(data), "caption_strategy": "textfile", **keys}


def simple(data, **keys):
    return {"backend": "simple", "image_dir": str(data), **keys}


def loader_error(tmp_path, entries) -> str:
    with pytest.raises(GlanceError) as e:
        build_plan(load_backends(backend(tmp_path, entries)), 16)
    return str(e.value)


def validate(capsys, *args):
    capsys.readouterr()
    rc = main(["validate-dataset", *map(str, args)])
    return rc, capsys.readouterr().out


def problems_of(out: str) -> list[str]:
    if "problems (" not in out:
        return []
    block = out.split("problems (", 1)[1].split("\n\n", 1)[0]
    return [line.strip() for line in block.splitlines()[1:]]
