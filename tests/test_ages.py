"""agegate.ages: one table of age bands, one lookup, used alike by the till's payloads and training's metrics."""

from __future__ import annotations

import numpy as np

from agegate.ages import AGE_BANDS, BAND_NAMES, age_band
from agegate.edge.events import AGE_BAND_NAMES, TransactionSummary
from agegate.edge.events import age_band as payload_band


def test_each_band_holds_its_ages_and_no_other():
    for name, lo, hi in AGE_BANDS:
        assert age_band(lo) == name
        if hi != float("inf"):
            assert age_band(hi - 0.01) == name and age_band(hi) != name
    assert age_band(-1) == "0-12" and age_band(119.5) == "65+"


def test_the_payloads_enum_and_the_metrics_use_the_same_bands():
    from agegate.training.metrics import band_of

    ages = np.array([0, 12.99, 13, 17.5, 18, 24.99, 25, 34, 35, 49.9, 50, 64.9, 65, 99])
    assert list(band_of(ages)) == [age_band(a) for a in ages] == [payload_band(a) for a in ages]
    assert AGE_BAND_NAMES == (*BAND_NAMES, "unknown") and payload_band(None) == "unknown"
    assert TransactionSummary.model_json_schema()["properties"]["age_band"]["enum"] == list(AGE_BAND_NAMES)
