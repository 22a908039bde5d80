"""The YuNet face detector (OpenCV Zoo, MIT licence): a small CNN run by OpenCV's DNN module.

Better than Haar on turned, small and badly lit faces, at a few milliseconds a frame on
a till PC. The model (``models/face_detection_yunet_2026may.onnx``, MIT) ships with
agegate; another file can be configured. Scores are confidences in [0, 1]; faces under ``score_threshold``
or with a shorter side under ``min_face_px`` are dropped, and boxes are clipped to the frame.

Threading: not thread-safe (the network keeps its input size and buffers); one
instance per thread.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from . import DetectorError, Face, check_bgr

NMS_THRESHOLD = 0.3
TOP_K = 5000


class YuNetDetector:
    name = "yunet"

    def __init__(self, model_path: Path, *, min_face_px: int = 40, score_threshold: float = 0.7):
        if not model_path.is_file():
            raise DetectorError(f"YuNet model {model_path}: no such file")
        self._size = (320, 320)  # changed to the frame's size on the first frame
        try:
            self._net = cv2.FaceDetectorYN.create(
                str(model_path), "", self._size, score_threshold, NMS_THRESHOLD, TOP_K
            )
        except cv2.error as exc:
            reason = (exc.err or str(exc)).strip().splitlines()[-1]
            raise DetectorError(f"YuNet model {model_path} does not load: {reason}") from None
        self.min_face_px = min_face_px

    def detect(self, image_bgr: np.ndarray) -> list[Face]:
        size = check_bgr(image_bgr)
        if size != self._size:
            self._net.setInputSize(size)
            self._size = size
        _, rows = self._net.detect(image_bgr)
        if rows is None:
            return []
        w, h = size
        faces = []
        for row in rows:
            x0, y0 = max(0, int(row[0])), max(0, int(row[1]))
            x1, y1 = min(w, int(round(row[0] + row[2]))), min(h, int(round(row[1] + row[3])))
            if min(x1 - x0, y1 - y0) >= self.min_face_px:
                landmarks = tuple((float(row[i]), float(row[i + 1])) for i in range(4, 14, 2))
                faces.append(Face((x0, y0, x1 - x0, y1 - y0), float(row[14]), landmarks))
        return faces
