"""Prometheus metrics for ``GET /metrics``, on a registry of the daemon's own.

Counters and histograms are updated where the daemon already measures: the vision loop's
stage timers (frames, detect and per-face inference latency), the decision hook and its timer
(decision latency), ``Daemon.publish`` (alerts) and ``Daemon.reject`` (refused POS messages).
Values another part already keeps (camera reconnects and fps, outbox depth and drops, publish
failures, broker connection, the loaded model) are read at scrape time through callbacks, so
there is one source of truth for each.

Beside them, prometheus-client's standard ``process_*`` series (CPU seconds, resident memory,
open descriptors, ``process_start_time_seconds`` for uptime), ``python_info``, and
``agegate_build_info`` with the version.

A registry per :class:`Metrics` rather than prometheus-client's global default, so that
several daemons (or tests) in one process never collide.

Threading: prometheus-client's instruments are thread-safe; the callbacks are called from
the HTTP worker serving the scrape and must be quick and safe from any thread.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Iterable, get_args

from prometheus_client import (CollectorRegistry, Counter, Histogram, Info, PlatformCollector,
                               ProcessCollector, disable_created_metrics, generate_latest)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from .. import __version__
from .events import AlertType, Decision
from .outbox import ALERT, SUMMARY

__all__ = ["CONTENT_TYPE_LATEST", "Live", "Metrics", "live_from"]

DETECT_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0)
INFER_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.035, 0.05, 0.1, 0.25, 0.5)
PROCESSED_FPS_WINDOW_S = 5.0
# A decision may wait for a face (AGEGATE_FACE_WAIT_S, 1.5 s by default): buckets up to its 30 s ceiling.
DECISION_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0)


@dataclass
class Live:
    """Callbacks for the values other parts keep; each answers now, from any thread."""

    camera_reconnects: Callable[[], int] = lambda: 0
    camera_fps: Callable[[], float] = lambda: 0.0
    camera_streaming: Callable[[], bool] = lambda: False
    mqtt_connected: Callable[[], bool] = lambda: False
    outbox_pending: Callable[[], int] = lambda: 0
    outbox_dropped: Callable[[], dict[str, int]] = field(default=lambda: {"alert": 0, "summary": 0})
    publish_failures: Callable[[], int] = lambda: 0
    vision_errors: Callable[[], int] = lambda: 0
    model: Callable[[], dict[str, str]] = field(default=lambda: {})


def live_from(daemon) -> Live:
    """The callbacks for a daemon.Daemon (read lazily: its parts may be replaced while it runs)."""
    d = daemon
    return Live(
        camera_reconnects=lambda: d.camera.reconnects,
        camera_fps=lambda: d.camera.fps,
        camera_streaming=lambda: d.camera.state.value == "streaming",
        mqtt_connected=lambda: d.mqtt.connected.is_set(),
        outbox_pending=lambda: len(d.outbox) if d.outbox is not None else 0,
        outbox_dropped=lambda: {"alert": d.outbox.dropped[ALERT], "summary": d.outbox.dropped[SUMMARY]}
        if d.outbox is not None else {"alert": 0, "summary": 0},
        publish_failures=lambda: d.mqtt.failures,
        vision_errors=lambda: d.vision.errors,
        model=lambda: {**d.model.identity, "variant": d.model.manifest.variant, "runtime": d.model.runtime},
    )


class _LiveCollector(Collector):
    def __init__(self, live: Live):
        self.live = live

    def collect(self) -> Iterable[Metric]:
        v = self.live
        yield CounterMetricFamily("agegate_camera_reconnects", "Times the camera source failed and was reopened",
                                  value=v.camera_reconnects())
        yield CounterMetricFamily("agegate_vision_errors", "Frames on which the detector or model failed",
                                  value=v.vision_errors())
        yield GaugeMetricFamily("agegate_camera_fps", "Frames per second from the camera", value=v.camera_fps())
        yield GaugeMetricFamily("agegate_camera_streaming", "1 while the camera delivers frames",
                                value=float(v.camera_streaming()))
        yield GaugeMetricFamily("agegate_mqtt_connected", "1 while connected to the broker",
                                value=float(v.mqtt_connected()))
        yield GaugeMetricFamily("agegate_outbox_pending",
                                "Alerts and transaction summaries in the outbox, not yet acknowledged by the broker",
                                value=v.outbox_pending())
        dropped = CounterMetricFamily("agegate_outbox_dropped",
                                      "Events the full outbox dropped (oldest summaries first, alerts last)",
                                      labels=["kind"])
        for kind, n in v.outbox_dropped().items():
            dropped.add_metric([kind], n)
        yield dropped
        yield CounterMetricFamily("agegate_publish_failures", "Messages paho refused to queue for the broker",
                                  value=v.publish_failures())
        yield InfoMetricFamily("agegate_model", "The age model in use", value=v.model())


class Metrics:
    def __init__(self, live: Live | None = None):
        disable_created_metrics()  # no *_created series: noise on a till's dashboard (process-wide setting)
        self.registry = CollectorRegistry()
        r = self.registry
        self.frames = Counter("agegate_frames_processed", "Frames through the vision loop", registry=r)
        self.detect_seconds = Histogram("agegate_detect_seconds", "Face detection time per frame",
                                        buckets=DETECT_BUCKETS, registry=r)
        self.infer_seconds = Histogram("agegate_inference_seconds", "Age model time per face",
                                       buckets=INFER_BUCKETS, registry=r)
        self.decisions = Counter("agegate_decisions", "Decisions on restricted items", ["decision"], registry=r)
        self.alerts = Counter("agegate_alerts_published", "Alerts handed to the outbox and broker", ["type"],
                              registry=r)
        self.decision_seconds = Histogram("agegate_decision_seconds",
                                          "Time from a POS item to its decision (face wait included)",
                                          buckets=DECISION_BUCKETS, registry=r)
        self.pos_rejected = Counter("agegate_pos_rejected", "POS messages refused (invalid, too big, queue full)",
                                    registry=r)
        Info("agegate_build", "This agegate build", registry=r).info({"version": __version__})
        ProcessCollector(registry=r)  # process_start_time_seconds (uptime), CPU, memory, descriptors
        PlatformCollector(registry=r)  # python_info
        for d in get_args(Decision):  # every series exists from the start, at 0
            self.decisions.labels(d)
        for t in get_args(AlertType):
            self.alerts.labels(t)
        self._frame_times: deque[float] = deque(maxlen=4096)  # when recent frames were done: processed_fps
        self.live = live or Live()
        r.register(_LiveCollector(self.live))

    def stage_observers(self) -> dict[str, Callable[[float], None]]:
        """What the vision loop's stage timers report to (see vision.StageTimer)."""
        return {"frames": self._frame_done, "detect": self.detect_seconds.observe,
                "infer": self.infer_seconds.observe}

    def _frame_done(self, _seconds: float) -> None:
        self.frames.inc()
        self._frame_times.append(time.monotonic())

    def processed_fps(self, window_s: float = PROCESSED_FPS_WINDOW_S) -> float:
        """Frames the vision loop finished per second over the last ``window_s`` (the camera may deliver
        more: AGEGATE_DETECT_FPS caps what is analysed, and a slow detector falls behind)."""
        now = time.monotonic()
        times = list(self._frame_times)  # one C-level copy: appends from the vision thread cannot interleave
        return sum(1 for t in times if now - t <= window_s) / window_s

    def exposition(self) -> bytes:
        """The text format a Prometheus server scrapes (CONTENT_TYPE_LATEST)."""
        return generate_latest(self.registry)
