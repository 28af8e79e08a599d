"""`glancetune server`: a web UI to configure, run, watch and use Glance runs.

Pages and a JSON API (FastAPI, served by uvicorn; `pip install 'glancetune[server]'`), live updates by
server-sent events. Runs are separate `glancetune glance` processes, one device job at a time; the runs folder is
the source of truth. Binds to 127.0.0.1; any other address needs a token (security.py). Nothing here imports
FastAPI until the command runs, so the rest of glancetune works without the extra.
"""
from __future__ import annotations

import errno
from pathlib import Path

import logging

from ..errors import GlanceError

log = logging.getLogger(__name__)
DEFAULT_PORT = 8001


def add_parser(sub) -> None:
    s = sub.add_parser("server", help="web UI: configure, run, watch and use Glance runs (pip install "
                       "'glancetune[server]')")
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; any other address "
                   "requires a token)")
    s.add_argument("--port", type=int, default=DEFAULT_PORT)
    s.add_argument("--runs-dir", default="glancetune-runs", help="folder of the runs (created; the source of truth)")
    s.add_argument("--token", help="require this token on every request (default: none on 127.0.0.1, a generated "
                   "one, printed at start, on any other address)")
    s.add_argument("--max-upload-mb", type=int, default=64, help="largest request body (uploads), MiB")
    s.add_argument("--jobs", type=int, default=1, help="device jobs at a time (the rest wait in the queue)")
    s.add_argument("--idle-release", type=float, default=300, metavar="SECONDS",
                   help="release the Generate page's pipeline after this long unused")
    s.add_argument("--device", help="device of the Generate page: auto | cpu | cuda | cuda:N")
    s.add_argument("--compile", action="store_true", help="compile the Generate page's transformer blocks when it "
                   "loads a run: ~20 s on its first images, then ~0.76x per image (FLUX.1-dev, H200)")
    s.add_argument("--allow-dir", action="append", metavar="DIR", help="with a token: a folder (besides the runs "
                   "folder) that a run's data folder, cache_dir and logging_dir may lie in (repeat for more)")
    s.set_defaults(handler=cmd_server)


def loopback_hosts(host: str, port: int) -> set[str]:
    """The Host headers a loopback server answers to."""
    return {f"{h}:{port}" for h in ("127.0.0.1", "localhost", "[::1]", host if ":" not in host else f"[{host}]")}


def check_start(args) -> None:
    """Every start-up argument, one line naming it, before the app is built: numbers in range, a runs folder
    that is (or can be) a folder, a host that resolves, a port free on it."""
    import math

    if not 1 <= args.port <= 65535:
        raise GlanceError(f"--port: {args.port} is not a port number (1-65535)")
    for name, value in (("--jobs", args.jobs), ("--max-upload-mb", args.max_upload_mb)):
        if value < 1:
            raise GlanceError(f"{name}: {value} must be at least 1")
    if math.isnan(args.idle_release) or args.idle_release < 0:
        raise GlanceError(f"--idle-release: {args.idle_release} must be 0 or more seconds")
    runs = Path(args.runs_dir).expanduser()
    parent = next((q for q in (runs, *runs.absolute().parents) if q.exists()), None)
    if parent is not None and not parent.is_dir():
        raise GlanceError(f"--runs-dir: {parent} is a file, not a folder")
    bind_socket(args.host, args.port).close()


def bind_socket(host: str, port: int):
    """A socket bound to host:port as uvicorn binds it, or one line naming --host or --port (port 0: any free)."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as e:
        raise GlanceError(f"--host: {host!r} is not an address this machine can bind ({e})") from None
    family, _, _, _, addr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
    try:
        sock.bind(addr)
    except OSError as e:
        sock.close()
        why = "is in use (another server?)" if e.errno == errno.EADDRINUSE else f"cannot be bound ({e.strerror})"
        raise GlanceError(f"--port: {port} on {host} {why}") from None
    return sock


def cmd_server(args) -> int:
    try:
        import uvicorn

        from .app import create_app
    except ImportError as e:
        raise GlanceError(f"server: {e.name} is not installed; pip install 'glancetune[server]'") from None
    from .access import check_allowed_dirs, urls
    from .security import is_loopback, server_token

    check_start(args)
    if args.compile:  # what compiling needs on the Generate page's device, before the server starts
        from ..engine.runtime import select
        from ..engine.speed import check_compile

        try:
            device, _ = select(args.device)
        except GlanceError as e:
            raise GlanceError(f"--{e}") from None
        check_compile(device.type, "--compile")
    token = server_token(args.host, args.token)
    allowed = check_allowed_dirs(args.allow_dir)
    hosts = loopback_hosts(args.host, args.port) if is_loopback(args.host) else set()
    app, srv = create_app(args.runs_dir, token, hosts, args.max_upload_mb * 2**20, args.jobs, args.idle_release,
                          args.device, compile_sampler=args.compile, allow_dirs=allowed)
    for url in urls(args.host, args.port):  # 0.0.0.0 / ::: the addresses another machine can open
        log.info("glancetune server: %s (runs in %s)", url + (f"?token={token}" if token else ""), srv.store.root)
    if token:
        log.info("folders runs may use: %s", ", ".join(str(d) for d in srv.store.allowed))
    if token and args.token is None:
        log.info("token (generated; required on every request): %s", token)
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    finally:
        srv.jobs.close()
    return 0
