"""Builds small but real model bundles for tests: a Keras model converted by the TFLite
converter, written with the project's own bundle writer, loaded by the real interpreter."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def make_constant_bundle(path: Path, age: float, size: int = 32, name: str | None = None, version: str = "test") -> Path:
    """A bundle whose model answers ``age`` for any face (weights zero, bias ``age``)."""
    import tensorflow as tf

    from agegate.edge.bundle import write_bundle

    inputs = tf.keras.Input((size, size, 3))
    x = tf.keras.layers.GlobalAveragePooling2D()(inputs)
    out = tf.keras.layers.Dense(1, kernel_initializer="zeros", bias_initializer=tf.keras.initializers.Constant(age))(x)
    model = tf.keras.Model(inputs, out)
    tflite = tf.lite.TFLiteConverter.from_keras_model(model).convert()
    write_bundle(
        path,
        tflite,
        name=name or f"test-constant-{age:g}",
        version=version,
        input={"height": size, "width": size},
        preprocessing={"scale": 1 / 255.0},
        crop={"margin": 0.2},
        training={"data": "none (test model that always answers one age)", "licence": "Apache-2.0"},
    )
    return path


def make_brightness_bundle(path: Path, size: int = 32) -> Path:
    """A bundle whose 'age' is 100 x the mean pixel value in [0, 1]: its answer depends on the face crop."""
    import tensorflow as tf

    from agegate.edge.bundle import write_bundle

    inputs = tf.keras.Input((size, size, 3))
    x = tf.keras.layers.GlobalAveragePooling2D()(inputs)
    out = tf.keras.layers.Dense(1, kernel_initializer=tf.keras.initializers.Constant(1 / 3), bias_initializer="zeros")(x)
    model = tf.keras.Model(inputs, out)
    tflite = tf.lite.TFLiteConverter.from_keras_model(model).convert()
    write_bundle(
        path,
        tflite,
        name="test-brightness",
        version="test",
        input={"height": size, "width": size},
        preprocessing={"scale": 1 / 255.0},
        output={"scale": 100.0},
        training={"data": "none (test model: age = 100 x mean brightness)", "licence": "Apache-2.0"},
    )
    return path


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
