"""Image files of `generate`, validation and eval: output paths checked before any weights load, the parameters
(prompt, seed, step, ladder, base model, guidance, size, sampler) in a PNG text chunk or the EXIF UserComment, and
reading them back."""
from __future__ import annotations

import json
import logging
from pathlib import Path

from ..errors import GlanceError

log = logging.getLogger(__name__)

#: --output extension -> PIL format; the parameters go into a PNG text chunk or the EXIF UserComment
FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}
EXIF_IFD, USER_COMMENT = 0x8769, 0x9286


def output_paths(output: str | Path, n: int) -> list[Path]:
    """The files `save_images` writes for `n` images (NAME-k.EXT for a batch), checked before any weights load:
    a known image extension, no folder in the way, and a writable folder (missing parents are created when the
    images are saved)."""
    import tempfile

    output = Path(output)
    if output.is_dir():
        raise GlanceError(f"--output: {output} is a folder; give a file name such as {output / 'glance.png'}")
    paths = output_names(output, n)
    for p in paths:
        if p.is_dir():
            raise GlanceError(f"--output: {p} (image {paths.index(p)} of the batch) is a folder")
    parent = output.parent.absolute()
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise GlanceError(f"--output: {parent} is a file, so {output.parent} cannot be a folder")
    try:
        tempfile.TemporaryFile(dir=parent).close()
    except OSError as e:
        raise GlanceError(f"--output: cannot write in {parent} ({e.strerror or type(e).__name__})") from None
    return paths


def output_names(output: str | Path, n: int) -> list[Path]:
    """The file names of `n` images (NAME-k.EXT for a batch) after the extension check; no file system access."""
    output = Path(output)
    if output.suffix.lower() not in FORMATS:
        what = f"extension {output.suffix!r}" if output.suffix else "no extension"
        raise GlanceError(f"--output: {output} has {what}; use .png, .jpg, .jpeg or .webp")
    return [output] if n == 1 else [output.with_name(f"{output.stem}-{k}{output.suffix}") for k in range(n)]


def image_info(spec, prompts: list[str], seed: int, guidance: float | None, sampler: str,
               width: int | None = None, height: int | None = None) -> dict:
    """The parameters stored in each image (generate and quickstart): enough to sample it again."""
    return {"prompt": prompts if len(prompts) > 1 else prompts[0], "seed": seed, "step": spec.train_steps,
            "base_model": spec.base_model, "ladder": spec.ladder.to_dict(), "guidance": guidance,
            "size": [width or spec.width, height or spec.height], "sampler": sampler,
            **({"preset": spec.published.name} if spec.published else {})}


def save_images(images, output: str | Path, info: dict) -> list[Path]:
    """Write the images atomically in the format the extension names (PNG, JPEG, WEBP); several images become
    NAME-0.EXT, NAME-1.EXT, ... Image k's parameters (`info` with seed+k) go into a `glancetune` PNG text chunk, or
    the EXIF UserComment of JPEG/WEBP, as JSON (`read_parameters` reads either). Missing parent folders are created."""
    return write_files(encode_images(images, output, info))


def encode_images(images, output: str | Path, info: dict, check: bool = True) -> list[tuple[Path, bytes]]:
    """(path, file bytes) of each image as `save_images` writes it, nothing written (a `glancetune serve` encodes,
    its client writes). `check`: the full output_paths check (False: the name and extension only, for a server
    that does not write there)."""
    import io

    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    paths = output_paths(output, len(images)) if check else output_names(output, len(images))
    fmt = FORMATS[paths[0].suffix.lower()]
    out = []
    for k, (im, p) in enumerate(zip(images, paths)):
        text = json.dumps({**info, "seed": info.get("seed", 0) + k})
        if fmt == "PNG":
            png = PngInfo()
            png.add_text("glancetune", text)
            extra = {"pnginfo": png}
        else:
            exif = Image.Exif()
            exif.get_ifd(EXIF_IFD)[USER_COMMENT] = b"ASCII\0\0\0" + text.encode("ascii")  # json.dumps: ASCII
            extra = {"exif": exif, "quality": 95}
        buf = io.BytesIO()
        im.save(buf, format=fmt, **extra)
        out.append((p, buf.getvalue()))
    return out


def write_files(files: list[tuple[Path, bytes]]) -> list[Path]:
    """Write encoded images atomically (a temporary name, then a rename), creating missing parent folders."""
    import os

    if files and not files[0][0].parent.is_dir():
        files[0][0].parent.mkdir(parents=True)
        log.info("notice: created the folder %s", files[0][0].parent)
    for p, data in files:
        tmp = p.with_name(f".{p.name}.tmp")
        try:
            tmp.write_bytes(data)
            os.replace(tmp, p)
        finally:
            tmp.unlink(missing_ok=True)
    return [p for p, _ in files]


def read_parameters(path: str | Path) -> dict | None:
    """The parameters `save_images` stored in an image (None when it holds none)."""
    from PIL import Image

    with Image.open(path) as im:
        if im.format == "PNG":
            text = im.text.get("glancetune")
            return json.loads(text) if text else None
        raw = im.getexif().get_ifd(EXIF_IFD).get(USER_COMMENT)
    if not isinstance(raw, bytes) or not raw.startswith(b"ASCII\0\0\0"):
        return None
    return json.loads(raw[8:].decode("ascii"))
