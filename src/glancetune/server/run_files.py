"""Routes for a run's data and files beyond training and generating: the New run page's helpers (unpack a ZIP,
bucket preview, read a config file), a run's config download and duplicate, its checkpoints (list, zip
download), its note (`note.txt` in the run folder, at most NOTE_MAX characters) and a queued run's queue position.

Every route that names a run goes through `RunStore.dir` (the run id pattern, a real run folder, no links), so
traversal and unknown runs are 404 as everywhere else; a checkpoint is named by its step only.
"""
from __future__ import annotations

import asyncio
import json
import os
import re
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse
from starlette.background import BackgroundTask

from ..errors import GlanceError
from .downloads import _zip
from .forms import SERVER_KEYS, one_upload
from .runs import NotFound, RunStore
from .uploads import bucket_preview, read_config_upload, unpack_zip, unpacked_json

NOTE = "note.txt"
NOTE_MAX = 2000
CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


# --- queue and notes ----------------------------------------------------------------------------------------
def queue_positions(store: RunStore) -> dict[str, int]:
    """Queued runs -> 1-based place in the queue (the order the job loop starts them: by queue time)."""
    queued = []
    for run_id in store.ids():
        try:
            rec = store.read(run_id)
        except (NotFound, OSError, ValueError):
            continue
        if rec.get("state") == "queued":
            queued.append((rec.get("queued", 0), run_id))
    return {run_id: k + 1 for k, (_, run_id) in enumerate(sorted(queued))}


def read_note(store: RunStore, run_id: str) -> str:
    p = store.dir(run_id) / NOTE
    try:
        return p.read_text(encoding="utf-8")[:NOTE_MAX] if p.is_file() and not p.is_symlink() else ""
    except (OSError, UnicodeDecodeError):
        return ""


def write_note(store: RunStore, run_id: str, body) -> str:
    if not isinstance(body, dict) or set(body) != {"note"} or not isinstance(body["note"], str):
        raise GlanceError('note: expected a JSON object {"note": text}')
    text = body["note"].replace("\r\n", "\n").strip()
    if len(text) > NOTE_MAX:
        raise GlanceError(f"note: {len(text)} characters; at most {NOTE_MAX}")
    p = store.dir(run_id) / NOTE
    if p.is_symlink():
        p.unlink()
    tmp = p.with_name(f".{NOTE}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, p)
    return text


# --- checkpoints --------------------------------------------------------------------------------------------
def _folder_bytes(d: Path) -> int:
    return sum(p.stat().st_size for p in d.rglob("*") if p.is_file() and not p.is_symlink())


def checkpoints(store: RunStore, run_id: str) -> list[dict]:
    """The run's finished checkpoints (`output/checkpoint-<step>/`; the trainer's temporary folders are not
    listed), newest first, with their size in bytes."""
    out = store.output(run_id)
    found = []
    if out.is_dir() and not out.is_symlink():
        for d in out.iterdir():
            m = CHECKPOINT.match(d.name)
            if m and d.is_dir() and not d.is_symlink():
                found.append({"step": int(m.group(1)), "bytes": _folder_bytes(d),
                              "url": f"/api/runs/{run_id}/checkpoints/{m.group(1)}/download"})
    return sorted(found, key=lambda c: -c["step"])


def checkpoint_members(store: RunStore, run_id: str, step: str) -> list[tuple[Path, str]]:
    if not step.isdigit():
        raise NotFound(step)
    d = store.output(run_id) / f"checkpoint-{int(step)}"
    root = store.dir(run_id).resolve()
    if d.is_symlink() or not d.is_dir() or not d.resolve().is_relative_to(root):
        raise NotFound(step)
    return [(p, f"{d.name}/{p.relative_to(d).as_posix()}") for p in sorted(d.rglob("*"))
            if p.is_file() and not p.is_symlink()]


# --- duplicate ----------------------------------------------------------------------------------------------
def duplicate_inputs(store: RunStore, run_id: str) -> dict:
    """The arguments of `RunStore.create` that remake a run: its settings (without the server's keys), its data
    (the uploaded images and captions again, or the same server folder) and its dataloader resolution."""
    d = store.dir(run_id)
    rec = store.read(run_id)
    raw = json.loads((d / "config" / "glance.json").read_text(encoding="utf-8"))
    settings = {k: v for k, v in raw.items() if k not in SERVER_KEYS}
    backend = json.loads((d / "config" / "multidatabackend.json").read_text(encoding="utf-8"))
    resolution = int(backend[0].get("resolution", 1024))
    images, captions = [], []
    if rec.get("data") != "folder":
        for p in sorted((d / "data").glob("image-*")):
            if p.suffix == ".txt" or not p.is_file() or p.is_symlink():
                continue
            images.append((p.name, p.read_bytes()))
            cap = p.with_suffix(".txt")
            captions.append(cap.read_text(encoding="utf-8").strip() if cap.is_file() else "")
    name = f"{rec.get('name', run_id)} (copy)"
    return {"name": name, "settings": settings, "images": images, "captions": captions,
            "folder": rec.get("folder") if rec.get("data") == "folder" else None, "resolution": resolution}


def add_run_files(app: FastAPI, srv) -> None:
    """Register the routes above on the app (`srv`: app.Server)."""
    from .forms import json_body
    from .plan import ladder_svg, make_plan

    store: RunStore = srv.store

    @app.post("/api/unpack")
    async def unpack(request: Request):
        _, data = await one_upload(request, "archive", "archive")
        return unpacked_json(await asyncio.to_thread(unpack_zip, data))

    @app.post("/api/buckets")
    async def buckets(request: Request):
        return await asyncio.to_thread(bucket_preview, await json_body(request, "buckets"))

    @app.post("/api/config")
    async def read_config(request: Request):
        name, data = await one_upload(request, "config", "config")
        return await asyncio.to_thread(read_config_upload, name, data)

    @app.get("/api/runs/{run_id}/config")
    def config_download(run_id: str):
        return FileResponse(store.config_path(run_id), media_type="application/json",
                            filename=f"{run_id}-glance.json")

    @app.post("/api/runs/{run_id}/duplicate")
    async def duplicate(run_id: str):
        args = await asyncio.to_thread(duplicate_inputs, store, run_id)
        new_id = await asyncio.to_thread(store.create, args["name"], args["settings"], args["images"],
                                         args["captions"], args["folder"], args["resolution"])
        try:
            plan = await asyncio.to_thread(make_plan, store.config_path(new_id))
        except Exception:  # as a new run: nothing of it is kept when its plan fails
            store.delete(new_id)
            raise
        store.update(new_id, plan=plan)
        return {**srv.summary(new_id), "plan": plan, "ladder_svg": ladder_svg(plan["ladder"])}

    @app.get("/api/runs/{run_id}/checkpoints")
    def checkpoint_list(run_id: str):
        return {"checkpoints": checkpoints(store, run_id)}

    @app.get("/api/runs/{run_id}/checkpoints/{step}/download")
    async def checkpoint_download(run_id: str, step: str):
        members = await asyncio.to_thread(checkpoint_members, store, run_id, step)
        path = await asyncio.to_thread(_zip, members)
        return FileResponse(path, media_type="application/zip", filename=f"{run_id}-checkpoint-{int(step)}.zip",
                            background=BackgroundTask(os.unlink, path))

    @app.put("/api/runs/{run_id}/note")
    async def note(request: Request, run_id: str):
        store.dir(run_id)
        return JSONResponse({"note": write_note(store, run_id, await json_body(request, "note"))})
