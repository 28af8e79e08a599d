"""`glancetune serve`: a small server that keeps `generate`'s pipeline warm (warm.py's API, FastAPI's own
description at /docs and /openapi.json), so `glancetune generate` on this machine samples in seconds instead of
importing and loading each time. Same guards as `glancetune server` (security.py): 127.0.0.1 by default, a token
on any other address. While it runs it leaves its address, token and process id in $GLANCETUNE_HOME/serve.json
(owner-only), which `generate` reads (sampling/remote.py); the file is removed when it exits.
"""
from __future__ import annotations

import logging
import os
import signal
import threading
from pathlib import Path

from ..errors import GlanceError
from . import bind_socket, loopback_hosts

log = logging.getLogger(__name__)
DEFAULT_PORT = 8002
MAX_BODY = 4 * 2**20  # a request is generate's arguments: prompts and paths, no uploads


def add_parser(sub) -> None:
    s = sub.add_parser("serve", help="keep generate's pipeline warm: `glancetune generate` on this machine then "
                       "samples through it (pip install 'glancetune[server]')")
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; any other address "
                   "requires a token)")
    s.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"default {DEFAULT_PORT}; 0: any free port")
    s.add_argument("--token", help="require this token on every request (default: none on 127.0.0.1, a generated "
                   "one, printed at start, on any other address)")
    s.add_argument("--allow-dir", action="append", metavar="DIR", help="with a token: a folder that the files a "
                   "request names (runs, LoRAs, ladder files, images, local models) may lie in (repeat for more)")
    s.set_defaults(handler=cmd_serve, loads_models=False)


def create_serve_app(token: str | None, hosts: set[str], allow_dirs: list[Path] | None = None):
    """The ASGI app of `serve` (guarded) and its WarmPipelines; with a token, the files a request names must lie
    in `allow_dirs`."""
    from fastapi import FastAPI

    from .app import add_error_handlers
    from .security import Guard
    from .warm import WarmPipelines, add_generate_api

    app = FastAPI(title="glancetune serve", description="generate with a warm pipeline")
    add_error_handlers(app)
    warm = WarmPipelines(list(allow_dirs or []) if token else None)
    add_generate_api(app, warm)
    return Guard(app, token, hosts, MAX_BODY), warm


class Serve:
    """A bound, listening `serve`: `run()` blocks until `stop()` (or Ctrl-C / SIGTERM) and leaves the state file
    only while it runs."""

    def __init__(self, host: str = "127.0.0.1", port: int = DEFAULT_PORT, token: str | None = None,
                 allow_dirs: list[str] | None = None):
        import uvicorn

        from .security import is_loopback, server_token

        if not 0 <= port <= 65535:
            raise GlanceError(f"--port: {port} is not a port number (0-65535)")
        from .access import check_allowed_dirs

        self.token = server_token(host, token)
        allowed = check_allowed_dirs(allow_dirs)
        self.sock = bind_socket(host, port)
        self.sock.listen(128)  # a client that reads the state file connects at once, before uvicorn accepts
        port = self.sock.getsockname()[1]
        self.host, self.port = host, port
        near = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)  # how this machine reaches it
        self.url = f"http://{f'[{near}]' if ':' in near else near}:{port}"
        hosts = loopback_hosts(host, port) if is_loopback(host) else set()
        app, self.warm = create_serve_app(self.token, hosts, allowed)
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))

    def run(self) -> None:
        from ..sampling.remote import remove_state, write_state

        path = write_state(self.url, self.token, os.getpid())
        log.info("glancetune serve: %s/ (API description at %s/docs; `glancetune generate` here finds it through "
                 "%s)", self.url, self.url, path)
        if self.host in ("0.0.0.0", "::"):
            from .access import urls

            log.info("other machines: %s", ", ".join(urls(self.host, self.port)))
        if self.token:
            log.info("token (required on every request; generate reads it from the state file or GLANCETUNE_TOKEN):"
                     " %s", self.token)
        threading.Thread(target=_preload, daemon=True, name="serve-imports").start()  # the first request waits less
        main = threading.current_thread() is threading.main_thread()
        # uvicorn ends by raising the signal it caught again, with the handler it found: ours lets `finally` run
        previous = signal.signal(signal.SIGTERM, _interrupt) if main else None
        try:
            self.server.run(sockets=[self.sock])
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM: a normal end
            pass
        finally:
            remove_state(os.getpid())
            self.sock.close()
            if main:
                signal.signal(signal.SIGTERM, previous)

    def stop(self) -> None:
        self.server.should_exit = True


def _preload() -> None:
    """Import the sampler's libraries (torch, diffusers, ...) while no request waits for them."""
    try:
        from ..process import quiet_libraries
        from ..sampling import commands, prompt_cache, sampler  # noqa: F401

        quiet_libraries()
    except Exception as e:  # noqa: BLE001 - a request reports the real problem, one line
        log.debug("serve: preloading the sampler failed (%s)", e)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def cmd_serve(args) -> int:
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as e:
        raise GlanceError(f"serve: {e.name} is not installed; pip install 'glancetune[server]'") from None
    Serve(args.host, args.port, args.token, args.allow_dir).run()
    return 0
