"""Downloads of a finished run, as zip files built in the system's temp folder and removed once sent:
`diffusers` (slow/ and fast/ `pytorch_lora_weights.safetensors`, loadable with stock `load_lora_weights`, plus
the run's `glancetune_config.json`), `comfyui` (the copies and the workflow `glancetune export` writes, made on first
request by the export code itself) and `eval` (the report `glancetune eval` wrote into the run's `eval/`).
"""
from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

from starlette.background import BackgroundTask
from starlette.responses import FileResponse

from ..errors import GlanceError
from ..export.files import CONFIG_NAME, WEIGHT_NAME
from . import progress
from .runs import Conflict, NotFound, RunStore

KINDS = ("diffusers", "comfyui", "eval")


def _members(store: RunStore, run_id: str, kind: str) -> list[tuple[Path, str]]:
    """(file, name in the zip) of one download; written first where the export code makes them."""
    out = store.output(run_id)
    if kind == "eval":
        files = [f for f in store.files(run_id) if f.startswith("eval/")]
        if not files:
            raise NotFound("eval")
        return [(store.file(run_id, f), f) for f in files]
    if not progress.finished(out):
        raise Conflict(f"run {run_id} has not finished: no LoRA pair to download yet")
    if kind == "diffusers":
        return [(out / r / WEIGHT_NAME, f"{r}/{WEIGHT_NAME}") for r in ("slow", "fast")] + [
            (out / CONFIG_NAME, CONFIG_NAME)]
    from ..export.comfy_workflow import WORKFLOW_NAME
    from ..export.comfyui import export_run

    files = [out / "comfyui" / f"glance-{r}.safetensors" for r in ("slow", "fast")] + [out / "comfyui" / WORKFLOW_NAME]
    newest = max((out / r / WEIGHT_NAME).stat().st_mtime for r in ("slow", "fast"))
    if not all(f.is_file() and f.stat().st_mtime >= newest for f in files):
        files = export_run(out)
    return [(f, f.name) for f in files]


def _zip(members: list[tuple[Path, str]]) -> str:
    fd, path = tempfile.mkstemp(prefix="glancetune-download-", suffix=".zip")
    os.close(fd)
    try:
        with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:  # safetensors do not compress
            for f, name in members:  # stored as 0644 whatever the file's own mode (an older export's were 0600)
                info = zipfile.ZipInfo.from_file(f, name)
                info.external_attr = (0o100644 & 0xFFFF) << 16
                with open(f, "rb") as src, z.open(info, "w") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
    except BaseException:
        os.unlink(path)
        raise
    return path


async def download(store: RunStore, run_id: str, kind: str) -> FileResponse:
    if kind not in KINDS:
        raise GlanceError(f"download: {kind!r} is not one of {', '.join(KINDS)}")
    store.dir(run_id)
    members = await asyncio.to_thread(_members, store, run_id, kind)
    path = await asyncio.to_thread(_zip, members)
    return FileResponse(path, media_type="application/zip", filename=f"{run_id}-{kind}.zip",
                        background=BackgroundTask(os.unlink, path))
