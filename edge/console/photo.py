"""Try a photo: faces and ages in an uploaded image, processed in memory and never written.

The upload is read into memory (a multipart form part, or a raw ``image/*`` body) up to
MAX_PHOTO_BYTES (else 413). Only JPEG and PNG are taken, and their size is read from the
header before decoding, so a small file cannot decode to gigabytes (a "decompression bomb"):
anything else, or over MAX_PIXELS, is refused with 422 and the reason. Large photos are
decoded reduced (JPEG's own DCT scaling) and shrunk to at most MAX_SIDE pixels for detection;
boxes are answered in the photo's own pixels (after its EXIF orientation, as browsers show it).

Starlette keeps an uploaded file part in a SpooledTemporaryFile that rolls over to a temporary
*file* past 1 MB; :class:`InMemoryMultiPartParser` raises that threshold above the body limit,
so the bytes never reach a disk.

Threading: uploads run in the HTTP worker pool, one at a time (``_lock``), with a detector of
their own (detectors are not thread-safe and the vision thread owns the daemon's), created on
the first upload; one that waits over BUSY_WAIT_S for the one before it gets 429. The age model is shared with the vision loop: each face is estimated under
the daemon's ``model_lock``, taken per face, so the vision loop waits at most one inference.
"""

from __future__ import annotations

import struct
import threading
import time
from typing import Callable

import cv2
import numpy as np
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request

from ..age_model import AgeModel, InferenceError
from ..detectors import Detector, detect_in_photo

MAX_PHOTO_BYTES = 10 * 1024 * 1024
BODY_LIMIT = MAX_PHOTO_BYTES + 64 * 1024  # the multipart framing around the file
MAX_PIXELS = 50_000_000
MAX_SIDE = 1280
MAX_FACES = 20
BUSY_WAIT_S = 10.0  # an upload waits this long for the one before it, then gets 429
REDUCED = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4,
           8: cv2.IMREAD_REDUCED_COLOR_8}


class PhotoError(Exception):
    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status, self.reason = status, reason


class InMemoryMultiPartParser(MultiPartParser):
    spool_max_size = BODY_LIMIT  # a SpooledTemporaryFile under this size stays a BytesIO


async def read_upload(request: Request, field: str = "image") -> bytes:
    """The uploaded image's bytes, from a multipart form field or a raw image body."""
    ctype = request.headers.get("content-type", "")
    if ctype.startswith("multipart/form-data"):
        try:
            form = await InMemoryMultiPartParser(request.headers, request.stream(), max_files=1, max_fields=4).parse()
        except MultiPartException as exc:
            raise PhotoError(422, f"the upload is not a usable form: {exc.message}") from None
        upload = form.get(field)
        if not isinstance(upload, UploadFile):
            raise PhotoError(422, f"no file in the form field {field!r}")
        try:
            data = await upload.read(MAX_PHOTO_BYTES + 1)
        finally:
            await form.close()
    elif ctype.startswith(("image/", "application/octet-stream")):
        data = await request.body()
    else:
        raise PhotoError(422, "send the photo as multipart/form-data (field 'image') or as an image/* body")
    if len(data) > MAX_PHOTO_BYTES:
        raise PhotoError(413, f"the photo is over {MAX_PHOTO_BYTES // (1024 * 1024)} MB")
    if not data:
        raise PhotoError(422, "the upload is empty")
    return data


def image_size(data: bytes) -> tuple[str, int, int]:
    """(kind, width, height) from a JPEG or PNG header; PhotoError 422 for anything else."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24 and data[12:16] == b"IHDR":
        w, h = struct.unpack(">II", data[16:24])
        return "png", w, h
    if data[:2] == b"\xff\xd8":
        i = 2
        while i + 9 < len(data):
            if data[i] != 0xFF:
                break
            marker = data[i + 1]
            if marker == 0xFF:  # fill byte
                i += 1
                continue
            length = struct.unpack(">H", data[i + 2 : i + 4])[0]
            if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # a start of frame
                h, w = struct.unpack(">HH", data[i + 5 : i + 9])
                return "jpeg", w, h
            i += 2 + length
        raise PhotoError(422, "the JPEG has no readable frame header")
    raise PhotoError(422, "not a JPEG or PNG image")


class PhotoEstimator:
    def __init__(self, new_detector: Callable[[], Detector], model: Callable[[], AgeModel], model_lock: threading.Lock):
        self.new_detector, self.model, self.model_lock = new_detector, model, model_lock
        self._detector: Detector | None = None
        self._lock = threading.Lock()

    def estimate(self, data: bytes) -> dict:
        """Faces (largest first, at most MAX_FACES) with their ages, in the photo's pixels."""
        t0 = time.perf_counter()
        kind, w, h = image_size(data)
        if w == 0 or h == 0 or w * h > MAX_PIXELS:
            raise PhotoError(422, f"the {kind} is {w}x{h} pixels; at most {MAX_PIXELS // 1_000_000} megapixels are taken")
        if not self._lock.acquire(timeout=BUSY_WAIT_S):  # one decoded photo in memory at a time
            raise PhotoError(429, "another photo is being processed; try again in a moment")
        try:
            image = _decode(data, kind, max(w, h))
            if self._detector is None:
                self._detector = self.new_detector()
            model = self.model()
            try:
                faces = detect_in_photo(self._detector, image)[:MAX_FACES]
                ages = []
                for face in faces:
                    with self.model_lock:
                        ages.append(float(model.estimate(image, [face.box], [face.landmarks])[0]))
            except (InferenceError, cv2.error, ValueError) as exc:  # what the vision loop reports as cannot_assess
                raise PhotoError(500, f"face detection or the age model failed: {exc}") from None
        finally:
            self._lock.release()
        scale = max(w, h) / max(image.shape[:2])  # processed pixels → photo pixels (orientation-proof)
        return {
            "width": round(image.shape[1] * scale),
            "height": round(image.shape[0] * scale),
            "faces": [{"box": [round(v * scale) for v in f.box], "age": round(a, 1)} for f, a in zip(faces, ages)],
            "model": model.identity,
            "ms": round(1000 * (time.perf_counter() - t0), 1),
        }


def _decode(data: bytes, kind: str, long_side: int):
    """BGR pixels, EXIF orientation applied, decoded reduced and shrunk to at most MAX_SIDE."""
    factor = next((f for f in (8, 4, 2) if long_side / f >= MAX_SIDE), 1)
    image = cv2.imdecode(np.frombuffer(data, np.uint8), REDUCED[factor])
    if image is None:
        raise PhotoError(422, f"the {kind} could not be decoded")
    dh, dw = image.shape[:2]
    if max(dw, dh) > MAX_SIDE:
        shrink = MAX_SIDE / max(dw, dh)
        image = cv2.resize(image, (round(dw * shrink), round(dh * shrink)), interpolation=cv2.INTER_AREA)
    return image
