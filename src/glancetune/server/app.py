"""The FastAPI application: pages, the JSON API, server-sent events, downloads and run files.

`create_app` wires the run store (runs.py), the job queue (jobs.py), the warm sampler (generate.py) and the
guard middleware (security.py). Every error a request can cause is answered with a status and a one-line
`{"error": ...}`: bad input 400/413/422, unknown runs and files 404, a state conflict 409; an unexpected error
is logged with its traceback and answered 500 without one.
"""
from __future__ import annotations

import asyncio
import logging
import math
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import GlanceError
from . import pages, progress
from .activity import glance_of, live
from .downloads import download
from .events import sse
from .forms import form_keys, json_body, parse_settings, whole_number
from .gen_api import add_gen_api
from .generate import WarmSampler, gallery
from .jobs import Manager
from .ladders import ladder_path
from .plan import ladder_svg, make_plan
from .run_files import add_run_files, queue_positions, read_note
from .runs import LOG, Conflict, NotFound, RunStore, write_json
from .security import BodyTooLarge, Guard

log = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"
EVENT_S = 0.5


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _not_found(request: Request, message: str = "not found"):
    """404: a browser asking for a page gets a page with the way back; the API and files keep the JSON line."""
    if request.method == "GET" and not request.url.path.startswith("/api/") \
            and "text/html" in request.headers.get("accept", ""):
        body = ("<h1>Not found</h1><p>There is no such page or run here (a deleted run, or a mistyped address).</p>"
                '<p><a href="/">All runs</a></p>')
        return HTMLResponse(pages.layout("Not found", "", body), status_code=404)
    return _error(404, message)


def _http_error(request: Request, exc: StarletteHTTPException):
    return _not_found(request, str(exc.detail)) if exc.status_code == 404 else _error(exc.status_code, str(exc.detail))


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for e in exc.errors():
        where = ".".join(str(p) for p in e.get("loc", ()) if p not in ("body", "query", "path"))
        parts.append(f"{where or 'request'}: {e.get('msg', 'invalid')}")
    return "; ".join(parts) or "malformed request"


def add_error_handlers(app: FastAPI) -> None:
    handlers = {GlanceError: lambda r, e: _error(400, str(e)),
                NotFound: lambda r, e: _not_found(r),
                Conflict: lambda r, e: _error(409, str(e)),
                BodyTooLarge: lambda r, e: _error(413, "request body too large"),
                RequestValidationError: lambda r, e: _error(422, _validation_message(e)),
                StarletteHTTPException: _http_error}
    for exc, fn in handlers.items():
        app.add_exception_handler(exc, fn)

    @app.exception_handler(Exception)
    async def unexpected(request, exc):  # logged with the traceback; the answer has none
        log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        return _error(500, f"internal error ({type(exc).__name__}); the server log has the details")


class Server:
    """The state behind the routes: store, queue, sampler."""

    def __init__(self, runs_dir, max_jobs: int = 1, idle_s: float = 300.0, device: str | None = None,
                 compile_sampler: bool = False, allowed: list[Path] | None = None):
        self.store = RunStore(runs_dir, allowed)
        self.jobs = Manager(self.store, max_jobs)
        self.warm = WarmSampler(idle_s, device, compile_sampler)
        self.jobs.device_busy = lambda: self.warm.busy
        self.jobs.before_start.append(self.warm.release)
        self.jobs.periodic.append(self.warm.release_if_idle)

    def summary(self, run_id: str) -> dict:
        rec = self.store.read(run_id)
        status = self.jobs.status(rec)
        lines = progress.run_lines(self.store.output(run_id))
        total = (rec.get("plan") or {}).get("steps")
        step, eta = progress.step_and_eta(lines, total, status == "running")
        return {"id": run_id, "name": rec.get("name", run_id), "status": status, "step": step, "total": total,
                "eta": eta, "created": rec.get("created"), "returncode": rec.get("returncode"),
                "queue": queue_positions(self.store).get(run_id) if status == "queued" else None,
                "note": read_note(self.store, run_id),
                **glance_of(self.store.dir(run_id), lines, total, status)}

    def detail(self, run_id: str) -> dict:
        out = self.summary(run_id)
        d = self.store.dir(run_id)
        lines = progress.run_lines(self.store.output(run_id))
        files = self.store.files(run_id)
        out.update(losses=progress.losses(lines), validations=progress.validations(lines, files),
                   log=progress.log_tail(d / LOG), files=files,
                   downloads={"diffusers": progress.finished(self.store.output(run_id)),
                              "comfyui": progress.finished(self.store.output(run_id)),
                              "eval": any(f.startswith("eval/") for f in files)})
        out.update(live(d, self.store.output(run_id), self.store.read(run_id), out["status"], lines, files))
        if not out["flowing"]:
            out["eta"] = None  # starting, loading, searching, resuming: no training steps of this job yet
        return out


