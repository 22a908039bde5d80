"""The tf.data input pipeline: prepared crops in, shuffled and augmented batches out.

Decoding, detection and cropping happened once, in :mod:`agegate.training.faces`; what is
left per epoch is cheap: shuffle, augment in parallel, batch, prefetch.

Every random choice is *stateless*, drawn from (seed, epoch, photo), so epoch 7 sees the
same order and the same augmentations whether the run went straight through or was
interrupted after epoch 6 and resumed. The augmentations imitate what differs between
one detection and the next at a till: a mirror image, a box a little rotated, larger or
off-centre (pixels beyond the edge repeat the border, as ``prepare_face`` does), and
lighting (brightness and contrast).
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

MAX_ROTATION = math.radians(10)
MAX_ZOOM = 0.10  # +-10 % size
MAX_SHIFT = 0.05  # +-5 % of the side
MAX_BRIGHTNESS = 0.10 * 255
CONTRAST = (0.8, 1.2)


def augment(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """One random variation of a float32 (h, w, 3) crop with values 0-255; ``seed`` is shape (2,)."""
    seeds = tf.random.experimental.stateless_split(seed, num=5)
    image = tf.image.stateless_random_flip_left_right(image, seeds[0])
    angle, zoom, dx, dy = tf.unstack(
        tf.random.stateless_uniform([4], seeds[1], minval=-1.0, maxval=1.0) * [MAX_ROTATION, MAX_ZOOM, MAX_SHIFT, MAX_SHIFT]
    )
    image = _affine(image, angle, 1.0 + zoom, dx, dy)
    image = tf.image.stateless_random_brightness(image, MAX_BRIGHTNESS, seeds[2])
    image = tf.image.stateless_random_contrast(image, CONTRAST[0], CONTRAST[1], seeds[3])
    return tf.clip_by_value(image, 0.0, 255.0)


def _affine(image: tf.Tensor, angle: tf.Tensor, zoom: tf.Tensor, dx: tf.Tensor, dy: tf.Tensor) -> tf.Tensor:
    """Rotate by ``angle`` about the centre, scale by ``zoom`` and shift by (dx, dy) of the side."""
    h = tf.cast(tf.shape(image)[0], tf.float32)
    w = tf.cast(tf.shape(image)[1], tf.float32)
    cx, cy = (w - 1) / 2, (h - 1) / 2
    cos, sin = tf.cos(angle) / zoom, tf.sin(angle) / zoom
    # Output pixel (x, y) samples the input at R(angle) (p - c) / zoom + c - shift.
    transform = tf.stack([cos, -sin, cx - cos * cx + sin * cy - dx * w, sin, cos, cy - sin * cx - cos * cy - dy * h, 0.0, 0.0])
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=image[None],
        transforms=transform[None],
        output_shape=tf.shape(image)[:2],
        fill_value=0.0,
        interpolation="BILINEAR",
        fill_mode="NEAREST",
    )
    return out[0]


def training_batches(images: np.ndarray, targets: np.ndarray, batch_size: int, seed: int, first_epoch: int, epochs: int) -> tf.data.Dataset:
    """Batches for epochs ``first_epoch`` (0-based) up to ``epochs``: one pass over the data each.

    Use with ``fit(..., initial_epoch=first_epoch, epochs=epochs, steps_per_epoch=steps(len(images), batch_size))``.
    """
    n = len(images)
    with tf.device("/cpu:0"):  # the input pipeline runs on the host, also when GPUs train
        images_t = tf.constant(images)
        targets_t = tf.constant(targets.reshape(-1, 1).astype(np.float32))

    def one_epoch(epoch: tf.Tensor) -> tf.data.Dataset:
        order = tf.random.experimental.stateless_shuffle(tf.range(n, dtype=tf.int64), seed=tf.stack([tf.constant(seed, tf.int64), epoch]))

        def example(i: tf.Tensor):
            image = tf.cast(tf.gather(images_t, i), tf.float32)
            return augment(image, tf.stack([tf.constant(seed, tf.int64), epoch * n + i])), tf.gather(targets_t, i)

        return tf.data.Dataset.from_tensor_slices(order).map(example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).batch(batch_size)

    ds = tf.data.Dataset.range(first_epoch, epochs).flat_map(one_epoch)
    return _distributable(ds).prefetch(tf.data.AUTOTUNE)


def evaluation_batches(images: np.ndarray, targets: np.ndarray, batch_size: int) -> tf.data.Dataset:
    """Un-augmented batches in order, cached after the first pass (validation)."""
    ds = tf.data.Dataset.from_tensor_slices((images, targets.reshape(-1, 1).astype(np.float32)))
    ds = ds.map(lambda x, y: (tf.cast(x, tf.float32), y), num_parallel_calls=tf.data.AUTOTUNE).batch(batch_size).cache()
    return _distributable(ds).prefetch(tf.data.AUTOTUNE)


def steps(n: int, batch_size: int) -> int:
    return max(1, math.ceil(n / batch_size))


def _distributable(ds: tf.data.Dataset) -> tf.data.Dataset:
    # The data are in memory, not in files: multi-worker runs shard by batch.
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return ds.with_options(options)
