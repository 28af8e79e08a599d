"""What a token server lets its clients reach, and how it tells them where it is:

- allowed roots: on a token server a run's folders (`folder`, `cache_dir`, `logging_dir`, `output_dir`) must lie
  under the runs folder or a folder named at start (`--allow-dir`); one outside is refused, one line naming the key
  (a token `serve` checks the files a generate request names the same way, warm.py);
- the token page: a browser without the token gets a small HTML form (the token then goes through the `?token=`
  handshake of security.py) instead of a JSON 401;
- the addresses another machine can open when the server is bound to every interface (0.0.0.0 / ::).
"""
from __future__ import annotations

import html
import ipaddress
import socket
from pathlib import Path

from ..errors import GlanceError

# the config keys that name folders a run writes to or reads from
FOLDER_KEYS = ("folder", "cache_dir", "logging_dir", "output_dir")


def check_allowed_dirs(dirs: list[str] | None) -> list[Path]:
    """`--allow-dir` values: existing folders, resolved; one line naming a bad one."""
    out = []
    for d in dirs or []:
        p = Path(d).expanduser()
        if not p.is_dir():
            raise GlanceError(f"--allow-dir: {d} is not a folder")
        out.append(p.resolve())
    return out


def check_within(values: dict, roots: list[Path], output_dir: Path) -> None:
    """Each folder of `values` (config key -> path) resolved (links followed) under one of `roots`; a relative
    `logging_dir` is relative to `output_dir` (as the trainer reads it), other relative paths to this process's
    folder (the jobs' working folder)."""
    for key in FOLDER_KEYS:
        value = values.get(key)
        if value in (None, ""):
            continue
        if not isinstance(value, str):
            raise GlanceError(f"{key}: expected a folder name, got {value!r}")
        p = Path(value).expanduser()
        base = output_dir if key == "logging_dir" else Path.cwd()
        p = (p if p.is_absolute() else base / p).resolve()
        if not inside(p, roots):
            raise GlanceError(f"{key}: {value} is outside the folders this server may use ("
                              + ", ".join(str(r) for r in roots) + "; start it with --allow-dir DIR for more)")


def inside(path: Path, roots: list[Path]) -> bool:
    """`path` (resolved) is one of `roots` or lies under one."""
    return any(path == r or path.is_relative_to(r) for r in roots)


def token_page(path: str) -> bytes:
    """The page a browser gets without the token: one field, sent back to the same page as `?token=`."""
    action = html.escape(path or "/", quote=True)
    return (f"""<!doctype html><html><head><meta charset="utf-8"><title>glancetune: token</title>
<meta name="viewport" content="width=device-width, initial-scale=1"></head>
<body style="font-family: sans-serif; max-width: 32em; margin: 4em auto">
<h1>glancetune</h1><p>This server needs its token: the one printed when it started (<code>?token=...</code>
in the URL it printed).</p>
<form method="get" action="{action}"><label>Token <input type="password" name="token" autofocus
autocomplete="current-password" required minlength="16"></label> <button type="submit">Open</button></form>
</body></html>""").encode()


def wants_html(headers: dict[str, str], method: str) -> bool:
    """A browser's page request (it asks for HTML), not an API client's."""
    return method in ("GET", "HEAD") and "text/html" in headers.get("accept", "")


def interface_addresses(host: str) -> list[str]:
    """The addresses other machines can open for a server bound to `host`: for 0.0.0.0 / :: (every interface) this
    machine's own non-loopback addresses (IPv4, and IPv6 too for ::; link-local ones left out), else `host`."""
    if host not in ("0.0.0.0", "::", ""):
        return [host]
    families = {socket.AF_INET} | ({socket.AF_INET6} if host == "::" else set())
    found = []
    try:
        import psutil

        found = [a.address for addrs in psutil.net_if_addrs().values() for a in addrs if a.family in families]
    except ImportError:
        try:
            found = [i[4][0] for i in socket.getaddrinfo(socket.gethostname(), None) if i[0] in families]
        except OSError:
            pass
    out = []
    for a in found:
        try:
            ip = ipaddress.ip_address(a.split("%")[0])
        except ValueError:
            continue
        if not (ip.is_loopback or ip.is_link_local or ip.is_unspecified) and str(ip) not in out:
            out.append(str(ip))
    out.sort(key=lambda a: (":" in a, a))  # IPv4 first
    return out or ["127.0.0.1" if host != "::" else "::1"]


def urls(host: str, port: int) -> list[str]:
    return [f"http://{f'[{a}]' if ':' in a else a}:{port}/" for a in interface_addresses(host)]
