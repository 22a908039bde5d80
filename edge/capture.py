"""Frames from a camera, a network stream or a video file, always the newest one.

A :class:`Camera` reads its source in its own daemon thread and keeps a single slot
holding the latest frame. A consumer that is slower than the camera never sees a
backlog: frames it did not take are simply replaced, so the lag between the customer
and the answer cannot grow. Frames are kept in memory only; nothing is written to disk.
With ``max_fps`` the camera still reads every frame (so a device's queue never goes stale)
but decodes and publishes at most that many a second: frames nobody will analyse are
dropped before the costly part, the decoding into a BGR array.

Sources (the ``source`` string):

* ``"0"``, ``"1"``, …: a device index (V4L2 on Linux);
* ``"/dev/video0"``: a device path;
* ``"rtsp://…"``, ``"http://…"``: a network stream (FFmpeg);
* anything else: a video file, played at its own frame rate (``CAP_PROP_FPS``, else
  15 fps) so that it behaves like a camera, and looped at its end when ``loop_file``.

When the source will not open, a read fails, or a file ends and is not looped, the
camera goes to ``RECONNECTING`` and tries again after an exponential back-off
(``reconnect_min_s`` doubling up to ``reconnect_max_s``; reset by the next frame).
A source that stops sending is caught by the backend's own read timeout, which is set
from ``stall_timeout_s``: ``CAP_PROP_OPEN/READ_TIMEOUT_MSEC`` for network streams, and
``OPENCV_VIDEOIO_V4L_SELECT_TIMEOUT`` for V4L2 devices (process-wide, read by OpenCV
once, and only set here when the environment does not set it already).

Threading: the capture thread alone owns the ``cv2.VideoCapture`` (opens, reads and
releases it). Every public method and property may be called from any thread; they
share one lock, held only for a few assignments. :meth:`Camera.latest` blocks on a
condition variable, never on the capture itself. Frames are shared between consumers
and their pixels are read-only: copy a frame before drawing on it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import math
import os
import re
import threading
import time
from collections import deque
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from .timing import Pacer

log = logging.getLogger(__name__)

DEFAULT_FILE_FPS = 15.0
CAMERA_THREAD = "agegate-camera"  # the capture thread's name as the system shows it
FPS_WINDOW_S = 3.0


class CameraError(Exception):
    """No frame could be had from a source; the message names the source and says why."""


class CameraState(str, Enum):
    STARTING = "starting"  # started, no frame yet
    STREAMING = "streaming"  # frames are arriving
    RECONNECTING = "reconnecting"  # the source failed; waiting to try again
    STOPPED = "stopped"  # not started, or stopped


@dataclass(frozen=True)
class Frame:
    seq: int  # 0 for the first frame a Camera publishes, then +1 per frame, across reconnects
    captured_at: float  # time.monotonic() when the frame was read
    image: np.ndarray  # BGR uint8 (h, w, 3), read-only


def parse_source(source: str) -> int | str:
    """What ``cv2.VideoCapture`` is given: a device index for ``"0"``, else the string."""
    source = source.strip()
    return int(source) if source.isdigit() else source


def describe_source(source: str) -> str:
    """The source as safe to log: a password in a URL is replaced by ``***``."""
    return re.sub(r"(://[^/@:]*):[^/@]*@", r"\1:***@", source)


def backoff_delay(failures: int, min_s: float, max_s: float) -> float:
    """Seconds to wait after ``failures`` consecutive failures (1, 2, …): min_s doubling up to max_s."""
    return min(max_s, min_s * 2.0 ** max(0, failures - 1))


_PR_SET_NAME = 15  # prctl(2)


def name_os_thread(name: str) -> None:
    """Give the calling thread ``name`` (at most 15 bytes) where the system shows thread names:
    ``top -H``, ``ps -L``, ``/proc/<pid>/task/<tid>/comm``. Python names threads for itself
    only, so without this every thread of the daemon is "python" there, and the benchmark
    could not tell which thread's CPU is the camera's. Does nothing where prctl is missing."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        libc.prctl(_PR_SET_NAME, name.encode()[:15], 0, 0, 0)
    except (OSError, AttributeError, TypeError):
        pass


class _SourceLost(Exception):
    """Raised inside the capture thread when the source must be reopened; the message says why."""


