"""The age model: an ImageNet backbone, global average pooling and a one-number regression head.

The model takes a face crop as RGB pixel values 0-255 (what ``prepare_face`` cuts, cast to
float) and carries its backbone's own input normalisation as layers, so the till needs no
preprocessing beyond the cast. It answers the *normalised* age ``(age - offset) / scale``
(offset and scale are the training split's mean and spread of ages, stored in the run
config and the bundle's output spec); a robust Huber loss on that target keeps the few
badly labelled faces from dominating.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence

import keras
import numpy as np
from keras import layers, ops

from agegate.ages import CHALLENGE_AGE
from agegate.edge.bundle import OutputSpec, ServingSpec, normalise, to_age

from . import pretrained as pretrained_net  # its layers are registered here, so its runs load
from .metrics import FALSE_ALARM_AGE, MINOR_AGE, answer_shift
from .run import FitConfig, RunDir, serving_spec

if TYPE_CHECKING:
    from .faces import FaceSet

WRONG_SIDE_MARGIN = 2.0  # years: an estimate this close to the challenge age is already on the wrong side
RANK_MARGIN = FALSE_ALARM_AGE - MINOR_AGE  # years: a minor and someone 30+ are at least this far apart in age

log = logging.getLogger(__name__)


@keras.saving.register_keras_serializable(package="agegate")
class CaffePreprocess(layers.Layer):
    """ResNet50's ImageNet input convention as a layer: RGB 0-255 to BGR minus the ImageNet mean.

    Written as a fixed 1x1 convolution (channel swap in the kernel, mean in the bias) rather
    than a flip and a subtraction: TFLite's int8 REVERSE_V2 garbles the channels (its input
    and output scales differ and it copies bytes), which cost int8 models about 3 years of
    MAE. A convolution is the best-supported int8 op there is.
    """

    MEAN_BGR = (103.939, 116.779, 123.68)

    def call(self, x):
        swap = np.zeros((1, 1, 3, 3), dtype="float32")
        for rgb in range(3):
            swap[0, 0, rgb, 2 - rgb] = 1.0
        kernel = ops.cast(ops.convert_to_tensor(swap), x.dtype)
        bias = ops.cast(ops.convert_to_tensor([-m for m in self.MEAN_BGR]), x.dtype)
        return ops.conv(x, kernel, strides=1, padding="valid") + bias


@keras.saving.register_keras_serializable(package="agegate")
class AgeMAE(keras.metrics.Mean):
    """Mean absolute error in years, for a model that answers normalised ages."""

    def __init__(self, scale: float = 1.0, name: str = "age_mae", dtype=None):
        super().__init__(name=name, dtype=dtype)
        self.scale = float(scale)

    def update_state(self, y_true, y_pred, sample_weight=None):
        # [..., :1]: the age, also of a training model that answers its class probabilities beside it
        error = ops.abs(ops.cast(y_true, "float32") - ops.cast(y_pred[..., :1], "float32")) * self.scale
        return super().update_state(ops.reshape(error, (-1,)), sample_weight=sample_weight)

    def get_config(self):
        return {"scale": self.scale, "name": self.name, "dtype": self.dtype}


@keras.saving.register_keras_serializable(package="agegate")
class MinorsFlagged(keras.metrics.Mean):
    """The share of faces under 18 estimated under the challenge age: what a till is judged by,
    logged per epoch so that a run can keep an epoch by it (``--best-by minors``)."""

    def __init__(self, scale: float = 1.0, offset: float = 0.0, challenge_age: float = CHALLENGE_AGE, name: str = "under18_flagged", dtype=None):
        super().__init__(name=name, dtype=dtype)
        self.scale, self.offset, self.challenge_age = float(scale), float(offset), float(challenge_age)

    def update_state(self, y_true, y_pred, sample_weight=None):
        true_age = ops.reshape(ops.cast(y_true, "float32"), (-1,)) * self.scale + self.offset
        estimate = ops.reshape(ops.cast(y_pred[..., :1], "float32"), (-1,)) * self.scale + self.offset
        minor = ops.cast(true_age < MINOR_AGE, "float32")  # only the minors count: they are the weights
        if sample_weight is not None:
            minor = minor * ops.reshape(ops.cast(sample_weight, "float32"), (-1,))
        return super().update_state(ops.cast(estimate < self.challenge_age, "float32"), sample_weight=minor)

    def get_config(self):
        return {"scale": self.scale, "offset": self.offset, "challenge_age": self.challenge_age, "name": self.name, "dtype": self.dtype}


@keras.saving.register_keras_serializable(package="agegate")
class HuberLoss(keras.losses.Huber):
    """keras.losses.Huber whose ``delta`` survives saving (Keras 3.15 drops it from the config,
    so a checkpoint would resume with delta 1.0)."""

    def __init__(self, delta: float = 1.0, name: str = "huber_loss", reduction: str = "sum_over_batch_size"):
        super().__init__(delta=delta, name=name, reduction=reduction)
        self.delta = float(delta)

    def get_config(self):
        return {**super().get_config(), "delta": self.delta}


@keras.saving.register_keras_serializable(package="agegate")
class ChallengeHuberLoss(HuberLoss):
    """Huber loss that weighs more the errors a till pays for.

    At a till the costly errors are those that land a face on the wrong side of the
    challenge age: a 16-year-old estimated at 27 buys alcohol without being asked; a
    40-year-old estimated at 22 is asked for ID for nothing. A 40-year-old estimated at 33
    or a 10-year-old at 14 costs nothing. Three weights say so:

    * ``penalty``: an over-estimate of anyone under ``penalty_below`` (default: the challenge
      age) counts ``1 + penalty`` times (pulls every young face's estimate down, the adults'
      with it; below 18 it pulls only on the minors, whose over-estimate is the legal risk);
    * ``wrong_side``: an estimate on the wrong side of the challenge age, by ``margin`` years,
      counts ``1 + wrong_side`` times: an under-18 estimated over ``challenge - margin``, or
      someone ``FALSE_ALARM_AGE`` or older estimated under ``challenge + margin``. It pushes
      only the faces whose decision would be wrong, in both directions.
    * ``rank``: every pair in the batch of an under-18 and someone ``FALSE_ALARM_AGE`` or older
      whose estimates are less than ``RANK_MARGIN`` years apart (the smallest true gap between
      the two) adds ``rank`` x the shortfall, averaged over the pairs. The other weights judge
      each face against the challenge age alone; this one judges the order of minors and adults,
      which is what a threshold anywhere can use: it asks for young-looking adults to be
      estimated above old-looking teenagers, where the per-face terms pull both down together.

    Targets and predictions are normalised ages; ``offset`` and ``scale`` map them to years.
    """

    def __init__(self, delta: float = 1.0, penalty: float = 0.0, challenge_age: float = CHALLENGE_AGE, offset: float = 0.0,
                 scale: float = 1.0, wrong_side: float = 0.0, margin: float = WRONG_SIDE_MARGIN, penalty_below: float | None = None,
                 rank: float = 0.0, name: str = "challenge_huber_loss", reduction: str = "sum_over_batch_size"):
        super().__init__(delta=delta, name=name, reduction=reduction)
        self.penalty, self.challenge_age, self.offset, self.scale = float(penalty), float(challenge_age), float(offset), float(scale)
        self.wrong_side, self.margin = float(wrong_side), float(margin)
        self.penalty_below = float(challenge_age if penalty_below is None else penalty_below)
        self.rank = float(rank)

    def call(self, y_true, y_pred):
        y_true = ops.cast(y_true, "float32")
        y_pred = ops.cast(y_pred, "float32")
        error = y_pred - y_true
        abs_error = ops.abs(error)
        huber = ops.where(abs_error <= self.delta, 0.5 * ops.square(error), self.delta * abs_error - 0.5 * self.delta**2)
        per_face = ops.mean(huber * self.face_weights(y_true, y_pred), axis=-1)
        if self.rank:  # one figure for the batch added to each face's: the mean over the batch (the reduction) gains it once
            per_face = per_face + self.rank * self.order_shortfall(y_true, y_pred)
        return per_face

    def order_shortfall(self, y_true, y_pred):
        """The mean over the batch's (under-18, 30+) pairs of how far the adult's estimate falls
        short of ``RANK_MARGIN`` years above the minor's, in the target's units (years / scale);
        0 without pairs. Under a distribution strategy each replica pairs the faces of its own
        share of the batch only."""
        true_age = ops.reshape(y_true, (-1,)) * self.scale + self.offset
        estimate = ops.reshape(y_pred, (-1,))
        pairs = ops.cast(true_age < MINOR_AGE, "float32")[:, None] * ops.cast(true_age >= FALSE_ALARM_AGE, "float32")[None, :]
        gap = estimate[None, :] - estimate[:, None]  # [minor i, adult j]: adult's estimate minus minor's
        shortfall = ops.relu(RANK_MARGIN / self.scale - gap) * pairs
        return ops.sum(shortfall) / ops.maximum(ops.sum(pairs), 1.0)

    def face_weights(self, y_true, y_pred):
        """How many times each face's error counts: 1, more for the errors a till pays for."""
        true_age = y_true * self.scale + self.offset
        estimate = y_pred * self.scale + self.offset
        young = ops.cast(true_age < self.penalty_below, "float32")
        over = ops.cast(y_pred > y_true, "float32")
        minor_passed = ops.cast(true_age < MINOR_AGE, "float32") * ops.cast(estimate > self.challenge_age - self.margin, "float32")
        adult_flagged = ops.cast(true_age >= FALSE_ALARM_AGE, "float32") * ops.cast(estimate < self.challenge_age + self.margin, "float32")
        return 1.0 + self.penalty * young * over + self.wrong_side * (minor_passed + adult_flagged)

    def get_config(self):
        return {**super().get_config(), "penalty": self.penalty, "challenge_age": self.challenge_age,
                "offset": self.offset, "scale": self.scale, "wrong_side": self.wrong_side, "margin": self.margin,
                "penalty_below": self.penalty_below, "rank": self.rank}


