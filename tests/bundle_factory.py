"""Builds small but real model bundles for tests: real .tflite models, written with the
project's own bundle writer, loaded by the real interpreter.

The models come from tiny flatbuffers committed in tests/fixtures/ (a few KB), so the till's
tests need no TensorFlow: ``dense-<size>.tflite`` is :func:`dense_keras` converted with the
sentinel weight and bias below, which :func:`dense_tflite` overwrites with the values asked
for; ``failing-32.tflite`` is :func:`failing_function`'s. tests/test_fixtures.py regenerates
both with TensorFlow and checks that they still answer alike.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

FIXTURES = Path(__file__).parent / "fixtures"
SENTINEL_WEIGHT, SENTINEL_BIAS = 1234.5678, -8765.4321  # what the committed dense models hold
FIXTURE_SIZES = (32, 48)


def dense_keras(size: int, weight: float, bias: float):
    """A Keras model: age = weight * mean pixel (over channels summed) + bias. Needs TensorFlow."""
    import tensorflow as tf

    inputs = tf.keras.Input((size, size, 3))
    x = tf.keras.layers.GlobalAveragePooling2D()(inputs)
    out = tf.keras.layers.Dense(1, kernel_initializer=tf.keras.initializers.Constant(weight),
                                bias_initializer=tf.keras.initializers.Constant(bias))(x)
    return tf.keras.Model(inputs, out)


def convert_dense(size: int, weight: float, bias: float) -> bytes:
    """.tflite of :func:`dense_keras`, converted now. Needs TensorFlow."""
    import tensorflow as tf

    return tf.lite.TFLiteConverter.from_keras_model(dense_keras(size, weight, bias)).convert()


def dense_tflite(size: int, weight: float, bias: float) -> bytes:
    """.tflite of :func:`dense_keras`, from the committed fixture with its weights replaced."""
    if size not in FIXTURE_SIZES:
        raise ValueError(f"no dense fixture for {size}px (have {FIXTURE_SIZES}); add one with tests/test_fixtures.py")
    model = (FIXTURES / f"dense-{size}.tflite").read_bytes()
    f32 = lambda v: np.float32(v).tobytes()  # noqa: E731 - the flatbuffer stores float32, little-endian
    for old, new in ((f32(SENTINEL_WEIGHT) * 3, f32(weight) * 3), (f32(SENTINEL_BIAS), f32(bias))):
        assert model.count(old) == 1, "the fixture's sentinel values must each appear exactly once"
        model = model.replace(old, new)
    return model


def failing_function(size: int = 32):
    """A tf.function whose TFLite model fails at inference on any face that is not nearly black:
    it gathers from a 10-entry table at an index taken from the brightness. Needs TensorFlow."""
    import tensorflow as tf

    table = tf.constant([[20.0]] * 10)

    @tf.function(input_signature=[tf.TensorSpec([1, size, size, 3], tf.float32)])
    def age(x):
        index = tf.cast(tf.reduce_mean(x) * 1000.0, tf.int32)
        return tf.reshape(tf.gather(table, index), [1, 1])

    return age


def convert_failing(size: int = 32) -> bytes:
    import tensorflow as tf

    age = failing_function(size)
    return tf.lite.TFLiteConverter.from_concrete_functions([age.get_concrete_function()], age).convert()


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
    tflite = dense_tflite(model_size or size, 0.0, age)
    figures = stand_in_validation() if validation == "stand-in" else validation
    return _write(path, tflite, name or f"test-constant-{age:g}", version,
                  "none (test model that always answers one age)", size,
                  golden_ages=(golden_age if golden_age is not None else age) if golden else None,
                  crop={"margin": 0.2}, **({"validation": figures} if figures is not None else {}))


def make_brightness_bundle(path: Path, size: int = 32) -> Path:
    """A bundle whose 'age' is 100 x the mean pixel value in [0, 1]: its answer depends on the face crop."""
    return _write(path, dense_tflite(size, 1 / 3, 0.0), "test-brightness", "test",
                  "none (test model: age = 100 x mean brightness)", size, output={"scale": 100.0})


def make_failing_bundle(path: Path) -> Path:
    """A valid bundle whose model fails at inference on real faces (:func:`failing_function`):
    loads and allocates fine; invoke() raises."""
    from agegate.edge.bundle import write_bundle

    write_bundle(
        path,
        (FIXTURES / "failing-32.tflite").read_bytes(),
        name="test-failing",
        version="test",
        input={"height": 32, "width": 32},
        preprocessing={"scale": 1 / 255.0},
        training={"data": "none (test model that fails at inference)", "licence": "Apache-2.0"},
    )
    return path
