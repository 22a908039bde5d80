"""The till-local HTTP API (FastAPI): the POS posts sale events and gets the decision back.

``POST /v1/pos`` takes a :class:`PosMessage` and answers a :class:`PosAnswer`; for a
restricted item the answer holds the decision, so the till can prompt the cashier at once.
``GET /v1/status`` and ``GET /healthz`` tell how the daemon is. The OpenAPI schema is at
``/openapi.json`` and the interactive docs at ``/docs``.

Bad input gets a 4xx with the reason: a body that is not JSON or has wrong fields → 422,
a body over AGEGATE_HTTP_MAX_BODY → 413. Every rejection is counted for the stats.

Threading: uvicorn runs the event loop in its own thread; the POS endpoint is a plain
``def`` so FastAPI runs it in its worker pool, where waiting for a face does not block
other requests.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .. import __version__
from .events import PosAnswer, PosMessage

log = logging.getLogger(__name__)


class BodyTooLarge(Exception):
    pass


class LimitBodySize:
    """ASGI middleware: refuse bodies over ``max_bytes`` before reading them whole (413)."""

    def __init__(self, app: ASGIApp, max_bytes: int, on_reject: Callable[[str], None]):
        self.app, self.max_bytes, self.on_reject = app, max_bytes, on_reject

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await self._refuse(send, int(declared))
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise BodyTooLarge
            return message

        try:
            await self.app(scope, counted, send)
        except BodyTooLarge:
            await self._refuse(send, seen)

    async def _refuse(self, send: Send, size: int) -> None:
        reason = f"request body of {size}+ bytes exceeds the limit of {self.max_bytes}"
        self.on_reject(reason)
        await JSONResponse({"detail": reason}, status_code=413)({"type": "http"}, _no_receive, send)


async def _no_receive() -> Message:
    return {"type": "http.disconnect"}


def create_app(
    *,
    handle_pos: Callable[[PosMessage], PosAnswer],
    status: Callable[[], dict[str, Any]],
    on_reject: Callable[[str], None],
    max_body: int,
) -> FastAPI:
    app = FastAPI(
        title="agegate till API",
        version=__version__,
        description="Local API between the till's POS software and the agegate daemon.",
    )

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": ("body",), "msg": "invalid"}
        where = ".".join(str(p) for p in first["loc"])
        reason = f"{where}: {first['msg']}"
        on_reject(f"HTTP POS message rejected: {reason}")
        return JSONResponse({"detail": reason}, status_code=422)

    @app.post("/v1/pos", response_model=PosAnswer, summary="Tell the daemon about the sale; get the decision")
    def pos(message: PosMessage) -> PosAnswer:
        return handle_pos(message)

    @app.get("/v1/status", summary="Camera, model, broker and decision counters")
    def get_status() -> dict[str, Any]:
        return status()

    @app.get("/healthz", summary="200 while the daemon serves")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    app.add_middleware(LimitBodySize, max_bytes=max_body, on_reject=on_reject)
    return app