@keras.saving.register_keras_serializable(package="agegate")
class AgeDistributionLoss(ChallengeHuberLoss):
    """:class:`ChallengeHuberLoss` on the expected age, plus ``weight`` times the KL divergence
    of the net's class probabilities from a normal distribution of spread ``sigma`` years
    around the true age (label-distribution learning, as DLDL-v2 does it).

    For a net that reads its age off a softmax over age classes (dlib's face-age net): the
    expected age alone is met by many distributions, some spread over decades; the second term
    asks for one that is peaked where the age is, so that faces near the challenge age are
    told apart by the shape of the whole distribution rather than only its mean. ``y_pred`` is
    the expected age and the probabilities side by side (:func:`with_age_distribution`).

    ``penalised``: the face weights of :class:`ChallengeHuberLoss` (an over-estimated young
    face, a decision on the wrong side) weigh this term too. Without, they weigh only the
    Huber part, and at ``weight`` 5 the distribution term is most of the loss: the penalty
    that keeps young faces' estimates low is diluted to a fraction of what it is alone.
    """

    def __init__(self, class_ages: list[float] | tuple[float, ...] = (), sigma: float = 2.0, weight: float = 1.0,
                 penalised: bool = False, **kwargs):
        kwargs.setdefault("name", "age_distribution_loss")
        super().__init__(**kwargs)
        self.class_ages = [float(a) for a in class_ages]
        self.sigma, self.weight, self.penalised = float(sigma), float(weight), bool(penalised)

    def call(self, y_true, y_pred):
        y_true = ops.reshape(ops.cast(y_true, "float32"), (-1, 1))
        y_pred = ops.cast(y_pred, "float32")
        huber = super().call(y_true, y_pred[:, :1])
        ages = ops.convert_to_tensor(np.asarray(self.class_ages, np.float32).reshape(1, -1))
        true_age = ops.clip(y_true * self.scale + self.offset, min(self.class_ages), max(self.class_ages))
        log_target = ops.log_softmax(-0.5 * ops.square((ages - true_age) / self.sigma), axis=-1)
        kl = ops.sum(ops.exp(log_target) * (log_target - ops.log(ops.maximum(y_pred[:, 1:], 1e-7))), axis=-1)
        if self.penalised:
            kl = kl * ops.reshape(self.face_weights(y_true, y_pred[:, :1]), (-1,))
        return huber + self.weight * kl

    def get_config(self):
        return {**super().get_config(), "class_ages": self.class_ages, "sigma": self.sigma, "weight": self.weight, "penalised": self.penalised}


