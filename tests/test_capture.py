"""Camera: real video files written with OpenCV, played by the real capture thread."""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from agegate.testing.videos import FRAME_SIZE, face_frame, write_empty_video

from agegate.edge.capture import (
    Camera,
    CameraError,
    CameraState,
    backoff_delay,
    describe_source,
    parse_source,
)
from agegate.edge.timing import Pacer

WIDTH, HEIGHT = FRAME_SIZE


def wait_until(predicate, timeout: float = 10.0) -> bool:
    """Poll until ``predicate()`` is true or ``timeout`` passes; the final answer."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


@pytest.fixture
def short_video(tmp_path) -> Path:
    """Five frames at 30 fps: ends after about 0.17 s."""
    return write_empty_video(tmp_path / "short.avi", frames=5, fps=30.0)


class MjpegServer:
    """A real MJPEG-over-HTTP camera on loopback, as many IP cameras serve.

    The first client gets ``stall_after`` frames, then the connection stays open with
    nothing more sent: a camera that hung. Later clients get frames until close().
    """

    def __init__(self, stall_after: int = 10, fps: float = 20.0):
        self.stall_after = stall_after
        self.period = 1.0 / fps
        self.jpeg = cv2.imencode(".jpg", np.full((240, 320, 3), 90, np.uint8))[1].tobytes()
        self.closed = threading.Event()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/video.mjpg"
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        clients = 0
        while not self.closed.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:  # closed
                return
            clients += 1
            threading.Thread(target=self._send, args=(conn, clients == 1), daemon=True).start()

    def _send(self, conn: socket.socket, stall: bool) -> None:
        with conn:
            try:
                conn.recv(65536)  # the request
                conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: multipart/x-mixed-replace; boundary=frame\r\n\r\n")
                sent = 0
                while not self.closed.is_set() and not (stall and sent >= self.stall_after):
                    part = b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(self.jpeg)
                    conn.sendall(part + self.jpeg + b"\r\n")
                    sent += 1
                    self.closed.wait(self.period)
                self.closed.wait()  # hold the connection open, silent
            except OSError:  # the camera hung up
                pass

    def close(self) -> None:
        self.closed.set()
        self.sock.close()


@pytest.fixture
def camera_factory():
    """Builds cameras and stops every one at the end of the test, whatever happened."""
    made: list[Camera] = []

    def make(source, **kwargs) -> Camera:
        cam = Camera(str(source), **kwargs)
        made.append(cam)
        return cam

    yield make
    for cam in made:
        cam.stop(timeout=2.0)


def test_parse_source():
    assert parse_source("0") == 0
    assert parse_source(" 2 ") == 2
    assert parse_source("/dev/video0") == "/dev/video0"
    assert parse_source("rtsp://cam.local/stream1") == "rtsp://cam.local/stream1"
    assert parse_source("till.mp4") == "till.mp4"


def test_describe_source_hides_the_password():
    assert describe_source("rtsp://admin:s3cret@10.0.0.9:554/s1") == "rtsp://admin:***@10.0.0.9:554/s1"
    assert describe_source("rtsp://10.0.0.9/s1") == "rtsp://10.0.0.9/s1"
    assert describe_source("/videos/a:b@c.avi") == "/videos/a:b@c.avi"


def test_backoff_doubles_up_to_the_maximum():
    assert [backoff_delay(n, 0.5, 30.0) for n in range(1, 10)] == [0.5, 1, 2, 4, 8, 16, 30, 30, 30]


def test_a_video_file_plays_in_order_at_its_size(face_video, astronaut_bgr, camera_factory):
    cam = camera_factory(face_video)
    assert cam.state is CameraState.STOPPED
    cam.start()
    frames, seq = [], -1
    for _ in range(5):
        frame = cam.latest(newer_than=seq, timeout=5.0)
        assert frame is not None, cam.last_error
        frames.append(frame)
        seq = frame.seq
    assert [f.seq for f in frames] == sorted({f.seq for f in frames})  # strictly increasing
    assert frames[0].seq == 0
    for f in frames:
        assert f.image.shape == (HEIGHT, WIDTH, 3) and f.image.dtype == np.uint8
        assert not f.image.flags.writeable  # shared between consumers
    assert frames[1].captured_at > frames[0].captured_at
    # The first frame of the file is the face scene shifted by -5 px (MJPEG is lossy).
    expected = face_frame(astronaut_bgr, shift=-5).astype(np.int16)
    assert np.abs(frames[0].image.astype(np.int16) - expected).mean() < 8
    assert cam.state is CameraState.STREAMING
    assert cam.reconnects == 0 and cam.last_error is None
    assert cam.fps > 0


def test_a_slow_consumer_gets_the_newest_frame_not_a_backlog(face_video, camera_factory):
    cam = camera_factory(face_video)  # 15 fps
    cam.start()
    first = cam.latest(timeout=5.0)
    assert first is not None, cam.last_error
    time.sleep(0.8)  # about 12 frame periods
    later = cam.latest(newer_than=first.seq, timeout=5.0)
    assert later is not None
    assert later.seq >= first.seq + 3  # the frames in between were replaced, not queued
    assert cam.latest().seq >= later.seq  # and what it got was the newest one
    # Paced like a camera, not decoded flat out (hundreds of frames a second): a bound
    # that a slow machine only makes easier to meet.
    elapsed = later.captured_at - first.captured_at
    assert later.seq - first.seq <= 2 * 15 * elapsed + 2


def test_pacer_keeps_the_asked_rate_from_a_jittery_30_fps_source():
    times = [i / 30 + (0.004 if i % 3 == 0 else -0.004) for i in range(300)]  # 10 s of frames, a few ms early or late
    gate = Pacer(10)
    passed = [t for t in times if gate.due(t)]
    assert 98 <= len(passed) <= 101  # 10 a second, not fewer because a frame came a little early
    assert min(b - a for a, b in zip(passed, passed[1:])) > 0.06
    every = Pacer(0)
    assert all(every.due(t) for t in times)
    held = Pacer(10)
    assert held.due(0.0) and held.due(5.0) and not held.due(5.02)  # after a hold-up: from now, no burst


def test_max_fps_decodes_fewer_frames_but_fps_is_the_cameras(face_video, astronaut_bgr, camera_factory):
    cam = camera_factory(face_video, max_fps=5.0)  # a 15 fps MJPEG file: JPEG bytes read, only wanted ones decoded
    decoded = []
    cam.on_read = decoded.append
    cam.start()
    first = cam.latest(timeout=5.0)
    assert first is not None, cam.last_error
    assert first.image.shape == (HEIGHT, WIDTH, 3) and first.image.dtype == np.uint8
    expected = face_frame(astronaut_bgr, shift=-5).astype(np.int16)  # decoded here, as FFmpeg would have
    assert np.abs(first.image.astype(np.int16) - expected).mean() < 8
    time.sleep(2.0)
    last = cam.latest()
    elapsed = last.captured_at - first.captured_at
    assert last.seq - first.seq <= 5 * elapsed + 2  # published (decoded) at most 5 a second
    assert cam.fps > 8  # the camera's own rate (15), undecoded frames included; a slow machine gives less
    cam.stop()
    assert abs(len(decoded) - (cam.latest().seq + 1)) <= 1 and all(s > 0 for s in decoded)  # timed, once each


def test_a_file_loops_at_its_end(short_video, camera_factory):
    cam = camera_factory(short_video, loop_file=True)
    cam.start()
    frame = cam.latest(newer_than=11, timeout=10.0)  # the 5-frame file played more than twice
    assert frame is not None, cam.last_error
    assert cam.state is CameraState.STREAMING
    assert cam.reconnects == 0


def test_end_of_file_without_looping_reconnects(short_video, camera_factory):
    cam = camera_factory(short_video, loop_file=False, reconnect_min_s=30.0, reconnect_max_s=60.0)
    cam.start()
    assert wait_until(lambda: cam.state is CameraState.RECONNECTING), cam.state
    assert cam.reconnects == 1
    assert "end of file" in cam.last_error and str(short_video) in cam.last_error
    assert cam.latest().seq == 4  # all five frames were read, then the file ended
    # stop() cuts the 30 s back-off short.
    assert cam.stop(timeout=3.0) is True
    assert cam.state is CameraState.STOPPED


def test_a_missing_file_reconnects_and_stops_promptly(tmp_path, camera_factory):
    missing = tmp_path / "nowhere.avi"
    cam = camera_factory(missing, reconnect_min_s=30.0, reconnect_max_s=60.0)
    cam.start()
    assert wait_until(lambda: cam.reconnects == 1)
    assert cam.state is CameraState.RECONNECTING
    assert str(missing) in cam.last_error and "no such file" in cam.last_error
    assert cam.latest(timeout=0.1) is None
    assert cam.stop(timeout=3.0) is True  # not stuck in the 30 s back-off
    assert cam.state is CameraState.STOPPED


def test_stop_wakes_a_waiting_consumer(tmp_path, camera_factory):
    cam = camera_factory(tmp_path / "nowhere.avi", reconnect_min_s=30.0)
    cam.start()
    got: list[object] = []
    waiter = threading.Thread(target=lambda: got.append(cam.latest(timeout=60.0)))
    waiter.start()
    assert wait_until(lambda: cam.reconnects == 1)
    cam.stop(timeout=3.0)
    waiter.join(5.0)
    assert not waiter.is_alive() and got == [None]


def test_a_file_that_appears_later_is_picked_up(tmp_path, camera_factory):
    target = tmp_path / "later.avi"
    cam = camera_factory(target, reconnect_min_s=0.05, reconnect_max_s=0.2)
    cam.start()
    assert wait_until(lambda: cam.reconnects >= 2)
    assert cam.state is CameraState.RECONNECTING and cam.latest() is None
    written = write_empty_video(tmp_path / "writing.avi", frames=10, fps=30.0)
    os.replace(written, target)  # appears whole, as a camera file copied into place would
    frame = cam.latest(timeout=10.0)
    assert frame is not None, cam.last_error
    assert frame.image.shape == (HEIGHT, WIDTH, 3)
    assert cam.state is CameraState.STREAMING
    assert cam.reconnects >= 2 and "no such file" in cam.last_error  # the history is kept


def test_a_stream_that_stalls_is_reconnected(camera_factory):
    server = MjpegServer(stall_after=10)
    cam = camera_factory(server.url, stall_timeout_s=1.0, reconnect_min_s=0.1)
    try:
        cam.start()
        first = cam.latest(timeout=10.0)
        assert first is not None, cam.last_error
        assert first.image.shape == (240, 320, 3)
        # The camera goes silent after 10 frames; FFmpeg's read timeout gives up after 1 s.
        assert wait_until(lambda: cam.reconnects >= 1)
        assert "stalled" in cam.last_error and server.url in cam.last_error
        stalled_at = cam.latest().seq
        assert stalled_at <= 9  # nothing after the 10th frame
        # The second connection streams again.
        resumed = cam.latest(newer_than=stalled_at, timeout=10.0)
        assert resumed is not None, cam.last_error
        assert cam.state is CameraState.STREAMING
    finally:
        cam.stop()  # before the server hangs up, so FFmpeg has nothing to complain of
        server.close()


def test_probe_takes_one_frame(face_video):
    frame = Camera.probe(str(face_video), timeout=5.0)
    assert frame.seq == 0 and frame.image.shape == (HEIGHT, WIDTH, 3)


def test_probe_says_why_it_got_nothing(tmp_path):
    missing = tmp_path / "nowhere.avi"
    with pytest.raises(CameraError, match="no such file") as err:
        Camera.probe(str(missing), timeout=0.3)
    assert str(missing) in str(err.value)


def test_a_camera_starts_once(short_video, camera_factory):
    cam = camera_factory(short_video)
    assert cam.stop() is True  # stopping one never started is harmless
    cam = camera_factory(short_video)
    cam.start()
    with pytest.raises(RuntimeError, match="already started"):
        cam.start()


def test_bad_settings_are_refused():
    with pytest.raises(ValueError):
        Camera("0", reconnect_min_s=5.0, reconnect_max_s=1.0)
    with pytest.raises(ValueError):
        Camera("0", stall_timeout_s=0)
