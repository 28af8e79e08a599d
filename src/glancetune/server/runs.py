"""Run folders: the runs folder is the source of truth. Each run is `<runs>/<id>/` holding `run.json` (the
server's record: name, state, process id, exit status), `config/` (the glance config and its dataloader JSON),
`data/` (uploaded images under server-chosen names), `output/` (the job's output_dir), `process.log` and
`generated/`. A restarted server finds every run again by listing the folder.

Files leave the server only through `RunStore.file`: a name the server itself listed for that run (validation
images, generated images, data, LoRA files), resolved inside the run folder; anything else is NotFound.
"""
from __future__ import annotations

import io
import json
import os
import re
import secrets
import shutil
import threading
import time
from pathlib import Path

from ..config.schema import build_config
from ..errors import GlanceError
from .access import check_within
from .forms import SERVER_KEYS

RUN_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,79}$")
RECORD = "run.json"
CONFIG = "config/glance.json"
OUTPUT = "output"
LOG = "process.log"
IMAGE_FORMATS = {"PNG": ".png", "JPEG": ".jpg", "WEBP": ".webp"}
MAX_PIXELS = 64 * 2**20  # decoding refuses images above this many pixels (decompression bombs)
# the only files served, as patterns of names relative to the run folder
SERVED = (re.compile(r"^output/validation/step-\d+/[A-Za-z0-9._-]+\.png$"),
          re.compile(r"^generated/[A-Za-z0-9._-]+\.png$"),
          re.compile(r"^data/image-\d+\.(png|jpg|webp)$"),
          re.compile(r"^output/(slow|fast)/pytorch_lora_weights\.safetensors$"),
          re.compile(r"^output/comfyui/glance-(slow|fast)\.safetensors$"),
          re.compile(r"^eval/(eval\.md|eval\.json|grid\.png)$"))
SERVED_GLOBS = ("output/validation/step-*/*.png", "generated/*.png", "data/image-*", "output/*/*.safetensors",
                "eval/*")


class NotFound(Exception):
    """A run or file the server does not know: answered 404 without saying more."""


class Conflict(Exception):
    """The request does not fit the run's state (e.g. stopping a finished run): answered 409 with the message."""


def check_image(data: bytes, what: str) -> str:
    """Decode an upload completely (Pillow); return the extension of its real format. One-line error otherwise."""
    from PIL import Image

    if not data:
        raise GlanceError(f"{what}: empty file")
    try:
        with Image.open(io.BytesIO(data)) as im:
            fmt = im.format
            if im.width * im.height > MAX_PIXELS:
                raise GlanceError(f"{what}: {im.width}x{im.height} is more than {MAX_PIXELS} pixels")
            im.load()
    except GlanceError:
        raise
    except Exception as e:  # noqa: BLE001 - Pillow raises many types for bad data
        raise GlanceError(f"{what}: not a readable image ({type(e).__name__})") from None
    if fmt not in IMAGE_FORMATS:
        raise GlanceError(f"{what}: {fmt} images are not accepted (PNG, JPEG or WEBP)")
    return IMAGE_FORMATS[fmt]


def slug(name: str) -> str:
    s = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:40].strip("-")
    return s or "run"


def write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


