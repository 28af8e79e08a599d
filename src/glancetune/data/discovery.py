"""File discovery and captions: the ONE code path used by the loader and by `glancetune validate-dataset`.

Every problem goes through a `Problems` object. The loader's raises a `GlanceError` on the first problem (one line
naming the file); the validator's collects them all. So the two can never disagree about a dataset.

Captions: UTF-8 (a BOM is tolerated); a multi-line caption file is ONE caption, its lines joined by spaces.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..errors import GlanceError
from .images import IMAGE_EXTENSIONS, probe_image

# problem kinds, in the order the validator's summary table lists them
KINDS = {
    "missing_dir": "folder missing",
    "no_images": "no images found",
    "missing_caption": "image without caption",
    "caption_without_image": "caption without image",
    "empty_caption": "empty caption",
    "caption_not_utf8": "caption not UTF-8",
    "corrupt_image": "unreadable or corrupt image",
    "duplicate_basename": "duplicate basename",
    "too_small": "image smaller than --resolution",
    "no_partner": "target without conditioning/control image",
    "unmatched_partner": "conditioning/control image without target",
    "aspect_mismatch": "reference_strict aspect mismatch",
}


@dataclass
class Problem:
    path: Path
    kind: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


@dataclass
class Problems:
    """collect=False: raise at the first problem (the loader). collect=True: keep them all (the validator)."""

    collect: bool = False
    items: list[Problem] = field(default_factory=list)

    def add(self, path: Path, kind: str, message: str) -> None:
        p = Problem(Path(path), kind, message)
        if not self.collect:
            raise GlanceError(str(p))
        self.items.append(p)

    def count(self, kind: str) -> int:
        return sum(1 for p in self.items if p.kind == kind)


@dataclass
class Found:
    """One discovered image: its caption (None for caption-less datasets) and oriented size (None: unreadable)."""

    image: Path
    key: str  # path relative to the dataset folder, without the extension (posix): pairs files across folders
    caption: str | None
    caption_source: str  # the caption file's name, "filename", "instance_prompt", or "" (no caption)
    size: tuple[int, int] | None
    ok: bool = True  # False: a problem was reported for this image (only seen when problems are collected)


def read_caption(path: Path) -> str:
    """One caption from a text file; raises GlanceError naming the file."""
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise GlanceError(f"{path}: caption is not UTF-8 ({e.reason} at byte {e.start})") from None
    caption = " ".join(text.split())
    if not caption:
        raise GlanceError(f"{path}: caption is empty")
    return caption


def filename_caption(path: Path) -> str:
    """SimpleTuner's `filename` strategy: the file name without extension, underscores as spaces."""
    return " ".join(path.stem.replace("_", " ").split())


def _reason(e: GlanceError, path: Path) -> str:
    """The message of a GlanceError raised as "<path>: <reason>", without the path."""
    return str(e).removeprefix(f"{path}: ")


def _listing(root: Path, recursive: bool) -> list[Path]:
    files = root.rglob("*") if recursive else root.iterdir()
    out = []
    for f in files:
        rel = f.relative_to(root).parts
        if any(part.startswith(".") for part in rel) or not f.is_file():
            continue  # hidden files and folders (.DS_Store, .ipynb_checkpoints, caches)
        out.append(f)
    return sorted(out)


def discover(root: Path, problems: Problems, *, captions: str | None = "textfile", caption_ext: str = ".txt",
             instance_prompt: str | None = None, recursive: bool = False, what: str = "image_dir") -> list[Found]:
    """Images in `root` with their captions and sizes.

    captions: "textfile" (same-basename caption file next to each image), "filename", "instanceprompt", or None
    (images only: conditioning / control folders; caption files are then not looked at).
    Problems: missing folder, duplicate basenames, lone images or captions, empty / non-UTF-8 captions,
    unreadable images, no images at all. Each is reported once, in that order, through `problems`.
    """
    root = Path(root)
    if not root.is_dir():
        problems.add(root, "missing_dir", f"{what} does not exist" if not root.exists() else f"{what} is not a folder")
        return []
    images: dict[str, Path] = {}
    texts: dict[str, Path] = {}
    ext = caption_ext.lower()
    for f in _listing(root, recursive):
        key = f.relative_to(root).with_suffix("").as_posix()
        suffix = f.suffix.lower()
        if suffix in IMAGE_EXTENSIONS:
            if key in images:
                problems.add(f, "duplicate_basename", f"duplicate basename (also {images[key].name}); keep one image "
                             "per caption")
                continue
            images[key] = f
        elif captions == "textfile" and suffix == ext:
            texts[key] = f
    if captions == "textfile":
        for key, cap in texts.items():
            if key not in images:
                problems.add(cap, "caption_without_image", f"caption without an image ({'/'.join(IMAGE_EXTENSIONS)})")
        for key, img in images.items():
            if key not in texts:
                problems.add(img, "missing_caption", f"no caption file {img.with_suffix(caption_ext).name}")
    if not images:
        if captions == "textfile":
            problems.add(root, "no_images", f"no image/caption pairs ({', '.join(IMAGE_EXTENSIONS)} + {caption_ext})")
        else:
            problems.add(root, "no_images", f"no images ({', '.join(IMAGE_EXTENSIONS)})")
        return []
    found = []
    for key in sorted(images):
        img = images[key]
        caption, source, ok = None, "", True
        if captions == "textfile":
            if key not in texts:
                ok = False  # already reported
            else:
                try:
                    caption, source = read_caption(texts[key]), texts[key].name
                except GlanceError as e:
                    kind = "empty_caption" if str(e).endswith("caption is empty") else "caption_not_utf8"
                    problems.add(texts[key], kind, _reason(e, texts[key]))
                    ok = False
        elif captions == "filename":
            caption, source = filename_caption(img), "filename"
            if not caption:
                problems.add(img, "empty_caption", "caption from the file name is empty")
                ok = False
        elif captions == "instanceprompt":
            caption, source = instance_prompt, "instance_prompt"
        size = None
        try:
            size = probe_image(img)
        except GlanceError as e:
            problems.add(img, "corrupt_image", _reason(e, img))
            ok = False
        found.append(Found(img, key, caption if ok else None, source, size, ok))
    return found


def pair_by_key(targets: list[Found], partners: list[Found], problems: Problems, *, partner_dir: Path,
                partner_name: str, all_target_keys: set[str] | None = None) -> dict[str, Found]:
    """Match partner images (conditioning / control) to targets by relative path without extension.

    A target lacking a partner and a partner lacking a target are both problems (targets and partners with
    problems of their own still count as present). Returns target key -> partner.
    """
    by_key = {p.key: p for p in partners}
    keys = all_target_keys if all_target_keys is not None else {t.key for t in targets}
    out = {}
    for t in targets:
        if t.key in by_key:
            if by_key[t.key].ok:
                out[t.key] = by_key[t.key]
        else:
            problems.add(t.image, "no_partner", f"no matching {partner_name} image {t.key}.* in {partner_dir}")
    for p in partners:
        if p.key not in keys:
            problems.add(p.image, "unmatched_partner", f"{partner_name} image without a target (no {p.key}.* among "
                         "the targets)")
    return out
