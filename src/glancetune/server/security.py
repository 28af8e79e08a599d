"""The server's guards, as one ASGI middleware in front of every request (pages, API, files, event streams):

- token: when the server has one (always on a non-loopback address), every request must carry it: the
  `Authorization: Bearer` header, the cookie the server sets, or `?token=` once (answered with the cookie and a
  redirect to the same page without it). Compared in constant time.
- host: on a loopback address, the Host header must name that address (no DNS rebinding), and a request that
  changes something must come from the server's own pages (its Origin, when sent, is the server itself).
- size: a request body above `max_body` bytes is refused (413) by its Content-Length or while it streams.
- wrong tokens: after `MAX_WRONG` different wrong tokens within `WRONG_WINDOW_S` from one address, every request
  from it is answered 429 for `LOCK_S` seconds (guessing stays hopeless; a typo, or a stale cookie sent again and
  again, does not lock anyone out).
- a browser without the token gets a page asking for it (access.py), an API client a JSON 401.
"""
from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import secrets
import time
from collections import deque
from http.cookies import SimpleCookie
from urllib.parse import parse_qsl, urlencode, urlsplit

from ..errors import GlanceError
from .access import token_page, wants_html

log = logging.getLogger(__name__)
COOKIE = "glancetune_token"
MIN_TOKEN = 16
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}
MAX_WRONG, WRONG_WINDOW_S, LOCK_S = 10, 60.0, 300.0


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
        self.wrong: dict[str, deque] = {}  # address -> times of its recent wrong tokens
        self.locked: dict[str, float] = {}  # address -> when its lock ends
        self.clock = time.monotonic

    def _locked(self, who: str) -> float:
        """Seconds left of `who`'s lock (0: not locked)."""
        left = self.locked.get(who, 0.0) - self.clock()
        if left <= 0:
            self.locked.pop(who, None)
        return max(left, 0.0)

    def _wrong_try(self, who: str, values: list[str]) -> None:
        """Count the different wrong tokens of one request (the same stale cookie sent again counts once)."""
        now = self.clock()
        tries = self.wrong.setdefault(who, deque())
        while tries and now - tries[0][0] > WRONG_WINDOW_S:
            tries.popleft()
        seen = {h for _, h in tries}
        for v in values:
            h = hashlib.sha256(v.encode()).digest()
            if h not in seen:
                tries.append((now, h))
                seen.add(h)
        if len(tries) >= MAX_WRONG:
            self.locked[who] = now + LOCK_S
            del self.wrong[who]
            log.warning("%d wrong tokens from %s: refused for %.0f s", MAX_WRONG, who, LOCK_S)
        if len(self.wrong) > 10000:  # many addresses: forget the oldest half rather than grow without end
            for k in list(self.wrong)[:5000]:
                del self.wrong[k]

    def _given(self, headers: dict[str, str], query: dict[str, str]) -> list[str]:
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
        return given

    def _token_ok(self, given: list[str]) -> bool:
        return any(hmac.compare_digest(g.encode(), self.token.encode()) for g in given)

    async def _refuse(self, scope, send, headers: dict[str, str], given: list[str]):
        """401 for a missing or wrong token (a wrong one counted): a page for a browser, JSON for the API."""
        if given:
            self._wrong_try((scope.get("client") or ("?",))[0], given)
        if wants_html(headers, scope.get("method", "GET")):
            body = token_page(scope.get("path", "/"))
            await send({"type": "http.response.start", "status": 401,
                        "headers": [(b"content-type", b"text/html; charset=utf-8"),
                                    (b"content-length", str(len(body)).encode()), (b"cache-control", b"no-store")]})
            return await send({"type": "http.response.body", "body": body})
        return await _reply(send, 401, "token required: open the URL the server printed at start "
                            "(...?token=...) or send 'Authorization: Bearer TOKEN'")

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
            left = self._locked((scope.get("client") or ("?",))[0])
            if left:
                return await _reply(send, 429, f"too many wrong tokens from this address: try again in {left:.0f} s",
                                    [(b"retry-after", str(int(left) + 1).encode())])
            given = self._given(headers, query)
            if not self._token_ok(given):
                return await self._refuse(scope, send, headers, given)
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
