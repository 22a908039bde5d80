"""From labelled photos to the face crops the model learns from, cut exactly as the till cuts them.

At the till a face detector finds a box in the camera frame and
:func:`agegate.edge.bundle.prepare_face` turns box + frame into the model's input. Training
does the same to every photo: the same detector (:mod:`agegate.edge.detectors`) finds the
face, the largest face wins, and the same ``prepare_face`` cuts the crop. So a model learns
from exactly the kind of crop it will be shown.

Two details make this work on data sets of tightly cropped faces such as UTKFace, where
the face fills the photo:

* The photo is padded by replicating its border (by ``DETECT_PAD`` of its size) before
  detection, giving the detector the surroundings a camera frame would have; without this
  the Haar cascade misses about half of the UTKFace faces, with it about 3 %.
* Where no face is found, the box is the typical box found in the other photos of the same
  split (median centre and size relative to the photo): for aligned crops that is where the
  face is. Such faces are counted and reported as *fallbacks*.

Decoding and detection run once per photo and detector, in parallel threads (OpenCV
releases the GIL). Both are cached in one cache folder shared by every command and run
(``$AGEGATE_CACHE_DIR``, default ``~/.cache/agegate``): the boxes found in each data source
(``scans/``, one JSON per source and detector, grown as more of its photos are asked for),
and the crops of each set of records (``crops/``, one ``.npz`` keyed by everything that
changes them). So ``eda``, ``fit``, ``eval`` and ``convert`` detect each face once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import cv2
import numpy as np

from agegate.edge.bundle import ServingSpec, prepare_face
from agegate.files import replacing, write_atomically
from agegate.edge.detectors import DEFAULT_KIND, PHOTO_PAD, Detector, Landmarks, create_detector, detect_in_photo

from .data import Problem, Record

log = logging.getLogger(__name__)

CACHE_VERSION = 3  # 3: scans keep the detector's landmarks
DETECT_PAD = PHOTO_PAD
DEFAULT_RELATIVE_BOX = (0.5, 0.45, 0.9)  # centre x, centre y, side: used only when no face is found at all


def default_cache_dir() -> Path:
    """Where detections and crops are kept between commands: ``$AGEGATE_CACHE_DIR`` or ``~/.cache/agegate``."""
    return Path(os.environ.get("AGEGATE_CACHE_DIR") or Path.home() / ".cache" / "agegate")


@dataclass(frozen=True)
class DetectorSpec:
    """Which detector finds the training faces: the till's own, by name."""

    kind: str = DEFAULT_KIND
    model_path: str | None = None

    def create(self) -> Detector:
        return create_detector(self.kind, self.model_path)

    def key(self) -> str:
        return self.kind if self.model_path is None else f"{self.kind}:{Path(self.model_path).name}"


@dataclass
class FaceScan:
    """What detection found in one photo."""

    record: Record
    height: int = 0
    width: int = 0
    box: tuple[float, float, float, float] | None = None  # (x, y, w, h) in the photo; None: no face found
    faces_found: int = 0
    error: str | None = None
    landmarks: Landmarks | None = None  # the detector's five points, where it gives them


@dataclass
class FaceSet:
    """The prepared crops of one split: uint8 (n, h, w, 3) in the model's colour order, with ages."""

    images: np.ndarray
    ages: np.ndarray
    files: list[str]
    fallback: np.ndarray  # True where no face was detected and the typical box was used
    problems: list[Problem] = field(default_factory=list)
    sources: np.ndarray | None = None  # the data source of each face (str); see by_source

    def __post_init__(self) -> None:
        if self.sources is None:
            self.sources = np.full(len(self.files), "", dtype=object)

    def by_source(self) -> dict[str, np.ndarray]:
        """{source: boolean mask of its faces}, in the order the sources first appear."""
        names = list(dict.fromkeys(str(s) for s in self.sources))
        return {n: np.asarray(self.sources == n) for n in names}

    def __len__(self) -> int:
        return len(self.files)

    @property
    def fallback_share(self) -> float:
        return float(self.fallback.mean()) if len(self.files) else 0.0


# --- Detection ------------------------------------------------------------------------


def decode(path: Path) -> np.ndarray | None:
    """A BGR uint8 image, or None when the file is not a readable image."""
    try:
        data = np.fromfile(path, dtype=np.uint8)
        image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    except (OSError, cv2.error):
        return None
    return image if image is not None and image.size else None


Box = tuple[float, float, float, float]


def find_face(detector: Detector, image_bgr: np.ndarray) -> tuple[Box | None, Landmarks | None, int]:
    """The largest face's box and landmarks (None from a detector without them) in a photo, found as
    the till finds faces in photos, and how many faces were found."""
    faces = detect_in_photo(detector, image_bgr, DETECT_PAD)
    if not faces:
        return None, None, 0
    box = tuple(float(v) for v in faces[0].box)
    return box, faces[0].landmarks, len(faces)  # type: ignore[return-value]