def backbone(name: str, image_size: int, weights: str | None) -> tuple[keras.Model, layers.Layer | None]:
    """The convolutional base (no top) and the layer, if any, that its inputs need first."""
    shape = (image_size, image_size, 3)
    if weights:
        log.info("loading ImageNet weights for %s from %s", name, weights)
    if name == "resnet50":
        return keras.applications.ResNet50(include_top=False, weights=weights, input_shape=shape), CaffePreprocess(name="imagenet_caffe")
    if name == "efficientnetb0":  # rescales and normalises 0-255 inputs itself
        return keras.applications.EfficientNetB0(include_top=False, weights=weights, input_shape=shape), None
    if name == "mobilenetv3small":  # likewise, with include_preprocessing
        return keras.applications.MobileNetV3Small(include_top=False, weights=weights, input_shape=shape, include_preprocessing=True), None
    raise ValueError(f"unknown backbone {name!r}")


FROM_SCRATCH_BN_MOMENTUM = 0.99


def faster_batch_norm_statistics(base: keras.Model) -> None:
    """Batch norm's moving statistics follow the batches with momentum 0.99 in a net trained from scratch.

    keras.applications' MobileNetV3 and EfficientNet use 0.999, right for fine-tuning ImageNet
    statistics but too slow for a fresh net: after 1,500 steps a fifth of the initial variance (1)
    is still in each moving average, where the real one is orders smaller, and the model in
    inference mode answered one age for every face (measured: standard deviation 0.00 against
    19.3 with the batch's own statistics, MobileNetV3-Small after 6 epochs of 250 steps).
    """
    for layer in base.layers:
        if isinstance(layer, layers.BatchNormalization):
            layer.momentum = min(layer.momentum, FROM_SCRATCH_BN_MOMENTUM)


