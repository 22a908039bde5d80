"""The Haar cascade face detector: needs nothing but OpenCV, the default backend.

Uses the frontal-face cascade that ships with opencv-python-headless
(``cv2.data.haarcascades``). The frame is turned grey and histogram-equalised, which
helps under the uneven lighting of a shop; faces smaller than ``min_face_px`` are not
searched for, which also keeps it fast. A face's score is the cascade's level weight
from ``detectMultiScale3``: unbounded, higher is surer, not comparable with YuNet's.

Threading: not thread-safe (the cascade and the grey buffers are reused); one instance
per thread.
"""

from __future__ import annotations

import cv2
import numpy as np

from . import DetectorError, Face, check_bgr

CASCADE_FILE = "haarcascade_frontalface_default.xml"


class HaarDetector:
    name = "haar"

    def __init__(self, *, min_face_px: int = 40, scale_factor: float = 1.1, min_neighbors: int = 5):
        path = cv2.data.haarcascades + CASCADE_FILE
        self._cascade = cv2.CascadeClassifier(path)
        if self._cascade.empty():
            raise DetectorError(f"the Haar cascade {path} does not load (is OpenCV installed whole?)")
        self.min_face_px = min_face_px
        self.scale_factor = scale_factor
        self.min_neighbors = min_neighbors
        self._grey: np.ndarray | None = None  # reused while the frame size stays the same
        self._equalised: np.ndarray | None = None

    def detect(self, image_bgr: np.ndarray) -> list[Face]:
        w, h = check_bgr(image_bgr)
        if self._grey is None or self._grey.shape != (h, w):
            self._grey = np.empty((h, w), np.uint8)
            self._equalised = np.empty((h, w), np.uint8)
        cv2.cvtColor(image_bgr, cv2.COLOR_BGR2GRAY, dst=self._grey)
        cv2.equalizeHist(self._grey, dst=self._equalised)
        boxes, _levels, weights = self._cascade.detectMultiScale3(
            self._equalised,
            scaleFactor=self.scale_factor,
            minNeighbors=self.min_neighbors,
            minSize=(self.min_face_px, self.min_face_px),
            outputRejectLevels=True,
        )
        scores = list(weights) if len(weights) == len(boxes) else [1.0] * len(boxes)
        return [Face(tuple(int(v) for v in box), float(score)) for box, score in zip(boxes, scores)]
