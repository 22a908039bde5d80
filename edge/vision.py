"""The vision loop: newest frame → faces → customer zone → age → per-person smoothing.

Threading: runs in its own thread ("vision"); it alone touches its detector. The age model
is used under ``model_lock``, which the console's photo upload takes too (with a detector
of its own). The decision side reads :meth:`VisionLoop.customer_estimate` from other
threads; the tracker guards its own state. :attr:`VisionLoop.live` holds a reference to the
newest processed frame and its faces for the console's installer view (replaced each frame,
never copied); no frame or crop is written to disk or sent anywhere.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable, Mapping

import numpy as np

from .age_model import AgeModel
from .capture import Camera, CameraState, name_os_thread
from .detectors import Detector, Zone, customer_faces
from .events import Estimate
from .timing import Pacer, StageTimer
from .tracker import Tracker

log = logging.getLogger(__name__)

VISION_THREAD = "agegate-vision"  # the loop's thread name as the system shows it (top -H, /proc)


@dataclass(frozen=True)
class LiveView:
    """The newest processed frame and what was seen in it (for the console's installer view)."""

    image: np.ndarray  # the camera's frame itself (read-only, shared): not a copy
    faces: tuple[tuple[tuple[int, int, int, int], float | None, bool], ...]  # (box, age or None, in zone)
    zone: Zone
    at: float  # time.monotonic() when processed


class VisionLoop:
    def __init__(
        self,
        camera: Camera,
        detector: Detector,
        model: Callable[[], AgeModel],
        tracker: Tracker,
        zone: Callable[[], Zone],
        *,
        max_faces: int = 2,
        face_stale_s: float = 1.5,
        observe: Mapping[str, Callable[[float], None]] | None = None,
        model_lock: threading.Lock | None = None,
        estimate_fps: float = 0.0,
    ):
        self.camera = camera
        self.detector = detector
        self.model = model  # read each frame, so a model swapped in by the daemon is picked up
        self.tracker = tracker
        self.current_zone = zone  # read each frame: the zone store's (edge/zone.py), so a saved zone applies at once
        self.max_faces = max_faces
        self.face_stale_s = face_stale_s
        # Ages at most this often (0: every frame): the tracker follows faces in between, and
        # the smoothing wants a few estimates a second, not one per frame.
        self._estimate_gate = Pacer(estimate_fps)
        observe = observe or {}
        self.frames = StageTimer(observe.get("frames"))
        self.detect = StageTimer(observe.get("detect"))
        self.crop = StageTimer(observe.get("crop"))  # crop and resize, per face
        self.infer = StageTimer(observe.get("infer"))  # normalise and the interpreter, per face
        self.model_lock = model_lock or threading.Lock()
        self.live: LiveView | None = None
        self.errors = 0
        self.last_error: str | None = None
        self._failing: str | None = None  # set while the latest frame failed, cleared by a good one
        self._assessed = False  # whether the latest frame ran the model (or had no face for it)
        self.death: str | None = None  # why the thread ended, when something outside a frame's step ended it
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
        try:
            self._loop()
        except BaseException as exc:  # the daemon's supervisor restarts the loop and says why it died
            self.death = f"{type(exc).__name__}: {exc}".strip()
            log.critical("the vision loop ended: %s", self.death, exc_info=True)

    def _loop(self) -> None:
        name_os_thread(VISION_THREAD)
        seq = -1
        while not self._stop.is_set():
            frame = self.camera.latest(newer_than=seq, timeout=0.5)
            if frame is None:
                continue
            seq = frame.seq
            try:
                self.process(frame.image, time.monotonic())
                if self._assessed:  # a frame that skipped the model proves nothing about it
                    self._failing = None
            except Exception as exc:  # a model or detector fault must not end the loop
                self.errors += 1
                reason = f"{type(exc).__name__}: {exc}".strip()
                if reason != self.last_error:  # log each new fault once, not every frame
                    log.error("vision step failed (%d so far): %s", self.errors, reason)
                self.last_error = self._failing = reason

    def process(self, image, now: float) -> None:
        """One frame: detect, keep the customer zone, estimate the largest faces (when due), track."""
        t0 = time.perf_counter()
        faces = self.detector.detect(image)
        t1 = time.perf_counter()
        self.detect.add(t1 - t0)
        h, w = image.shape[:2]
        zone = self.current_zone()
        in_zone = customer_faces(faces, zone, w, h)[: self.max_faces]
        boxes = [f.box for f in in_zone]
        observations: list[tuple[tuple[int, int, int, int], float | None]] = [(box, None) for box in boxes]
        self._assessed = not boxes
        if boxes and self._estimate_gate.due(now):
            with self.model_lock:
                model = self.model()
                t2 = time.perf_counter()
                crops = [model.prepare(image, f.box, f.landmarks) for f in in_zone]
                t3 = time.perf_counter()
                ages = model.predict_prepared(crops)
            self.crop.add(t3 - t2, len(boxes))  # per face
            self.infer.add(time.perf_counter() - t3, len(boxes))
            observations = [(box, float(age)) for box, age in zip(boxes, ages)]
            self._assessed = True
        latest = self.tracker.update(now, observations)  # each person's latest age, this frame's or earlier
        self.frames.add(time.perf_counter() - t0)
        aged = dict(zip(boxes, latest))
        self.live = LiveView(image, tuple((f.box, aged.get(f.box), zone.contains(f, w, h)) for f in faces), zone, now)
