"""A training run: its settings and its directory.

Everything a run produces lives in one directory::

    RUN/
      config.json        every fit setting, the data (path, description, licence) and the
                         age normalisation learnt from the training split
      data-report.json   what was read: counts per split and band, skipped entries, fallbacks
      checkpoints/       epoch-001.keras ...: model + optimizer after each epoch (the last few)
      history.csv        one row per epoch: loss, age MAE, val figures, learning rate, seconds
      sessions.jsonl     one line per `fit` that trained it (a resume may be on another machine):
                         when, from which epoch, the CPU and its vector instructions, GPUs, versions
      model.keras        the best epoch by validation MAE
      metrics.json       `agegate-train eval`: the test figures
      predictions.csv    `agegate-train eval`: file, true age, predicted age
      plots/             learning curves, predicted vs true, error by band, threshold curve

The serving half of the model bundle's manifest (input size, preprocessing, crop margin,
output mapping) is derived from the config in one place, :func:`serving_spec`, used
to cut training crops and to write the exported bundle.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
import typing
from typing import Any

from agegate.edge.bundle import CropSpec, InputSpec, OutputSpec, Preprocessing, ServingSpec, five_point_template

from agegate.edge.detectors import DEFAULT_KIND
from agegate.ages import MAX_AGE
from agegate.files import write_atomically

from .faces import DetectorSpec

BACKBONES = ("resnet50", "efficientnetb0", "mobilenetv3small", "dlibresnet10")
ALIGNS = typing.get_args(CropSpec.model_fields["align"].annotation)  # CropSpec.align's choices: "box", "landmarks"
BEST_BY = ("mae", "minors")
VAL_MAE, VAL_MINORS_FLAGGED = "val_age_mae", "val_under18_flagged"  # history.csv columns the best epoch is chosen on
PRETRAINED = "dlibresnet10"  # starts from dlib's CC0 face-age weights (training/pretrained.py), trained at 64 px


@dataclass
class FitConfig:
    """The settings of one training run (``config.json``)."""

    data: list[str]  # data folders (sources), each with its own split
    backbone: str = "resnet50"
    weights: str | None = None  # local ImageNet weights (.h5/.weights.h5, no top); None: from scratch
    image_size: int | None = None  # None: 64 for dlibresnet10 (as dlib trained it), 96 for the others
    margin: float = 0.1
    shift_y: float = 0.0  # the crop's centre moved down by this fraction of the box side (see CropSpec)
    align: str = "box"  # "landmarks": faces turned and scaled onto five_point_template(margin, shift_y) (see CropSpec)
    detector: str = DEFAULT_KIND
    detector_model: str | None = None
    epochs: int = 15
    batch_size: int = 32
    learning_rate: float | None = None  # None: 1e-3 from scratch, 1e-4 from ImageNet weights
    seed: int = 1234
    limit: int | None = None  # at most this many faces per split (smoke runs)
    dropout: float = 0.2
    huber_delta: float = 5.0  # years: errors beyond this count linearly
    overestimate_penalty: float = 0.0  # an over-estimate of someone under overestimate_below counts 1 + this times
    overestimate_below: float | None = None  # years; None: the challenge age (25)
    wrong_side_penalty: float = 0.0  # an under-18 estimated 23+ or someone 30+ estimated under 27 counts 1 + this times
    rank_penalty: float = 0.0  # each (under-18, 30+) pair of a batch estimated under 12 years apart adds this x the shortfall
    label_sigma: float = 0.0  # years; > 0: also fit the age classes to a normal distribution this wide around the age (dlibresnet10)
    label_penalised: bool = False  # the over-estimate and wrong-side weights weigh that term too (False: the Huber part only)
    label_weight: float = 5.0  # its weight: the Huber loss (delta 5 years) pulls about 5x as hard as DLDL-v2's L1, so 5 keeps their balance
    anchor_weight: float = 0.0  # > 0: add this x the squared distance of the weights from dlib's published ones to the loss (L2-SP)
    mixed_precision: str = "auto"  # auto: on with GPUs; on; off
    keep_checkpoints: int = 2
    best_by: str = "mae"  # the epoch kept as model.keras: "mae" lowest validation MAE; "minors" see best_epoch()
    best_min_flagged: float = 0.97  # with best_by "minors": the share of validation under-18s an epoch must flag
    balance: float = 0.5  # sample faces with weight 1 / (faces in the band) ** balance; 0: as they come
    balance_gender: bool = False  # within each age band, draw women and men equally (where the data says which)
    balance_ethnicity: bool = False  # within each age band, draw each labelled ethnic group equally (UTKFace's labels)
    epoch_size: int | None = None  # faces drawn per epoch (default: the training set's size)
    # Filled in when the run starts:
    target_offset: float | None = None  # age = raw * target_scale + target_offset
    target_scale: float | None = None
    data_description: str = ""
    data_licence: str = ""
    data_source: str = ""

    def __post_init__(self) -> None:
        if isinstance(self.data, (str, Path)):  # runs written before several sources were possible
            self.data = [str(self.data)]
        self.data = [str(d) for d in self.data]
        if self.image_size is None:  # resolved here, so config.json always says the size a run used
            self.image_size = 64 if self.backbone == PRETRAINED else 96

    @property
    def pretrained(self) -> bool:
        """Whether the run starts from trained weights (ImageNet, or the face-age weights)."""
        return bool(self.weights) or self.backbone == PRETRAINED

    @property
    def lr(self) -> float:
        if self.learning_rate is not None:
            return self.learning_rate
        return 1e-4 if self.pretrained else 1e-3

    @property
    def detector_spec(self) -> DetectorSpec:
        return DetectorSpec(self.detector, self.detector_model)

    def check(self) -> None:
        """ValueError naming the first setting that cannot work."""
        if self.backbone not in BACKBONES:
            raise ValueError(f"--backbone {self.backbone!r}: choose one of {', '.join(BACKBONES)}")
        if not 32 <= self.image_size <= 512:
            raise ValueError(f"--image-size {self.image_size}: must be 32-512 pixels")
        if not -0.4 <= self.margin <= 1.0:
            raise ValueError(f"--margin {self.margin}: must be -0.4 to 1")
        if not -0.5 <= self.shift_y <= 0.5:
            raise ValueError(f"--shift-y {self.shift_y}: must be -0.5 to 0.5")
        if self.align not in ALIGNS:
            raise ValueError(f"--align {self.align!r}: choose one of {', '.join(ALIGNS)}")
        for name in ("epochs", "batch_size", "keep_checkpoints"):
            if getattr(self, name) < 1 and not (name == "epochs" and self.epochs == 0 and self.backbone == PRETRAINED):
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1" + (f" (0 only with --backbone {PRETRAINED}: its weights as published)" if name == "epochs" else ""))
        if self.limit is not None and self.limit < 2:
            raise ValueError("--limit must be at least 2")
        if self.learning_rate is not None and not 0 < self.learning_rate < 1:
            raise ValueError(f"--learning-rate {self.learning_rate}: must be between 0 and 1")
        if self.mixed_precision not in ("auto", "on", "off"):
            raise ValueError("--mixed-precision must be auto, on or off")
        if self.weights and not Path(self.weights).is_file():
            raise ValueError(f"--weights {self.weights}: no such file (weights are never downloaded)")
        if self.backbone == PRETRAINED:
            if self.weights:
                raise ValueError(f"--backbone {PRETRAINED} starts from its own face-age weights: drop --weights")
            from .pretrained import check_image_size  # the net's own rule (its import loads Keras)

            try:
                check_image_size(self.image_size)
            except ValueError as e:
                raise ValueError(f"--image-size {self.image_size}: {e}") from None
        if not 0.0 <= self.overestimate_penalty <= 10.0:
            raise ValueError(f"--overestimate-penalty {self.overestimate_penalty}: must be 0-10")
        if self.overestimate_below is not None and not 1.0 <= self.overestimate_below <= 80.0:
            raise ValueError(f"--overestimate-below {self.overestimate_below}: must be an age, 1-80 years")
        if self.label_sigma and self.backbone != PRETRAINED:
            raise ValueError(f"--label-sigma needs an age-class head: only --backbone {PRETRAINED} has one")
        if not 0.0 <= self.label_sigma <= 20.0:
            raise ValueError(f"--label-sigma {self.label_sigma}: must be 0-20 years")
        if self.label_penalised and not self.label_sigma:
            raise ValueError("--label-penalised weighs the label-distribution term: it needs --label-sigma")
        if not 0.0 <= self.label_weight <= 100.0:
            raise ValueError(f"--label-weight {self.label_weight}: must be 0-100")
        if not 0.0 <= self.anchor_weight <= 100.0:
            raise ValueError(f"--anchor-weight {self.anchor_weight}: must be 0-100")
        # Only the face-age net starts with every weight known: an ImageNet backbone's new head
        # starts from a random draw, which a resume could not draw again to anchor to.
        if self.anchor_weight and self.backbone != PRETRAINED:
            raise ValueError(f"--anchor-weight pulls the weights towards dlib's published ones: it needs --backbone {PRETRAINED}")
        if not 0.0 <= self.wrong_side_penalty <= 10.0:
            raise ValueError(f"--wrong-side-penalty {self.wrong_side_penalty}: must be 0-10")
        if not 0.0 <= self.rank_penalty <= 10.0:
            raise ValueError(f"--rank-penalty {self.rank_penalty}: must be 0-10")
        if not 0.0 <= self.balance <= 1.0:
            raise ValueError(f"--balance {self.balance}: must be 0-1")
        if self.best_by not in BEST_BY:
            raise ValueError(f"--best-by {self.best_by!r}: choose one of {', '.join(BEST_BY)}")
        if not 0.0 < self.best_min_flagged <= 1.0:
            raise ValueError(f"--best-min-flagged {self.best_min_flagged}: must be a share, above 0 and at most 1")
        if self.epoch_size is not None and self.epoch_size < self.batch_size:
            raise ValueError(f"--epoch-size {self.epoch_size}: must be at least the batch size")

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> "FitConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in known})


def serving_spec(config: FitConfig) -> ServingSpec:
    """The till's view of this run's model: input, preprocessing, crop and output.

    The model takes RGB pixel values 0-255 and carries its backbone's own normalisation
    as layers, so the bundle's preprocessing is the identity (scale 1, mean 0, std 1).
    It answers the normalised age, which ``output`` maps back to years. Export writes
    these into each bundle's manifest, beside the model's identity and provenance.
    """
    if config.target_offset is None or config.target_scale is None:
        raise ValueError("the run has no age normalisation yet (it is set when fit starts)")
    return ServingSpec(
        input=InputSpec(height=config.image_size, width=config.image_size, color="RGB"),
        preprocessing=Preprocessing(scale=1.0, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0)),
        crop=CropSpec(margin=config.margin, shift_y=config.shift_y, align=config.align,
                      template=five_point_template(config.margin, config.shift_y) if config.align == "landmarks" else None),
        output=OutputSpec(scale=config.target_scale, offset=config.target_offset, min_age=0.0, max_age=MAX_AGE),
    )


class RunDir:
    """The paths of a run directory (see the module docstring)."""

    CHECKPOINT = re.compile(r"^epoch-(\d{3,})\.keras$")

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        self.config_file = self.path / "config.json"
        self.data_report = self.path / "data-report.json"
        self.checkpoints = self.path / "checkpoints"
        self.history = self.path / "history.csv"
        self.sessions = self.path / "sessions.jsonl"
        self.model = self.path / "model.keras"
        self.metrics = self.path / "metrics.json"
        self.predictions = self.path / "predictions.csv"
        self.plots = self.path / "plots"
        self.cache = self.path / "cache"

    @property
    def name(self) -> str:
        return self.path.resolve().name

    def checkpoint(self, epoch: int) -> Path:
        return self.checkpoints / f"epoch-{epoch:03d}.keras"

    def saved_epochs(self) -> list[int]:
        """Epochs (1-based) that have a complete checkpoint, oldest first."""
        if not self.checkpoints.is_dir():
            return []
        return sorted(int(m.group(1)) for p in self.checkpoints.iterdir() if (m := self.CHECKPOINT.match(p.name)))

    def load_config(self) -> FitConfig:
        try:
            return FitConfig.from_json(json.loads(self.config_file.read_text(encoding="utf-8")))
        except FileNotFoundError:
            raise FileNotFoundError(f"{self.path} is not a training run: {self.config_file.name} is missing") from None

    def save_config(self, config: FitConfig) -> None:
        write_json(self.config_file, config.to_json())


def write_json(path: Path, data: Any) -> None:
    """Write JSON through a temporary file, so a reader never sees half of it."""
    write_atomically(path, json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")


def best_epoch(history: list[dict[str, float]], config: FitConfig) -> dict[str, float] | None:
    """The row of ``history`` whose model a run keeps (``model.keras``), by ``config.best_by``.

    * ``mae``: the lowest validation MAE.
    * ``minors``: the lowest validation MAE among the epochs that flag at least
      ``best_min_flagged`` of the validation under-18s at the challenge age; if none does, the
      epoch that flags the most. Lowest MAE alone fights a recipe that pulls young faces'
      estimates down on purpose (the over-estimate penalty): the less fitted, less biased early
      epoch wins, and it lets more minors through on a source the run never saw.

    Adding a row only ever makes that row the best or leaves the best as it was, so a run can
    save its best model as it goes. None when no row has a validation MAE.
    """
    rows = [r for r in history if VAL_MAE in r]
    if not rows:
        return None
    if config.best_by == "minors":
        if any(VAL_MINORS_FLAGGED not in r for r in rows):
            raise ValueError(f"--best-by minors needs {VAL_MINORS_FLAGGED} for every epoch; this run's history.csv lacks it (a run older than that figure)")
        eligible = [r for r in rows if r[VAL_MINORS_FLAGGED] >= config.best_min_flagged]
        if not eligible:
            return max(rows, key=lambda r: (r[VAL_MINORS_FLAGGED], -r[VAL_MAE]))
        rows = eligible
    return min(rows, key=lambda r: r[VAL_MAE])


def read_history(path: Path) -> list[dict[str, float]]:
    """A run's history.csv, one dict per epoch (no Keras needed to read it)."""
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(f)]


def kept_epoch(run: RunDir, config: FitConfig) -> tuple[int | None, float | None]:
    """The epoch ``run`` keeps as its model (:func:`best_epoch` over its history) and that epoch's validation MAE."""
    best = best_epoch(read_history(run.history), config)
    return (int(best["epoch"]), best[VAL_MAE]) if best else (None, None)
