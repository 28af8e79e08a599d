"""Tiny random pipelines built in code (no downloads), saved with `save_pretrained`, loaded via `from_pretrained`.

`tiny:flux` resolves to a cached folder holding such a pipeline; `glancetune tiny flux DIR` writes one anywhere.
Each family builds its own (`Family.tiny_builders`, in its file, from the parts in tiny_parts.py). Architectures
keep the real channel counts, VAE scale (8) and packing, and the scheduler carries the real model's config, so
token counts and ladders at a given resolution equal the full-size model's. Weights are random: the images are
noise-like, but every code path (tokenise, encode, pack, LoRA, sample, decode) is the production one.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from ..errors import GlanceError
from ..process import cache_root

TINY_VERSION = "2"  # 2: FLUX.2-dev's Mistral-3 lm_head untied, as in the real model


_BUILDERS: dict = {}


def builders() -> dict:
    """Tiny name -> the function building its pipeline, gathered from every family (`Family.tiny_builders`) on first
    use (importing this module loads no family: the `tiny` command's parser is built for every `--help`)."""
    if not _BUILDERS:
        from .registry import FAMILIES

        _BUILDERS.update({name: build for fam in FAMILIES.values() for m in getattr(fam, "members", (fam,))
                          for name, build in m.tiny_builders().items()})
    return _BUILDERS


TMP_MARK = ".tmp-"  # temp folders: .<name>.tmp-<pid>-<random>, beside the target

def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True

def clean_stale_temps(directory: Path) -> list[Path]:
    """Remove the temp folders that earlier `write_tiny`s of `directory` left when killed: only ours (named
    `.<name>.tmp-<pid>-...`), and only those whose writing process is gone (a concurrent writer's stays)."""
    removed = []
    if not directory.parent.is_dir():
        return removed
    for tmp in directory.parent.glob(f".{directory.name}{TMP_MARK}*"):
        pid = tmp.name[len(f".{directory.name}{TMP_MARK}"):].split("-", 1)[0]
        if tmp.is_dir() and pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(tmp, ignore_errors=True)
            removed.append(tmp)
    return removed

def write_tiny(family: str, directory: str | os.PathLike) -> Path:
    """Build the tiny pipeline for `family` and save it to `directory` atomically: into a temp folder beside it,
    renamed when complete, so a kill at any point leaves no folder that loads as an incomplete model (the next
    write removes the temp folders of killed writers)."""
    if family not in builders():
        raise GlanceError(f"tiny: unknown family {family!r}; available: {', '.join(sorted(builders()))}")
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise GlanceError(f"tiny: {directory} is a file; give a new or empty folder")
    if directory.exists() and any(directory.iterdir()):
        raise GlanceError(f"tiny: {directory} already exists and is not empty")
    try:
        directory.parent.mkdir(parents=True, exist_ok=True)
        clean_stale_temps(directory)
        tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}{TMP_MARK}{os.getpid()}-", dir=directory.parent))
    except OSError as e:
        raise GlanceError(f"tiny: cannot write {directory} ({e.strerror or type(e).__name__}: "
                          f"{e.filename or directory.parent})") from None
    try:
        builders()[family]().save_pretrained(tmp)
        if directory.exists():
            directory.rmdir()  # empty (checked above); fails if a concurrent writer filled it meanwhile
        os.replace(tmp, directory)
    except OSError as e:  # disk full, or another process wrote `directory` meanwhile
        raise GlanceError(f"tiny: could not write {directory} ({e.strerror or type(e).__name__})") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return directory

def resolve_tiny(ref: str) -> Path:
    """`tiny:<family>` -> path of a cached tiny pipeline folder, built on first use."""
    family = ref.split(":", 1)[1]
    path = cache_root() / "tiny" / f"{family}-v{TINY_VERSION}"
    if not (path / "model_index.json").exists():
        if family not in builders():
            raise GlanceError(f"{ref}: unknown tiny model; available: "
                              + ", ".join(f"tiny:{f}" for f in sorted(builders())))
        shutil.rmtree(path, ignore_errors=True)
        try:
            write_tiny(family, path)
        except GlanceError:
            if not (path / "model_index.json").exists():  # a concurrent builder did not win the race either
                raise
    return path

def add_parser(sub) -> None:
    t = sub.add_parser("tiny", help="write a tiny random pipeline folder (offline tests, demos)")
    t.add_argument("family")
    t.add_argument("dir")
    t.set_defaults(handler=cmd_tiny)

def cmd_tiny(args) -> int:
    print(f"wrote {write_tiny(args.family, args.dir)}")
    return 0