def _parallel(fn: Callable[[Record], object], records: Sequence[Record], what: str, workers: int | None) -> list:
    """``fn`` over records in threads, in order: a progress bar with an ETA on a terminal, and a log
    line with the ETA every 10 % (at least 500 photos) for logs and pipes."""
    from tqdm import tqdm

    workers = workers or os.cpu_count() or 1
    results: list = []
    step = max(500, len(records) // 10)
    start = time.monotonic()
    with ThreadPoolExecutor(max_workers=workers) as pool, \
            tqdm(total=len(records), desc=what, unit="photo", disable=None, leave=False) as bar:
        for i, result in enumerate(pool.map(fn, records), start=1):
            results.append(result)
            bar.update()
            if i % step == 0 or i == len(records):
                elapsed = time.monotonic() - start
                log.info("%s %d/%d (%.0f s, about %.0f s to go)", what, i, len(records), elapsed,
                         elapsed / i * (len(records) - i))
    return results


def scan_faces(records: Sequence[Record], detector: DetectorSpec, workers: int | None = None, what: str = "detecting faces") -> list[FaceScan]:
    """Decode every photo and find its face, in parallel (one detector per thread)."""
    local = threading.local()

    def scan(record: Record) -> FaceScan:
        if not hasattr(local, "detector"):
            local.detector = detector.create()
        image = decode(record.path)
        if image is None:
            return FaceScan(record, error="unreadable image")
        box, landmarks, found = find_face(local.detector, image)
        return FaceScan(record, image.shape[0], image.shape[1], box, found, landmarks=landmarks)

    return _parallel(scan, records, what, workers)


def scan_cached(records: Sequence[Record], detector: DetectorSpec, cache_dir: Path | None, workers: int | None = None, what: str = "detecting faces") -> list[FaceScan]:
    """:func:`scan_faces`, remembering per data source what was found, so each photo is searched once."""
    if cache_dir is None:
        return scan_faces(records, detector, workers, what)
    by_source: dict[Path, list[Record]] = {}
    for r in records:
        by_source.setdefault(_source_folder(r), []).append(r)
    found: dict[tuple[Path, str], FaceScan] = {}
    for folder, recs in by_source.items():
        path = _scan_cache_path(folder, detector, Path(cache_dir))
        known = _load_scans(path)
        todo = [r for r in recs if r.file not in known]
        if todo:
            log.info("%s: %d of %d photos not yet searched with %s", folder.name, len(todo), len(recs), detector.key())
            for scan in scan_faces(todo, detector, workers, what=f"{what} ({folder.name})"):
                known[scan.record.file] = [scan.height, scan.width, scan.box, scan.faces_found, scan.error, scan.landmarks]
            _save_scans(path, known)
        for r in recs:
            h, w, box, n, error, landmarks = known[r.file]
            found[(folder, r.file)] = FaceScan(r, h, w, tuple(box) if box is not None else None, n, error,
                                               tuple(map(tuple, landmarks)) if landmarks is not None else None)
    return [found[(_source_folder(r), r.file)] for r in records]


def _source_folder(record: Record) -> Path:
    """The data folder a record's photo belongs to (photos sit in it or in its images/)."""
    parent = record.path.resolve().parent
    return parent.parent if parent.name == "images" else parent


def _scan_cache_path(folder: Path, detector: DetectorSpec, cache_dir: Path) -> Path:
    identity = json.dumps({"version": CACHE_VERSION, "folder": str(folder), "detector": detector.key(), "pad": DETECT_PAD}, sort_keys=True)
    key = hashlib.sha256(identity.encode()).hexdigest()[:12]
    return cache_dir / "scans" / f"{folder.name}-{detector.kind}-{key}.json"


def _load_scans(path: Path) -> dict[str, list]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _save_scans(path: Path, scans: dict[str, list]) -> None:
    write_atomically(path, json.dumps(scans))


def typical_box(scans: Sequence[FaceScan]) -> tuple[float, float, float]:
    """Median (centre x, centre y, side) of the detected boxes, relative to the photo size."""
    rel = [
        ((s.box[0] + s.box[2] / 2) / s.width, (s.box[1] + s.box[3] / 2) / s.height, max(s.box[2], s.box[3]) / min(s.width, s.height))
        for s in scans
        if s.box is not None
    ]
    if not rel:
        return DEFAULT_RELATIVE_BOX
    cx, cy, side = np.median(np.asarray(rel), axis=0)
    return float(cx), float(cy), float(side)


def fallback_box(height: int, width: int, relative: tuple[float, float, float]) -> tuple[float, float, float, float]:
    """The typical box placed in a photo of the given size."""
    cx, cy, side = relative
    s = side * min(height, width)
    return cx * width - s / 2, cy * height - s / 2, s, s


# --- Crops and their cache ------------------------------------------------------------


def prepare_faces(
    records: Sequence[Record],
    spec: ServingSpec,
    detector: DetectorSpec = DetectorSpec(),
    cache_dir: Path | None = None,
    name: str = "faces",
    workers: int | None = None,
) -> FaceSet:
    """The crops of ``records`` as the till would cut them, from the cache when it has them.

    ``spec`` is the run's serving manifest (input size, colour order, crop margin); see
    :func:`agegate.training.run.serving_spec`.
    """
    cache = _cache_path(records, spec, detector, cache_dir, name)
    if cache is not None and cache.exists():
        faces = _load(cache)
        log.info("%s: %d crops from cache %s (%.1f %% fallback boxes)", name, len(faces), cache.name, 100 * faces.fallback_share)
        return faces

    scans = scan_cached(records, detector, cache_dir, workers, what=f"detecting faces ({name})")
    # The typical box stands in where no face was found; each source frames its photos its own way.
    typical = {src: typical_box([s for s in scans if s.record.source == src]) for src in dict.fromkeys(r.source for r in records)}
    faces = crop_faces(scans, spec, typical, workers, name)
    if cache is not None:
        _save(cache, faces)
    return faces


def crop_faces(scans: Sequence[FaceScan], spec: ServingSpec, typical: dict[str, tuple[float, float, float]], workers: int | None = None, name: str = "faces") -> FaceSet:
    """Cut each scanned photo's face with ``prepare_face``; photos without a face get their source's
    typical box (``typical``: {source: relative box}, see :func:`typical_box`)."""

    def crop(scan: FaceScan) -> np.ndarray | str:
        if scan.error:
            return scan.error
        image = decode(scan.record.path)
        if image is None:
            return "unreadable image"
        box = scan.box if scan.box is not None else fallback_box(scan.height, scan.width, typical.get(scan.record.source, DEFAULT_RELATIVE_BOX))
        try:
            return prepare_face(image, box, spec, scan.landmarks)
        except ValueError as exc:
            return f"cannot crop: {exc}"

    crops = _parallel(crop, scans, f"cropping faces ({name})", workers)
    problems = [Problem(s.record.file, c) for s, c in zip(scans, crops) if isinstance(c, str)]
    good = [(s, c) for s, c in zip(scans, crops) if not isinstance(c, str)]
    h, w = spec.input.height, spec.input.width
    faces = FaceSet(
        images=np.stack([c for _, c in good]) if good else np.zeros((0, h, w, 3), np.uint8),
        ages=np.array([s.record.age for s, _ in good], dtype=np.float32),
        files=[s.record.file for s, _ in good],
        fallback=np.array([s.box is None for s, _ in good], dtype=bool),
        problems=problems,
        sources=np.array([s.record.source for s, _ in good], dtype=object),
    )
    for p in problems:
        log.warning("%s: skipped %s", name, p)
    log.info("%s: %d crops, %d skipped, %.1f %% fallback boxes (no face detected: the source's typical box was used)",
             name, len(faces), len(problems), 100 * faces.fallback_share)
    return faces


def _cache_path(records: Sequence[Record], spec: ServingSpec, detector: DetectorSpec, cache_dir: Path | None, name: str) -> Path | None:
    if cache_dir is None:
        return None
    identity = {
        "version": CACHE_VERSION,
        "records": [(str(r.path.resolve()), r.age) for r in records],
        "input": spec.input.model_dump(),
        "crop": spec.crop.model_dump(),
        "detector": detector.key(),
        "pad": DETECT_PAD,
    }
    key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12]
    framing = "aligned" if spec.crop.align == "landmarks" else f"m{spec.crop.margin:g}-s{spec.crop.shift_y:g}"
    return Path(cache_dir) / "crops" / f"{name}-{spec.input.height}px-{framing}-{detector.kind}-{key}.npz"


def _save(path: Path, faces: FaceSet) -> None:
    with replacing(path, mode=0o644) as tmp, open(tmp, "wb") as f:
        np.savez(
            f,
            images=faces.images,
            ages=faces.ages,
            files=np.array(faces.files, dtype=str),
            fallback=faces.fallback,
            sources=np.array([str(x) for x in faces.sources], dtype=str),
            problems=np.array(json.dumps([[p.file, p.problem] for p in faces.problems])),
        )


def _load(path: Path) -> FaceSet:
    with np.load(path) as z:
        return FaceSet(
            images=z["images"],
            ages=z["ages"],
            files=[str(f) for f in z["files"]],
            fallback=z["fallback"],
            sources=np.array([str(x) for x in z["sources"]], dtype=object),
            problems=[Problem(f, p) for f, p in json.loads(str(z["problems"]))],
        )
