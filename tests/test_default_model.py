"""The two models shipped with agegate: the default (what a fresh install estimates with) and
the CC0 one (dlib's public-domain weights as published, for retailers who may not deploy a
model trained on research-only data)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from agegate.edge.age_model import AgeModel
from agegate.edge.bundle import QualityFloors, quality_problems
from agegate.edge.config import CC0_BUNDLE_DIR, DEFAULT_BUNDLE_DIR
from agegate.edge.age_model import self_test
from conftest import ALL_AGE_FACES, UTKFACE, require_all_age_faces, require_utkface

SOURCES = ("utkface-part1", "all-age-faces", "utkface-extra")


@pytest.mark.parametrize("bundle", [DEFAULT_BUNDLE_DIR, CC0_BUNDLE_DIR], ids=["default", "cc0"])
def test_shipped_bundles_load_self_test_and_record_their_figures(bundle):
    model = AgeModel.from_dir(bundle)  # hashes checked on load
    self_test(model)  # the golden faces (the public-domain astronaut photo) give their recorded ages
    m = model.manifest
    # One net is 5.4 MB as float16; the default averages three (docs/model-card.md).
    nets = 1 + len(m.training.ensemble_with or [])
    assert sum(p.stat().st_size for p in bundle.iterdir()) < nets * 6 * 1024 * 1024
    assert (m.input.height, m.input.width) == (64, 64) and m.training.detector == "yunet"
    assert (m.crop.margin, m.crop.shift_y) == (-0.05, 0.08)  # the dlib chip's framing of a YuNet box
    # Measured on every source's test and validation faces, through the till's interpreter.
    assert set(m.metrics["sources"]) == set(SOURCES) == set(m.validation.sources)
    assert m.metrics["n"] == 1919 + 2664 + 2741 and m.validation.faces == 960 + 1333 + 1367
    assert m.validation.calibrated.under18_flagged >= 0.99 and m.validation.prediction_spread > 10


def test_the_default_clears_the_tills_own_quality_floors_and_says_its_licence():
    m = AgeModel.from_dir(DEFAULT_BUNDLE_DIR).manifest
    assert quality_problems(m, QualityFloors()) == []
    assert "non-commercial research" in m.training.licence and "CC0" in m.training.licence  # the data's, the weights'
    assert m.training.backbone == "dlibresnet10" and m.training.epochs >= 1
    # The mean of three runs of one recipe (docs/model-card.md): the other runs are recorded beside the first.
    others = m.training.ensemble_with
    assert len(others) == 2 and len({m.training.seed, *(o["seed"] for o in others)}) == 3
    assert all(o["run"]["backbone"] == m.training.backbone for o in others)
    part1 = m.metrics["sources"]["utkface-part1"]
    # The project's comparison split: better than each default before it (2026.11.29: 5.12; 2026.11.27: 5.34; the first: 5.88).
    assert part1["n"] == 1919 and part1["mae"] < 5.1
    assert m.metrics["challenge"]["under18_flagged"] >= 0.97
    for source in SOURCES:  # issue 11's aim: >= 90 % of 13-17s flagged at 25 on every source
        challenge = m.metrics["sources"][source]["challenge"]
        assert challenge["teen_flagged"] >= 0.9 and challenge["under18_flagged"] >= 0.96, source


def test_the_cc0_bundle_holds_no_non_commercial_data():
    m = AgeModel.from_dir(CC0_BUNDLE_DIR).manifest
    assert m.training.licence.startswith("CC0-1.0") and "non-commercial" not in m.training.licence
    assert m.training.data.startswith("none") and m.training.epochs == 0
    # Its crops are aligned to YuNet's five landmarks: the published net's framing, measured
    # zero-shot (docs/training.md), on every source better than the box cut (docs/model-card.md).
    assert m.crop.align == "landmarks" and m.crop.template is not None
    # Its golden faces are the public-domain astronaut's, not faces from research data.
    assert m.self_test.faces == 2
    # Below the default floor at the challenge age: the model card says so, and what calibrated mode costs.
    assert quality_problems(m, QualityFloors(min_under18_flagged=0.8)) == []


@pytest.mark.slow
@pytest.mark.parametrize("bundle", [DEFAULT_BUNDLE_DIR, CC0_BUNDLE_DIR], ids=["default", "cc0"])
def test_shipped_figures_reproduce_on_each_source(bundle):
    data = [str(require_utkface()), str(require_all_age_faces()), str(UTKFACE.parent / "utkface-extra")]
    r = subprocess.run([sys.executable, "-m", "agegate.export.cli", "verify", str(bundle), "--data", *data,
                        "--min-under18-flagged", "0.8"], capture_output=True, text=True, timeout=1500)
    assert r.returncode == 0, r.stdout + r.stderr
    assert all(f"reproduces its recorded test MAE on {s}" in r.stdout for s in SOURCES)


def test_estimate_gives_the_evaluation_ages(tmp_path):
    """`agegate-edge estimate` on test photos = the training/evaluation crop path + the same model."""
    data = require_all_age_faces()
    import csv

    from agegate.training.faces import DetectorSpec, decode, find_face

    with open(data / "splits.csv") as f:
        files = [row["file_name"] for row in csv.DictReader(f) if row["split"] == "test"][:40]
    model = AgeModel.from_dir(DEFAULT_BUNDLE_DIR)
    detector = DetectorSpec().create()  # YuNet: the till's default and the training crops'
    expected = {}
    for name in files:
        image = decode(data / "images" / name)
        box, _, _ = find_face(detector, image)
        if box is not None:
            expected[name] = float(model.estimate(image, [box])[0])
    assert len(expected) == 40
    r = subprocess.run([sys.executable, "-m", "agegate.edge.cli", "estimate", "--json", *(str(data / "images" / n) for n in files)],
                       capture_output=True, text=True, timeout=300, env={"PATH": "/usr/bin:/bin"})
    got = {json.loads(line)["path"].rsplit("/", 1)[-1]: json.loads(line) for line in r.stdout.splitlines()}
    for name, age in expected.items():
        faces = got[name]["faces"]
        assert faces, name
        assert faces[0]["age"] == pytest.approx(age, abs=0.051), name
    assert ALL_AGE_FACES == data
