"""`agegate-train eval`: how good is the run's best model, in years and in till decisions?

The test faces are cut exactly as in training (and at the till), the Keras model answers,
and :mod:`agegate.training.metrics` turns the answers into MAE overall, per age band and
for ages 15-35, and into the Challenge 25 figures: the share of under-18s flagged and the
share of people aged 30+ flagged, at the challenge age and along a range of thresholds.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any

import numpy as np

from . import metrics, plots
from .data import read_sources, records_of
from .faces import FaceSet, default_cache_dir, prepare_faces
from .model import load_inference_model, predict_ages
from .run import FitConfig, RunDir, read_history, serving_spec, write_json

log = logging.getLogger(__name__)


def split_faces(config: FitConfig, data: str | Path | list | None = None, split: str = "test", limit: int | None = None) -> FaceSet:
    """One split of every source, cut as in training (from the shared cache when it has them).

    ``data``: the folders to read (default: the run's own sources); ``limit``: at most this
    many faces per source.
    """
    folders = data or config.data
    records = [r for r in records_of(read_sources(folders, seed=config.seed), limit, config.seed) if r.split == split]
    if not records:
        raise ValueError(f"{folders}: no faces in the {split!r} split")
    return prepare_faces(records, serving_spec(config), config.detector_spec, default_cache_dir(), name=split)


def evaluate(
    run_dir: str | Path,
    data: str | Path | list | None = None,
    split: str = "test",
    limit: int | None = None,
    challenge_age: float = metrics.CHALLENGE_AGE,
    batch_size: int = 64,
    mirror_average: bool = False,
    ensemble_with: list[str | Path] | tuple = (),
) -> dict[str, Any]:
    """Measure ``RUN/model.keras`` on a split; write metrics.json, predictions.csv and plots/.

    ``mirror_average``, ``ensemble_with``: answer as a bundle exported with ``--mirror-average``
    and ``--ensemble-with`` does."""
    run = RunDir(run_dir)
    config = run.load_config()
    spec = serving_spec(config)
    faces = split_faces(config, data, split, limit)
    model = load_inference_model(run, mirror_average=mirror_average, ensemble_with=[RunDir(r) for r in ensemble_with])
    log.info("predicting %d %s faces with %s", len(faces), split, " + ".join(str(RunDir(r).model) for r in [run.path, *ensemble_with]))
    predicted = predict_ages(model, faces.images, spec, batch_size)

    summary = metrics.summarise_sources(faces.ages, predicted, faces.sources, challenge_age)
    history = read_history(run.history)
    result = {
        "run": str(run.path),
        "model": run.model.name,
        "backbone": config.backbone,
        "image_size": config.image_size,
        "epochs_trained": int(history[-1]["epoch"]) if history else None,
        "data": [str(Path(d).resolve()) for d in ([data] if isinstance(data, (str, Path)) else data or config.data)],
        "split": split,
        "limit": limit,
        "mirror_average": mirror_average,
        "ensemble_with": [str(r) for r in ensemble_with],
        "fallback_share": faces.fallback_share,
        "skipped": len(faces.problems),
        **summary,
        "threshold_curve": metrics.threshold_curve(faces.ages, predicted),
        "calibrated": metrics.calibrated_threshold(faces.ages, predicted),
    }
    if metrics.constant_predictions(predicted):
        log.warning("the model gives (nearly) the same age to every face (spread %.2f years): it has not learnt ages", float(np.std(predicted)))
    write_json(run.metrics, result)
    _write_predictions(run.predictions, faces, predicted)
    plots.learning_curves(history, run.plots / "learning_curves.png")
    plots.predicted_vs_true(faces.ages, predicted, run.plots / "predicted_vs_true.png")
    plots.error_by_band(summary["mae_by_band"], run.plots / "error_by_band.png")
    plots.threshold_curve(result["threshold_curve"], challenge_age, run.plots / "threshold_curve.png")
    log.info("%s, pooled: %s", split, metrics.headline(summary))
    for name, by_source in summary["sources"].items():
        log.info("%s, %s: %s", split, name, metrics.headline(by_source))
    log.info("wrote %s, %s and %s/", run.metrics, run.predictions, run.plots)
    return result


def _write_predictions(path: Path, faces: FaceSet, predicted: np.ndarray) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["source", "file_name", "real_age", "predicted_age", "fallback_box"])
        for source, name, true, pred, fb in zip(faces.sources, faces.files, faces.ages, predicted, faces.fallback):
            writer.writerow([source, name, f"{true:g}", f"{pred:.3f}", int(fb)])
