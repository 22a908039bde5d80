"""Age estimation with a model bundle on the LiteRT interpreter.

This is the one place that turns a bundle into something that answers. The daemon,
``agegate-edge estimate`` and ``agegate-export`` (which measures every variant with the
same interpreter and preprocessing as the till) all go through :class:`AgeModel`.

Threading: an AgeModel is not thread-safe (a TFLite interpreter holds its tensors). In the
daemon the vision thread and the console's photo try share one, each call under the
daemon's ``model_lock``.

:func:`self_test` runs a bundle's golden faces: the till runs it before a model serves, and
the exporter and ``agegate-export verify`` run the same check.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Sequence

import numpy as np

from .bundle import Bundle, BundleError, load_bundle, normalise, prepare_face, to_age

log = logging.getLogger(__name__)


def interpreter_class() -> tuple[type, str]:
    """The best available TFLite interpreter and the name of the package it came from."""
    try:
        from ai_edge_litert.interpreter import Interpreter

        return Interpreter, "ai_edge_litert"
    except ImportError:
        pass
    try:
        from tflite_runtime.interpreter import Interpreter  # type: ignore[no-redef]

        return Interpreter, "tflite_runtime"
    except ImportError:
        pass
    try:
        import tensorflow as tf

        return tf.lite.Interpreter, "tensorflow.lite"
    except ImportError:
        raise ImportError(
            "no TFLite interpreter found: install ai-edge-litert (pip install 'agegate[edge]')"
        ) from None


class InferenceError(RuntimeError):
    """The model failed while answering; the interpreter has been rebuilt for the next call."""


class AgeModel:
    """A loaded bundle ready to estimate ages of face crops."""

    def __init__(self, bundle: Bundle, num_threads: int | None = None):
        self.bundle = bundle
        self.manifest = bundle.manifest
        self._interpreter_cls, self.runtime = interpreter_class()
        self._threads = num_threads or 1
        try:
            self._interp = self._new_interpreter()
        except Exception as exc:  # the runtimes raise ValueError/RuntimeError with a reason
            raise BundleError(f"{bundle.path}: the model does not load: {exc}") from None
        inputs = self._interp.get_input_details()
        outputs = self._interp.get_output_details()
        if len(inputs) != 1 or len(outputs) < 1:
            raise BundleError(f"{bundle.path}: expected one input tensor, found {len(inputs)}")
        self._in, self._out = inputs[0], outputs[0]
        spec = self.manifest.input
        want = (spec.height, spec.width, spec.channels)
        if tuple(self._in["shape"][1:]) != want:
            raise BundleError(
                f"{bundle.path}: model input shape {tuple(self._in['shape'])} does not match "
                f"the manifest's (1, {want[0]}, {want[1]}, {want[2]})"
            )
        self._batch = int(self._in["shape"][0])
        # Reused on every call: no allocation on the hot path.
        self._buf = np.empty((1, *want), dtype=np.float32)

    def _new_interpreter(self):
        interp = self._interpreter_cls(model_content=self.bundle.model_bytes, num_threads=self._threads)
        interp.allocate_tensors()
        return interp

    @classmethod
    def from_dir(cls, path: str | os.PathLike[str], num_threads: int | None = None) -> "AgeModel":
        return cls(load_bundle(path), num_threads=num_threads)

    @property
    def identity(self) -> dict[str, Any]:
        """Name, version and sha256: carried by every event this model decides."""
        m = self.manifest
        return {"name": m.name, "version": m.version, "sha256": m.sha256}

    def prepare(self, image_bgr: np.ndarray, box: Sequence[float], landmarks: Sequence[Sequence[float]] | None = None) -> np.ndarray:
        """Crop and resize one face as the manifest says (uint8); ``landmarks``: the detector's five points, if any."""
        return prepare_face(image_bgr, tuple(box), self.manifest, landmarks)  # type: ignore[arg-type]

    def predict_prepared(self, faces: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
        """Ages in years for uint8 faces already cropped by :meth:`prepare`."""
        ages = np.empty(len(faces), dtype=np.float32)
        for i, face in enumerate(faces):
            normalise(face[None], self.manifest.preprocessing, out=self._buf)
            self._set_input(self._buf)
            try:
                self._interp.invoke()
            except (RuntimeError, ValueError) as exc:
                # The interpreter's error reporter keeps every message it ever saw: start afresh.
                self._interp = self._new_interpreter()
                first = str(exc).split("failed to invoke.")[0].strip()
                raise InferenceError(f"model {self.manifest.name} {self.manifest.version} failed: {first}") from None
            ages[i] = self._get_output()
            if not np.isfinite(ages[i]):
                # A NaN or infinite age is a broken model, not an estimate: it would compare as
                # "not under the challenge age" nowhere and poison the median and every JSON view.
                raise InferenceError(f"model {self.manifest.name} {self.manifest.version} failed: "
                                     f"it answered a non-finite age ({ages[i]})")
        return ages

    def estimate(self, image_bgr: np.ndarray, boxes: Sequence[Sequence[float]],
                 landmarks: Sequence[Sequence[Sequence[float]] | None] | None = None) -> np.ndarray:
        """Ages in years for each face box ``(x, y, w, h)`` in a BGR image; ``landmarks``, one entry
        per box (None where there are none), the detector's five points for a bundle aligned to them."""
        points = list(landmarks) if landmarks is not None else [None] * len(boxes)
        if len(points) != len(boxes):
            raise ValueError(f"{len(boxes)} boxes but {len(points)} sets of landmarks")
        return self.predict_prepared([self.prepare(image_bgr, b, p) for b, p in zip(boxes, points)])

    def _set_input(self, x: np.ndarray) -> None:
        dtype = self._in["dtype"]
        if dtype != np.float32:  # a fully quantised input: quantise as the converter recorded
            scale, zero = self._in["quantization"]
            x = np.clip(np.round(x / scale + zero), np.iinfo(dtype).min, np.iinfo(dtype).max).astype(dtype)
        self._interp.set_tensor(self._in["index"], x)

    def _get_output(self) -> float:
        raw = self._interp.get_tensor(self._out["index"])
        if self._out["dtype"] != np.float32:
            scale, zero = self._out["quantization"]
            raw = (raw.astype(np.float32) - zero) * scale
        return float(to_age(raw.reshape(-1)[:1], self.manifest.output)[0])


def self_test(model: AgeModel) -> None:
    """Run the bundle's golden faces; raise BundleError if any age differs by more than its tolerance."""
    spec, golden = model.manifest.self_test, model.bundle.golden
    if spec is None or golden is None:
        raise BundleError(f"{model.bundle.path}: no self-test faces in the bundle (export packs them)")
    faces, expected = golden
    try:
        got = model.predict_prepared(faces)
    except Exception as exc:
        raise BundleError(f"{model.bundle.path}: self-test failed to run: {exc}") from None
    if not np.all(np.isfinite(got)):  # NaN compares False with any tolerance: it would pass below
        raise BundleError(f"{model.bundle.path}: self-test failed: the model answers a non-finite age (NaN or inf)")
    worst = float(np.max(np.abs(got - expected)))
    if worst > spec.tolerance:
        raise BundleError(
            f"{model.bundle.path}: self-test failed: an age differs by {worst:.2f} years "
            f"from the one recorded at export (tolerance {spec.tolerance:g})"
        )
