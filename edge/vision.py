"""The vision loop: newest frame → faces → customer zone → age → per-person smoothing.

Threading: runs in its own thread ("vision"); it alone touches the detector and the age
model. The decision side reads :meth:`VisionLoop.customer_estimate` from other threads;
the tracker guards its own state. No frame or crop is kept beyond one iteration, written
to disk or sent anywhere.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable

from .age_model import AgeModel
from .capture import Camera, CameraState
from .detectors import Detector, Zone, customer_faces
from .events import Estimate
from .tracker import Tracker

log = logging.getLogger(__name__)


class StageTimer:
    """Running totals for one stage, read and reset by the stats publisher."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.count = 0
        self.total_s = 0.0

    def add(self, seconds: float, count: int = 1) -> None:
        with self._lock:
            self.count += count
            self.total_s += seconds

    def take(self) -> tuple[int, float]:
        """(count, total seconds) since the last take."""
        with self._lock:
            out = (self.count, self.total_s)
            self.count, self.total_s = 0, 0.0
            return out


class VisionLoop:
    def __init__(
        self,
        camera: Camera,
        detector: Detector,
        model: Callable[[], AgeModel],
        tracker: Tracker,
        zone: Zone,
        *,
        max_faces: int = 2,
        face_stale_s: float = 1.5,
    ):
        self.camera = camera
        self.detector = detector
        self.model = model  # read each frame, so a model swapped in by the daemon is picked up
        self.tracker = tracker
        self.zone = zone
        self.max_faces = max_faces
        self.face_stale_s = face_stale_s
        self.frames = StageTimer()
        self.detect = StageTimer()
        self.infer = StageTimer()
        self.errors = 0
        self.last_error: str | None = None
        self._failing: str | None = None  # set while the latest frame failed, cleared by a good one
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="vision", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def customer_estimate(self) -> Estimate | None:
        est = self.tracker.customer(time.monotonic(), max_staleness_s=self.face_stale_s)
        if est is None:
            return None
        return Estimate(age=round(est.age, 1), spread=round(est.spread, 1), samples=est.samples)

    def camera_ok(self) -> bool:
        return self.camera.state == CameraState.STREAMING

    def failure(self) -> str | None:
        return self._failing

    def _run(self) -> None:
        seq = -1
        while not self._stop.is_set():
            frame = self.camera.latest(newer_than=seq, timeout=0.5)
            if frame is None:
                continue
            seq = frame.seq
            try:
                self.process(frame.image, time.monotonic())
                self._failing = None
            except Exception as exc:  # a model or detector fault must not end the loop
                self.errors += 1
                reason = f"{type(exc).__name__}: {exc}".strip()
                if reason != self.last_error:  # log each new fault once, not every frame
                    log.error("vision step failed (%d so far): %s", self.errors, reason)
                self.last_error = self._failing = reason

    def process(self, image, now: float) -> list[tuple[tuple[int, int, int, int], float]]:
        """One frame: detect, keep the customer zone, estimate the largest faces, track."""
        t0 = time.perf_counter()
        faces = self.detector.detect(image)
        t1 = time.perf_counter()
        self.detect.add(t1 - t0)
        h, w = image.shape[:2]
        in_zone = customer_faces(faces, self.zone, w, h)[: self.max_faces]
        observations = []
        if in_zone:
            boxes = [f.box for f in in_zone]
            ages = self.model().estimate(image, boxes)
            self.infer.add(time.perf_counter() - t1, len(boxes))  # per face
            observations = [(box, float(age)) for box, age in zip(boxes, ages)]
        self.tracker.update(now, observations)
        self.frames.add(time.perf_counter() - t0)
        return observations
