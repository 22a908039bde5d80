"""The response bodies of the till's HTTP API besides the POS contract (events.py) and the till's
status (status.py): the console's JSON API and refusals. Declared so that ``/openapi.json``
describes every answer the till gives. :class:`ConsoleStatus` is the till's status extended with
what the console's status page shows.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from .status import ModelStatus, TillStatus


class ErrorAnswer(BaseModel):
    """Every refusal: ``detail`` is one sentence saying why (FastAPI's default 422 is a list; ours is not)."""

    detail: str = Field(description="Why the request was refused, for people reading the POS log",
                        examples=["body.restricted: Input should be a valid boolean"])


class ZoneBox(BaseModel):
    x0: float
    y0: float
    x1: float
    y1: float


class ZoneView(BaseModel):
    current: ZoneBox
    text: str = Field(description="As AGEGATE_CUSTOMER_ZONE writes it")
    saved: Any = Field(description="The zone saved from the installer view (zone.json), or None: the default applies")
    default: str


class HistoryRow(BaseModel):
    time: str = Field(description="Local time, ISO 8601")
    transaction_id: str
    decision: str
    age: float | None
    spread: float | None
    samples: int | None
    likely_minor: bool
    model: str


class ConsoleModelStatus(ModelStatus):
    created_at: str
    installed_at: str | None
    path: str


class ConsoleStatus(TillStatus):
    """``GET /console/api/status``: the till's status and what the console's status page shows."""

    model: ConsoleModelStatus
    zone: ZoneView
    last_decisions: list[HistoryRow]
    history_available: bool
    token_required: bool


class HistoryPage(BaseModel):
    total: int
    page: int
    page_size: int
    rows: list[HistoryRow]


class LiveFrame(BaseModel):
    width: int
    height: int
    age_s: float
    jpeg: str = Field(description="Base64 of a JPEG of the newest analysed frame (never stored, never sent on)")


class LiveFace(BaseModel):
    box: list[int] = Field(description="x, y, width, height in the frame's pixels")
    age: float | None
    in_zone: bool


class LiveView(BaseModel):
    camera: str
    zone: ZoneView
    frame: LiveFrame | None
    faces: list[LiveFace]


class PhotoFace(BaseModel):
    box: list[int]
    age: float


class PhotoModel(BaseModel):
    name: str
    version: str
    sha256: str


class PhotoResult(BaseModel):
    width: int
    height: int
    faces: list[PhotoFace]
    model: PhotoModel
    ms: float


class Health(BaseModel):
    status: Literal["ok"]
