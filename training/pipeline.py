"""The tf.data input pipeline: prepared crops in, shuffled and augmented batches out.

Decoding, detection and cropping happened once, in :mod:`agegate.training.faces`; what is
left per epoch is cheap: shuffle, augment in parallel, batch, prefetch.

Every random choice is *stateless*, drawn from (seed, epoch, photo), so epoch 7 sees the
same order and the same augmentations whether the run went straight through or was
interrupted after epoch 6 and resumed.

The augmentations imitate what a till camera and other photo sources do to a face, which a
model trained on one source's photos has never seen:

* geometry: a mirror image, the jitter in box size and position between detectors and
  frames, a small rotation (pixels beyond the edge repeat the border, as ``prepare_face`` does);
* light and colour: exposure (brightness, gamma), contrast, a colour cast (per-channel gain),
  grayscale (infra-red and monochrome cameras);
* the camera: a face seen from further away (down-scaled and up-scaled again), blur (focus,
  motion), sensor noise, JPEG artefacts.

Sampling can *balance age bands*: each epoch draws its faces with a weight of
``1 / (faces in its band) ** balance``, so with ``balance`` 0.5 the teens and young adults,
the bands a Challenge 25 decision turns on, are not drowned by the far more numerous adults;
and it can *even groups within each band* (gender, ethnicity where labelled), so that the net
cannot learn a group's faces as a cue for a younger or older age.
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

MAX_ROTATION = math.radians(10)
MAX_ZOOM = 0.12  # +-12 % size: YuNet's and Haar's boxes, and one frame's and the next, differ this much
MAX_SHIFT = 0.06  # +-6 % of the side
MAX_BRIGHTNESS = 0.12 * 255
CONTRAST = (0.75, 1.25)
GAMMA = (0.7, 1.4)
COLOUR_CAST = 0.12  # per-channel gain 1 +- this
P_GRAYSCALE = 0.15
P_LOW_RES = 0.25  # seen from further away: down to LOW_RES of the side, then back up
LOW_RES = (0.4, 0.85)
P_BLUR = 0.15
MAX_BLUR_SIGMA = 1.2  # pixels at the model's input size
P_NOISE = 0.3
MAX_NOISE = 8.0  # standard deviation, of 255
P_JPEG = 0.3
JPEG_QUALITY = (25, 90)


def augment(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """One random variation of a float32 (h, w, 3) crop with values 0-255; ``seed`` is shape (2,)."""
    seeds = tf.random.experimental.stateless_split(seed, num=12)
    coin = tf.random.stateless_uniform([8], seeds[11])  # one uniform draw per optional step
    image = tf.image.stateless_random_flip_left_right(image, seeds[0])
    angle, zoom, dx, dy = tf.unstack(
        tf.random.stateless_uniform([4], seeds[1], minval=-1.0, maxval=1.0) * [MAX_ROTATION, MAX_ZOOM, MAX_SHIFT, MAX_SHIFT]
    )
    image = _affine(image, angle, 1.0 + zoom, dx, dy)
    image = tf.cond(coin[0] < P_LOW_RES, lambda: _low_resolution(image, seeds[2]), lambda: image)
    image = tf.cond(coin[1] < P_BLUR, lambda: _blur(image, seeds[3]), lambda: image)

    # Light and colour.
    image = tf.image.stateless_random_brightness(image, MAX_BRIGHTNESS, seeds[4])
    image = tf.image.stateless_random_contrast(image, CONTRAST[0], CONTRAST[1], seeds[5])
    gamma = tf.random.stateless_uniform([], seeds[6], GAMMA[0], GAMMA[1])
    image = 255.0 * tf.pow(tf.clip_by_value(image, 0.0, 255.0) / 255.0, gamma)
    image = image * tf.random.stateless_uniform([3], seeds[7], 1.0 - COLOUR_CAST, 1.0 + COLOUR_CAST)
    image = tf.cond(coin[2] < P_GRAYSCALE, lambda: tf.image.grayscale_to_rgb(tf.image.rgb_to_grayscale(image)), lambda: image)

    # The camera's own marks.
    noise = tf.random.stateless_normal(tf.shape(image), seeds[8]) * tf.random.stateless_uniform([], seeds[9], 0.0, MAX_NOISE)
    image = tf.cond(coin[3] < P_NOISE, lambda: image + noise, lambda: image)
    image = tf.clip_by_value(image, 0.0, 255.0)
    image = tf.cond(coin[4] < P_JPEG, lambda: _jpeg(image, seeds[10]), lambda: image)
    return image


def _low_resolution(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    size = tf.shape(image)[:2]
    factor = tf.random.stateless_uniform([], seed, LOW_RES[0], LOW_RES[1])
    small = tf.maximum(tf.cast(tf.cast(size, tf.float32) * factor, tf.int32), 8)
    return tf.image.resize(tf.image.resize(image, small, method="area"), size, method="bilinear")


def _blur(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """A Gaussian blur of random strength, separable, 7 taps (borders repeated)."""
    sigma = tf.random.stateless_uniform([], seed, 0.4, MAX_BLUR_SIGMA)
    taps = tf.range(-3.0, 4.0)
    kernel = tf.exp(-(taps**2) / (2.0 * sigma**2))
    kernel /= tf.reduce_sum(kernel)
    padded = tf.pad(image[None], [[0, 0], [3, 3], [3, 3], [0, 0]], mode="SYMMETRIC")
    k = tf.tile(kernel[:, None, None, None], [1, 1, 3, 1])  # (7, 1, 3, 1): depthwise, vertical
    out = tf.nn.depthwise_conv2d(padded, k, [1, 1, 1, 1], "VALID")
    out = tf.nn.depthwise_conv2d(out, tf.transpose(k, [1, 0, 2, 3]), [1, 1, 1, 1], "VALID")
    return out[0]


def _jpeg(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    pixels = tf.cast(tf.round(image), tf.uint8)
    out = tf.image.stateless_random_jpeg_quality(pixels, JPEG_QUALITY[0], JPEG_QUALITY[1], seed)
    return tf.cast(tf.reshape(out, tf.shape(image)), tf.float32)


def band_balance_weights(ages: np.ndarray, balance: float, groups: np.ndarray | list | None = None) -> np.ndarray:
    """Sampling weight of each face, normalised to sum 1.

    Each age band is drawn in proportion to ``(faces in the band) ** (1 - balance)``: every face
    weighs ``1 / (faces in its band) ** balance``. With ``groups`` (e.g. each face's gender, None
    where unknown), a band's draw is also split equally among the groups it holds, so that every
    group has the same share of each band in what the net sees: in the train splits women are
    two thirds of the 18-24s and a third of the 50-64s, which would teach it that a woman's face
    means a younger age. Faces of unknown group keep their natural share of their band. A group
    of a handful of faces in a band is drawn as often as a large one: each of its faces many
    times (fit logs the most).
    """
    from .metrics import band_of

    bands = band_of(ages)
    names, counts = np.unique(bands, return_counts=True)
    per_band = dict(zip(names, counts))  # numpy integers: ``** -balance`` as before groups existed, bit for bit
    groups = np.array([None] * len(bands) if groups is None else list(groups), dtype=object)
    unknown_group = np.array([g is None for g in groups], dtype=bool)
    weights = np.empty(len(bands), dtype=np.float64)
    for band in names:
        in_band = bands == band
        n = per_band[band]
        per_face = n ** -float(balance)
        unknown = in_band & unknown_group
        weights[unknown] = per_face
        known = sorted({g for g in groups[in_band] if g is not None})
        for g in known:  # the known faces' part of the band, shared equally by their groups
            members = in_band & (groups == g)
            weights[members] = per_face * (n - unknown.sum()) / (len(known) * members.sum())
    return weights / weights.sum()


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


def training_batches(
    images: np.ndarray, targets: np.ndarray, batch_size: int, seed: int, first_epoch: int, epochs: int,
    weights: np.ndarray | None = None, epoch_size: int | None = None,
) -> tf.data.Dataset:
    """Batches for epochs ``first_epoch`` (0-based) up to ``epochs``.

    Without ``weights`` an epoch is one pass over the data in a shuffled order; with them,
    ``epoch_size`` faces (default: as many as there are) drawn with replacement, each with its
    weight (see :func:`band_balance_weights`). Use with ``fit(..., initial_epoch=first_epoch,
    epochs=epochs, steps_per_epoch=steps(epoch_size or len(images), batch_size))``.
    """
    n = len(images)
    size = int(epoch_size or n)
    with tf.device("/cpu:0"):  # the input pipeline runs on the host, also when GPUs train
        images_t = tf.constant(images)
        targets_t = tf.constant(targets.reshape(-1, 1).astype(np.float32))
        logits = tf.constant(np.log(np.maximum(weights, 1e-30))[None].astype(np.float32)) if weights is not None else None

    def one_epoch(epoch: tf.Tensor) -> tf.data.Dataset:
        epoch_seed = tf.stack([tf.constant(seed, tf.int64), epoch])
        if logits is None:
            order = tf.random.experimental.stateless_shuffle(tf.range(n, dtype=tf.int64), seed=epoch_seed)
        else:
            order = tf.random.stateless_categorical(logits, size, seed=epoch_seed, dtype=tf.int64)[0]

        def example(i: tf.Tensor):
            image = tf.cast(tf.gather(images_t, i), tf.float32)
            return augment(image, tf.stack([tf.constant(seed, tf.int64), epoch * n + i])), tf.gather(targets_t, i)

        if logits is not None:  # a face drawn twice in an epoch gets two different variations
            order = order + tf.range(size, dtype=tf.int64) * n

            def example_drawn(j: tf.Tensor):
                i = j % n
                image = tf.cast(tf.gather(images_t, i), tf.float32)
                return augment(image, tf.stack([tf.constant(seed, tf.int64), epoch * n * size + j])), tf.gather(targets_t, i)

            return tf.data.Dataset.from_tensor_slices(order).map(example_drawn, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).batch(batch_size)

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