async def _form_parts(request: Request) -> tuple[dict, list[tuple[str, bytes]]]:
    """Text fields (a repeated name becomes a list) and uploaded images of a multipart/urlencoded form."""
    try:
        form = await request.form(max_files=64, max_fields=512)
    except BodyTooLarge:
        raise
    except Exception as e:  # noqa: BLE001 - the multipart parser's errors: a malformed body, or over a limit
        limit = str(getattr(e, "detail", "") or getattr(e, "message", "") or e)
        if limit.startswith("Too many"):  # Starlette names the limit it hit ("Too many files. Maximum ... 64.")
            raise GlanceError(f"form: {limit.rstrip('.')} per run") from None
        raise GlanceError(f"form: malformed form data ({type(e).__name__})") from None
    fields: dict[str, list[str]] = {}
    images = []
    for key, value in form.multi_items():
        if hasattr(value, "read"):
            if key != "images":
                raise GlanceError(f"form: unexpected file field {key!r}")
            data = await value.read()
            if data or value.filename:
                images.append((value.filename or "upload", data))
        else:
            fields.setdefault(key, []).append(value)
    return fields, images


def _one(fields: dict, key: str, default: str = "") -> str:
    values = fields.get(key, [default])
    if len(values) != 1:
        raise GlanceError(f"form: {key} given {len(values)} times")
    return values[0]


async def _create_run(srv: "Server", request: Request) -> dict:
    """A new run from the form: a draft folder, its plan (deleted again if the plan fails), queued on `start`."""
    fields, images = await _form_parts(request)
    unknown = set(fields) - {"name", "captions", "folder", "resolution", "settings", "start"}
    if unknown:
        raise GlanceError(f"form: unknown field(s) {', '.join(sorted(unknown))}")
    res = _one(fields, "resolution", "1024").strip()
    if not res.isdigit() or not 64 <= int(res) <= 8192:
        raise GlanceError(f"resolution: {res!r} is not a whole number of pixels from 64 to 8192")
    settings = parse_settings(_one(fields, "settings", ""))
    run_id = await asyncio.to_thread(
        srv.store.create, _one(fields, "name"), settings, images, fields.get("captions", []),
        _one(fields, "folder").strip() or None, int(res))
    try:
        plan = await asyncio.to_thread(make_plan, srv.store.config_path(run_id))
    except Exception:  # the config passed the schema but the plan failed: nothing of the run is kept
        srv.store.delete(run_id)
        raise
    srv.store.update(run_id, plan=plan)
    if _one(fields, "start", "0") in ("1", "true"):
        srv.jobs.enqueue(run_id)
    return {**srv.summary(run_id), "plan": plan, "ladder_svg": ladder_svg(plan["ladder"])}