def build_model(config: FitConfig, weights: str | None = None, pretrained: bool = True) -> keras.Model:
    """Backbone, global average pooling, dropout and a linear output (float32 even under mixed precision).

    The face-age network (``dlibresnet10``) comes whole, with its own head, from its CC0
    weights (``pretrained``; False only to rebuild the architecture for trained weights);
    with ``label_sigma`` it answers its class probabilities beside the age, for the loss
    (:func:`load_inference_model` keeps only the age).
    """
    if config.backbone == pretrained_net.BACKBONE:
        model = pretrained_net.build(config.dropout, image_size=config.image_size)
        if pretrained:
            pretrained_net.load_onnx_weights(model)
        return with_age_distribution(model) if config.label_sigma else model
    inputs = keras.Input((config.image_size, config.image_size, 3), name="face_rgb")
    base, preprocess = backbone(config.backbone, config.image_size, weights)
    if not weights:
        faster_batch_norm_statistics(base)
    x = preprocess(inputs) if preprocess is not None else inputs
    x = base(x)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    x = layers.Dropout(config.dropout, name="dropout")(x)
    outputs = layers.Dense(1, dtype="float32", name="age")(x)
    return keras.Model(inputs, outputs, name=f"age_{config.backbone}")


def compile_model(model: keras.Model, config: FitConfig, steps_per_epoch: int) -> None:
    """Adam on a cosine schedule with a short warm-up; Huber loss (and the label distribution's); MAE in years."""
    total = config.epochs * steps_per_epoch
    warmup = min(steps_per_epoch, total // 10)
    if warmup:
        schedule = keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=config.lr / 10, decay_steps=max(1, total - warmup), alpha=0.01, warmup_target=config.lr, warmup_steps=warmup
        )
    else:
        schedule = keras.optimizers.schedules.CosineDecay(config.lr, decay_steps=max(1, total), alpha=0.01)
    age_loss = dict(delta=config.huber_delta / config.target_scale, penalty=config.overestimate_penalty,
                    penalty_below=config.overestimate_below, wrong_side=config.wrong_side_penalty,
                    rank=config.rank_penalty, offset=config.target_offset, scale=config.target_scale)
    if config.label_sigma:
        loss = AgeDistributionLoss(class_ages=pretrained_net.age_class_weights(), sigma=config.label_sigma, weight=config.label_weight,
                                   penalised=config.label_penalised, **age_loss)
    else:
        loss = ChallengeHuberLoss(**age_loss)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=schedule), loss=loss,
                  metrics=[AgeMAE(scale=config.target_scale), MinorsFlagged(scale=config.target_scale, offset=config.target_offset)])


