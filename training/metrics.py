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

from agegate.edge.events import AGE_BANDS

# Age bands as (name, lowest age, first age of the next band): the same bands the till
# reports in its anonymous transaction summaries, defined once in agegate.edge.events.
BANDS: tuple[tuple[str, float, float], ...] = AGE_BANDS
BAND_NAMES = tuple(name for name, _, _ in BANDS)

CHALLENGE_AGE = 25.0
MINOR_AGE = 18.0  # under this: must be flagged
FALSE_ALARM_AGE = 30.0  # this or older and flagged: a false alarm
DECISION_RANGE = (15.0, 36.0)  # "ages 15-35": 15 <= age < 36
CURVE_THRESHOLDS = tuple(float(t) for t in range(14, 41))


def band_of(ages: np.ndarray | Iterable[float]) -> np.ndarray:
    """The band name of each age (an array of str)."""
    ages = np.asarray(ages, dtype=np.float64)
    edges = np.array([lo for _, lo, _ in BANDS[1:]])
    return np.asarray(BAND_NAMES, dtype=object)[np.searchsorted(edges, ages, side="right")]


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
    return {
        "threshold": float(threshold),
        "under18_n": int(minors.sum()),
        "under18_flagged": float(flagged[minors].mean()) if minors.any() else None,
        "over30_n": int(adults.sum()),
        "over30_flagged": float(flagged[adults].mean()) if adults.any() else None,
    }


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


def headline(summary: dict[str, Any]) -> str:
    """One line for logs: MAE and the challenge figures."""
    c = summary["challenge"]

    def pct(v: float | None) -> str:
        return "n/a" if v is None else f"{100 * v:.1f}%"

    def years(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.2f}"

    return (
        f"MAE {years(summary['mae'])} y (15-35: {years(summary['mae_15_35'])} y) on {summary['n']} faces; "
        f"at {c['threshold']:g}: under-18s flagged {pct(c['under18_flagged'])}, 30+ flagged {pct(c['over30_flagged'])}"
    )
