"""The till console: local web pages for the installer and the engineer, and ``/metrics``.

Served by the daemon's own HTTP server, so it shares the POS API's port, body limits and token:
the CLI's ``run`` hands :func:`create_console` to the daemon, which calls it with itself (a
:class:`ConsoleHost`) and mounts what it returns (api.Mount). Nothing else in the till imports
the console. Pages are rendered on the server
(Jinja2) and work without JavaScript; a small vanilla script (static/console.js) refreshes
the status, draws the installer view and the photo results. No npm, no build step.

=======  =========================  ========================================================
GET      /console                   status: camera, detector, model, broker, uptime, last decisions
GET      /console/status-panel      the status page's panel alone (the page reloads it every 2 s)
GET      /console/api/status        the same as JSON
GET      /console/installer         installer view: live image, customer zone, faces with ages
GET      /console/api/live          newest frame (JPEG, base64) with its faces and the zone
PUT      /console/api/zone          save ``{x0, y0, x1, y1}`` to zone.json and apply it (422: why not)
DELETE   /console/api/zone          back to AGEGATE_CUSTOMER_ZONE
GET      /console/history           decision history: ``from``, ``to`` (dates), ``decision``, ``page``
GET      /console/history.csv       the same filter as CSV
GET      /console/api/history       the same as JSON
GET      /console/photo             try a photo (POST: the form's upload, answered as a page)
POST     /console/api/photo         faces and ages in an uploaded JPEG or PNG, as JSON
GET      /console/static/{name}     the stylesheet and the script
GET      /metrics                   Prometheus text format
=======  =========================  ========================================================

Privacy: a live frame is JPEG-encoded only when the installer page asks for it, sent with
``Cache-Control: no-store`` and never written; an uploaded photo is processed in memory
(see photo.py); the history holds numbers only. Without a token the console, like every
route, answers only requests addressed to 127.0.0.1, localhost or [::1] (``Host``;
api.RequireLocalHost), so a web page the till's browser visits cannot reach it by DNS rebinding.

Threading: routes are plain ``def`` (FastAPI's worker pool) except the uploads, which read
the body on the event loop and run the detector and model in the pool. They read the
daemon's state through :class:`ConsoleHost`; see photo.py for the detector and model.
"""

from __future__ import annotations

import base64
import csv
import io
import logging
import sqlite3
import time
from datetime import date, datetime
from pathlib import Path
from typing import Any, Iterator, Protocol, get_args
from urllib.parse import urlencode

import cv2
from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from fastapi.templating import Jinja2Templates
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from ... import __version__
from ..age_model import AgeModel
from ..api import Mount
from ..api_models import (ConsoleModelStatus, ConsoleStatus, ErrorAnswer, HistoryPage, HistoryRow, LiveView,
                          PhotoResult, ZoneView)
from ..bundle import MANIFEST_FILE
from ..capture import Camera
from ..config import Settings
from ..detectors import Detector, Zone
from ..events import Decision
from ..history import COLUMNS, DecisionLog, Query, Row
from ..prometheus import CONTENT_TYPE_LATEST, Metrics
from ..status import TillStatus
from ..vision import VisionLoop
from ..zone import ZoneStore, zone_dict, zone_text
from .photo import BODY_LIMIT, PhotoError, PhotoEstimator, read_upload

log = logging.getLogger(__name__)

HERE = Path(__file__).parent
PAGE_SIZE = 50
MAX_PAGE = 1_000_000  # far past the history's own bound (1,000,000 rows); page numbers beyond are refused
DECISIONS = get_args(Decision)
NO_STORE = {"Cache-Control": "no-store"}
STATIC = {"console.css": "text/css; charset=utf-8", "console.js": "text/javascript; charset=utf-8"}
# Uploads may be larger than AGEGATE_HTTP_MAX_BODY; handed to the app with the routes (create_console).
BODY_LIMITS = {"/console/photo": BODY_LIMIT, "/console/api/photo": BODY_LIMIT}


NOT_SAVED: dict[int | str, dict[str, Any]] = {503: {"model": ErrorAnswer, "description": "zone.json cannot be written"}}
# The history's filters, read from the query string by _history_query (so that empty form fields mean no filter).
_EMPTY = {"type": "string", "maxLength": 0}  # an empty form field: no filter
HISTORY_PARAMETERS = [
    {"name": "from", "in": "query", "required": False, "description": "First local day included",
     "schema": {"anyOf": [{"type": "string", "format": "date"}, _EMPTY]}},
    {"name": "to", "in": "query", "required": False, "description": "Last local day included",
     "schema": {"anyOf": [{"type": "string", "format": "date"}, _EMPTY]}},
    {"name": "decision", "in": "query", "required": False,
     "schema": {"anyOf": [{"type": "string", "enum": list(DECISIONS)}, _EMPTY]}},
    {"name": "page", "in": "query", "required": False,
     "schema": {"anyOf": [{"type": "integer", "minimum": 1, "maximum": MAX_PAGE, "default": 1}, _EMPTY]}},
]
BAD_QUERY = {422: {"model": ErrorAnswer, "description": "A filter or page that is not one"}}