class RunStore:
    """Creates, reads, updates and deletes run folders under `root` (thread-safe)."""

    def __init__(self, root: str | Path, allowed: list[Path] | None = None):
        """`allowed`: the folders (besides the runs folder) a run's folders may lie in (access.py); None: any."""
        Path(root).mkdir(parents=True, exist_ok=True)
        self.root = Path(root).resolve()
        self.allowed = None if allowed is None else [self.root, *allowed]
        self.lock = threading.RLock()

    # --- lookup ---------------------------------------------------------------------------------------------
    def dir(self, run_id: str) -> Path:
        if not isinstance(run_id, str) or not RUN_ID.match(run_id):
            raise NotFound(run_id)
        p = self.root / run_id
        if p.is_symlink() or not (p / RECORD).is_file():
            raise NotFound(run_id)
        return p

    def ids(self) -> list[str]:
        """Every run folder, oldest first (a folder without a readable run.json is not a run)."""
        found = []
        for p in self.root.iterdir():
            try:
                found.append((self.read(p.name)["created"], p.name))
            except (NotFound, OSError, ValueError, KeyError):
                continue
        return [i for _, i in sorted(found)]

    def read(self, run_id: str) -> dict:
        with self.lock:
            return json.loads((self.dir(run_id) / RECORD).read_text(encoding="utf-8"))

    def update(self, run_id: str, **changes) -> dict:
        with self.lock:
            rec = {**self.read(run_id), **changes}
            write_json(self.dir(run_id) / RECORD, rec)
            return rec

    # --- create / delete ------------------------------------------------------------------------------------
    def create(self, name: str, settings: dict, images: list[tuple[str, bytes]], captions: list[str],
               folder: str | None, resolution: int) -> str:
        """A new run folder in state "draft": the images and captions (or a server folder, read only), the
        dataloader JSON and the config. The config is validated before anything is written."""
        if bool(images) == bool(folder):
            raise GlanceError("data: upload image(s) or give a folder on the server, not both or neither")
        if images and len(captions) not in (1, len(images)):
            raise GlanceError(f"captions: give one caption for all images or one per image ({len(images)}), "
                              f"got {len(captions)}")
        if images and not all(c.strip() for c in captions):
            raise GlanceError("captions: a caption is empty")
        exts = [check_image(data, f"image {k + 1} ({fname})") for k, (fname, data) in enumerate(images)]
        if self.allowed is not None:  # before the folder is looked at: nothing is said about one outside
            check_within({**settings, "folder": folder}, self.allowed, self.root / "run" / OUTPUT)
        if folder and not Path(folder).is_dir():
            raise GlanceError(f"folder: {folder} is not a folder on the server")
        run_id = f"{slug(name)}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"
        final = self.root / run_id
        raw = {**settings, "data_backend_config": str(final / "config" / "multidatabackend.json"),
               "output_dir": str(final / OUTPUT), "resume_from_checkpoint": "latest"}
        build_config(raw, "settings")  # every problem of the form, one line, before anything is written
        tmp = self.root / f".new-{run_id}"
        (tmp / "config").mkdir(parents=True)
        try:
            data_dir = Path(folder).resolve() if folder else final / "data"
            if images:
                (tmp / "data").mkdir()
                for k, ((_, data), ext) in enumerate(zip(images, exts)):
                    (tmp / "data" / f"image-{k + 1:03d}{ext}").write_bytes(data)
                    text = captions[k] if len(captions) > 1 else captions[0]
                    (tmp / "data" / f"image-{k + 1:03d}.txt").write_text(text.strip() + "\n", encoding="utf-8")
            backend = [{"backend": "simple", "resolution": resolution, "shuffle": True, "image_dir": str(data_dir),
                        "caption_extension": ".txt"}]
            (tmp / "config" / "multidatabackend.json").write_text(json.dumps(backend, indent=2) + "\n")
            write_json(tmp / "config" / "glance.json", raw)
            write_json(tmp / RECORD, {"id": run_id, "name": name.strip() or run_id, "created": time.time(),
                                      "state": "draft", "command": "glance", "data": "folder" if folder else
                                      "upload", "folder": str(data_dir) if folder else None})
            os.rename(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return run_id

    def delete(self, run_id: str) -> None:
        """Remove the run's own folder (never a folder it only points at: a server data folder is not inside)."""
        with self.lock:
            d = self.dir(run_id)
            if d.resolve().parent != self.root:
                raise NotFound(run_id)
            gone = self.root / f".deleted-{run_id}-{secrets.token_hex(2)}"
            os.rename(d, gone)  # the run disappears at once; a failed removal leaves no half run behind
        shutil.rmtree(gone, ignore_errors=True)

    # --- files ----------------------------------------------------------------------------------------------
    def files(self, run_id: str) -> list[str]:
        """The names this run's files are served under (relative to its folder), sorted."""
        d = self.dir(run_id)
        inside = d.resolve()
        out = set()
        for pattern in SERVED_GLOBS:
            for p in d.glob(pattern):
                name = p.relative_to(d).as_posix()
                if any(r.match(name) for r in SERVED) and p.resolve().is_relative_to(inside) and p.is_file():
                    out.add(name)
        return sorted(out)

    def file(self, run_id: str, name: str) -> Path:
        """The file behind a served name: listed by `files`, a regular file, inside the run folder after
        resolving links. NotFound for anything else (traversal, absolute paths, links out, unknown names)."""
        d = self.dir(run_id)
        if not isinstance(name, str) or not any(r.match(name) for r in SERVED) or ".." in name.split("/"):
            raise NotFound(name)
        p = (d / name).resolve()
        if not p.is_relative_to(d.resolve()) or not p.is_relative_to(self.root) or not p.is_file():
            raise NotFound(name)
        if name not in self.files(run_id):
            raise NotFound(name)
        return p

    def config_path(self, run_id: str) -> Path:
        return self.dir(run_id) / CONFIG

    def output(self, run_id: str) -> Path:
        return self.dir(run_id) / OUTPUT


__all__ = ["Conflict", "NotFound", "RunStore", "check_image", "SERVER_KEYS"]
