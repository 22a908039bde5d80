"""Measure a model the way the till runs it.

A bundle is measured through :class:`agegate.edge.age_model.AgeModel`: the same LiteRT
interpreter, the same ``normalise`` and ``to_age``, fed the test crops cut by the same
``prepare_face``; ``predict_prepared`` is exactly the daemon's path after cropping. The
Keras model is measured on the same crops through the same ``normalise`` and ``to_age``,
so any difference is the conversion's.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agegate.edge.age_model import AgeModel
from agegate.edge.bundle import ServingSpec
from agegate.training import metrics


@dataclass
class Measurement:
    name: str  # "keras" or the variant
    ages: np.ndarray  # predicted, one per face
    summary: dict[str, Any]  # metrics.summarise
    ms_per_face: float
    file_bytes: int | None = None
    runtime: str = ""

    @property
    def mae(self) -> float:
        return float(self.summary["mae"])


def _summary(true_ages: np.ndarray, ages: np.ndarray, challenge_age: float, sources: np.ndarray | None) -> dict[str, Any]:
    if sources is None:
        return metrics.summarise(true_ages, ages, challenge_age)
    return metrics.summarise_sources(true_ages, ages, sources, challenge_age)


def measure_keras(model, faces: np.ndarray, true_ages: np.ndarray, spec: ServingSpec, challenge_age: float, file_bytes: int | None = None,
                  sources: np.ndarray | None = None) -> Measurement:
    from agegate.training.model import predict_ages

    start = time.perf_counter()
    ages = predict_ages(model, faces, spec)
    ms = 1000 * (time.perf_counter() - start) / max(1, len(faces))
    return Measurement("keras", ages, _summary(true_ages, ages, challenge_age, sources), ms, file_bytes, runtime="keras (batched)")


def measure_bundle(path: Path, faces: np.ndarray, true_ages: np.ndarray, challenge_age: float, threads: int = 1, warmup: int = 5,
                   sources: np.ndarray | None = None) -> Measurement:
    """Load the bundle as the till does and estimate every face, one at a time."""
    model = AgeModel.from_dir(path, num_threads=threads)
    model.predict_prepared(faces[:warmup])
    start = time.perf_counter()
    ages = model.predict_prepared(faces)
    ms = 1000 * (time.perf_counter() - start) / max(1, len(faces))
    return Measurement(
        model.manifest.variant, ages, _summary(true_ages, ages, challenge_age, sources), ms, len(model.bundle.model_bytes), runtime=model.runtime
    )
