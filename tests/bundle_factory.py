"""Builds small but real model bundles for tests: a Keras model converted by the TFLite
converter, written with the project's own bundle writer, loaded by the real interpreter."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def dense_keras(size: int, weight: float, bias: float):
    """A Keras model: age = weight * mean pixel (over channels summed) + bias."""
    import tensorflow as tf

    inputs = tf.keras.Input((size, size, 3))
    x = tf.keras.layers.GlobalAveragePooling2D()(inputs)
    out = tf.keras.layers.Dense(1, kernel_initializer=tf.keras.initializers.Constant(weight),
                                bias_initializer=tf.keras.initializers.Constant(bias))(x)
    return tf.keras.Model(inputs, out)


def _dense_model(size: int, weight: float, bias: float) -> bytes:
    """.tflite of :func:`dense_keras`."""
    import tensorflow as tf

    return tf.lite.TFLiteConverter.from_keras_model(dense_keras(size, weight, bias)).convert()


def stand_in_validation(calibrated_threshold: float = 28.0, **changes) -> dict:
    """Validation figures a test bundle *declares*, clearing the default quality floors.

    A constant test model has no real figures; tests that are not about model quality give
    it these so that a till installs it. Tests of the quality gate pass real or failing ones.
    """
    figures = {
        "split": "val", "faces": 100, "challenge_age": 25.0, "mae": 5.0, "prediction_spread": 12.0,
        "at_challenge": {"threshold": 25.0, "under18_flagged": 0.97, "teen_flagged": 0.95, "over30_flagged": 0.08},
        "calibrated": {"target": 0.99, "threshold": calibrated_threshold, "under18_flagged": 0.99, "teen_flagged": 0.99,
                       "over30_flagged": 0.15},
    }  # fmt: skip
    figures.update(changes)
    return figures


def _write(path: Path, tflite: bytes, name: str, version: str, data: str, size: int,
           golden_ages: float | None = None, **fields) -> Path:
    from agegate.edge.bundle import write_bundle

    golden = None
    if golden_ages is not None:  # self-test faces: any crops, with the age the model gives them
        faces = np.random.default_rng(0).integers(0, 256, (4, size, size, 3), dtype=np.uint8)
        golden = (faces, np.full(4, golden_ages, np.float32))
    write_bundle(path, tflite, golden=golden, name=name, version=version, input={"height": size, "width": size},
                 preprocessing={"scale": 1 / 255.0}, training={"data": data, "licence": "Apache-2.0"}, **fields)
    return path


def make_constant_bundle(path: Path, age: float, size: int = 32, name: str | None = None, version: str = "test",
                         golden: bool = False, golden_age: float | None = None, model_size: int | None = None,
                         validation: dict | None | str = "stand-in") -> Path:
    """A bundle whose model answers ``age`` for any face (weights zero, bias ``age``).

    ``golden`` packs self-test faces recorded at ``golden_age`` (default: the true answer);
    ``model_size`` builds the model for another input size than the manifest says;
    ``validation`` is what the manifest records (:func:`stand_in_validation` by default, None: nothing).
    """
    tflite = _dense_model(model_size or size, 0.0, age)
    figures = stand_in_validation() if validation == "stand-in" else validation
    return _write(path, tflite, name or f"test-constant-{age:g}", version,
                  "none (test model that always answers one age)", size,
                  golden_ages=(golden_age if golden_age is not None else age) if golden else None,
                  crop={"margin": 0.2}, **({"validation": figures} if figures is not None else {}))


def make_brightness_bundle(path: Path, size: int = 32) -> Path:
    """A bundle whose 'age' is 100 x the mean pixel value in [0, 1]: its answer depends on the face crop."""
    return _write(path, _dense_model(size, 1 / 3, 0.0), "test-brightness", "test",
                  "none (test model: age = 100 x mean brightness)", size, output={"scale": 100.0})


def make_failing_bundle(path: Path, size: int = 32) -> Path:
    """A valid bundle whose model fails at inference on real faces: it gathers from a
    10-entry table at an index taken from the image brightness, out of range for any
    face that is not nearly black. Loads and allocates fine; invoke() raises."""
    import tensorflow as tf

    from agegate.edge.bundle import write_bundle

    table = tf.constant([[20.0]] * 10)

    @tf.function(input_signature=[tf.TensorSpec([1, size, size, 3], tf.float32)])
    def age(x):
        index = tf.cast(tf.reduce_mean(x) * 1000.0, tf.int32)
        return tf.reshape(tf.gather(table, index), [1, 1])

    converter = tf.lite.TFLiteConverter.from_concrete_functions([age.get_concrete_function()], age)
    write_bundle(
        path,
        converter.convert(),
        name="test-failing",
        version="test",
        input={"height": size, "width": size},
        preprocessing={"scale": 1 / 255.0},
        training={"data": "none (test model that fails at inference)", "licence": "Apache-2.0"},
    )
    return path