def add_api(app: FastAPI, srv: Server) -> None:
    """The runs: schema, list, create, detail, start/resume, eval, stop, delete."""

    @app.get("/api/schema")
    def schema_keys():
        return {"keys": form_keys()}

    @app.get("/api/runs")
    def list_runs():
        return [srv.summary(i) for i in srv.store.ids()]

    @app.post("/api/runs")
    async def create_run(request: Request):
        return await _create_run(srv, request)

    @app.get("/api/runs/{run_id}")
    def run_detail(run_id: str):
        return srv.detail(run_id)

    @app.post("/api/runs/{run_id}/start")
    def start_run(run_id: str):
        return {"status": srv.jobs.enqueue(run_id)}

    @app.post("/api/runs/{run_id}/eval")
    async def eval_run(request: Request, run_id: str):
        srv.store.dir(run_id)
        body = await json_body(request, "eval")
        seeds, prompts = parse_eval(body)
        path = None
        if prompts:
            path = srv.store.dir(run_id) / "config" / "eval_prompts.json"
            write_json(path, {f"prompt-{k + 1}": p for k, p in enumerate(prompts)})
        return {"status": srv.jobs.evaluate(run_id, seeds, path)}

    @app.post("/api/runs/{run_id}/stop")
    def stop_run(run_id: str):
        return {"status": srv.jobs.stop(run_id)}

    @app.delete("/api/runs/{run_id}")
    def delete_run(run_id: str, confirm: str = ""):
        status = srv.jobs.status(srv.store.read(run_id))
        if status in ("queued", "running", "stopping", "evaluating"):  # before the confirmation: nothing to confirm
            raise Conflict(f"run {run_id} is {status}: stop it before deleting")
        if confirm != run_id:
            raise GlanceError(f"delete: confirm by passing confirm={run_id}")
        srv.store.delete(run_id)
        return {"deleted": run_id}



def add_use_api(app: FastAPI, srv: Server) -> None:
    """Downloads, run files, generation."""

    @app.get("/api/runs/{run_id}/download/{kind}")
    async def download_run(run_id: str, kind: str):
        return await download(srv.store, run_id, kind)

    @app.get("/runs/{run_id}/file/{name:path}")
    def run_file(run_id: str, name: str):
        return FileResponse(srv.store.file(run_id, name))

    @app.post("/api/generate")
    async def generate(request: Request):
        body = await json_body(request, "generate")
        req = parse_generate(body)
        run_id = req["run"]
        status = srv.jobs.status(srv.store.read(run_id))
        if status not in ("done", "evaluating") or not progress.finished(srv.store.output(run_id)):
            raise Conflict(f"run {run_id} has not finished: generate needs its slow and fast LoRAs")
        busy = srv.jobs.active()
        if busy:
            doing = "being evaluated" if srv.jobs.status(srv.store.read(busy[0])) == "evaluating" else "training"
            raise Conflict(f"the device is busy: run {busy[0]} is {doing} (one device job at a time); generate "
                           "when it has finished")
        ladder = ladder_path(srv.store.dir(run_id), req["ladder"])  # a searched ladder file of the run, or None
        paths, info, seconds = await asyncio.to_thread(
            srv.warm.generate, run_id, srv.store.output(run_id), srv.store.dir(run_id) / "generated",
            req["prompts"], req["seed"], req["width"], req["height"], req["guidance"], ladder, req["ladder"])
        d = srv.store.dir(run_id)
        return {"images": [{"url": f"/runs/{run_id}/file/{p.relative_to(d).as_posix()}",
                            "parameters": {**info, "prompt": req["prompts"][k], "seed": req["seed"] + k}}
                           for k, p in enumerate(paths)],
                "seconds": round(seconds, 3)}

    @app.get("/api/runs/{run_id}/generated")
    def generated(run_id: str):
        return {"images": gallery(srv.store.dir(run_id), srv.store.files(run_id))}


def add_events(app: FastAPI, srv: Server) -> None:
    """Server-sent events: the runs list and one run, sent when they change (a comment line keeps them open)."""

    @app.get("/api/events")
    async def all_events(request: Request, once: bool = False):
        return sse(request, lambda: [srv.summary(i) for i in srv.store.ids()], once, EVENT_S)

    @app.get("/api/runs/{run_id}/events")
    async def run_events(request: Request, run_id: str, once: bool = False):
        srv.store.dir(run_id)
        return sse(request, lambda: srv.detail(run_id), once, EVENT_S)


