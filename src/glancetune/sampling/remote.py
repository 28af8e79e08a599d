"""`generate` through a running `glancetune serve` (server/serve.py): the state file a server leaves in
$GLANCETUNE_HOME (its address, token and process id; removed when it exits, a stale one ignored), the request body
(generate's arguments by their names, plus the client's working folder) and the client itself, plain urllib: a
client imports no model library, so it starts in a fraction of a second.

The server samples with the code of the in-process path (commands.generate_files) and returns the encoded files;
the client writes them, so the bytes are the same. A server that is gone is one info line and the in-process path;
an error the server reports is the same one line as in-process (exit 2).
"""
from __future__ import annotations

import argparse
import base64
import json
import logging
import os
import urllib.error
import urllib.request
from pathlib import Path

from ..errors import GlanceError
from ..process import cache_root

log = logging.getLogger(__name__)
STATE = "serve.json"
API = "/api/v1/generate"
# parsed values that are not generate's arguments (the CLI's own, or how to reach a server)
NOT_SENT = {"server", "no_server", "handler", "loads_models", "command"}


def state_path() -> Path:
    return cache_root() / STATE


def write_state(url: str, token: str | None, pid: int) -> Path:
    """The running server's address for clients on this machine (owner-only: it can hold the token)."""
    path = state_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{pid}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump({"url": url, "token": token, "pid": pid}, f)
    os.replace(tmp, path)
    return path


def remove_state(pid: int) -> None:
    """Remove the state file if it is this server's (a later server may have replaced it)."""
    found = _read(state_path())
    if found is not None and found.get("pid") == pid:
        state_path().unlink(missing_ok=True)


def _read(path: Path) -> dict | None:
    try:
        found = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    ok = isinstance(found, dict) and isinstance(found.get("url"), str) and isinstance(found.get("pid"), int)
    return found if ok else None


def running_server() -> dict | None:
    """The state of a server running on this machine; None when there is none (no file, a malformed one, or one
    whose process has exited)."""
    found = _read(state_path())
    if found is None:
        return None
    try:
        os.kill(found["pid"], 0)
    except ProcessLookupError:
        log.debug("ignoring the stale %s (process %s has exited)", state_path(), found["pid"])
        return None
    except (PermissionError, OverflowError, ValueError):
        pass  # alive but another user's (or an odd pid): connecting tells
    return found


def request_body(args: argparse.Namespace) -> dict:
    """generate's parsed arguments as the API's JSON body: the values that differ from the defaults, by name."""
    from .generate_args import generate_parser

    defaults = vars(generate_parser().parse_args(["--prompt", "x"]))
    body = {k: v for k, v in vars(args).items() if k not in NOT_SENT and k in defaults and v != defaults[k]}
    body["prompt"] = list(args.prompt)
    body["cwd"] = os.getcwd()
    return body


def args_from_body(body) -> tuple[argparse.Namespace, str | None]:
    """The API's JSON body as generate's parsed arguments (argparse itself checks each value) and the client's
    working folder (`cwd`, or None); one line naming the key when something is wrong."""
    from .generate_args import generate_parser

    if not isinstance(body, dict):
        raise GlanceError("generate: expected a JSON object of generate's arguments")
    parser = generate_parser()
    flags = {a.dest: a for a in parser._actions if a.option_strings}
    argv = []
    for key, value in body.items():
        action = flags.get(key)
        if key == "cwd" or value is None:
            continue
        if action is None or key in NOT_SENT:
            raise GlanceError(f"{key}: not an argument of generate")
        option = action.option_strings[-1]
        if isinstance(action, argparse._StoreTrueAction):
            if not isinstance(value, bool):
                raise GlanceError(f"{key}: expected true or false, got {value!r}")
            argv += [option] if value else []
            continue
        values = value if key == "prompt" and isinstance(value, list) else [value]
        for v in values:
            if isinstance(v, bool) or not isinstance(v, (str, int, float)):
                raise GlanceError(f"{key}: expected {'a string' if key == 'prompt' else 'a value'}, got {v!r}")
            argv.append(f"{option}={v}")
    cwd = body.get("cwd")
    if cwd is not None and not isinstance(cwd, str):
        raise GlanceError(f"cwd: expected a folder name, got {cwd!r}")
    return parser.parse_args(argv), cwd


def remote_generate(args):
    """generate on a server: `--server URL`, else the one running here; None when there is none (or it is gone:
    one info line), so the caller samples in-process. Returns generate_args.Generated."""
    from .generate_args import Generated
    from .images import output_paths

    found = running_server()
    if args.server is None and found is None:
        return None
    url = (args.server or found["url"]).rstrip("/")
    same = found is not None and found["url"].rstrip("/") == url  # the state file's token is for its server only
    token = os.environ.get("GLANCETUNE_TOKEN") or (found.get("token") if same else None)
    paths = output_paths(args.output, len(args.prompt))  # this machine's folder, before the server works
    try:
        _alive(url, token)  # a stuck or frozen server: a short wait, not a hang (the request itself may take minutes)
        reply = _post(url + API, request_body(args), token)
    except (urllib.error.URLError, ConnectionError, TimeoutError) as e:  # no answer (an HTTP error is one line)
        if args.server:
            raise GlanceError(f"--server: {url} is not answering ({getattr(e, 'reason', e)})") from None
        log.info("notice: the glancetune serve at %s is not answering; sampling in this process", url)
        return None
    for line in reply.get("notices", []):
        log.info("%s", line)
    files = [(p, base64.b64decode(f["data"])) for p, f in zip(paths, reply["images"])]
    return Generated(files, reply["summary"] + f" (on {url})")


HEALTH, HEALTH_S = "/api/v1/health", 5.0


def _alive(url: str, token: str | None) -> None:
    """The server answers its health check within HEALTH_S seconds (URLError/TimeoutError when not)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url + HEALTH, headers=headers), timeout=HEALTH_S):
            pass
    except urllib.error.HTTPError:
        pass  # it answers (a token problem is reported by the request itself)
    except OSError as e:  # socket.timeout is TimeoutError, an OSError; so is a refused connection
        raise urllib.error.URLError(getattr(e, "reason", e)) from None


def _post(url: str, body: dict, token: str | None) -> dict:
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
    req = urllib.request.Request(url, json.dumps(body).encode(), headers, method="POST")
    try:
        with urllib.request.urlopen(req) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as e:
        try:
            message = json.loads(e.read()).get("error")
        except (ValueError, AttributeError):
            message = None
        if e.code == 401:
            raise GlanceError(f"--server: {url} wants a token: set GLANCETUNE_TOKEN") from None
        if e.code == 400 and message:
            raise GlanceError(message) from None  # the in-process path's line
        raise GlanceError(f"--server: {url} answered {e.code}: {message or e.reason}") from None
