"""The till's status: one typed snapshot, read in one place, rendered everywhere.

:class:`TillStatus` is what ``GET /v1/status`` answers (and declares in ``/openapi.json``);
the console's status extends it (api_models.ConsoleStatus), ``/metrics`` renders its gauges
from it (prometheus.py), the ``stats`` event takes its camera, broker and outbox figures from it
(:meth:`StatusReporter.stats`), and systemd's ``STATUS=`` line is :func:`status_line` of it.
:class:`StatusReporter` is the one place that reads it from the till's parts.

Status objects allow fields beyond those declared (``extra="allow"``): the model store's
records (model_store.py) are read from its state file, which a newer agegate may write with
more, and a response model must never silently drop what the till says.

Threading: :meth:`StatusReporter.status` is called from HTTP workers (the API, the console, a
Prometheus scrape) and the main loop (status line, stats); it reads each part afresh, as the
daemon replaces some of them while it runs (the model on a swap, the vision loop on a revive).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import TYPE_CHECKING, Protocol

from pydantic import BaseModel, ConfigDict, Field

from .. import __version__
from .events import Estimate, ModelRef, Stats, Thresholds
from .model_figures import Validation
from .outbox import ALERT, SUMMARY

if TYPE_CHECKING:  # the parts' own modules bring OpenCV, paho and SQLite; the models above need none
    from .age_model import AgeModel
    from .capture import Camera
    from .config import Settings
    from .decision import TransactionBook
    from .detectors import Detector
    from .model_store import ModelStore
    from .mqtt import MqttTransport
    from .outbox import Outbox
    from .prometheus import Metrics
    from .publisher import Publisher
    from .timing import StageTimer
    from .vision import VisionLoop


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
    publish_failures: int = Field(0, description="Messages paho refused to queue for the broker, since start")


class OutboxStatus(_Open):
    available: bool = Field(True, description="False when the state directory cannot hold the outbox "
                                              "(events then go out live only)")
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

    def model_ref(self) -> ModelRef:
        return ModelRef(name=self.model.name, version=self.model.version, sha256=self.model.sha256)


def status_line(s: TillStatus) -> str:
    """One line for systemd's STATUS=: what an operator needs at a glance."""
    broker = "connected" if s.mqtt.connected else "disconnected"
    box = s.outbox
    pending = box.pending if box.available else "n/a"
    memory = f" + {box.pending_in_memory} in memory only" if box.pending_in_memory else ""
    durable = "" if box.durable else " (NOT DURABLE)"
    return (f"camera {s.camera.state}, broker {broker}, outbox {pending} pending{memory}{durable}, "
            f"model {s.model.name} {s.model.version}")


class TillParts(Protocol):
    """What the status is read from (daemon.Daemon is one)."""

    settings: Settings
    started_at: float
    camera: Camera
    detector: Detector
    model: AgeModel
    thresholds: Thresholds
    mqtt: MqttTransport
    publisher: Publisher
    outbox: Outbox | None
    store: ModelStore | None
    last_model_rejection: str | None
    vision: VisionLoop
    book: TransactionBook
    metrics: Metrics
    timers: dict[str, StageTimer]  # the stages timed outside the vision loop: capture, decide, publish


