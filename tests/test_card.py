"""The model card's figures (`python -m agegate.training.card`): bundles measured through the
till's own `agegate-edge estimate --json`, and `--update`, which measures one bundle again and
keeps every other entry as it was measured."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from agegate.edge.config import CC0_BUNDLE_DIR, DEFAULT_BUNDLE_DIR
from conftest import require_all_age_faces, require_utkface

pytestmark = pytest.mark.slow


def _card(out, *args):
    data = [str(require_utkface()), str(require_all_age_faces())]
    return subprocess.run([sys.executable, "-m", "agegate.training.card", "--data", *data, "--out", str(out), *args],
                          capture_output=True, text=True, timeout=600)


def test_the_card_measures_bundles_and_an_update_keeps_what_it_was_not_asked_to_measure(tmp_path):
    first = _card(tmp_path, "--limit", "6", "--bundle", f"default={DEFAULT_BUNDLE_DIR}", "--bundle", f"cc0={DEFAULT_BUNDLE_DIR}")
    assert first.returncode == 0, first.stderr[-3000:]
    card = json.loads((tmp_path / "card.json").read_text())
    assert list(card["bundles"]) == ["default", "cc0"] and card["sources"] == ["utkface-part1", "all-age-faces"]
    part1 = card["bundles"]["default"]["sources"]["utkface-part1"]
    assert part1["photos"] == 6 and part1["photos"] - part1["detector_misses"] == part1["n"] and 0 < part1["mae"] < 30
    assert "| default | utkface-part1 | 6 |" in (tmp_path / "figures.md").read_text()

    # cc0 measured again, now with the CC0 bundle: the default's entry is kept, untouched.
    second = _card(tmp_path, "--limit", "6", "--update", "--bundle", f"cc0={CC0_BUNDLE_DIR}")
    assert second.returncode == 0, second.stderr[-3000:]
    updated = json.loads((tmp_path / "card.json").read_text())
    assert updated["bundles"]["default"] == card["bundles"]["default"]
    assert updated["bundles"]["cc0"]["name"] == "agegate-age-cc0" and card["bundles"]["cc0"]["name"] == "agegate-age"
    assert list(updated["bundles"]) == ["default", "cc0"]

    # An update measured otherwise would mix figures that do not compare: refused, the card untouched.
    refused = _card(tmp_path, "--limit", "5", "--update", "--bundle", f"cc0={CC0_BUNDLE_DIR}")
    assert refused.returncode != 0 and "measured with other limit" in refused.stderr
    assert json.loads((tmp_path / "card.json").read_text()) == updated
