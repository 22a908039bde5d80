"""The till-local HTTP API (FastAPI): the POS posts sale events and gets the decision back.

``POST /v1/pos`` takes a :class:`PosMessage` and answers a :class:`PosAnswer`; for a
restricted item the answer holds the decision, so the till can prompt the cashier at once.
``GET /v1/status`` and ``GET /healthz`` tell how the daemon is. The OpenAPI schema is at
``/openapi.json`` and the interactive docs at ``/docs``: every route (the console's JSON API and
``/metrics`` included; its HTML pages are not an API), every body and answer, the token as a
security scheme, and the refusals (401, 403, 413, 422, 503) as the middleware below sends them.
Swagger UI's assets are served by the till itself from the fastapi-offline package, so ``/docs``
works at a till without internet.

Bad input gets a 4xx whose ``detail`` is one sentence with the reason (:class:`ErrorAnswer`,
as the OpenAPI schema says): a body that is not JSON (invalid UTF-8, nested too deeply, an
integer too long for Python included) or has wrong fields → 422, a body over
AGEGATE_HTTP_MAX_BODY → 413, whether it declares its length or comes chunked. Every POS
rejection is counted for the stats and logged.

With AGEGATE_HTTP_TOKEN set, :class:`RequireToken` checks every request but ``/healthz``
(the POS sends ``Authorization: Bearer <token>``); the till console (edge/console), handed in
as a :class:`Mount` by whoever starts the till, is served by the same app.

Without a token, every route answers only requests addressed to 127.0.0.1, localhost or
[::1] (``Host``, :class:`RequireLocalHost`), so a web page the till's browser visits cannot
reach the POS API or the console by DNS rebinding.

Connections are bounded (:class:`GuardedH11Protocol`): at most ``max_connections`` at once
(a new one closes the oldest idle one, so the POS always gets in), and a connection that has
not delivered a whole request within ``request_timeout_s`` (slow or idle clients, a body
shorter than its Content-Length) is closed. An idle client must never hold the file
descriptors the till needs for its outbox, camera and models.

Threading: uvicorn runs the event loop in its own thread; the POS endpoint is a plain
``def`` so FastAPI runs it in its worker pool, where waiting for a face does not block
other requests.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable, Mapping, NamedTuple, Sequence
from urllib.parse import urlsplit

from fastapi import APIRouter, FastAPI, HTTPException, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from .. import __version__
from .api_models import ErrorAnswer, Health
from .status import TillStatus
from .config import LOCAL_HOSTS
from .events import PosAnswer, PosMessage
from .http_token import TOKEN_COOKIE, RequireToken
from .pydantic_errors import first_error

log = logging.getLogger(__name__)


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a cap on open connections and a deadline per request.

    uvicorn itself only times out keep-alive connections after a response; a client that
    connects and sends nothing, or drips its headers or body, holds a descriptor for ever.
    Set the class attributes (or use :func:`guarded_protocol`) before the server starts.
    """

    max_connections = 100
    request_timeout_s = 10.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._deadline: asyncio.TimerHandle | None = None
        self._opened = self.loop.time()
        self._arm()
        # Connections already closing still sit in the set until their transport lets go (a turn
        # of the loop later): neither count them nor pick them again, or a burst of accepts all
        # "close" the same victim while the descriptors pile up to the process limit.
        live = [c for c in self.connections if not (c.transport is None or c.transport.is_closing())]
        if len(live) > self.max_connections:
            # Close the oldest connection that is not being answered: an attacker's idle
            # sockets give way to the POS, never the other way round.
            idle = [c for c in live if c is not self and isinstance(c, GuardedH11Protocol) and c._waiting()]
            victim = min(idle, key=lambda c: c._opened) if idle else self
            victim.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        super().connection_lost(exc)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm()  # the next request on this connection gets its own deadline

    def _waiting(self) -> bool:
        """True while no request is being answered: waiting for headers or a body, or idle."""
        return self.cycle is None or self.cycle.response_complete or self.cycle.more_body

    def _arm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline = self.loop.call_later(self.request_timeout_s, self._expired)

    def _expired(self) -> None:
        self._deadline = None
        # A request whose body is complete is being answered (it may wait for a face): the
        # answer re-arms the deadline. Anything else has had its time.
        if not self.transport.is_closing() and self._waiting():
            self.transport.close()


def guarded_protocol(max_connections: int, request_timeout_s: float) -> type[GuardedH11Protocol]:
    """A :class:`GuardedH11Protocol` subclass with these limits (for uvicorn.Config(http=...))."""
    return type("GuardedH11Protocol", (GuardedH11Protocol,),
                {"max_connections": max_connections, "request_timeout_s": request_timeout_s})


