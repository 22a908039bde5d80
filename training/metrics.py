"""The accuracy figures of an age model: one definition for `agegate-train eval` and `agegate-export`.

Two kinds of figure matter for Challenge 25:

* how far off the estimate is (mean absolute error, overall, per age band and for the
  ages 15-35 where the decision is made), and
* what the till would do with it: a customer is *flagged* (asked for ID) when the estimate
  is under the threshold, by default the challenge age of 25. Under-18s must nearly all be
  flagged; people aged 30+ who are flagged are false alarms that annoy customers.

Everything here is plain numpy on arrays of true and predicted ages, so it is cheap to
unit-test and needs no TensorFlow.
"""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np

from agegate.ages import BAND_NAMES, BAND_STARTS, CHALLENGE_AGE
from agegate.ages import LEGAL_AGE as MINOR_AGE  # under this: must be flagged
TEEN_AGE = 13.0  # 13-17: the teenagers who actually try to buy alcohol
FALSE_ALARM_AGE = 30.0  # this or older and flagged: a false alarm
CALIBRATION_TARGET = 0.99  # share of under-18s a calibrated threshold flags
DECISION_RANGE = (15.0, 36.0)  # "ages 15-35": 15 <= age < 36
CURVE_THRESHOLDS = tuple(float(t) for t in range(14, 41))


def band_of(ages: np.ndarray | Iterable[float]) -> np.ndarray:
    """The band name of each age (an array of str)."""
    ages = np.asarray(ages, dtype=np.float64)  # searchsorted "right" is agegate.ages.band_index, vectorised
    return np.asarray(BAND_NAMES, dtype=object)[np.searchsorted(np.array(BAND_STARTS), ages, side="right")]


def mae(true: np.ndarray, pred: np.ndarray) -> float | None:
    """Mean absolute error in years; None for no samples."""
    true, pred = np.asarray(true, dtype=np.float64), np.asarray(pred, dtype=np.float64)
    return float(np.mean(np.abs(pred - true))) if true.size else None


def mae_by_band(true: np.ndarray, pred: np.ndarray) -> dict[str, dict[str, Any]]:
    """{band: {"n": count, "mae": years or None}} for every band, empty ones included."""
    true, pred = np.asarray(true, dtype=np.float64), np.asarray(pred, dtype=np.float64)
    bands = band_of(true)
    return {name: {"n": int(np.sum(bands == name)), "mae": mae(true[bands == name], pred[bands == name])} for name in BAND_NAMES}


def flagged_share(true: np.ndarray, pred: np.ndarray, threshold: float) -> dict[str, Any]:
    """At one threshold: the share of under-18s flagged and of people aged 30+ flagged."""
    true, pred = np.asarray(true, dtype=np.float64), np.asarray(pred, dtype=np.float64)
    flagged = pred < threshold
    minors, adults = true < MINOR_AGE, true >= FALSE_ALARM_AGE
    teens = (true >= TEEN_AGE) & minors
    return {
        "threshold": float(threshold),
        "under18_n": int(minors.sum()),
        "under18_flagged": float(flagged[minors].mean()) if minors.any() else None,
        "teen_n": int(teens.sum()),
        "teen_flagged": float(flagged[teens].mean()) if teens.any() else None,
        "over30_n": int(adults.sum()),
        "over30_flagged": float(flagged[adults].mean()) if adults.any() else None,
    }


def calibrated_threshold(true: np.ndarray, pred: np.ndarray, target: float = CALIBRATION_TARGET) -> dict[str, Any] | None:
    """The lowest estimate threshold that flags ``target`` of the under-18s, and what it costs.

    Rounded up to a tenth of a year; :func:`flagged_share` at that threshold (the adults
    flagged are the cost). None when there are no under-18s to calibrate on.
    """
    true, pred = np.asarray(true, dtype=np.float64), np.asarray(pred, dtype=np.float64)
    minors = pred[true < MINOR_AGE]
    if not minors.size:
        return None
    ranked = np.sort(minors)
    k = int(np.ceil(target * minors.size)) - 1  # the k+1 lowest estimates must be under the threshold
    threshold = float(np.floor(ranked[k] * 10) / 10 + 0.1)  # the next tenth strictly above it
    return {"target": float(target), **flagged_share(true, pred, threshold)}


