"""The model shipped with agegate: what a fresh install estimates with."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from agegate.edge.age_model import AgeModel
from agegate.edge.config import DEFAULT_BUNDLE_DIR
from agegate.edge.model_store import self_test
from conftest import require_utkface


def test_default_bundle_is_there_small_and_says_its_licence():
    model = AgeModel.from_dir(DEFAULT_BUNDLE_DIR)  # hashes checked on load
    self_test(model)  # the golden faces (the public-domain astronaut photo) give their recorded ages
    m = model.manifest
    size = sum(p.stat().st_size for p in DEFAULT_BUNDLE_DIR.iterdir())
    assert size < 30 * 1024 * 1024
    assert "non-commercial research" in m.training.licence and "UTKFace" in m.training.data
    figures = m.metrics
    assert figures["n"] == 1919 and figures["mae"] <= 6.0
    assert figures["challenge"]["under18_flagged"] >= 0.95 and figures["challenge"]["over30_flagged"] <= 0.15


@pytest.mark.slow
def test_default_bundle_figures_reproduce_on_the_test_split():
    data = require_utkface()
    r = subprocess.run([sys.executable, "-m", "agegate.export.cli", "verify", str(DEFAULT_BUNDLE_DIR), "--data", str(data)],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "verified" in r.stdout


def test_estimate_gives_the_evaluation_ages(tmp_path):
    """`agegate-edge estimate` on test photos = the training/evaluation crop path + the same model."""
    data = require_utkface()
    from agegate.edge.detectors import create_detector
    from agegate.training.faces import decode, find_face

    import csv

    with open(data / "splits.csv") as f:
        files = [row["file_name"] for row in csv.DictReader(f) if row["split"] == "test"][:40]
    model = AgeModel.from_dir(DEFAULT_BUNDLE_DIR)
    detector = create_detector("haar")
    expected = {}
    for name in files:
        image = decode(data / "images" / name)
        box, _ = find_face(detector, image)
        if box is not None:
            expected[name] = float(model.estimate(image, [box])[0])
    assert len(expected) >= 35
    r = subprocess.run([sys.executable, "-m", "agegate.edge.cli", "estimate", "--json", *(str(data / "images" / n) for n in files)],
                       capture_output=True, text=True, timeout=300, env={"PATH": "/usr/bin:/bin"})
    got = {json.loads(line)["path"].rsplit("/", 1)[-1]: json.loads(line) for line in r.stdout.splitlines()}
    for name, age in expected.items():
        faces = got[name]["faces"]
        assert faces, name
        assert faces[0]["age"] == pytest.approx(age, abs=0.051), name