class RequireLocalHost:
    """ASGI middleware: without a token, answer only requests addressed to the loopback names (else 403)."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        host = Headers(scope=scope).get("host", "")
        try:
            name = urlsplit("//" + host).hostname or ""
        except ValueError:  # e.g. an unbalanced "[" in the Host header
            name = ""
        if name in LOCAL_HOSTS:
            return await self.app(scope, receive, send)
        detail = (f"this till's HTTP server answers only requests to {', '.join(LOCAL_HOSTS)} "
                  "unless AGEGATE_HTTP_TOKEN is set")
        await JSONResponse({"detail": detail}, status_code=403)(scope, _no_receive, send)


class BodyTooLarge(HTTPException):
    """Raised from the body stream once it passes the limit. An HTTPException, because FastAPI
    turns any other exception met while reading a body into a 400."""

    def __init__(self, reason: str):
        super().__init__(status_code=413, detail=reason)


class Mount(NamedTuple):
    """Routes served beside the POS API (the console's), and body limits of their own paths."""

    router: APIRouter
    body_limits: Mapping[str, int] = {}


UPLOADS_AT_ONCE = 2  # bodies on the paths with a limit of their own (photos) handled at the same time


class LimitBodySize:
    """ASGI middleware: refuse bodies over ``max_bytes`` before reading them whole (413).

    ``limits`` gives some paths a limit of their own (the console's photo upload); refusals
    there are not POS rejections and are not counted. Those paths also take at most
    ``uploads_at_once`` requests at a time, the others answered 503 at once: each may hold
    its whole body and a decoded image in memory, and a burst of them must not take the
    till's memory (60 parallel 10 MiB uploads once reached 1.5 GB).
    """

    def __init__(self, app: ASGIApp, max_bytes: int, on_reject: Callable[[str], None],
                 limits: Mapping[str, int] | None = None, uploads_at_once: int = UPLOADS_AT_ONCE):
        self.app, self.max_bytes, self.on_reject = app, max_bytes, on_reject
        self.limits = dict(limits or {})
        self.uploads_at_once = uploads_at_once
        self._uploads = 0  # the event loop is single-threaded: a plain counter is exact

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if scope["path"] in self.limits and scope.get("method") == "POST":
            if self._uploads >= self.uploads_at_once:
                busy = JSONResponse({"detail": f"{self._uploads} uploads are being processed; try again shortly"},
                                    status_code=503, headers={"Retry-After": "2"})
                return await busy({"type": "http"}, _no_receive, send)
            self._uploads += 1
            try:
                return await self._limited(scope, receive, send)
            finally:
                self._uploads -= 1
        return await self._limited(scope, receive, send)

    async def _limited(self, scope: Scope, receive: Receive, send: Send) -> None:
        limit = self.limits.get(scope["path"], self.max_bytes)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            reason = self._rejected(scope, int(declared), limit)
            return await JSONResponse({"detail": reason}, status_code=413)({"type": "http"}, _no_receive, send)
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > limit:  # chunked, or longer than declared: stop reading here
                raise BodyTooLarge(self._rejected(scope, seen, limit))
            return message

        try:
            await self.app(scope, counted, send)
        except BodyTooLarge as exc:  # read outside a route (FastAPI's exception handlers answer it otherwise)
            await JSONResponse({"detail": exc.detail}, status_code=413)({"type": "http"}, _no_receive, send)

    def _rejected(self, scope: Scope, size: int, limit: int) -> str:
        reason = f"request body of {size}+ bytes exceeds the limit of {limit}"
        if scope["path"] not in self.limits:
            self.on_reject(f"HTTP POS message rejected: {reason}")
        return reason


def _json_failure(exc: BaseException) -> str:
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    if isinstance(exc, UnicodeDecodeError):
        return f"not UTF-8 (byte {exc.start})"
    return str(exc).split(";")[0]  # e.g. "Exceeds the limit (4300 digits) for integer string conversion"


async def _no_receive() -> Message:
    return {"type": "http.disconnect"}


def create_app(
    *,
    handle_pos: Callable[[PosMessage], PosAnswer],
    status: Callable[[], TillStatus],
    on_reject: Callable[[str], None],
    max_body: int,
    mounts: Sequence[Mount] = (),
    token: str | None = None,
) -> FastAPI:
    """The app; ``mounts`` are served beside the POS API (the console) with their paths' own body
    limits (else ``max_body``), and ``token``, when given, guards every route."""
    app = FastAPI(
        title="agegate till API",
        version=__version__,
        description="Local API between the till's POS software and the agegate daemon.",
        docs_url=None,  # served below from local assets, not from a CDN
        redoc_url=None,
    )

    def invalid(request: Request, reason: str) -> JSONResponse:
        if request.url.path == "/v1/pos":
            on_reject(f"HTTP POS message rejected: {reason}")
        return JSONResponse({"detail": reason}, status_code=422)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return invalid(request, first_error(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        # FastAPI answers a bare 400 ("There was an error parsing the body") when json.loads
        # fails other than by a syntax error; that is a body that is not JSON all the same.
        if exc.status_code == 400 and isinstance(exc.__cause__, (ValueError, RecursionError)):
            return invalid(request, f"body: not valid JSON: {_json_failure(exc.__cause__)}")
        if exc.status_code == 405:  # Starlette names only the first route's methods; a path may have several
            allowed = sorted({m for r in app.routes if getattr(r, "methods", None) and r.path_regex.match(request.url.path)
                              for m in r.methods})
            return JSONResponse({"detail": exc.detail}, status_code=405, headers={"Allow": ", ".join(allowed)})
        return await http_exception_handler(request, exc)

    refusals = {
        413: {"model": ErrorAnswer, "description": "Body over AGEGATE_HTTP_MAX_BODY"},
        422: {"model": ErrorAnswer, "description": "Body not JSON, or not a POS message"},
    }

    @app.post("/v1/pos", response_model=PosAnswer, responses=refusals,
              summary="Tell the daemon about the sale; get the decision")
    def pos(message: PosMessage) -> PosAnswer:
        return handle_pos(message)

    # exclude_unset: the model store's record as it is (a store with no rejection has no last_rejected key).
    @app.get("/v1/status", response_model=TillStatus, response_model_exclude_unset=True,
             summary="Camera, model, broker and decision counters")
    def get_status() -> TillStatus:
        return status()

    @app.get("/", include_in_schema=False)
    def root() -> RedirectResponse:  # someone opening the till's address in a browser wants the console
        return RedirectResponse("/console", status_code=303)

    @app.get("/healthz", response_model=Health, summary="200 while the daemon serves")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="/openapi.json", title="agegate till API",
                                   swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
                                   swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
                                   swagger_favicon_url=f"{DOCS_ASSETS}/favicon.png")

    @app.get(DOCS_ASSETS + "/{name}", include_in_schema=False)
    def docs_asset(name: str) -> Response:
        if name not in SWAGGER_ASSETS:
            raise HTTPException(404, f"no {name}")
        return FileResponse(_swagger_dir() / name, media_type=SWAGGER_ASSETS[name],
                            headers={"Cache-Control": "max-age=86400"})

    body_limits: dict[str, int] = {}
    for mount in mounts:
        app.include_router(mount.router)
        body_limits.update(mount.body_limits)
    app.openapi = lambda: _openapi(app, token_required=bool(token))  # type: ignore[method-assign]
    app.add_middleware(LimitBodySize, max_bytes=max_body, on_reject=on_reject, limits=body_limits)
    if token:  # added last, so it runs first: no body is read before the token is checked
        app.add_middleware(RequireToken, token=token)
    else:  # no token: no DNS rebinding either, on every route (the POS API shows the customer's estimate)
        app.add_middleware(RequireLocalHost)
    return app


# Swagger UI as the fastapi-offline package ships it (a maintained copy of swagger-ui-dist, Apache-2.0).
DOCS_ASSETS = "/docs/assets"
SWAGGER_ASSETS = {"swagger-ui-bundle.js": "text/javascript", "swagger-ui.css": "text/css", "favicon.png": "image/png"}


def _swagger_dir():
    from pathlib import Path

    import fastapi_offline

    return Path(fastapi_offline.__file__).with_name("static")


def _error(description: str) -> dict[str, Any]:
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorAnswer"}}}}


def _openapi(app: FastAPI, token_required: bool) -> dict[str, Any]:
    """FastAPI's schema, completed with what the middleware does: the token (declared when this till
    has one, as a client of this till must send it), the refusals it sends, and 422 as our handler
    answers it (one sentence, not FastAPI's list)."""
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    components = schema.setdefault("components", {})
    components.setdefault("schemas", {})["ErrorAnswer"] = ErrorAnswer.model_json_schema()
    if token_required:
        components["securitySchemes"] = {
            "bearer": {"type": "http", "scheme": "bearer",
                       "description": "AGEGATE_HTTP_TOKEN: every route but /healthz needs it"},
            "cookie": {"type": "apiKey", "in": "cookie", "name": TOKEN_COOKIE,
                       "description": "Set for a browser that opened /console?token=<token> once"},
        }
    for path, operations in schema["paths"].items():
        for method, op in operations.items():
            responses = op.setdefault("responses", {})
            if "422" in responses:
                responses["422"] = _error("Not valid JSON, or not what this route takes")
            if path == "/healthz":
                if token_required:
                    op["security"] = []
                continue
            if token_required:
                op["security"] = [{"bearer": []}, {"cookie": []}]
                responses.setdefault("401", _error("The request does not carry AGEGATE_HTTP_TOKEN"))
            else:
                responses.setdefault("403", _error("The request was not addressed to 127.0.0.1, localhost or [::1] "
                                                   "(without AGEGATE_HTTP_TOKEN the till answers no other name)"))
            if method in ("post", "put"):
                responses.setdefault("413", _error("Body over its limit (AGEGATE_HTTP_MAX_BODY for the POS)"))
    for unused in ("HTTPValidationError", "ValidationError"):
        components["schemas"].pop(unused, None)
    app.openapi_schema = schema
    return schema