class AnchorToStart(keras.regularizers.Regularizer):
    """L2-SP (Li, Grandvalet and Davoine, 2018): ``strength`` x the squared distance of a weight from
    the value training started from, where plain weight decay pulls towards zero.

    The hope: a fine-tuned net may forget what its pretrained weights knew of faces that the
    fine-tuning sources lack; this keeps it near them unless the data pays for the move (at
    strength 1 it did not help held out: docs/model-card.md, L2-SP). Never saved with
    the model (the start is not part of it): :func:`anchor_to_start` attaches it for training.
    """

    def __init__(self, start: np.ndarray, strength: float):
        self.start = np.asarray(start, dtype="float32")
        self.strength = float(strength)

    def __call__(self, weight):
        return self.strength * ops.sum(ops.square(weight - ops.cast(self.start, weight.dtype)))

    def get_config(self):
        raise NotImplementedError("the anchor is attached for training (anchor_to_start), never saved with a model")


def anchor_to_start(model: keras.Model, start: keras.Model, strength: float) -> int:
    """Pull each trainable weight of ``model`` towards its namesake in ``start`` (:class:`AnchorToStart`).

    Weights are matched by path (layer/variable name), so a restored checkpoint is anchored to
    the freshly built pretrained net it began as. Returns how many weights were anchored;
    ValueError if one has no namesake of its shape (an architecture that did not start there).
    """
    starts = {w.path: w for w in start.weights}
    for weight in model.trainable_weights:  # every weight checked before any is anchored
        origin = starts.get(weight.path)
        if origin is None or tuple(origin.shape) != tuple(weight.shape):
            raise ValueError(f"cannot anchor {weight.path}: the pretrained net has no weight of that name and shape {tuple(weight.shape)}")
    for weight in model.trainable_weights:
        weight.regularizer = AnchorToStart(keras.ops.convert_to_numpy(starts[weight.path].value), strength)
    return len(model.trainable_weights)


AGE_AND_DISTRIBUTION = "age_and_distribution"


def with_age_distribution(model: keras.Model) -> keras.Model:
    """Training only: the age-class net answering its expected age and its class probabilities
    side by side, shape (batch, 1 + classes), for :class:`AgeDistributionLoss`."""
    both = layers.Concatenate(name=AGE_AND_DISTRIBUTION, dtype="float32")([model.output, model.get_layer("age_probabilities").output])
    return keras.Model(model.input, both, name=model.name)


@keras.saving.register_keras_serializable(package="agegate")
class MirrorImage(layers.Layer):
    """The face flipped left to right (NHWC)."""

    def call(self, images):
        return ops.flip(images, axis=2)


def with_mirror_average(model: keras.Model) -> keras.Model:
    """``model`` answering the mean of its estimates for the face and for its mirror image.

    A face and its mirror image are the same person of the same age, but the net's two
    answers differ by a year or more on some faces; their mean errs less (docs/training.md has
    the measured gain) for twice the inference, inside the one .tflite: the till's code and
    the bundle contract do not change, only the cost per face, which export measures.
    """
    inputs = keras.Input(model.input_shape[1:], name="face_rgb")
    mean = layers.Average(name="mirror_average")([model(inputs), model(MirrorImage(name="mirror")(inputs))])
    return keras.Model(inputs, mean, name=f"{model.name}_mirror_average")


@contextmanager
def float32_policy() -> Iterator[None]:
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("float32")
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


def with_ensemble(models: Sequence[keras.Model], outputs: Sequence[OutputSpec] = ()) -> keras.Model:
    """The mean of several nets' answers to the same face, inside one graph.

    Nets trained with different losses or seeds err differently on the same face; their mean
    errs less (docs/model-card.md has the held-out figures), for the sum of their costs. Like
    the mirror average, it changes only the .tflite: the till's code and the bundle contract
    stay as they are. Every net must take the same crop (:func:`ensemble_members` checks that).

    ``outputs``: each net's :class:`OutputSpec` (its answer's map to years), when they differ
    (nets trained from scratch normalise ages by their own training faces). Each answer is then
    mapped to years and back into the first net's units before the mean, so the ensemble answers
    in the first net's units the mean of the nets' ages (before the till clips it)."""
    inputs = keras.Input(models[0].input_shape[1:], name="face_rgb")
    answers = []
    for i, m in enumerate(models):
        answer = keras.Model(m.input, m.output, name=f"member_{i}")(inputs)
        if outputs and (outputs[i].scale, outputs[i].offset) != (outputs[0].scale, outputs[0].offset):
            first, own = outputs[0], outputs[i]
            answer = layers.Rescaling(own.scale / first.scale, (own.offset - first.offset) / first.scale, name=f"member_{i}_units")(answer)
        answers.append(answer)
    return keras.Model(inputs, layers.Average(name="ensemble_average")(answers), name="ensemble")


