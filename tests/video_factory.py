"""Real video files written with OpenCV for the capture and end-to-end tests."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

FRAME_SIZE = (640, 480)


def _writer(path: Path, fps: float) -> cv2.VideoWriter:
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, FRAME_SIZE)
    if not w.isOpened():
        raise RuntimeError(f"OpenCV cannot write {path}")
    return w


def face_frame(face_bgr: np.ndarray, shift: int = 0) -> np.ndarray:
    """A 640x480 scene with the face photo placed in the middle (customer zone), moved by ``shift`` px."""
    frame = np.full((FRAME_SIZE[1], FRAME_SIZE[0], 3), 90, np.uint8)
    face = cv2.resize(face_bgr, (320, 320))
    x0, y0 = 160 + shift, 80
    frame[y0 : y0 + 320, x0 : x0 + 320] = face
    return frame


def write_face_video(path: Path, face_bgr: np.ndarray, frames: int = 60, fps: float = 15.0) -> Path:
    w = _writer(path, fps)
    for i in range(frames):
        w.write(face_frame(face_bgr, shift=(i % 10) - 5))
    w.release()
    return path


def write_empty_video(path: Path, frames: int = 60, fps: float = 15.0) -> Path:
    w = _writer(path, fps)
    rng = np.random.default_rng(0)
    for _ in range(frames):
        frame = np.full((FRAME_SIZE[1], FRAME_SIZE[0], 3), 90, np.uint8)
        frame += rng.integers(0, 8, frame.shape, dtype=np.uint8)
        w.write(frame)
    w.release()
    return path
