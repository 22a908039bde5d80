"""The ages agegate decides and reports by, defined once for the till, training, export,
the benchmarks and the backend. Plain Python: anything may import it.

- ``CHALLENGE_AGE``: look under it and the till asks for ID ("Challenge 25"); a till's
  AGEGATE_CHALLENGE_AGE overrides it.
- ``LEGAL_AGE``: under it a customer may not buy (``likely_minor``); AGEGATE_LEGAL_AGE.
- ``MAX_AGE``: the oldest age a label or a model's output may hold.
- ``AGE_BANDS``: the bands of the anonymous analytics (transaction summaries, the backend's
  reports) and of the model card's error tables, with :func:`age_band` their one lookup.
"""

from __future__ import annotations

from bisect import bisect_right

CHALLENGE_AGE = 25.0
LEGAL_AGE = 18.0
MAX_AGE = 120.0

# (name, lowest age, first age of the next band), in age order, covering 0 to infinity.
AGE_BANDS: tuple[tuple[str, float, float], ...] = (
    ("0-12", 0, 13),
    ("13-17", 13, 18),
    ("18-24", 18, 25),
    ("25-34", 25, 35),
    ("35-49", 35, 50),
    ("50-64", 50, 65),
    ("65+", 65, float("inf")),
)
BAND_NAMES: tuple[str, ...] = tuple(name for name, _, _ in AGE_BANDS)
BAND_STARTS: tuple[float, ...] = tuple(lo for _, lo, _ in AGE_BANDS[1:])  # where each band after the first begins


def band_index(age: float) -> int:
    """The position in AGE_BANDS of the band holding ``age`` (below 0 counts as the first)."""
    return bisect_right(BAND_STARTS, age)


def age_band(age: float) -> str:
    """The name of the band holding ``age``."""
    return BAND_NAMES[band_index(age)]