class ConsoleHost(Protocol):
    """What the console reads from the daemon (daemon.Daemon is one)."""

    settings: Settings
    model: AgeModel
    model_lock: Any  # threading.Lock shared with the vision loop
    camera: Camera
    vision: VisionLoop
    zones: ZoneStore
    history: DecisionLog | None
    metrics: Metrics

    def status(self) -> TillStatus: ...

    def new_detector(self) -> Detector: ...


class ZoneIn(BaseModel):
    """Fractions of the frame's width and height; x0 < x1 and y0 < y1 (checked by Zone)."""

    x0: float = Field(ge=0, le=1)
    y0: float = Field(ge=0, le=1)
    x1: float = Field(ge=0, le=1)
    y1: float = Field(ge=0, le=1)


def create_console(host: ConsoleHost) -> Mount:
    """The console's routes for ``host``, and the body limits of its uploads (what Daemon(console=) takes)."""
    return Mount(create_console_router(host), BODY_LIMITS)


def create_console_router(host: ConsoleHost) -> APIRouter:
    # Without a token, api.RequireLocalHost answers only requests addressed to the loopback names.
    # The JSON API and /metrics are in the OpenAPI document; the HTML pages are not an API.
    router = APIRouter(tags=["console"])
    templates = Jinja2Templates(directory=HERE / "templates")
    templates.env.globals.update(version=__version__, store_id=host.settings.store_id,
                                 till_id=host.settings.till_id, decisions=DECISIONS)
    templates.env.globals["utc_offset"] = lambda: "UTC" + datetime.now().astimezone().isoformat()[-6:]
    templates.env.filters["duration"] = _duration
    photos = PhotoEstimator(host.new_detector, lambda: host.model, host.model_lock)
    static = {name: (HERE / "static" / name).read_bytes() for name in STATIC}

    def page(request: Request, name: str, status_code: int = 200, **context: Any) -> HTMLResponse:
        return templates.TemplateResponse(request, name, context, status_code=status_code)

    # --- status ------------------------------------------------------------------------------------

    # The pages are given the status as plain data, exactly what /console/api/status answers.
    @router.get("/console", response_class=HTMLResponse, include_in_schema=False)
    def status_page(request: Request):
        return page(request, "status.html", s=status_view(host).model_dump(exclude_unset=True), nav="status")

    @router.get("/console/status-panel", response_class=HTMLResponse, include_in_schema=False)
    def status_panel(request: Request):
        return page(request, "_status_panel.html", s=status_view(host).model_dump(exclude_unset=True))

    # exclude_unset: the model store's record as it is (see api.py's /v1/status).
    @router.get("/console/api/status", response_model=ConsoleStatus, response_model_exclude_unset=True,
                summary="The status page's figures")
    def status_api() -> ConsoleStatus:
        return status_view(host)

    # --- installer view ------------------------------------------------------------------------------

    @router.get("/console/installer", response_class=HTMLResponse, include_in_schema=False)
    def installer_page(request: Request):
        return page(request, "installer.html", nav="installer", zone=zone_dict(host.zones.current),
                    default_zone=zone_text(host.zones.default), saved=host.zones.saved)

    @router.get("/console/api/live", response_model=LiveView, summary="The newest analysed frame and its faces")
    def live_api() -> JSONResponse:
        return JSONResponse(live_view(host), headers=NO_STORE)

    @router.put("/console/api/zone", response_model=ZoneView, responses=NOT_SAVED, summary="Save the customer zone",
                operation_id="save_zone")
    def save_zone(body: ZoneIn) -> dict[str, Any]:
        try:
            zone = Zone(body.x0, body.y0, body.x1, body.y1)
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from None
        try:
            host.zones.save(zone)
        except OSError as exc:
            raise HTTPException(503, f"cannot save the zone to {host.zones.path}: {exc.strerror or exc}") from None
        return zone_view(host)

    @router.delete("/console/api/zone", response_model=ZoneView, responses=NOT_SAVED,
                   summary="Back to AGEGATE_CUSTOMER_ZONE")
    def reset_zone() -> dict[str, Any]:
        try:
            host.zones.reset()
        except OSError as exc:
            raise HTTPException(503, f"cannot remove {host.zones.path}: {exc.strerror or exc}") from None
        return zone_view(host)

    # --- history -------------------------------------------------------------------------------------

    @router.get("/console/history", response_class=HTMLResponse, include_in_schema=False)
    def history_page(request: Request):
        q, page_no = _history_query(request)
        rows, total = _history_page(host, q, page_no)
        pages = max(1, -(-total // PAGE_SIZE))
        filters = {k: v for k, v in (("from", q.since), ("to", q.until), ("decision", q.decision)) if v}
        return page(request, "history.html", nav="history", rows=[row_dict(r) for r in rows], total=total, page=page_no, pages=pages,
                    q=q, available=host.history is not None, keep_days=host.settings.history_days,
                    qs=lambda **extra: urlencode({**filters, **extra}))

    @router.get("/console/api/history", response_model=HistoryPage, summary="A page of the decision history",
                openapi_extra={"parameters": HISTORY_PARAMETERS}, responses=BAD_QUERY)
    def history_api(request: Request) -> dict[str, Any]:
        q, page_no = _history_query(request)
        rows, total = _history_page(host, q, page_no)
        return {"total": total, "page": page_no, "page_size": PAGE_SIZE, "rows": [row_dict(r) for r in rows]}

    @router.get("/console/history.csv", summary="The decision history as CSV", response_class=StreamingResponse,
                openapi_extra={"parameters": HISTORY_PARAMETERS[:3]},
                responses={200: {"content": {"text/csv": {"schema": {"type": "string"}}}, "description": "CSV"},
                           **BAD_QUERY,
                           503: {"model": ErrorAnswer, "description": "The decision history is unavailable"}})
    def history_csv(request: Request) -> StreamingResponse:
        q, _ = _history_query(request)
        if host.history is None:
            raise HTTPException(503, "the decision history is unavailable (see the daemon's log)")
        name = f"agegate-history-{host.settings.store_id}-{host.settings.till_id}.csv"
        return StreamingResponse(_csv(host.history.rows(q)), media_type="text/csv; charset=utf-8",
                                 headers={"Content-Disposition": f'attachment; filename="{name}"'})

    # --- try a photo -----------------------------------------------------------------------------------

    @router.get("/console/photo", response_class=HTMLResponse, include_in_schema=False)
    def photo_page(request: Request):
        return page(request, "photo.html", nav="photo", result=None, error=None)

    @router.post("/console/photo", response_class=HTMLResponse, include_in_schema=False)
    async def photo_form(request: Request):
        try:
            result = await run_in_threadpool(photos.estimate, await read_upload(request))
        except PhotoError as exc:
            return page(request, "photo.html", status_code=exc.status, nav="photo", result=None, error=exc.reason)
        return page(request, "photo.html", nav="photo", result=result, error=None)

    @router.post("/console/api/photo", response_model=PhotoResult, summary="Estimate the ages in a photo",
                 operation_id="estimate_photo",
                 openapi_extra={"requestBody": {"required": True, "content": {
                     "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
                     "image/png": {"schema": {"type": "string", "format": "binary"}},
                     # Other form fields are ignored, at most 4 of them (photo.read_upload).
                     "multipart/form-data": {"schema": {"type": "object", "required": ["image"], "maxProperties": 5,
                                                        "additionalProperties": {"type": "string"}, "properties": {
                         "image": {"type": "string", "format": "binary"}}}}}}},
                 responses={422: {"model": ErrorAnswer, "description": "Not a JPEG or PNG that can be read"},
                            429: {"model": ErrorAnswer, "description": "Another photo is being processed"},
                            500: {"model": ErrorAnswer, "description": "Detection or the age model failed"},
                            503: {"model": ErrorAnswer, "description": "Uploads are being processed; try again"}})
    async def photo_api(request: Request) -> JSONResponse:
        try:
            result = await run_in_threadpool(photos.estimate, await read_upload(request))
        except PhotoError as exc:
            return JSONResponse({"detail": exc.reason}, status_code=exc.status)
        return JSONResponse(result)

    # --- assets and metrics --------------------------------------------------------------------------------

    @router.get("/console/static/{name}", include_in_schema=False)
    def static_file(name: str) -> Response:
        if name not in static:
            raise HTTPException(404, f"no {name}")
        return Response(static[name], media_type=STATIC[name], headers={"Cache-Control": "no-cache"})

    @router.get("/metrics", summary="Prometheus metrics", response_class=Response,
                responses={200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}},
                                 "description": "Prometheus text format"}})
    def metrics() -> Response:
        return Response(host.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    return router


# --- views ---------------------------------------------------------------------------------------------------


def status_view(host: ConsoleHost) -> ConsoleStatus:
    """The till's status (status.TillStatus) extended with what the console's status page shows."""
    s = host.status()
    model = host.model
    bundle, manifest = model.bundle, model.manifest
    try:
        installed = _local_iso((bundle.path / MANIFEST_FILE).stat().st_mtime)
    except OSError:
        installed = None
    try:
        last = [HistoryRow(**row_dict(r)) for r in host.history.page(limit=10)[0]] if host.history else []
        available = host.history is not None
    except sqlite3.Error as exc:  # a failing disk must not take the status page with it
        log.error("decision history: cannot read: %s", exc)
        last, available = [], False
    # dict(s): the status's fields as they are (nested models keep which of their fields were set).
    return ConsoleStatus(
        **{**dict(s), "model": ConsoleModelStatus(**dict(s.model), path=str(bundle.path), installed_at=installed,
                                                  created_at=manifest.created_at.isoformat(timespec="seconds"))},
        zone=ZoneView(**zone_view(host)),
        last_decisions=last,
        history_available=available,
        token_required=host.settings.http_token is not None,
    )


def zone_view(host: ConsoleHost) -> dict[str, Any]:
    z = host.zones
    return {"current": zone_dict(z.current), "text": zone_text(z.current), "saved": z.saved,
            "default": zone_text(z.default)}


def live_view(host: ConsoleHost) -> dict[str, Any]:
    """The newest processed frame, encoded now (and only now), with its faces and the zone."""
    view = host.vision.live
    out: dict[str, Any] = {"camera": host.camera.state.value, "zone": zone_view(host), "frame": None, "faces": []}
    if view is None:
        return out
    ok, jpeg = cv2.imencode(".jpg", view.image, [cv2.IMWRITE_JPEG_QUALITY, 80])
    if not ok:
        return out
    h, w = view.image.shape[:2]
    out["frame"] = {"width": w, "height": h, "age_s": round(time.monotonic() - view.at, 2),
                    "jpeg": base64.b64encode(jpeg.tobytes()).decode("ascii")}
    out["faces"] = [{"box": list(box), "age": None if age is None else round(age, 1), "in_zone": in_zone}
                    for box, age, in_zone in view.faces]
    return out


def row_dict(r: Row) -> dict[str, Any]:
    return {"time": r.local_time.isoformat(timespec="seconds"), "transaction_id": r.transaction_id,
            "decision": r.decision, "age": r.age, "spread": r.spread, "samples": r.samples,
            "likely_minor": r.likely_minor, "model": " ".join(p for p in (r.model_name, r.model_version) if p)}


# --- helpers ----------------------------------------------------------------------------------------------------


def _history_query(request: Request) -> tuple[Query, int]:
    """The filter from the query string; empty fields (as a form sends them) mean no filter."""
    p = request.query_params
    decision = p.get("decision") or None
    if decision is not None and decision not in DECISIONS:
        raise HTTPException(422, f"decision: must be one of {', '.join(DECISIONS)}")
    page = p.get("page") or "1"
    # isascii: "²".isdigit() is True, and int("²") fails. The bound keeps the offset within SQLite's integers.
    if not (page.isascii() and page.isdigit() and len(page) <= len(str(MAX_PAGE))) or not 1 <= int(page) <= MAX_PAGE:
        raise HTTPException(422, f"page: must be a whole number from 1 to {MAX_PAGE}")
    return Query(since=_day(p, "from"), until=_day(p, "to"), decision=decision), int(page)


def _day(params, name: str) -> date | None:
    value = params.get(name) or None
    try:
        return date.fromisoformat(value) if value else None
    except ValueError:
        raise HTTPException(422, f"{name}: {value!r} is not a date (YYYY-MM-DD)") from None


def _history_page(host: ConsoleHost, q: Query, page_no: int) -> tuple[list[Row], int]:
    if host.history is None:
        return [], 0
    return host.history.page(q, limit=PAGE_SIZE, offset=(page_no - 1) * PAGE_SIZE)


def _csv(rows: Iterator[Row]) -> Iterator[str]:
    buf = io.StringIO()
    out = csv.writer(buf)
    out.writerow(COLUMNS)
    for i, row in enumerate(rows, 1):
        out.writerow(row.csv_fields())
        if i % 500 == 0:
            yield buf.getvalue()
            buf.seek(0)
            buf.truncate()
    yield buf.getvalue()


def _local_iso(ts: float) -> str:
    return datetime.fromtimestamp(ts).astimezone().isoformat(timespec="seconds")


def _duration(seconds: float) -> str:
    s = int(seconds)
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    return f"{d} d {h} h" if d else f"{h} h {m:02d} min" if h else f"{m} min {s:02d} s"


__all__ = ["BODY_LIMITS", "ConsoleHost", "create_console", "create_console_router"]
