"""Face detectors, one plugin module per backend, and the customer zone.

``create_detector("yunet")`` is the default everywhere (the till, training crops,
``estimate``, the console): YuNet, from the OpenCV Zoo (MIT licence), whose 230 KB ONNX
file ships inside this package (``models/``, with its licence), is much better than Haar on
turned, small or badly lit faces (the Haar cascade missed 26 % of the faces of one photo
source that YuNet finds). ``create_detector("haar")`` stays selectable and needs nothing
but OpenCV. Both answer :class:`Face` boxes in pixels of the frame they were given.

A :class:`Zone` is the part of the frame where the customer stands (normalised, so it
survives a change of resolution); :func:`customer_faces` keeps the faces whose centre is
in it, largest first, so that the cashier or someone walking past is left out.

Threading: a detector keeps its model and scratch buffers between calls, so it is not
thread-safe; the daemon creates one and calls it from its vision thread only. Zone,
Face and customer_faces are pure and safe anywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Protocol

import cv2
import numpy as np

KINDS = ("yunet", "haar")
DEFAULT_KIND = "yunet"
YUNET_MODEL = Path(__file__).parent / "models" / "face_detection_yunet_2026may.onnx"  # MIT, see models/LICENSE-YuNet.txt
# The order of Face.landmarks, as YuNet reports them: the person's right eye (on the left of the
# image), left eye, nose tip, right and left mouth corners.
LANDMARKS = ("right_eye", "left_eye", "nose_tip", "right_mouth_corner", "left_mouth_corner")
Landmarks = tuple[tuple[float, float], ...]  # (x, y) in pixels of the frame, in LANDMARKS order


class DetectorError(Exception):
    """A detector that cannot be created; the one-line message says why."""


@dataclass(frozen=True)
class Face:
    box: tuple[int, int, int, int]  # x, y, w, h in pixels, inside the frame
    score: float  # YuNet: confidence in [0, 1]; Haar: the cascade's level weight (unbounded, higher is surer)
    # YuNet's five points (x, y) in pixels of the frame, in LANDMARKS order; None from Haar. They
    # may lie outside the frame for a face it cuts off. A bundle whose crop is aligned to them
    # (CropSpec.align "landmarks") uses them; without them it cuts by the box.
    landmarks: Landmarks | None = None

    @property
    def area(self) -> int:
        return self.box[2] * self.box[3]


class Detector(Protocol):
    name: str

    def detect(self, image_bgr: np.ndarray) -> list[Face]:
        """The faces in a BGR uint8 frame (h, w, 3)."""
        ...


def create_detector(
    kind: str,
    model_path: str | Path | None = None,
    *,
    min_face_px: int = 40,
    score_threshold: float = 0.7,
) -> Detector:
    """A ready detector of ``kind`` ("yunet" or "haar"); raises DetectorError saying why not.

    ``model_path`` is YuNet's ONNX file; None means the one shipped in this package. Faces whose shorter side is under ``min_face_px`` are not reported. ``score_threshold``
    applies to YuNet; the Haar cascade has no comparable score and ignores it.
    """
    if min_face_px < 1:
        raise DetectorError(f"min_face_px must be at least 1, got {min_face_px}")
    if kind == "haar":
        from .haar import HaarDetector

        return HaarDetector(min_face_px=min_face_px)
    if kind == "yunet":
        from .yunet import YuNetDetector

        return YuNetDetector(Path(model_path) if model_path is not None else YUNET_MODEL, min_face_px=min_face_px, score_threshold=score_threshold)
    raise DetectorError(f"unknown detector {kind!r}; choose one of: {', '.join(KINDS)}")


def check_bgr(image: np.ndarray) -> tuple[int, int]:
    """The (width, height) of a BGR uint8 frame; ValueError for anything else."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected a BGR uint8 image of shape (h, w, 3), got {image.dtype} {image.shape}")
    return image.shape[1], image.shape[0]


MIN_ZONE_SIZE = 0.05  # of the frame's width and height


