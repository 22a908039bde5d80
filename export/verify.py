"""`agegate-export verify`: is this bundle what its manifest says, and does it run?

Checks, in order, stopping at the first failure:

1. the manifest is valid and the sha256 of the model and golden faces match it (``load_bundle``);
2. with ``public_key``: ``signature.ed25519`` is a valid signature of the manifest by it;
3. the model loads in the till's own :class:`~agegate.edge.age_model.AgeModel`, with the
   input shape the manifest states;
4. the till's self-test: the golden faces come back with the ages recorded at export;
5. its recorded validation figures clear the quality floors (a till's defaults unless given);
6. it answers a finite age within the manifest's range for a few synthetic faces;
7. with ``data``: it reproduces the MAE its manifest records on each source's test faces
   (cut by the detector and margin the manifest names).

Steps 1-5 are exactly what a till checks before it installs a delivered bundle.

Needs no TensorFlow: the till's own dependencies are enough.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from agegate.edge.age_model import AgeModel, self_test
from agegate.edge.bundle import SIGNATURE_FILE, BundleError, QualityFloors, load_bundle, quality_problems
from agegate.edge.signing import load_public_key, verify_signature

log = logging.getLogger(__name__)

MAE_AGREEMENT = 0.01  # years: the same interpreter on the same crops agrees to rounding


class VerifyError(Exception):
    """The bundle failed a check; the message says which and why."""


def probe_faces(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Three uint8 faces that need no data: mid-grey, a gradient and noise."""
    grey = np.full((height, width, 3), 128, np.uint8)
    ramp = np.broadcast_to(np.linspace(0, 255, width, dtype=np.uint8)[None, :, None], (height, width, 3)).copy()
    noise = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return np.stack([grey, ramp, noise])


def verify(path: str | Path, data=None, public_key: str | Path | None = None, floors: QualityFloors = QualityFloors(),
           calibrated: bool = False) -> list[str]:
    """The checks passed, one line each; raises VerifyError at the first that fails."""
    passed: list[str] = []
    try:
        bundle = load_bundle(path)
    except BundleError as exc:
        raise VerifyError(str(exc)) from None
    m = bundle.manifest
    passed.append(f"manifest valid; {m.model_file} ({len(bundle.model_bytes):,} bytes) matches sha256 {m.sha256}")
    if public_key is not None:
        try:
            verify_signature(bundle, load_public_key(Path(public_key)))
        except (BundleError, ValueError) as exc:
            raise VerifyError(str(exc)) from None
        passed.append(f"signed by {public_key}")
    elif (Path(path) / SIGNATURE_FILE).exists():
        passed.append(f"{SIGNATURE_FILE} present, not checked (give --public-key)")
    try:
        model = AgeModel(bundle)
    except BundleError as exc:
        raise VerifyError(str(exc)) from None
    passed.append(f"loads in AgeModel ({model.runtime}); input {m.input.height}x{m.input.width} {m.input.color}; variant {m.variant}")
    try:
        self_test(model)
    except BundleError as exc:
        raise VerifyError(str(exc)) from None
    assert m.self_test is not None
    passed.append(f"self-test: {m.self_test.faces} golden faces give their recorded ages within {m.self_test.tolerance:g} years")
    problems = quality_problems(m, floors, calibrated)
    if problems:
        raise VerifyError(f"{path}: below the quality floors a till applies: {'; '.join(problems)}")
    assert m.validation is not None
    v = m.validation
    passed.append(f"validation figures clear the quality floors: MAE {v.mae:.2f} on {v.faces} faces; under-18s flagged at {v.at_challenge.threshold:g}: "
                  f"{100 * (v.at_challenge.under18_flagged or 0):.1f} %; 30+ flagged {100 * (v.at_challenge.over30_flagged or 0):.1f} %")
    ages = model.predict_prepared(probe_faces(m.input.height, m.input.width))
    if not np.all(np.isfinite(ages)) or np.any(ages < m.output.min_age) or np.any(ages > m.output.max_age):
        raise VerifyError(f"{path}: the model answers {ages.tolist()} for the probe faces: not ages within {m.output.min_age:g}-{m.output.max_age:g}")
    passed.append(f"runs: probe faces answer {', '.join(f'{a:.1f}' for a in ages)} years")
    if not m.training.licence:
        log.warning("%s: the manifest states no training-data licence", path)
    if data is not None:
        passed.append(_check_recorded_mae(model, Path(path), data))
    return passed


def _check_recorded_mae(model: AgeModel, path: Path, data) -> str:
    """Re-measure the test split of each given source and compare with the figures the manifest records."""
    from agegate.training.data import read_sources, records_of
    from agegate.training.faces import DetectorSpec, default_cache_dir, prepare_faces
    from agegate.training.metrics import mae

    m = model.manifest
    run = m.training.run or {}
    if m.metrics.get("mae") is None or not run:
        raise VerifyError(f"{path}: the manifest records no test MAE or run settings to check against")
    limit, seed = m.metrics.get("limit"), int(run.get("seed", 1234))
    by_source = m.metrics.get("sources") or {}
    detector = DetectorSpec(run.get("detector", "haar"), run.get("detector_model"))  # bundles from before YuNet used Haar
    lines = []
    for source in read_sources([data] if isinstance(data, (str, Path)) else data, seed=seed):
        recorded = by_source[source.name]["mae"] if source.name in by_source else m.metrics["mae"] if not by_source else None
        if recorded is None:
            raise VerifyError(f"{path}: the manifest records no figures for {source.name} (it has {', '.join(by_source)})")
        records = [r for r in records_of([source], limit, seed) if r.split == "test"]
        faces = prepare_faces(records, m, detector, default_cache_dir(), name="test")
        measured = mae(faces.ages, model.predict_prepared(faces.images))
        if measured is None or abs(measured - recorded) > MAE_AGREEMENT:
            raise VerifyError(f"{path}: MAE on {len(faces)} test faces of {source.name} is {measured}, the manifest records {recorded:.4f}")
        lines.append(f"reproduces its recorded test MAE on {source.name}: {measured:.4f} years on {len(faces)} faces")
    return "; ".join(lines)
