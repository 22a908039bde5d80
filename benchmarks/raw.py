"""Raw costs in isolation: face detection per 640x480 frame, and the age model per face.

Each is measured on its own in this process, on the frame the pipeline's video is made of
(the astronaut photo in a 640x480 scene, agegate.testing.videos), through the daemon's own code: the
detectors of ``agegate.edge.detectors``, and ``AgeModel.prepare`` (crop and resize) then
``AgeModel.predict_prepared`` (normalise and the LiteRT interpreter), one face at a time as
the till runs it. Thread counts: OpenCV's (``cv2.setNumThreads``) for the detectors, the
interpreter's ``num_threads`` for the models.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from agegate.edge.age_model import AgeModel
from agegate.edge.detectors import Face, create_detector

from .measure import time_calls

VARIANT_ORDER = ("float32", "float16", "dynamic", "int8")


def find_bundles(paths: list[Path]) -> list[Path]:
    """Bundle directories: each path is a bundle, or a folder of bundles as agegate-export writes them."""
    found: list[Path] = []
    for path in paths:
        if (path / "manifest.json").is_file():
            found.append(path)
            continue
        subs = [p for p in sorted(path.iterdir()) if not p.name.startswith(".") and (p / "manifest.json").is_file()] \
            if path.is_dir() else []  # not agegate-export's .staging folders
        if not subs:
            raise SystemExit(f"benchmark: {path} is neither a model bundle nor a folder of bundles")
        order = {v: i for i, v in enumerate(VARIANT_ORDER)}
        found.extend(sorted(subs, key=lambda p: (order.get(p.name, len(order)), p.name)))
    unique: list[Path] = []
    for p in found:
        if p.resolve() not in [u.resolve() for u in unique]:
            unique.append(p)
    return unique


def bench_detectors(frame: np.ndarray, kinds: dict[str, Path | None], threads: list[int], *, seconds: float,
                    min_n: int, min_face_px: int = 40, paced_fps: float = 0.0) -> list[dict]:
    """ms per frame for each detector and OpenCV thread count, back to back; with ``paced_fps``
    also at that rate on one thread, idle in between, as the daemon runs it."""
    rows = []
    before = cv2.getNumThreads()
    runs = [(n, 0.0) for n in threads] + ([(1, paced_fps)] if paced_fps else [])
    try:
        for kind, model_path in kinds.items():
            for n, fps in runs:
                cv2.setNumThreads(n)
                detector = create_detector(kind, model_path, min_face_px=min_face_px)
                faces = detector.detect(frame)
                timing = time_calls(lambda: detector.detect(frame), seconds=seconds, min_n=min_n,
                                    every_s=1.0 / fps if fps else 0.0)
                rows.append({"detector": kind, "threads": n, "paced_fps": fps, "faces": len(faces), "ms": timing})
    finally:
        cv2.setNumThreads(before)
    return rows


def bench_models(frame: np.ndarray, face: Face, bundles: list[Path], threads: list[int], *,
                 seconds: float, min_n: int) -> list[dict]:
    """Per face, for each bundle and interpreter thread count: crop (by the box, or aligned to the
    face's landmarks where the bundle says so) and preprocess, and inference."""
    box, landmarks = face.box, face.landmarks
    rows = []
    for path in bundles:
        for n in threads:
            model = AgeModel.from_dir(path, num_threads=n)
            m = model.manifest
            crop = model.prepare(frame, box, landmarks)
            crop_t = time_calls(lambda: model.prepare(frame, box, landmarks), seconds=min(seconds, 0.5), min_n=min_n)
            infer_t = time_calls(lambda: model.predict_prepared([crop]), seconds=seconds, min_n=min_n)
            rows.append({
                "bundle": str(path), "name": m.name, "version": m.version, "variant": m.variant,
                "input": f"{m.input.width}x{m.input.height}", "crop": m.crop.align, "file_bytes": len(model.bundle.model_bytes),
                "runtime": model.runtime, "threads": n, "age": round(float(model.predict_prepared([crop])[0]), 1),
                "crop_ms": crop_t, "infer_ms": infer_t,
            })
            del model
    return rows


def isolated_cost(frame: np.ndarray, kind: str, model_path: Path | None, bundle: Path, *, cv_threads: int,
                  model_threads: int, seconds: float, min_n: int) -> dict:
    """CPU ms of one detection and of one face's crop and inference, at the daemon's thread counts:
    the denominator of the overhead ratio, taken next to the pipeline's window (``run_pipeline(bracket=)``)."""
    before = cv2.getNumThreads()
    cv2.setNumThreads(cv_threads)
    try:
        detector = create_detector(kind, model_path)
        detect = time_calls(lambda: detector.detect(frame), seconds=seconds, min_n=min_n)
    finally:
        cv2.setNumThreads(before)
    faces = detector.detect(frame)
    if not faces:
        raise SystemExit(f"benchmark: the {kind} detector finds no face in the benchmark frame")
    model = AgeModel.from_dir(bundle, num_threads=model_threads)
    crop = model.prepare(frame, faces[0].box, faces[0].landmarks)
    return {"detect_cpu_ms": detect["cpu_ms"],
            "crop_cpu_ms": time_calls(lambda: model.prepare(frame, faces[0].box, faces[0].landmarks), seconds=min(seconds, 0.5),
                                      min_n=min_n)["cpu_ms"],
            "infer_cpu_ms": time_calls(lambda: model.predict_prepared([crop]), seconds=seconds, min_n=min_n)["cpu_ms"]}
