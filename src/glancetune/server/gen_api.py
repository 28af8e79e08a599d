"""The routes behind the Generate page's progress and ladder choice and the run page's validation viewer:

- `GET /api/generate/progress` and `GET /api/generate/events` (server-sent events): what the warm sampler is doing
  (loading the pipeline, image k of n, saving, done / failed), as `generate.Progress`;
- `GET /api/runs/{id}/ladders` (the run's searched ladder files) and `POST` there (upload one: multipart field
  `file`, stored in the run's `ladders/` only when `LadderFile` reads it, ladders.py);
- `GET /api/runs/{id}/validations`: each validation grid with its step and the prompt and seed of each of its
  rows (read back from the Glance images' own parameters), for the viewer's labels.
"""
from __future__ import annotations

import asyncio
import logging

from fastapi import FastAPI, Request

from . import progress
from .events import sse
from .forms import one_upload
from .ladders import list_ladders, save_upload

log = logging.getLogger(__name__)
EVENT_S = 0.1  # the progress stream's poll: a tiny model's image takes a fraction of a second


def validation_labels(run_dir, output) -> list[dict]:
    """[{step, grid, rows: [{prompt, seed}]}] oldest first, for the grids that are on disk."""
    from ..sampling.images import read_parameters

    out = []
    for d in progress.run_lines(output):
        grid, images = d.get("grid"), d.get("images")
        if d.get("event") != "validation" or not isinstance(grid, str) or not (output / grid).is_file():
            continue
        rows = []
        for name in images if isinstance(images, list) else []:
            try:
                path = (output / str(name)).resolve()
                if not path.is_relative_to(output.resolve()):
                    raise OSError(name)
                p = read_parameters(path) or {}
            except (OSError, ValueError):
                p = {}
            rows.append({"prompt": p.get("prompt"), "seed": p.get("seed")})
        out.append({"step": d.get("step"), "grid": f"output/{grid}", "rows": rows})
    return out


def add_gen_api(app: FastAPI, srv) -> None:
    """`srv`: app.Server (its store and warm sampler)."""

    @app.get("/api/generate/progress")
    def generate_progress():
        return srv.warm.status()

    @app.get("/api/generate/events")
    async def generate_events(request: Request, once: bool = False):
        return sse(request, srv.warm.status, once, EVENT_S)

    @app.get("/api/runs/{run_id}/ladders")
    def ladders(run_id: str):
        return {"ladders": list_ladders(srv.store.dir(run_id))}

    @app.post("/api/runs/{run_id}/ladders")
    async def upload_ladder(request: Request, run_id: str):
        d = srv.store.dir(run_id)
        filename, data = await one_upload(request, "file", "ladder")
        return await asyncio.to_thread(save_upload, d, filename, data)

    @app.get("/api/runs/{run_id}/validations")
    def validations(run_id: str):
        d = srv.store.dir(run_id)
        return {"validations": validation_labels(d, srv.store.output(run_id))}
