"""A model's validation figures, as its signed manifest records them and its till's status reports them.

Kept apart from edge/bundle.py (which needs OpenCV to crop faces) so that the event models
(edge/events.py), and the backend that reads them (agegate.backend), import pydantic only.
bundle.py re-exports these names; export writes them, the till reads them.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class StrictModel(BaseModel):
    # allow_inf_nan=False: a NaN scale or figure would make every comparison false and slip
    # through every check downstream.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class FlagRates(StrictModel):
    """What a till would do with the model's estimates at one threshold, on labelled faces."""

    threshold: float
    under18_flagged: float | None = Field(default=None, ge=0, le=1)  # share of under-18s estimated under the threshold
    teen_flagged: float | None = Field(default=None, ge=0, le=1)  # the same for 13-17-year-olds
    over30_flagged: float | None = Field(default=None, ge=0, le=1)  # people 30+ flagged: the cost


class Calibration(FlagRates):
    """The lowest threshold that flags ``target`` of the under-18s on the validation faces."""

    target: float = Field(gt=0, le=1)


class SourceFigures(StrictModel):
    faces: int = Field(ge=0)
    mae: float | None = Field(default=None, ge=0)
    at_challenge: FlagRates | None = None


class Validation(StrictModel):
    """The model's figures on the validation faces of every source, recorded (and signed) at export.

    A till shows them, uses ``calibrated.threshold`` when told to, and refuses a bundle whose
    figures fall below its floors (edge/bundle.py's ``quality_problems``).
    """

    split: str = "val"
    faces: int = Field(ge=1)
    challenge_age: float = Field(gt=0, le=100)
    mae: float = Field(ge=0)
    prediction_spread: float = Field(ge=0)  # standard deviation of the estimates: ~0 for a constant model
    at_challenge: FlagRates
    calibrated: Calibration | None = None
    sources: dict[str, SourceFigures] = Field(default_factory=dict)
