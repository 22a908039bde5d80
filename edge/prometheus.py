"""Prometheus metrics for ``GET /metrics``, on a registry of the daemon's own.

Counters and histograms are updated where the daemon already measures: the vision loop's
stage timers (frames, detect and per-face inference latency), the decision hook and its timer
(decision latency), ``Daemon.publish`` (alerts) and ``Daemon.reject`` (refused POS messages).
Values another part already keeps (camera reconnects and fps, outbox depth and drops, publish
failures, broker connection, the loaded model) are rendered at scrape time from the till's
status (status.TillStatus), so there is one source of truth for each.

Beside them, prometheus-client's standard ``process_*`` series (CPU seconds, resident memory,
open descriptors, ``process_start_time_seconds`` for uptime), ``python_info``, and
``agegate_build_info`` with the version.

A registry per :class:`Metrics` rather than prometheus-client's global default, so that
several daemons (or tests) in one process never collide.

Threading: prometheus-client's instruments are thread-safe; the status is read from the HTTP
worker serving the scrape (status.StatusReporter reads each part afresh, from any thread).
"""

from __future__ import annotations

import time
from collections import deque
from typing import Callable, Iterable, get_args

from prometheus_client import (CollectorRegistry, Counter, Histogram, Info, PlatformCollector,
                               ProcessCollector, disable_created_metrics, generate_latest)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from .. import __version__
from .events import AlertType, Decision
from .status import TillStatus

__all__ = ["CONTENT_TYPE_LATEST", "Metrics"]

DETECT_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0)
INFER_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.035, 0.05, 0.1, 0.25, 0.5)
PROCESSED_FPS_WINDOW_S = 5.0
# A decision may wait for a face (AGEGATE_FACE_WAIT_S, 1.5 s by default): buckets up to its 30 s ceiling.
DECISION_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0)


class _StatusCollector(Collector):
    """The series read from the till's status at scrape time (one snapshot per scrape)."""

    def __init__(self, status: Callable[[], TillStatus]):
        self.status = status

    def collect(self) -> Iterable[Metric]:
        s = self.status()
        yield CounterMetricFamily("agegate_camera_reconnects", "Times the camera source failed and was reopened",
                                  value=s.camera.reconnects)
        yield CounterMetricFamily("agegate_vision_errors", "Frames on which the detector or model failed",
                                  value=s.vision_errors)
        yield GaugeMetricFamily("agegate_camera_fps", "Frames per second from the camera", value=s.camera.fps)
        yield GaugeMetricFamily("agegate_camera_streaming", "1 while the camera delivers frames",
                                value=float(s.camera.state == "streaming"))
        yield GaugeMetricFamily("agegate_mqtt_connected", "1 while connected to the broker",
                                value=float(s.mqtt.connected))
        yield GaugeMetricFamily("agegate_outbox_pending",
                                "Alerts and transaction summaries in the outbox, not yet acknowledged by the broker",
                                value=s.outbox.pending)
        dropped = CounterMetricFamily("agegate_outbox_dropped",
                                      "Events the full outbox dropped (oldest summaries first, alerts last)",
                                      labels=["kind"])
        dropped.add_metric(["alert"], s.outbox.dropped_alerts)
        dropped.add_metric(["summary"], s.outbox.dropped_summaries)
        yield dropped
        yield CounterMetricFamily("agegate_publish_failures", "Messages paho refused to queue for the broker",
                                  value=s.mqtt.publish_failures)
        m = s.model
        yield InfoMetricFamily("agegate_model", "The age model in use", value={
            "name": m.name, "version": m.version, "sha256": m.sha256, "variant": m.variant, "runtime": m.runtime})


class Metrics:
    def __init__(self, status: Callable[[], TillStatus] | None = None):
        """``status``: the till's status, read at each scrape for the series other parts keep;
        without it (a Metrics of its own, as the benchmarks use) only the instruments are served."""
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
        if status is not None:
            r.register(_StatusCollector(status))

    def stage_observers(self) -> dict[str, Callable[[float], None]]:
        """What the vision loop's stage timers report to (see timing.StageTimer)."""
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