def answer_shift(true: np.ndarray, pred: np.ndarray, target: float, challenge_age: float = CHALLENGE_AGE) -> float:
    """Years to add to every answer (zero or less) so that ``target`` of the under-18s are estimated
    under ``challenge_age``: the model's operating point moved, its ranking of faces unchanged.

    It is :func:`calibrated_threshold` turned into a correction of the answers, so that a till
    deciding at the plain challenge age flags that share; 0 when the model already does.
    """
    calibrated = calibrated_threshold(true, pred, target)
    if calibrated is None:
        raise ValueError("no under-18s among the faces: nothing to choose a shift from")
    return round(min(0.0, challenge_age - calibrated["threshold"]), 1)


MIN_SPREAD = 1.0  # years: predictions spread less than this are a constant model


def constant_predictions(pred: np.ndarray) -> bool:
    """Whether a model answers (nearly) the same age whatever the face: it has learnt nothing."""
    pred = np.asarray(pred, dtype=np.float64)
    return bool(pred.size > 1 and (not np.all(np.isfinite(pred)) or float(np.std(pred)) < MIN_SPREAD))


def threshold_curve(true: np.ndarray, pred: np.ndarray, thresholds: Iterable[float] = CURVE_THRESHOLDS) -> list[dict[str, Any]]:
    """:func:`flagged_share` at each threshold: how moving the threshold trades the two off."""
    return [flagged_share(true, pred, t) for t in thresholds]


def summarise(true: np.ndarray, pred: np.ndarray, challenge_age: float = CHALLENGE_AGE) -> dict[str, Any]:
    """Every figure of one model on one set of faces, as JSON-ready numbers."""
    true, pred = np.asarray(true, dtype=np.float64), np.asarray(pred, dtype=np.float64)
    lo, hi = DECISION_RANGE
    decision = (true >= lo) & (true < hi)
    return {
        "n": int(true.size),
        "mae": mae(true, pred),
        "mae_by_band": mae_by_band(true, pred),
        "mae_15_35": mae(true[decision], pred[decision]),
        "n_15_35": int(decision.sum()),
        "bias": float(np.mean(pred - true)) if true.size else None,
        "challenge": {"age": float(challenge_age), **flagged_share(true, pred, challenge_age)},
    }


def summarise_sources(true: np.ndarray, pred: np.ndarray, sources: np.ndarray, challenge_age: float = CHALLENGE_AGE) -> dict[str, Any]:
    """:func:`summarise` of all faces pooled, plus ``sources``: the same for each source on its own."""
    sources = np.asarray(sources, dtype=object)
    result = summarise(true, pred, challenge_age)
    names = list(dict.fromkeys(str(s) for s in sources))
    result["sources"] = {n: summarise(np.asarray(true)[sources == n], np.asarray(pred)[sources == n], challenge_age) for n in names}
    return result


def headline(summary: dict[str, Any]) -> str:
    """One line for logs: MAE and the challenge figures."""
    c = summary["challenge"]

    def pct(v: float | None) -> str:
        return "n/a" if v is None else f"{100 * v:.1f}%"

    def years(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.2f}"

    return (
        f"MAE {years(summary['mae'])} y (15-35: {years(summary['mae_15_35'])} y) on {summary['n']} faces; "
        f"at {c['threshold']:g}: under-18s flagged {pct(c['under18_flagged'])} (13-17: {pct(c.get('teen_flagged'))}), "
        f"30+ flagged {pct(c['over30_flagged'])}"
    )
