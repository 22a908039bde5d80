"""The response bodies of the till's HTTP API besides the POS contract (events.py): ``/v1/status``,
the console's JSON API, and refusals. Declared so that ``/openapi.json`` describes every answer
the till gives; the daemon (daemon.status, console views) builds plain dicts that FastAPI checks
against these on the way out.

Status objects allow fields beyond those declared (``extra="allow"``): a newer daemon may report
more, and a response model must never silently drop what the daemon says.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from .bundle import Validation
from .events import Estimate, Thresholds


class ErrorAnswer(BaseModel):
    """Every refusal: ``detail`` is one sentence saying why (FastAPI's default 422 is a list; ours is not)."""

    detail: str = Field(description="Why the request was refused, for people reading the POS log",
                        examples=["body.restricted: Input should be a valid boolean"])


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class CameraStatus(_Open):
    state: str = Field(description="starting, streaming, reconnecting or stopped")
    fps: float = Field(description="Frames per second the camera delivers")
    processed_fps: float = Field(description="Frames per second analysed (at most AGEGATE_DETECT_FPS), last 5 s")
    reconnects: int
    last_error: str | None


class ModelStatus(_Open):
    name: str
    version: str
    sha256: str
    variant: str
    runtime: str
    validation: Validation | None = Field(description="The validation figures its signed manifest records")


class MqttStatus(_Open):
    connected: bool
    host: str
    port: int


class OutboxStatus(_Open):
    ok: bool
    durable: bool = Field(description="Whether an alert decided now would be kept on disk")
    pending: int
    pending_in_memory: int
    dropped_alerts: int
    dropped_summaries: int
    quarantined: bool


class InstalledModel(_Open):
    name: str
    version: str
    sha256: str
    variant: str
    path: str
    installed_at: str


class RejectedModel(_Open):
    source: str
    reason: str
    at: str


class ModelStoreStatus(_Open):
    active: InstalledModel | None = None
    previous: InstalledModel | None = None
    last_rejected: RejectedModel | None = None


class TillStatus(_Open):
    """``GET /v1/status``."""

    version: str
    store_id: str
    till_id: str
    uptime_s: float
    camera: CameraStatus
    detector: str
    model: ModelStatus
    thresholds: Thresholds
    mqtt: MqttStatus
    outbox: OutboxStatus
    model_store: ModelStoreStatus | None = Field(description="None when the state directory is unusable")
    last_model_rejection: str | None = None
    customer: Estimate | None = Field(description="The customer in the zone now, smoothed; None when nobody is")
    open_transactions: int
    decisions: dict[str, int] = Field(description="Decisions since the last stats message, by kind")
    vision_errors: int
    stages: dict[str, dict[str, float]] = Field(description="Per stage: items and seconds since start-up")


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
