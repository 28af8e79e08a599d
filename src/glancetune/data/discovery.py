"""File discovery and captions: the ONE code path used by the loader and by `glancetune validate-dataset`.

Every problem goes through a `Problems` object. The loader's raises a `GlanceError` on the first problem (one line
naming the file); the validator's collects them all. So the two can never disagree about a dataset.

Captions: UTF-8 (a BOM is tolerated); a multi-line caption file is ONE caption, its lines joined by spaces.

Folders: hidden entries are skipped; symlinked subfolders are followed (recursive datasets), each real folder once:
a link to a folder already listed (a loop, or a second link to it) is skipped with a notice. A folder that cannot
be listed or a broken link named like an image or caption is a problem naming it.

Edit datasets (`discover_edit`): image/ (or images/) with the targets and captions, control/ with the control
images; the loader (edit.py) and the validator both call it.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import GlanceError
from .images import IMAGE_EXTENSIONS, UNSUPPORTED_EXTENSIONS, UnsupportedImage, probe_image, supported_list

log = logging.getLogger(__name__)

IMAGE_SUBDIRS, CONTROL_SUBDIR = ("image", "images"), "control"

# problem kinds, in the order the validator's summary table lists them
KINDS = {
    "missing_dir": "folder missing",
    "no_images": "no images found",
    "missing_caption": "image without caption",
    "caption_without_image": "caption without image",
    "empty_caption": "empty caption",
    "caption_not_utf8": "caption not UTF-8",
    "corrupt_image": "unreadable or corrupt image",
    "unsupported_format": "unsupported image format or mode",
    "unreadable": "unreadable file or folder",
    "edit_layout": "ambiguous edit layout (image/ + images/)",
    "duplicate_basename": "duplicate basename",
    "too_small": "image smaller than --resolution",
    "no_partner": "target without conditioning/control image",
    "unmatched_partner": "conditioning/control image without target",
    "aspect_mismatch": "reference_strict aspect mismatch",
    "extreme_aspect": "extreme aspect with a side below 64 px",
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
        data = path.read_bytes()
    except IsADirectoryError:
        raise GlanceError(f"{path}: cannot read caption (it is a folder, not a text file)") from None
    except OSError as e:
        raise GlanceError(f"{path}: cannot read caption ({e.strerror or e})") from None
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise GlanceError(f"{path}: caption is not UTF-8 (it is UTF-16; save it as UTF-8)")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise GlanceError(f"{path}: caption is not UTF-8 ({e.reason} at byte {e.start})") from None
    bad = next((c for c in text if (ord(c) < 32 and c not in "\t\n\r") or ord(c) == 127), None)
    if bad is not None:  # a NUL or another control character: a binary or damaged file, not a caption
        raise GlanceError(f"{path}: caption holds a control character (U+{ord(bad):04X} at character "
                          f"{text.index(bad)}); is it a text file?")
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


def _caption_kind(message: str) -> str:
    if message.endswith("caption is empty"):
        return "empty_caption"
    return "caption_not_utf8" if "caption is not UTF-8" in message else "unreadable"


def listing(root: Path, recursive: bool, problems: Problems, wanted: tuple[str, ...] = ()) -> list[Path]:
    """The files under `root` (sorted), hidden entries skipped, symlinked folders followed once per real folder.

    A folder that cannot be listed, and a broken link whose suffix is in `wanted`, are problems naming them.
    """
    out: list[Path] = []
    seen = {os.path.realpath(root): root}
    todo = [root]
    while todo:
        folder = todo.pop(0)
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as e:
            problems.add(folder, "unreadable", f"cannot list folder ({e.strerror or e})")
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue  # hidden files and folders (.DS_Store, .ipynb_checkpoints, caches)
            path = Path(entry.path)
            try:
                is_dir, is_file = entry.is_dir(), entry.is_file()
            except OSError as e:
                problems.add(path, "unreadable", f"cannot read ({e.strerror or e})")
                continue
            if is_dir and recursive:
                real = os.path.realpath(path)
                if real in seen:
                    log.info("notice: %s: symlinked folder skipped, it leads to %s, already listed as %s", path,
                             real, seen[real])
                    continue
                seen[real] = path
                todo.append(path)
            elif is_file:
                out.append(path)
            elif not is_dir and entry.is_symlink() and path.suffix.lower() in wanted:
                problems.add(path, "unreadable", f"broken symbolic link (to {os.readlink(path)}, which does not "
                             "exist)")
    return sorted(out)


def _files(root: Path, problems: Problems, captions: str | None, caption_ext: str,
           recursive: bool) -> tuple[dict[str, Path], dict[str, Path]]:
    """Images and caption files by key; unsupported formats, duplicates and lone files or captions reported."""
    images: dict[str, Path] = {}
    texts: dict[str, Path] = {}
    unsupported: set[str] = set()
    ext = caption_ext.lower()
    for f in listing(root, recursive, problems, IMAGE_EXTENSIONS + (ext,)):
        key = f.relative_to(root).with_suffix("").as_posix()
        suffix = f.suffix.lower()
        if suffix in UNSUPPORTED_EXTENSIONS:
            problems.add(f, "unsupported_format", f"image format {suffix} is not supported (supported: "
                         f"{supported_list()})")
            unsupported.add(key)
        elif suffix in IMAGE_EXTENSIONS:
            if key in images:
                problems.add(f, "duplicate_basename", f"duplicate basename (also {images[key].name}); keep one image "
                             + ("per caption" if captions == "textfile" else "per basename"))
                continue
            images[key] = f
        elif captions == "textfile" and suffix == ext:
            texts[key] = f
    if captions == "textfile":
        for key, cap in texts.items():
            if key not in images and key not in unsupported:
                problems.add(cap, "caption_without_image", f"caption without an image ({'/'.join(IMAGE_EXTENSIONS)})")
        for key, img in images.items():
            if key not in texts:
                cap = root / (key + caption_ext)
                problems.add(img, "missing_caption", f"caption {cap.name} is a folder, not a text file" if cap.is_dir()
                             else f"no caption file {cap.name}")
    return images, texts


def discover(root: Path, problems: Problems, *, captions: str | None = "textfile", caption_ext: str = ".txt",
             instance_prompt: str | None = None, recursive: bool = False, what: str = "image_dir",
             allow_empty: bool = False) -> list[Found]:
    """Images in `root` with their captions and sizes.

    captions: "textfile" (same-basename caption file next to each image), "filename", "instanceprompt", or None
    (images only: conditioning / control folders; caption files are then not looked at).
    Problems: missing folder, duplicate basenames, lone images or captions, empty / non-UTF-8 captions,
    unreadable images, no images at all (unless `allow_empty`: a control folder, whose targets then each report
    their missing partner). Each is reported once, in that order, through `problems`.
    """
    root = Path(root)
    if not root.is_dir():
        problems.add(root, "missing_dir", f"{what} does not exist" if not root.exists() else f"{what} is not a folder")
        return []
    images, texts = _files(root, problems, captions, caption_ext, recursive)
    if not images:
        if allow_empty:
            return []
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
                    problems.add(texts[key], _caption_kind(str(e)), _reason(e, texts[key]))
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
            problems.add(img, "unsupported_format" if isinstance(e, UnsupportedImage) else "corrupt_image",
                         _reason(e, img))
            ok = False
        found.append(Found(img, key, caption if ok else None, source, size, ok))
    return found


def pair_by_key(targets: list[Found], partners: list[Found], problems: Problems, *, partner_dir: Path,
                partner_name: str, all_target_keys: set[str] | None = None,
                messages: tuple[str, str] | None = None) -> dict[str, Found]:
    """Match partner images (conditioning / control) to targets by relative path without extension.

    A target lacking a partner and a partner lacking a target are both problems (targets and partners with
    problems of their own still count as present). `messages`: the two texts ({key} filled in) instead of the
    default ones. Returns target key -> partner.
    """
    no_partner, unmatched = messages or (
        f"no matching {partner_name} image {{key}}.* in {partner_dir}",
        f"{partner_name} image without a target (no {{key}}.* among the targets)")
    by_key = {p.key: p for p in partners}
    keys = all_target_keys if all_target_keys is not None else {t.key for t in targets}
    out = {}
    for t in targets:
        if t.key in by_key:
            if by_key[t.key].ok:
                out[t.key] = by_key[t.key]
        else:
            problems.add(t.image, "no_partner", no_partner.format(key=t.key))
    for p in partners:
        if p.key not in keys:
            problems.add(p.image, "unmatched_partner", unmatched.format(key=p.key))
    return out


@dataclass
class EditFound:
    """An edit dataset: its targets folder (image/ or images/), targets, control images, and target key -> control."""

    targets_dir: Path | None = None
    targets: list[Found] = field(default_factory=list)
    controls: list[Found] = field(default_factory=list)
    pairs: dict[str, Found] = field(default_factory=dict)


def target_dirs(root: Path) -> list[Path]:
    """root/image and/or root/images, where they exist."""
    return [root / d for d in IMAGE_SUBDIRS if (root / d).is_dir()]


def looks_like_edit(root: Path) -> bool:
    """control/, or image(s)/ with no image at the top: the folder is meant as an edit dataset."""
    root = Path(root)
    if not root.is_dir() or (root / CONTROL_SUBDIR).is_dir():
        return root.is_dir()
    if not target_dirs(root):
        return False
    try:
        return not any(f.suffix.lower() in IMAGE_EXTENSIONS and f.is_file() for f in root.iterdir())
    except OSError:
        return True


def discover_edit(root: Path, problems: Problems, *, captions: str | None = "textfile", caption_ext: str = ".txt",
                  instance_prompt: str | None = None, recursive: bool = False,
                  what: str = "image_dir") -> EditFound:
    """The edit layout: targets + captions in image/ (or images/), control images in control/, paired by name."""
    root = Path(root)
    if not root.is_dir():
        problems.add(root, "missing_dir", f"{what} does not exist" if not root.exists() else f"{what} is not a folder")
        return EditFound()
    found = target_dirs(root)
    if len(found) > 1:
        problems.add(root, "edit_layout", "holds both image/ and images/; keep the targets in one of them")
        return EditFound()
    control = root / CONTROL_SUBDIR
    missing = [sub for sub, ok in (("image", found), (CONTROL_SUBDIR, control.is_dir())) if not ok]
    if missing:
        problems.add(root, "missing_dir", f"an edit dataset needs the subfolders image/ (targets + captions) and "
                     f"{CONTROL_SUBDIR}/ (control images); {' and '.join(m + '/' for m in missing)} "
                     f"{'is' if len(missing) == 1 else 'are'} missing")
        return EditFound()
    targets = discover(found[0], problems, captions=captions, caption_ext=caption_ext, instance_prompt=instance_prompt,
                       recursive=recursive, what=f"{found[0].name}/ folder")
    controls = discover(control, problems, captions=None, recursive=recursive, what=f"{CONTROL_SUBDIR}/ folder",
                        allow_empty=True)
    messages = (f"no control image {CONTROL_SUBDIR}/{{key}}.* ({supported_list()})",
                f"control image without a target image in {found[0]}")
    pairs = pair_by_key(targets, controls, problems, partner_dir=control, partner_name="control", messages=messages)
    return EditFound(found[0], targets, controls, pairs)