def ensemble_members(run: RunDir, others: Sequence[RunDir]) -> list[RunDir]:
    """``run`` and ``others``, checked to be averaged: the same crop, input and preprocessing
    (the serving spec but for the answer's units, which :func:`with_ensemble` reconciles); the
    same backbone, starting weights and detector, trained on the same data (so that one
    manifest's provenance and licence describe them all); each with a kept model. ValueError
    naming the first that differs."""
    config = run.load_config()

    def face_spec(c: FitConfig) -> ServingSpec:
        return serving_spec(c).model_copy(update={"output": None})

    for other in others:
        theirs = other.load_config()
        if face_spec(theirs) != face_spec(config):
            raise ValueError(f"{other.path} cuts, sizes or reads its faces otherwise than {run.path} (its serving spec differs): "
                             "only models of one crop and input can be averaged")
        if sorted(Path(d).name for d in theirs.data) != sorted(Path(d).name for d in config.data):
            raise ValueError(f"{other.path} was trained on {', '.join(theirs.data)}, {run.path} on {', '.join(config.data)}: "
                             "the members of an ensemble must share their data (one manifest describes it)")
        for what, mine, its in (("backbone", config.backbone, theirs.backbone), ("starting weights", config.weights, theirs.weights),
                                ("detector", config.detector_spec.key(), theirs.detector_spec.key())):
            if mine != its:
                raise ValueError(f"{other.path} has another {what} ({its}) than {run.path} ({mine}): one manifest describes an ensemble's provenance")
        if not other.model.exists():
            raise ValueError(f"{other.model} is missing: has `agegate-train fit` finished an epoch in {other.path}?")
    return [run, *others]


def load_inference_model(run: RunDir, path: Path | None = None, mirror_average: bool = False,
                         ensemble_with: Sequence[RunDir] = ()) -> keras.Model:
    """The run's best model (or ``path``) for inference and export, computing in float32.

    A model trained with mixed precision is rebuilt in float32 and given the trained weights,
    so converters and CPUs see a plain float32 graph. ``ensemble_with``: other runs whose best
    models are averaged with it (:func:`with_ensemble`). ``mirror_average``: wrapped as a bundle
    exported with ``--mirror-average`` answers (:func:`with_mirror_average`).
    """
    if ensemble_with:
        runs = ensemble_members(run, ensemble_with)
        members = [load_inference_model(r, path if r is run else None) for r in runs]
        model = with_ensemble(members, [serving_spec(r.load_config()).output for r in runs])
        return with_mirror_average(model) if mirror_average else model
    path = path or run.model
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: has `agegate-train fit` finished an epoch in {run.path}?")
    model = keras.models.load_model(path, compile=False)
    if not all(layer.dtype_policy.compute_dtype == "float32" for layer in model.layers):
        with float32_policy():
            plain = build_model(run.load_config(), weights=None, pretrained=False)
        plain.set_weights(model.get_weights())
        model = plain
    if any(layer.name == AGE_AND_DISTRIBUTION for layer in model.layers):  # trained with --label-sigma: the age alone
        model = keras.Model(model.input, model.get_layer("age").output, name=model.name)
    return with_mirror_average(model) if mirror_average else model


def shift_answers(model: keras.Model, val: "FaceSet", spec: ServingSpec, target: float, challenge_age: float) -> tuple[float, ServingSpec]:
    """The operating point ``agegate-export --flag-under18`` gives a bundle: the shift chosen on
    ``val`` (:func:`metrics.answer_shift`) and ``spec`` with it added to ``output.offset``, so the
    bundle, and anything predicting through the spec, answers with it (clipped as ever)."""
    shift = answer_shift(val.ages, predict_ages(model, val.images, spec), target, challenge_age)
    return shift, spec.model_copy(update={"output": spec.output.model_copy(update={"offset": spec.output.offset + shift})})


def predict_ages(model: keras.Model, images: np.ndarray, spec: ServingSpec, batch_size: int = 64) -> np.ndarray:
    """Ages in years for uint8 crops, through the bundle's own normalise and to_age."""
    ages = np.empty(len(images), dtype=np.float32)
    for start in range(0, len(images), batch_size):
        chunk = normalise(images[start : start + batch_size], spec.preprocessing)
        raw = np.asarray(model.predict_on_batch(chunk))
        ages[start : start + len(chunk)] = to_age(raw, spec.output)
    return ages
