"""The model bundle: the one definition shared by export (which writes it) and the till (which loads it).

A bundle is a directory holding ``model.tflite`` and ``manifest.json``. The manifest says
everything needed to use the model the way it was trained: how to crop the face out of
the frame, how to turn the crop into the input tensor, and what the output means. The
crop-and-preprocess functions below are the only implementation of that path: training,
evaluation, export and the daemon all call them, so serving cannot drift from training.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal, Sequence

import cv2
import numpy as np
from pydantic import ConfigDict, Field, ValidationError, field_validator

# The validation figures live without OpenCV so the event models can carry them; re-exported here.
from ..files import write_atomically
from .model_figures import Calibration, FlagRates, SourceFigures, StrictModel, Validation  # noqa: F401
from .pydantic_errors import first_error

BUNDLE_FORMAT = "agegate-bundle/1"
MANIFEST_FILE = "manifest.json"
MODEL_FILE = "model.tflite"
# The four ways a bundle's model may be stored (export/convert.py says what each is).
VARIANTS = ("float32", "float16", "dynamic", "int8")
GOLDEN_FILE = "golden.npz"
SIGNATURE_FILE = "signature.ed25519"  # Ed25519 over manifest.json's bytes; see edge/signing.py


class BundleError(Exception):
    """A bundle that cannot be used; the message says why."""


_Strict = StrictModel


class InputSpec(_Strict):
    height: int = Field(gt=0, le=1024)
    width: int = Field(gt=0, le=1024)
    channels: Literal[3] = 3
    color: Literal["RGB", "BGR"] = "RGB"


class Preprocessing(_Strict):
    """Per-pixel affine map applied to the resized crop: ``x = (pixel * scale - mean) / std``."""

    scale: float = 1.0
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)

    @field_validator("std")
    @classmethod
    def _no_zero_std(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        if any(s == 0 for s in v):
            raise ValueError("std must not contain 0")
        return v


# Where YuNet's five landmarks (edge.detectors.LANDMARKS order) sit, on average, in the crop that
# the box framing of the dlib age net (margin -0.05, shift_y 0.08) cuts: fractions of the crop's
# side, from a first measurement on the 3,659 validation faces of the three sources, made
# mirror-symmetric so that a mirrored aligned face is aligned too. `python -m
# agegate.training.framing` re-measures it (docs/model-card/framing-aligned/framing.json,
# "template"): every point within 0.007 of the side, under half a pixel at 64 px; bundles
# record the template they were trained with, so it is kept. five_point_template() moves it to
# any other box framing.
FIVE_POINT_TEMPLATE = ((0.3025, 0.281), (0.6975, 0.281), (0.5, 0.511), (0.3305, 0.6735), (0.6695, 0.6735))
TEMPLATE_FRAMING = (-0.05, 0.08)  # the (margin, shift_y) FIVE_POINT_TEMPLATE was measured in
# Landmarks implying a face this much larger or smaller than its box are a detector's mistake:
# such a face is cut by its box instead.
ALIGN_MAX_SCALE_RATIO = 2.0


class CropSpec(_Strict):
    """How a detector's face becomes the model's view of it.

    ``align`` "box": the box is made square around its centre (side = the larger of width and
    height), moved down by ``shift_y`` times that side, then grown by ``margin`` times that side
    on every edge (a negative margin cuts inside the box: for a net trained on tighter face
    chips than the detector's boxes).

    ``align`` "landmarks": the face is turned, scaled and moved so that the detector's five
    landmarks fall as near as they can (least squares, a similarity transform) to ``template``
    (fractions of the crop's side): every face upright and the same size in the crop however
    the customer tilts their head or the detector draws its box. A face without landmarks (the
    Haar detector), or whose landmarks do not fit its box, is cut by the box as above, which a
    template measured in that framing matches on average.

    Either way, parts falling outside the frame are filled by replicating the border, as
    training did.
    """

    margin: float = Field(default=0.25, ge=-0.4, le=1.0)
    shift_y: float = Field(default=0.0, ge=-0.5, le=0.5)
    align: Literal["box", "landmarks"] = "box"
    template: tuple[tuple[float, float], tuple[float, float], tuple[float, float], tuple[float, float], tuple[float, float]] | None = None

    @field_validator("template")
    @classmethod
    def _template_in_the_crop(cls, v):
        if v is not None:
            points = np.asarray(v, dtype=np.float64)
            if not np.all(np.isfinite(points)) or points.min() < 0.0 or points.max() > 1.0:
                raise ValueError("template points must be fractions of the crop's side, 0 to 1")
            if np.ptp(points[:, 0]) < 0.1 or np.ptp(points[:, 1]) < 0.1:
                raise ValueError("template points must spread over at least 0.1 of the crop each way")
        return v

    def model_post_init(self, _context) -> None:
        if self.align == "landmarks" and self.template is None:
            raise ValueError("crop.align 'landmarks' needs crop.template: five (x, y) points")


class OutputSpec(_Strict):
    """The model's single output value, mapped to years: ``age = raw * scale + offset``, clipped."""

    meaning: Literal["age_years"] = "age_years"
    scale: float = 1.0
    offset: float = 0.0
    min_age: float = 0.0
    max_age: float = 100.0


class TrainingInfo(_Strict):
    """Where the model came from: provenance, for people and for ``agegate-export verify``.
    A till decides nothing from it. Bundles written by other tools may carry only ``data``
    and ``licence``; keys this version does not know are kept as they are."""

    model_config = ConfigDict(extra="allow", frozen=True)
    data: str = ""  # the data sets by name and the sha256 of their labels (no machine's paths)
    licence: str = ""  # the data's and the starting weights' terms
    backbone: str | None = None
    pretrained: str | None = None  # the starting weights
    image_size: int | None = None
    crop_margin: float | None = None
    crop_shift_y: float | None = None
    detector: str | None = None  # the detector that cropped the training faces
    epochs: int | None = None
    best_epoch: int | None = None
    best_val_mae: float | None = None
    seed: int | None = None
    run: dict[str, Any] | None = None  # the run's FitConfig, data folders by name only
    mirror_average: bool | None = None  # the .tflite averages the face's and its mirror image's estimates (twice the cost)
    answer_shift: dict[str, Any] | None = None  # years added to output.offset at export, and the validation share it was chosen for
    ensemble_with: list[dict[str, Any]] | None = None  # other runs whose answers the .tflite averages with this run's (their settings)


class ServingSpec(_Strict):
    """How the till feeds the model and reads its answer: everything a crop-and-estimate
    needs, and nothing about where the model came from. Training and export use it on its
    own (they crop faces as the till will); a :class:`Manifest` is one plus identity and provenance."""

    input: InputSpec
    preprocessing: Preprocessing = Preprocessing()
    crop: CropSpec = CropSpec()
    output: OutputSpec = OutputSpec()


class SelfTest(_Strict):
    """Golden faces packed at export: prepared crops and the ages this very model gave them.

    A till runs them before it takes the bundle into service; every age must come back
    within ``tolerance`` years, or the bundle is refused.
    """

    file: str = GOLDEN_FILE
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    faces: int = Field(ge=1, le=256)
    tolerance: float = Field(default=1.0, gt=0, le=10)


class QualityFloors(_Strict):
    """The least a model must have shown on its validation faces to be accepted (export) or installed (till)."""

    min_under18_flagged: float = Field(default=0.95, ge=0, le=1)
    max_mae: float = Field(default=8.0, gt=0)
    min_prediction_spread: float = Field(default=1.0, ge=0)  # years


def quality_problems(manifest: "Manifest", floors: QualityFloors, calibrated: bool = False) -> list[str]:
    """Why the bundle's recorded validation figures fall short of ``floors``; [] when they do not.

    The share of under-18s flagged is judged at the threshold the till will decide with: the
    challenge age, or with ``calibrated`` the model's calibrated threshold when it has one
    above the challenge age (AGEGATE_DECISION_THRESHOLD=calibrated).
    """
    v = manifest.validation
    if v is None:
        return ["it records no validation figures (export it with a current agegate-export)"]
    problems = []
    rates: FlagRates = v.at_challenge
    if calibrated and v.calibrated is not None and v.calibrated.threshold > v.at_challenge.threshold:
        rates = v.calibrated
    flagged = rates.under18_flagged
    if flagged is None:
        problems.append("its validation faces hold no under-18s, so its Challenge figures are unknown")
    elif flagged < floors.min_under18_flagged:
        problems.append(f"it flags {100 * flagged:.1f} % of under-18s at {rates.threshold:g} on its validation faces; the floor is {100 * floors.min_under18_flagged:g} %")
    if v.mae > floors.max_mae:
        problems.append(f"its validation MAE is {v.mae:.2f} years; the ceiling is {floors.max_mae:g}")
    if v.prediction_spread < floors.min_prediction_spread:
        problems.append(f"its estimates hardly vary (spread {v.prediction_spread:.2f} years, the floor is {floors.min_prediction_spread:g}): it answers much the same age for every face")
    return problems


class Manifest(ServingSpec):
    model_config = ConfigDict(extra="allow", frozen=True)

    format: Literal["agegate-bundle/1"] = BUNDLE_FORMAT
    name: str = Field(min_length=1, max_length=100)
    version: str = Field(min_length=1, max_length=50)
    created_at: datetime = Field(default_factory=lambda: datetime.now(timezone.utc))
    model_file: str = MODEL_FILE
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    variant: Literal[VARIANTS] = "float32"  # type: ignore[valid-type]
    training: TrainingInfo = TrainingInfo()
    metrics: dict[str, Any] = Field(default_factory=dict)
    validation: Validation | None = None
    self_test: SelfTest | None = None

    @field_validator("model_file")
    @classmethod
    def _plain_name(cls, v: str) -> str:
        _check_plain_name(v)
        return v

    @field_validator("self_test")
    @classmethod
    def _plain_golden_name(cls, v: SelfTest | None) -> SelfTest | None:
        if v is not None:
            _check_plain_name(v.file)
        return v


def _check_plain_name(name: str) -> None:
    if Path(name).name != name or name in ("", ".", "..", MANIFEST_FILE, SIGNATURE_FILE):
        raise ValueError(f"{name!r} must be a plain file name inside the bundle")


class Bundle:
    """A loaded, hash-checked bundle: its directory, manifest, model bytes and golden faces."""

    def __init__(self, path: Path, manifest: Manifest, model_bytes: bytes,
                 golden: tuple[np.ndarray, np.ndarray] | None = None, manifest_bytes: bytes = b""):
        self.path = path
        self.manifest = manifest
        self.model_bytes = model_bytes
        self.golden = golden  # (faces uint8 (n, h, w, 3), ages float32 (n,)) or None
        self.manifest_bytes = manifest_bytes  # exactly what a signature covers

    def __repr__(self) -> str:
        m = self.manifest
        return f"Bundle({m.name} {m.version} {m.variant} sha256={m.sha256[:12]}… at {self.path})"


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def load_bundle(path: str | os.PathLike[str]) -> Bundle:
    """Read and check a bundle directory; raise BundleError naming the first problem."""
    path = Path(path)
    manifest_path = path / MANIFEST_FILE
    if not path.is_dir():
        raise BundleError(f"{path}: not a directory")
    try:
        manifest_bytes = manifest_path.read_bytes()
        raw = json.loads(manifest_bytes.decode("utf-8"))
    except FileNotFoundError:
        raise BundleError(f"{manifest_path}: missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{manifest_path}: unreadable: {exc}") from None
    try:
        manifest = Manifest.model_validate(raw)
    except ValidationError as exc:
        raise BundleError(f"{manifest_path}: {first_error(exc, 'manifest')}") from None
    model_path = path / manifest.model_file
    try:
        model_bytes = model_path.read_bytes()
    except OSError as exc:
        raise BundleError(f"{model_path}: unreadable: {exc.strerror or exc}") from None
    actual = sha256_bytes(model_bytes)
    if actual != manifest.sha256:
        raise BundleError(
            f"{model_path}: sha256 {actual} does not match the manifest's {manifest.sha256}"
        )
    golden = _load_golden(path, manifest) if manifest.self_test else None
    return Bundle(path, manifest, model_bytes, golden, manifest_bytes)


def _load_golden(path: Path, manifest: Manifest) -> tuple[np.ndarray, np.ndarray]:
    spec = manifest.self_test
    assert spec is not None
    golden_path = path / spec.file
    try:
        data = golden_path.read_bytes()
    except OSError as exc:
        raise BundleError(f"{golden_path}: unreadable: {exc.strerror or exc}") from None
    if sha256_bytes(data) != spec.sha256:
        raise BundleError(f"{golden_path}: sha256 does not match the manifest's {spec.sha256}")
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            faces, ages = npz["faces"], npz["ages"].astype(np.float32)
    except (ValueError, KeyError, OSError) as exc:
        raise BundleError(f"{golden_path}: not a golden-face file: {exc}") from None
    want = (spec.faces, manifest.input.height, manifest.input.width, manifest.input.channels)
    if faces.dtype != np.uint8 or faces.shape != want or ages.shape != (spec.faces,):
        raise BundleError(f"{golden_path}: holds faces {faces.shape} {faces.dtype}, expected {want} uint8")
    return faces, ages


def write_bundle(
    path: str | os.PathLike[str],
    model_bytes: bytes,
    *,
    golden: tuple[np.ndarray, np.ndarray] | None = None,
    golden_tolerance: float = 1.0,
    **manifest_fields: Any,
) -> Manifest:
    """Write ``model.tflite`` (and ``golden.npz``) and a manifest describing exactly those bytes.

    ``manifest_fields`` are the Manifest fields other than ``sha256`` and ``self_test``
    (computed here). ``golden`` is (prepared uint8 faces, the ages this model gives them).
    Files are written to temporary names and renamed, so a reader never sees half a bundle;
    the manifest goes last. A signature (edge/signing.py) is added afterwards.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    if golden is not None:
        faces, ages = np.ascontiguousarray(golden[0], dtype=np.uint8), np.asarray(golden[1], dtype=np.float32)
        buf = io.BytesIO()
        np.savez_compressed(buf, faces=faces, ages=ages)
        write_atomically(path / GOLDEN_FILE, buf.getvalue())
        manifest_fields["self_test"] = SelfTest(sha256=sha256_bytes(buf.getvalue()), faces=len(ages),
                                                tolerance=golden_tolerance)
    manifest = Manifest(sha256=sha256_bytes(model_bytes), **manifest_fields)
    write_atomically(path / manifest.model_file, model_bytes)
    text = json.dumps(manifest.model_dump(mode="json", exclude_none=True), indent=2, ensure_ascii=False) + "\n"
    (path / SIGNATURE_FILE).unlink(missing_ok=True)  # it signed the manifest being replaced
    write_atomically(path / MANIFEST_FILE, text.encode("utf-8"))
    return manifest


# --- The one crop-and-preprocess path -------------------------------------------------


def crop_box(box: tuple[float, float, float, float], crop: CropSpec) -> tuple[int, int, int, int]:
    """The square region (x, y, side, side) cut around a detector box ``(x, y, w, h)``."""
    x, y, w, h = box
    side = max(w, h) * (1.0 + 2.0 * crop.margin)
    cx, cy = x + w / 2.0, y + h / 2.0 + crop.shift_y * max(w, h)
    s = max(1, int(round(side)))
    return int(round(cx - s / 2.0)), int(round(cy - s / 2.0)), s, s


def prepare_face(
    image_bgr: np.ndarray,
    box: tuple[float, float, float, float],
    spec: ServingSpec,
    landmarks: Sequence[Sequence[float]] | None = None,
) -> np.ndarray:
    """Crop the face at ``box`` (with the detector's five ``landmarks``, when it gives them) from a
    BGR frame and resize it to the model's input, as ``spec.crop`` says.

    Returns uint8 ``(height, width, 3)`` in the spec's colour order. Training caches
    these arrays; serving feeds them to :func:`normalise`.
    """
    if image_bgr.ndim != 3 or image_bgr.shape[2] != 3:
        raise ValueError(f"expected a BGR image of shape (h, w, 3), got {image_bgr.shape}")
    size = (spec.input.width, spec.input.height)
    matrix = None
    if spec.crop.align == "landmarks" and landmarks is not None:
        matrix = alignment(landmarks, box, spec.crop.template, size)  # type: ignore[arg-type]
    face = _aligned_face(image_bgr, matrix, size) if matrix is not None else _boxed_face(image_bgr, box, spec.crop, size)
    if spec.input.color == "RGB":
        face = cv2.cvtColor(face, cv2.COLOR_BGR2RGB)
    return face


def _boxed_face(image_bgr: np.ndarray, box: tuple[float, float, float, float], crop: CropSpec, size: tuple[int, int]) -> np.ndarray:
    x, y, s, _ = crop_box(box, crop)
    ih, iw = image_bgr.shape[:2]
    # Pad only as much as the square sticks out of the frame.
    left, top = max(0, -x), max(0, -y)
    right, bottom = max(0, x + s - iw), max(0, y + s - ih)
    region = image_bgr[max(0, y) : min(ih, y + s), max(0, x) : min(iw, x + s)]
    if region.size == 0:
        raise ValueError(f"face box {box} lies outside the {iw}x{ih} image")
    if left or top or right or bottom:
        region = cv2.copyMakeBorder(region, top, bottom, left, right, cv2.BORDER_REPLICATE)
    interpolation = cv2.INTER_AREA if region.shape[0] > size[1] else cv2.INTER_LINEAR
    return cv2.resize(region, size, interpolation=interpolation)


def five_point_template(margin: float, shift_y: float) -> tuple[tuple[float, float], ...]:
    """FIVE_POINT_TEMPLATE as it falls in the crop of another box framing (``margin``, ``shift_y``): an
    aligned crop frames the average face as the box framing does, and a face cut by its box (no
    landmarks) is framed as its aligned neighbours."""
    m0, s0 = TEMPLATE_FRAMING
    # In units of the box's side, from the box's centre: point = (p - 0.5) * crop side + crop centre.
    points = [((x - 0.5) * (1 + 2 * m0), (y - 0.5) * (1 + 2 * m0) + s0) for x, y in FIVE_POINT_TEMPLATE]
    return tuple((round(x / (1 + 2 * margin) + 0.5, 4), round((y - shift_y) / (1 + 2 * margin) + 0.5, 4)) for x, y in points)


def alignment(
    landmarks: Sequence[Sequence[float]],
    box: tuple[float, float, float, float],
    template: Sequence[Sequence[float]],
    size: tuple[int, int],
) -> np.ndarray | None:
    """The 2x3 similarity (rotation, uniform scale, shift) taking ``landmarks`` in the frame as near as
    possible to ``template`` in a crop of ``size`` (least squares; Umeyama 1991), or None where the
    landmarks cannot be trusted: not five finite points, or a face size that disagrees with the box."""
    src = np.asarray(landmarks, dtype=np.float64)
    if src.shape != (5, 2) or not np.all(np.isfinite(src)):
        return None
    dst = np.asarray(template, dtype=np.float64) * np.asarray(size, dtype=np.float64)
    src_mean, dst_mean = src.mean(axis=0), dst.mean(axis=0)
    s, d = src - src_mean, dst - dst_mean
    spread = float((s**2).sum())
    if spread < 1e-6:
        return None
    # The best rotation and scale in closed form: with points as complex numbers, d ~ a * s.
    a = complex((s[:, 0] * d[:, 0] + s[:, 1] * d[:, 1]).sum(), (s[:, 0] * d[:, 1] - s[:, 1] * d[:, 0]).sum()) / spread
    scale = abs(a)
    # The box says how big the face is; landmarks implying another size are wrong.
    box_side = max(float(box[2]), float(box[3]), 1.0)
    expected = size[0] / box_side  # a crop of about the box's side
    if not (1 / ALIGN_MAX_SCALE_RATIO <= scale / expected <= ALIGN_MAX_SCALE_RATIO):
        return None
    rotation = np.array([[a.real, -a.imag], [a.imag, a.real]])
    return np.hstack([rotation, (dst_mean - rotation @ src_mean)[:, None]])


def _aligned_face(image_bgr: np.ndarray, matrix: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    # warpAffine samples without smoothing: shrinking a face several times over would alias. So
    # warp to up to 4 times the input size (at most 1.5 frame pixels to one), then average down
    # as the box path does.
    shrink = 1.0 / max(abs(complex(matrix[0, 0], matrix[1, 0])), 1e-9)
    steps = int(np.clip(np.ceil(shrink / 1.5), 1, 4))
    big = (size[0] * steps, size[1] * steps)
    face = cv2.warpAffine(image_bgr, matrix * np.array([[steps], [steps]]), big, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return cv2.resize(face, size, interpolation=cv2.INTER_AREA) if steps > 1 else face


def normalise(faces: np.ndarray, pre: Preprocessing, out: np.ndarray | None = None) -> np.ndarray:
    """Map uint8 faces ``(..., h, w, 3)`` to the float32 model input; writes into ``out`` if given."""
    scale = np.float32(pre.scale)
    mean = np.asarray(pre.mean, dtype=np.float32)
    std = np.asarray(pre.std, dtype=np.float32)
    if out is None:
        out = np.empty(faces.shape, dtype=np.float32)
    np.multiply(faces, scale, out=out, casting="unsafe")
    out -= mean
    out /= std
    return out


def to_age(raw: np.ndarray, spec: OutputSpec) -> np.ndarray:
    """Map the model's raw outputs to ages in years."""
    ages = np.asarray(raw, dtype=np.float32).reshape(-1) * spec.scale + spec.offset
    return np.clip(ages, spec.min_age, spec.max_age)
