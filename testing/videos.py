"""Video files of a real face, written with OpenCV: what the tests, the benchmarks and the demo play
to the daemon as its camera.

The face is the public-domain astronaut photo that scikit-image ships (NASA's Eileen Collins).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

FRAME_SIZE = (640, 480)


def astronaut_bgr() -> np.ndarray:
    from skimage import data

    return cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)


def face_frame(face_bgr: np.ndarray, shift: int = 0) -> np.ndarray:
    """A 640x480 scene with the photo in the middle (the customer zone), moved ``shift`` px sideways."""
    frame = np.full((FRAME_SIZE[1], FRAME_SIZE[0], 3), 90, np.uint8)
    # 400 px: the face is about 75 px wide, as a customer a metre from a till camera.
    face = cv2.resize(face_bgr, (400, 400))
    x0, y0 = 120 + shift, 40
    frame[y0 : y0 + 400, x0 : x0 + 400] = face
    return frame


def _writer(path: Path, fps: float) -> cv2.VideoWriter:
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, FRAME_SIZE)
    if not w.isOpened():
        raise RuntimeError(f"OpenCV cannot write {path}")
    return w


def write_face_video(path: Path, face_bgr: np.ndarray, frames: int = 60, fps: float = 15.0) -> Path:
    w = _writer(path, fps)
    for i in range(frames):
        w.write(face_frame(face_bgr, shift=(i % 10) - 5))
    w.release()
    return path


def write_empty_video(path: Path, frames: int = 60, fps: float = 15.0) -> Path:
    """A till with nobody at it: a grey scene with faint sensor noise."""
    w = _writer(path, fps)
    for frame in _empty_frames(frames):
        w.write(frame)
    w.release()
    return path


def _empty_frames(n: int):
    rng = np.random.default_rng(0)
    for _ in range(n):
        frame = np.full((FRAME_SIZE[1], FRAME_SIZE[0], 3), 90, np.uint8)
        frame += rng.integers(0, 8, frame.shape, dtype=np.uint8)
        yield frame


def write_demo_video(path: Path, face_bgr: np.ndarray, fps: float = 15.0) -> Path:
    """8 s of a customer at the till, then 8 s of nobody; the daemon loops it."""
    w = _writer(path, fps)
    for i in range(int(8 * fps)):
        w.write(face_frame(face_bgr, shift=(i % 10) - 5))
    for frame in _empty_frames(int(8 * fps)):
        w.write(frame)
    w.release()
    return path