class Camera:
    """The newest frame of one source, read in a background thread. See the module docstring."""

    def __init__(
        self,
        source: str,
        *,
        loop_file: bool = True,
        stall_timeout_s: float = 5.0,
        reconnect_min_s: float = 0.5,
        reconnect_max_s: float = 30.0,
        on_read: Callable[[float], None] | None = None,
        max_fps: float | None = None,
    ):
        if stall_timeout_s <= 0 or reconnect_min_s <= 0 or reconnect_max_s < reconnect_min_s:
            raise ValueError("need stall_timeout_s > 0 and 0 < reconnect_min_s <= reconnect_max_s")
        self.source = source
        self.loop_file = loop_file
        self.stall_timeout_s = stall_timeout_s
        self.reconnect_min_s = reconnect_min_s
        self.reconnect_max_s = reconnect_max_s
        self.on_read = on_read  # told the seconds each published frame took to read and decode (with the skipped)
        self.max_fps = max_fps  # decode and publish at most this many frames a second; None or 0: every frame
        self._target = parse_source(source)
        self._is_device = isinstance(self._target, int) or self._target.startswith("/dev/")
        self._is_stream = not self._is_device and "://" in self._target
        self._is_file = not (self._is_device or self._is_stream)
        self._name = describe_source(source)

        self._cond = threading.Condition()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._frame: Frame | None = None
        self._seq = -1
        self._state = CameraState.STOPPED
        self._reconnects = 0
        self._last_error: str | None = None
        self._frame_times: deque[float] = deque(maxlen=512)

    # --- Public API, any thread ---------------------------------------------------

    def start(self) -> None:
        """Start the capture thread. A Camera runs once: start it again and it raises RuntimeError."""
        with self._cond:
            if self._thread is not None:
                raise RuntimeError(f"camera {self._name} was already started")
            self._state = CameraState.STARTING
            self._thread = threading.Thread(target=self._run, name=f"camera {self._name}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> bool:
        """Stop capturing and wake every waiter; True when the capture thread has ended.

        A back-off wait is cut short at once. A read blocked inside OpenCV cannot be
        interrupted: then this returns False after ``timeout`` and the thread, a daemon,
        ends (and releases the source) when the read returns.
        """
        self._stopping.set()
        with self._cond:
            self._state = CameraState.STOPPED
            self._cond.notify_all()
        if self._thread is None:
            return True
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning("camera %s: capture thread still busy in OpenCV after %.1f s", self._name, timeout)
            return False
        return True

    def latest(self, newer_than: int = -1, timeout: float | None = None) -> Frame | None:
        """The newest frame if its ``seq`` is greater than ``newer_than``, else None.

        With a ``timeout`` (seconds) it waits up to that long for such a frame; with
        None it does not wait. Returns None at once once the camera is stopped.
        """

        def ready() -> bool:
            return (self._frame is not None and self._frame.seq > newer_than) or self._stopping.is_set()

        with self._cond:
            if timeout is not None and timeout > 0:
                self._cond.wait_for(ready, timeout)
            frame = self._frame
        return frame if frame is not None and frame.seq > newer_than else None

    @property
    def state(self) -> CameraState:
        with self._cond:
            return self._state

    @property
    def fps(self) -> float:
        """Frames per second published over the last FPS_WINDOW_S seconds (0 when none)."""
        now = time.monotonic()
        with self._cond:
            times = [t for t in self._frame_times if t >= now - FPS_WINDOW_S]
        if len(times) < 2:
            return 0.0
        return (len(times) - 1) / (now - times[0])

    @property
    def reconnects(self) -> int:
        """How many times the source failed (would not open, read failed, ended) and was retried."""
        with self._cond:
            return self._reconnects

    @property
    def last_error(self) -> str | None:
        """Why the source last failed, naming it (passwords hidden); None while none has."""
        with self._cond:
            return self._last_error

    @classmethod
    def probe(
        cls, source: str, timeout: float = 5.0
    ) -> Frame:
        """Open ``source``, take one frame and close it again: for ``agegate-edge check``.

        Retries within ``timeout`` as a running camera would; raises CameraError with the
        last failure when no frame came in time.
        """
        camera = cls(
            source,
            loop_file=False,
            stall_timeout_s=timeout,
            reconnect_min_s=0.2,
            reconnect_max_s=1.0,
        )
        camera.start()
        try:
            frame = camera.latest(timeout=timeout)
        finally:
            camera.stop(timeout=1.0)
        if frame is None:
            why = camera.last_error or f"{describe_source(source)}: no frame yet"
            raise CameraError(f"no frame within {timeout:g} s: {why}")
        return frame

    # --- The capture thread -------------------------------------------------------

    def _run(self) -> None:
        name_os_thread(CAMERA_THREAD)
        failures = 0
        while not self._stopping.is_set():
            seq_before = self._seq  # only this thread writes _seq
            try:
                self._stream()  # returns only when stopping
            except _SourceLost as lost:
                failures = 1 if self._seq > seq_before else failures + 1
                delay = backoff_delay(failures, self.reconnect_min_s, self.reconnect_max_s)
                self._fail(str(lost), delay)
                self._stopping.wait(delay)
        with self._cond:
            self._state = CameraState.STOPPED
            self._cond.notify_all()

    def _stream(self) -> None:
        """Open the source and publish its frames until stopping; raise _SourceLost when it fails."""
        cap = self._open()
        try:
            jpeg = self._hand_over_jpeg(cap)
            period = 1.0 / self._file_fps(cap) if self._is_file else 0.0
            due = time.monotonic()
            read = 0
            decode = Pacer(self.max_fps)
            spent = 0.0  # reading (and skipping) since the last published frame
            while not self._stopping.is_set():
                started = time.perf_counter()
                ok = cap.grab()
                if not ok and self._is_file and self.loop_file and read:
                    cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
                    ok = cap.grab()
                if not ok:
                    raise _SourceLost(self._why_no_frame(read))
                read += 1
                if decode.due(time.monotonic()):
                    ok, image = cap.retrieve()
                    if ok and jpeg:
                        image = cv2.imdecode(image, cv2.IMREAD_COLOR)
                    if not ok or image is None or image.size == 0:
                        raise _SourceLost("a frame was read but could not be decoded")
                    if self.on_read is not None:
                        self.on_read(spent + time.perf_counter() - started)
                    spent = 0.0
                    self._publish(image)
                else:  # not wanted this often: dropped before decoding, and counted for fps
                    spent += time.perf_counter() - started
                    with self._cond:
                        self._frame_times.append(time.monotonic())
                if period:  # pace a file like a camera
                    due += period
                    lag = due - time.monotonic()
                    if lag > 0:
                        self._stopping.wait(lag)
                    elif lag < -period:  # held up: carry on from now rather than burst to catch up
                        due = time.monotonic()
        finally:
            cap.release()

    def _why_no_frame(self, frames_read: int) -> str:
        if not frames_read:
            return "opened, but no frame could be read"
        if self._is_file:
            return "end of file"
        return f"stalled or closed: no frame within {self.stall_timeout_s:g} s"

    def _hand_over_jpeg(self, cap: cv2.VideoCapture) -> bool:
        """For an MJPEG file or stream read through FFmpeg, when frames are skipped: have grab()
        only read each frame's JPEG bytes (FFmpeg would decode every frame there, wanted or
        not), and decode the wanted ones here. A V4L2 device already decodes in retrieve()."""
        if not self.max_fps or self._is_device or cap.getBackendName() != "FFMPEG":
            return False
        fourcc = int(cap.get(cv2.CAP_PROP_FOURCC)).to_bytes(4, "little").upper()
        return fourcc == b"MJPG" and bool(cap.set(cv2.CAP_PROP_FORMAT, -1))

    @staticmethod
    def _file_fps(cap: cv2.VideoCapture) -> float:
        fps = cap.get(cv2.CAP_PROP_FPS)
        return fps if 0 < fps <= 240 else DEFAULT_FILE_FPS

    def _open(self) -> cv2.VideoCapture:
        if self._is_file and not Path(self._target).is_file():
            raise _SourceLost("no such file")
        if self._is_stream:
            timeout_ms = int(self.stall_timeout_s * 1000)
            params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, timeout_ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, timeout_ms]
            cap = cv2.VideoCapture(self._target, cv2.CAP_FFMPEG, params)
        else:
            if self._is_device:
                os.environ.setdefault("OPENCV_VIDEOIO_V4L_SELECT_TIMEOUT", str(math.ceil(self.stall_timeout_s)))
            cap = cv2.VideoCapture(self._target)
        if not cap.isOpened():
            cap.release()
            raise _SourceLost("OpenCV cannot open it")
        return cap  # at the size the device, stream or file gives

    def _publish(self, image: np.ndarray) -> None:
        image.flags.writeable = False  # shared by every consumer
        now = time.monotonic()
        with self._cond:
            if self._stopping.is_set():
                return
            self._seq += 1
            self._frame = Frame(self._seq, now, image)
            self._frame_times.append(now)
            if self._state is not CameraState.STREAMING:
                log.info("camera %s: streaming %dx%d", self._name, image.shape[1], image.shape[0])
                self._state = CameraState.STREAMING
            self._cond.notify_all()

    def _fail(self, reason: str, delay: float) -> None:
        message = f"{self._name}: {reason}"
        with self._cond:
            if self._stopping.is_set():
                return
            self._state = CameraState.RECONNECTING
            self._reconnects += 1
            self._last_error = message
        log.warning("camera %s; retrying in %.1f s", message, delay)

