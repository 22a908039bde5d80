"""The optional bearer token of an agegate HTTP server: the till's (edge/api.py) and the backend's.

Imports Starlette only, so that ``agegate-backend serve`` guards its pages the way the till
guards its console without importing the till's server.
"""

from __future__ import annotations

import secrets
from typing import Sequence
from urllib.parse import parse_qsl, urlencode

from starlette.datastructures import Headers
from starlette.requests import cookie_parser
from starlette.responses import JSONResponse, RedirectResponse
from starlette.types import ASGIApp, Receive, Scope, Send

TOKEN_COOKIE = "token"


class RequireToken:
    """ASGI middleware: with a token set, every request but ``open_paths`` must carry it (else 401).

    Accepted: ``Authorization: Bearer <token>`` (the POS, Prometheus, scripts), or the
    ``token`` cookie (HttpOnly, SameSite=Strict) that a browser gets by opening a page under
    ``page_prefix`` with ``?token=<token>`` once; that visit is redirected to the same URL without
    the token, so it stays out of the address bar and history. Compared in constant time.
    """

    def __init__(self, app: ASGIApp, token: str, open_paths: Sequence[str] = ("/healthz",),
                 page_prefix: str = "/console", server: str = "this till's HTTP server"):
        self.app, self._token, self.open_paths = app, token.encode(), frozenset(open_paths)
        self.page_prefix = page_prefix
        self.detail = (f"{server} needs its token: send 'Authorization: Bearer <token>', "
                       f"or open {page_prefix}?token=<token> in the browser once")

    def _ok(self, candidate: str | None) -> bool:
        return candidate is not None and secrets.compare_digest(candidate.encode(), self._token)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.open_paths:
            return await self.app(scope, receive, send)
        headers = Headers(scope=scope)
        scheme, _, credentials = headers.get("authorization", "").partition(" ")
        cookie = cookie_parser(headers.get("cookie", "")).get(TOKEN_COOKIE)
        if (scheme.lower() == "bearer" and self._ok(credentials.strip())) or self._ok(cookie):
            return await self.app(scope, receive, send)
        query = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        given = dict(query).get("token")
        if scope["method"] == "GET" and scope["path"].startswith(self.page_prefix) and self._ok(given):
            rest = urlencode([(k, v) for k, v in query if k != "token"])
            response = RedirectResponse(scope["path"] + (f"?{rest}" if rest else ""), status_code=303)
            response.set_cookie(TOKEN_COOKIE, given, httponly=True, samesite="strict", path="/")
            return await response(scope, receive, send)
        await JSONResponse({"detail": self.detail}, status_code=401,
                           headers={"WWW-Authenticate": 'Bearer realm="agegate"'})(scope, receive, send)