def parse_generate(body) -> dict:
    """The generate request: {run, prompts: [..] or prompt, seed, width, height, guidance, ladder (a ladder file of
    the run; empty: its own)}; one-line errors."""
    if not isinstance(body, dict):
        raise GlanceError("generate: expected a JSON object")
    unknown = set(body) - {"run", "prompts", "seed", "width", "height", "guidance", "ladder"}
    if unknown:
        raise GlanceError(f"generate: unknown field(s) {', '.join(sorted(unknown))}")
    prompts = body.get("prompts")
    if isinstance(prompts, str):
        prompts = [p for p in prompts.splitlines() if p.strip()]
    if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
        raise GlanceError("prompts: expected a list of prompts (or lines of text)")
    out = {"run": body.get("run"), "prompts": prompts, "ladder": body.get("ladder") or None}
    if not isinstance(out["run"], str):
        raise GlanceError("run: expected a run id")
    if out["ladder"] is not None and not isinstance(out["ladder"], str):
        raise GlanceError("ladder: expected the name of one of the run's ladder files")
    for key, kind in (("seed", int), ("width", int), ("height", int), ("guidance", float)):
        v = body.get(key)
        if isinstance(v, str):
            v = v.strip() or None
        if v is None:
            out[key] = 0 if key == "seed" else None
            continue
        try:
            if isinstance(v, bool) or (isinstance(v, float) and not math.isfinite(v)) or (
                    kind is int and isinstance(v, float) and v != int(v)):
                raise ValueError
            out[key] = kind(v)
            if kind is float and not math.isfinite(out[key]):  # "nan", "inf" as strings
                raise ValueError
        except (TypeError, ValueError, OverflowError):
            raise GlanceError(f"{key}: {v!r} is not a{'n integer' if kind is int else ' number'}") from None
    return out


def parse_eval(body) -> tuple[int, list[str]]:
    """The eval request: {seeds: 1..16, prompts: [..] or lines (empty: glancetune's default eval set)}."""
    if not isinstance(body, dict) or set(body) - {"seeds", "prompts"}:
        raise GlanceError("eval: expected a JSON object with seeds and prompts")
    seeds = whole_number(body.get("seeds", 1), "seeds", 1, 16)
    prompts = body.get("prompts") or []
    if isinstance(prompts, str):
        prompts = [p.strip() for p in prompts.splitlines() if p.strip()]
    if not isinstance(prompts, list) or not all(isinstance(p, str) and p.strip() for p in prompts):
        raise GlanceError("prompts: expected a list of non-empty prompts (or lines of text)")
    return seeds, prompts


def add_pages(app: FastAPI, srv: Server) -> None:
    @app.get("/", response_class=HTMLResponse)
    def runs_page():
        return pages.runs_page()

    @app.get("/new", response_class=HTMLResponse)
    def new_page():
        return pages.new_page()

    @app.get("/runs/{run_id}", response_class=HTMLResponse)
    def run_page(run_id: str):
        return pages.run_page(run_id, srv.store.read(run_id), read_note(srv.store, run_id))

    @app.get("/generate", response_class=HTMLResponse)
    def generate_page(run: str | None = None):
        done = [(i, srv.store.read(i).get("name", i)) for i in srv.store.ids()
                if srv.jobs.status(srv.store.read(i)) in ("done", "evaluating")]  # evaluating: done, and busy
        return pages.generate_page(done, run)


def create_app(runs_dir, token: str | None = None, hosts: set[str] | None = None, max_body: int = 64 * 2**20,
               max_jobs: int = 1, idle_s: float = 300.0, device: str | None = None, start_queue: bool = True,
               compile_sampler: bool = False, allow_dirs: list[Path] | None = None):
    """The ASGI app. `hosts`: the Host headers accepted (loopback binds); `token`: required on every request; on a
    token server a run's folders must lie in the runs folder or `allow_dirs` (access.py)."""
    srv = Server(runs_dir, max_jobs, idle_s, device, compile_sampler, list(allow_dirs or []) if token else None)
    app = FastAPI(title="glancetune", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.server = srv
    add_error_handlers(app)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    add_api(app, srv)
    add_use_api(app, srv)
    add_run_files(app, srv)
    add_events(app, srv)
    add_pages(app, srv)
    add_gen_api(app, srv)
    if start_queue:
        srv.jobs.start()
    return Guard(app, token, hosts or set(), max_body), srv
