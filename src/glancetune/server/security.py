"""The server's guards, as one ASGI middleware in front of every request (pages, API, files, event streams):

- token: when the server has one (always on a non-loopback address), every request must carry it: the
  `Authorization: Bearer` header, the cookie the server sets, or `?token=` once (answered with the cookie and a
  redirect to the same page without it). Compared in constant time.
- host: on a loopback address, the Host header must name that address (no DNS rebinding), and a request that
  changes something must come from the server's own pages (its Origin, when sent, is the server itself).
- size: a request body above `max_body` bytes is refused (413) by its Content-Length or while it streams.
"""
from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import secrets
from http.cookies import SimpleCookie
from urllib.parse import parse_qsl, urlencode, urlsplit

from ..errors import GlanceError

log = logging.getLogger(__name__)
COOKIE = "glancetune_token"
MIN_TOKEN = 16
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def server_token(host: str, token: str | None) -> str | None:
    """The token to require: the one given (checked), a generated one on a non-loopback address, else None."""
    if token is not None:
        if len(token.strip()) < MIN_TOKEN or token != token.strip():
            raise GlanceError(f"--token: give at least {MIN_TOKEN} characters without spaces around them (or leave "
                              "it out: one is generated)")
        return token
    if is_loopback(host):
        return None
    return secrets.token_urlsafe(24)


async def _reply(send, status: int, message: str, headers: list | None = None) -> None:
    body = json.dumps({"error": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


# on every response, guarded or not: no framing (clickjacking), no content sniffing, no token in a Referer
SECURITY_HEADERS = ((b"x-frame-options", b"DENY"), (b"x-content-type-options", b"nosniff"),
                    (b"content-security-policy", b"frame-ancestors 'none'"), (b"referrer-policy", b"no-referrer"))


def with_security_headers(send):
    """`send` adding SECURITY_HEADERS to each response's start (where the response did not set them)."""
    async def wrapped(message):
        if message["type"] == "http.response.start":
            have = {k.lower() for k, _ in message.get("headers", [])}
            message = {**message, "headers": [*message.get("headers", []),
                                              *(h for h in SECURITY_HEADERS if h[0] not in have)]}
        await send(message)
    return wrapped


class Guard:
    """ASGI middleware: token, Host / Origin and body size checks (module docstring)."""

    def __init__(self, app, token: str | None, hosts: set[str], max_body: int):
        self.app, self.token, self.hosts, self.max_body = app, token, hosts, max_body

    def _token_ok(self, headers: dict[str, str], query: dict[str, str]) -> bool:
        given = []
        auth = headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            given.append(auth[7:].strip())
        cookie = SimpleCookie()
        try:
            cookie.load(headers.get("cookie", ""))
        except Exception:  # noqa: BLE001 - a malformed cookie header is just no token
            pass
        if COOKIE in cookie:
            given.append(cookie[COOKIE].value)
        if "token" in query:
            given.append(query["token"])
        return any(hmac.compare_digest(g.encode(), self.token.encode()) for g in given)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        send = with_security_headers(send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
        method = scope.get("method", "GET")
        if self.hosts:  # loopback: the Host must be ours; a change must not come from another site's page
            if headers.get("host", "") not in self.hosts:
                return await _reply(send, 400, "unknown Host header (this server answers only to "
                                    + ", ".join(sorted(self.hosts)) + ")")
            origin = headers.get("origin")
            if method not in SAFE_METHODS and origin and urlsplit(origin).netloc not in self.hosts:
                return await _reply(send, 403, f"cross-site request refused (Origin {origin})")
        elif method not in SAFE_METHODS and headers.get("origin"):  # any other address: same-site changes only
            origin = headers["origin"]
            if urlsplit(origin).netloc != headers.get("host", ""):
                return await _reply(send, 403, f"cross-site request refused (Origin {origin})")
        if self.token is not None:
            if not self._token_ok(headers, query):
                return await _reply(send, 401, "token required: open the URL the server printed at start "
                                    "(...?token=...) or send 'Authorization: Bearer TOKEN'")
            if "token" in query and method == "GET":  # first visit: keep it in a cookie, drop it from the URL
                rest = urlencode([(k, v) for k, v in parse_qsl(scope["query_string"].decode()) if k != "token"])
                where = scope["path"] + (f"?{rest}" if rest else "")
                cookie = f"{COOKIE}={self.token}; Path=/; HttpOnly; SameSite=Strict"
                await send({"type": "http.response.start", "status": 303,
                            "headers": [(b"location", where.encode()), (b"set-cookie", cookie.encode()),
                                        (b"content-length", b"0")]})
                return await send({"type": "http.response.body", "body": b""})
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body):
            return await _reply(send, 413, f"request body too large (limit {self.max_body // 2**20} MiB)")
        return await self.app(scope, self._limited(receive), send)

    def _limited(self, receive):
        seen = 0

        async def wrapped():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body:
                    raise BodyTooLarge()
            return message

        return wrapped


class BodyTooLarge(Exception):
    """A streamed body passed the limit (the app answers 413)."""
