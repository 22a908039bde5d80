"""What one export is asked to do: every option of ``agegate-export convert``, its default
defined once, here. The command line reads its defaults from :class:`ExportOptions`, and
:func:`agegate.export.exporter.export_run` takes one. No TensorFlow here, so ``--help``
and the option checks stay fast."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from agegate.edge.bundle import VARIANTS, QualityFloors
from agegate.training.metrics import CHALLENGE_AGE


class ExportError(Exception):
    """A run or an option that cannot be exported; the message says why."""


@dataclass(frozen=True)
class ExportOptions:
    variants: Sequence[str] = VARIANTS
    data: Sequence[str] | None = None  # data folders; None: the run's own
    tolerance: float = 0.3  # years a variant's MAE may exceed the Keras model's
    name: str | None = None  # bundle name; None: agegate-age-<backbone>
    version: str | None = None  # bundle version; None: the run directory's name
    limit: int | None = None  # faces per split (smoke runs)
    calibration_size: int = 300  # training faces int8 is calibrated on
    threads: int = 1  # interpreter threads when timing, as the till uses
    challenge_age: float = CHALLENGE_AGE
    overwrite: bool = False
    golden_faces: int = 16  # test faces packed for the till's self-test
    golden_tolerance: float = 1.0  # years, written to the manifest
    golden_images: Sequence[str | Path] = ()  # photos to take the self-test faces from instead
    sign_key: str | Path | None = None  # Ed25519 private key (PEM)
    floors: QualityFloors = field(default_factory=QualityFloors)
    calibrated: bool = False  # the under-18 floor judged at the model's calibrated threshold
    mirror_average: bool = False  # the bundle answers the mean of the face's and its mirror image's estimates
    flag_under18: float | None = None  # shift the answers down until this share of validation under-18s is flagged
    ensemble_with: Sequence[str | Path] = ()  # other runs (same crop, input and data) whose models are averaged with the run's

    def __post_init__(self) -> None:
        unknown = [v for v in self.variants if v not in VARIANTS]
        if unknown:
            raise ExportError(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
        if not 1 <= self.golden_faces <= 256:
            raise ExportError(f"--golden-faces {self.golden_faces}: must be 1-256")
        if self.flag_under18 is not None and not 0.5 <= self.flag_under18 < 1.0:
            raise ExportError(f"--flag-under18 {self.flag_under18}: must be a share from 0.5 to under 1 (0.97 is 97 %)")
        for option, value in (("--calibration-size", self.calibration_size), ("--threads", self.threads), ("--limit", self.limit)):
            if value is not None and value < 1:
                raise ExportError(f"{option} {value}: must be at least 1")


DEFAULTS = ExportOptions()
