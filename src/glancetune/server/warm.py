"""The warm `generate` API of `glancetune serve`: `POST /api/v1/generate` takes generate's arguments by name (JSON)
and answers the encoded image files; the resident pipeline (`WarmPipelines`) is kept between requests and reused
while the model, the two LoRA files and the load options stay the same (ladder, guidance, size and prompts may
change freely). Requests run one after the other; each runs in the client's working folder (`cwd`), so relative
paths and error lines read as they do in-process. `GET /api/v1/health` says what is resident.
"""
from __future__ import annotations

import base64
import contextlib
import gc
import logging
import os
import threading
from pathlib import Path

from fastapi import FastAPI, Request

from ..errors import GlanceError
from ..sampling.remote import API, NOT_SENT, args_from_body

log = logging.getLogger(__name__)


def _where(path) -> tuple | None:
    """A file or folder named in a request, as the key of what is loaded from it: its absolute path and, for a
    file, its size and modification time (a LoRA written again is loaded again)."""
    if path is None:
        return None
    p = Path(path)
    if not p.exists():
        return (str(path),)
    p = p.resolve()
    st = p.stat()
    return (str(p), st.st_size, st.st_mtime_ns) if p.is_file() else (str(p),)


# generate's arguments that name files or folders the server reads
PATH_ARGS = ("run", "slow", "fast", "ladder_file", "image", "model")


def check_paths(args, cwd: Path, roots: list[Path]) -> None:
    """On a token server: each file or folder a request names (relative to its `cwd`) lies under `roots`; a model
    that is no local path (a hub id, tiny:...) is not a file."""
    from .access import inside

    for key in PATH_ARGS:
        value = getattr(args, key)
        if value is None or (key == "model" and not (cwd / value).exists()):
            continue
        if not inside((cwd / value).resolve(), roots):
            raise GlanceError(f"--{key.replace('_', '-')}: {value} is outside the folders this server may read ("
                              + (", ".join(str(r) for r in roots) or "none") + "; start it with --allow-dir DIR)")


class WarmPipelines:
    """One resident sampler; `make` has `sampling.prompt_cache.fresh_sampler`'s signature."""

    def __init__(self, allowed: list[Path] | None = None):
        """`allowed`: the folders a request's files must lie in (a token server); None: any."""
        self.allowed = allowed
        self.lock = threading.Lock()  # one request at a time (and its working folder)
        self.sampler = None
        self.key: tuple | None = None

    def make(self, spec, args, dtype, components: dict):
        """The resident sampler when it holds what `spec` and the load options ask for, else a new one (loaded
        with its text encoders: `components` is ignored, a missed prompt is encoded by it)."""
        from ..export.files import lora_file
        from ..sampling.prompt_cache import fresh_sampler

        loras = [_where(lora_file(p)) if p is not None else None for p in (spec.slow, spec.fast)]
        key = (_where(spec.base_model), *loras,
               spec.published.name if spec.published else None, args.device, str(dtype), args.lora_load,
               args.base_model_precision, args.compile)
        if key != self.key:
            self.drop()
            self.sampler = fresh_sampler(spec, args, dtype, {})
            self.key = key
            log.info("serve: loaded %s", spec.base_model)
        else:
            self.sampler.use_spec(spec)
            self.sampler.lora_mode = args.lora_mode
        return self.sampler

    def drop(self) -> None:
        if self.sampler is None:
            return
        self.sampler = self.key = None
        gc.collect()
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def generate(self, body) -> dict:
        """One request: generate's checks and sampling (commands.generate_files) in the client's folder."""
        from functools import partial

        from ..sampling.commands import generate_files
        from ..sampling.prompt_cache import sample_with_cache

        args, cwd = args_from_body(body)
        if cwd is not None and not Path(cwd).is_dir():
            raise GlanceError(f"cwd: {cwd} is not a folder on the server")
        if self.allowed is not None:
            check_paths(args, Path(cwd or os.getcwd()), self.allowed)
        with self.lock, _notices() as notices, contextlib.chdir(cwd or os.getcwd()):
            done = generate_files(args, load=partial(sample_with_cache, make=self.make), check_output=False)
        return {"images": [{"name": p.name, "data": base64.b64encode(data).decode("ascii")} for p, data in done.files],
                "summary": done.summary, "notices": notices}


@contextlib.contextmanager
def _notices():
    """glancetune's info lines of one request (the client shows them as the in-process path would)."""
    lines: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record):
            if record.levelno == logging.INFO and not record.name.startswith(__name__):
                lines.append(record.getMessage())

    handler = Keep(logging.INFO)
    root = logging.getLogger("glancetune")
    root.addHandler(handler)
    try:
        yield lines
    finally:
        root.removeHandler(handler)


def body_schema() -> dict:
    """The request body in the OpenAPI description (/docs): generate's arguments, read from its parser."""
    from ..sampling.generate_args import generate_parser

    props = {}
    for a in generate_parser()._actions:
        if not a.option_strings or a.dest in NOT_SENT:
            continue
        kind = "boolean" if a.nargs == 0 else {int: "integer", float: "number"}.get(a.type, "string")
        prop = {"type": kind, "description": a.help or ""}
        if a.choices:
            prop["enum"] = list(a.choices)
        props[a.dest] = {"type": "array", "items": prop} if a.dest == "prompt" else prop
    props["cwd"] = {"type": "string", "description": "the folder relative paths are read from (the CLI sends its own)"}
    schema = {"type": "object", "properties": props, "required": ["prompt"]}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def add_generate_api(app: FastAPI, warm: WarmPipelines) -> None:
    from .forms import json_body

    @app.post(API, openapi_extra=body_schema())
    async def generate(request: Request):
        """generate's arguments by name; answers the image files (base64), the summary line and the notices."""
        import asyncio

        body = await json_body(request, "generate")
        return await asyncio.to_thread(warm.generate, body)

    @app.get("/api/v1/health")
    def health():
        return {"status": "ok", "pid": os.getpid(), "resident": warm.key[0] if warm.key else None}
