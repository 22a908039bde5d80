"""Keras model to TFLite flatbuffer, in the four variants a till can run.

=========  ===========================================================  ===============
variant    what is stored / computed                                    size vs float32
=========  ===========================================================  ===============
float32    everything float32: the reference                            1
float16    weights stored as float16, computed in float32               1/2
dynamic    weights int8, activations quantised on the fly               1/4
int8       weights and activations int8, calibrated on real training    1/4
           crops; input and output stay float32, so the till feeds
           and reads it exactly like the others
=========  ===========================================================  ===============
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Iterator

import numpy as np
import tensorflow as tf

from agegate.edge.bundle import VARIANTS

log = logging.getLogger(__name__)


def saved_model(model: tf.keras.Model, path: Path) -> Path:
    """Export the Keras model once as a SavedModel: every variant is converted from it."""
    model.export(str(path), format="tf_saved_model", verbose=False)
    return path


def convert(saved: Path, variant: str, calibration: np.ndarray | None = None) -> bytes:
    """The TFLite bytes of the SavedModel at ``saved`` as ``variant``.

    ``calibration`` (int8 only) is model input, already normalised as the till normalises:
    a few hundred real training faces, shape (n, h, w, 3) float32.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose from {', '.join(VARIANTS)}")
    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved))
    if variant == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif variant == "dynamic":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    elif variant == "int8":
        if calibration is None or not len(calibration):
            raise ValueError("int8 needs calibration faces")
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: _one_by_one(calibration)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.float32
        converter.inference_output_type = tf.float32
    with warnings.catch_warnings():
        # int8 with float input: "Statistics for quantized inputs were expected" is expected.
        warnings.filterwarnings("ignore", message="Statistics for quantized inputs")
        flatbuffer = converter.convert()
    log.info("converted %s: %s bytes", variant, f"{len(flatbuffer):,}")
    return flatbuffer


def _one_by_one(faces: np.ndarray) -> Iterator[list[np.ndarray]]:
    for face in faces:
        yield [face[None].astype(np.float32)]