class StatusReporter:
    """Reads :class:`TillStatus` from the till's parts, and keeps the counts the ``stats`` event
    reports per interval (alerts published, POS messages rejected)."""

    def __init__(self, parts: TillParts):
        self.parts = parts
        self._counts: Counter[str] = Counter()
        self._counts_lock = threading.Lock()

    def count(self, key: str, n: int = 1) -> None:
        with self._counts_lock:
            self._counts[key] += n

    def status(self) -> TillStatus:
        p = self.parts
        camera, model, vision = p.camera, p.model, p.vision
        store = p.store.status() if p.store else None
        return TillStatus(
            version=__version__,
            store_id=p.settings.store_id,
            till_id=p.settings.till_id,
            uptime_s=round(time.monotonic() - p.started_at, 1),
            camera=CameraStatus(state=camera.state.value, fps=round(camera.fps, 1),
                                processed_fps=round(p.metrics.processed_fps(), 1),
                                reconnects=camera.reconnects, last_error=camera.last_error),
            detector=p.detector.name,
            # Dumped and read back: every field counts as set, so the answers (exclude_unset) show all of them.
            model=ModelStatus(**model.identity, variant=model.manifest.variant, runtime=model.runtime,
                              validation=v.model_dump() if (v := model.manifest.validation) else None),
            thresholds=p.thresholds.model_dump(),
            mqtt=MqttStatus(connected=p.mqtt.connected.is_set(), host=p.settings.mqtt_host,
                            port=p.settings.mqtt_port, publish_failures=p.mqtt.failures),
            outbox=self._outbox(),
            # As the store records it: a store with no rejection has no last_rejected (unset, left out).
            model_store=ModelStoreStatus.model_validate(store) if store is not None else None,
            last_model_rejection=p.last_model_rejection,
            customer=vision.customer_estimate(),
            open_transactions=p.book.open_count,
            decisions=p.book.decision_counts(),
            vision_errors=vision.errors,
            stages=self.stage_totals(),
        )

    def stage_totals(self) -> dict[str, dict[str, float]]:
        """Per stage, how many items and seconds since start-up (detect per frame; crop, infer per face)."""
        v, t = self.parts.vision, self.parts.timers
        timers = {"capture": t["capture"], "frames": v.frames, "detect": v.detect, "crop": v.crop,
                  "infer": v.infer, "decide": t["decide"], "publish": t["publish"]}
        return {name: timer.totals() for name, timer in timers.items()}

    def _outbox(self) -> OutboxStatus:
        return outbox_status(self.parts.outbox, self.parts.publisher)

    def stats(self, interval_s: float) -> Stats:
        """The ``stats`` event: the status's camera, broker and outbox figures, and what the
        interval since the last call took (frames, stage times, decisions, counts)."""
        v = self.parts.vision
        frames, _ = v.frames.take()
        detects, detect_s = v.detect.take()
        infers, infer_s = v.infer.take()
        with self._counts_lock:
            counts, self._counts = self._counts, Counter()
        decisions = self.parts.book.take_decision_counts()
        s = self.status()
        box = s.outbox
        return Stats(
            store_id=s.store_id,
            till_id=s.till_id,
            model=s.model_ref(),
            interval_s=round(interval_s, 2),
            uptime_s=s.uptime_s,
            camera_state=s.camera.state,  # type: ignore[arg-type]
            camera_fps=s.camera.fps,
            camera_reconnects=s.camera.reconnects,
            processed_fps=round(frames / interval_s, 2) if interval_s > 0 else 0.0,
            detect_ms=round(1000 * detect_s / detects, 2) if detects else None,
            infer_ms=round(1000 * infer_s / infers, 2) if infers else None,
            faces_estimated=infers,
            decisions=decisions,
            pos_rejected=counts["pos_rejected"],
            alerts_published=counts["alerts"],
            publish_failures=s.mqtt.publish_failures,
            outbox_ok=box.ok,
            outbox_durable=box.durable,
            outbox_pending=box.pending,
            outbox_pending_in_memory=box.pending_in_memory,
            outbox_dropped_alerts=box.dropped_alerts,
            outbox_dropped_summaries=box.dropped_summaries,
            outbox_quarantined=box.quarantined,
        )


def outbox_status(box: Outbox | None, publisher: Publisher) -> OutboxStatus:
    """The outbox as the status shows it, from the outbox and the publisher that stores into it."""
    broken = box is None or box.broken
    # An alert decided now is stored on disk unless the outbox is gone or broken, or the disk is
    # full (writes fail) with no reserve left to cover alerts. Both say how it is now: a disk that
    # was full and has room again is ok again. While the released reserve still takes alerts,
    # summaries are refused (ok is false) but alerts are durable (publisher.alerts_failing).
    durable = not broken and (box.reserve.exists() or not publisher.alerts_failing)  # type: ignore[union-attr]
    return OutboxStatus(
        available=box is not None,
        ok=not broken and not publisher.outbox_failing,
        durable=durable,
        pending=len(box) if box is not None else 0,
        pending_in_memory=publisher.pending_in_memory,
        dropped_alerts=box.dropped[ALERT] if box is not None else 0,
        dropped_summaries=box.dropped[SUMMARY] if box is not None else 0,
        quarantined=box is not None and box.quarantined is not None,
    )


__all__ = ["CameraStatus", "ModelStatus", "ModelStoreStatus", "MqttStatus", "OutboxStatus", "StatusReporter",
           "TillParts", "TillStatus", "outbox_status", "status_line"]