@dataclass(frozen=True)
class Zone:
    """A rectangle of the frame in normalised coordinates, (0, 0) top left to (1, 1) bottom right."""

    x0: float = 0.0
    y0: float = 0.0
    x1: float = 1.0
    y1: float = 1.0

    def __post_init__(self) -> None:
        if not (0.0 <= self.x0 < self.x1 <= 1.0 and 0.0 <= self.y0 < self.y1 <= 1.0):
            raise ValueError(
                f"zone {self.x0:g},{self.y0:g},{self.x1:g},{self.y1:g} "
                "must have 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1"
            )
        # x1=1e-320 passes the test above, yet no face can ever be inside it: the till would
        # answer no_face for every sale.
        if self.x1 - self.x0 < MIN_ZONE_SIZE or self.y1 - self.y0 < MIN_ZONE_SIZE:
            raise ValueError(
                f"zone {self.x0:g},{self.y0:g},{self.x1:g},{self.y1:g} "
                f"must be at least {MIN_ZONE_SIZE:g} of the frame wide and high, or no face fits in it"
            )

    @classmethod
    def parse(cls, text: str) -> "Zone":
        """A zone from ``"x0,y0,x1,y1"``, e.g. ``"0.2,0.1,0.8,1.0"``; ValueError saying what is wrong."""
        parts = [p.strip() for p in text.split(",")]
        if len(parts) != 4:
            raise ValueError(f"zone {text!r} must be four numbers x0,y0,x1,y1")
        try:
            x0, y0, x1, y1 = (float(p) for p in parts)
        except ValueError:
            raise ValueError(f"zone {text!r} must be four numbers x0,y0,x1,y1") from None
        return cls(x0, y0, x1, y1)

    def contains(self, face: Face, frame_w: int, frame_h: int) -> bool:
        """Whether the centre of ``face`` lies in the zone of a frame_w x frame_h frame."""
        x, y, w, h = face.box
        cx, cy = (x + w / 2.0) / frame_w, (y + h / 2.0) / frame_h
        return self.x0 <= cx <= self.x1 and self.y0 <= cy <= self.y1


def customer_faces(faces: Iterable[Face], zone: Zone, frame_w: int, frame_h: int) -> list[Face]:
    """The faces in ``zone``, largest area first: the customer is the first."""
    inside = [f for f in faces if zone.contains(f, frame_w, frame_h)]
    return sorted(inside, key=lambda f: f.area, reverse=True)


PHOTO_PAD = 0.25  # of the photo's longer side
EDGE_TOUCH = 2  # pixels: a box this close to the photo's edge was cut off by it


def detect_in_photo(detector: Detector, image_bgr: np.ndarray, pad: float = PHOTO_PAD) -> list[Face]:
    """Faces in a still photo, largest first, in the photo's coordinates.

    A photo is first searched as it is, as the till searches a camera frame, so a frame
    saved from the till gives the same faces here as in the daemon. Portraits and data-set
    crops are often cut tight around the face, with none of the surroundings a camera frame
    has: when nothing is found, or the largest face touches the photo's edge (its box was
    cut off by the frame), the photo is searched again padded by replicating its border,
    and that answer is used if it finds a face. Training, ``agegate-edge estimate`` and the
    console's "try a photo" all find faces this way, so a photo gives the same age everywhere.
    """
    h, w = image_bgr.shape[:2]
    faces = sorted(detector.detect(image_bgr), key=lambda f: f.area, reverse=True)
    p = int(round(pad * max(h, w)))
    if not p or (faces and not _touches_edge(faces[0], w, h)):
        return faces
    framed = cv2.copyMakeBorder(image_bgr, p, p, p, p, cv2.BORDER_REPLICATE)
    padded = [Face((x - p, y - p, fw, fh), f.score, _moved(f.landmarks, -p)) for f in detector.detect(framed) for x, y, fw, fh in [f.box]]
    return sorted(padded, key=lambda f: f.area, reverse=True) or faces


def _moved(landmarks: Landmarks | None, d: float) -> Landmarks | None:
    return None if landmarks is None else tuple((x + d, y + d) for x, y in landmarks)


def _touches_edge(face: Face, width: int, height: int) -> bool:
    x, y, fw, fh = face.box
    return x <= EDGE_TOUCH or y <= EDGE_TOUCH or x + fw >= width - EDGE_TOUCH or y + fh >= height - EDGE_TOUCH
