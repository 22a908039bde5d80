"""`agegate-export convert`: from a training run to bundles the till can load, each one measured.

For every variant asked for:

1. convert the run's best Keras model (int8: calibrated on real training crops);
2. write it as a bundle to a staging folder, with the run's serving manifest;
3. load that bundle with the till's own :class:`~agegate.edge.age_model.AgeModel` and
   estimate every test face, one at a time, as the till would;
4. estimate every validation face of every source the same way: these *validation
   figures* (MAE, the share of under-18s, 13-17s and people 30+ flagged at the challenge
   age, the calibrated threshold that flags 99 % of under-18s, the spread of the estimates)
   go into the manifest, signed with it, for the till to show, to use and to check;
5. accept it only if its test MAE is within ``tolerance`` years of the Keras model's on the
   same faces *and* its validation figures clear the quality floors (the same
   :func:`~agegate.edge.bundle.quality_problems` a till applies before installing); an
   accepted bundle is written to ``OUT/<variant>/`` with a manifest holding its own figures
   and with *golden faces* (a few test crops and the ages this very file gave them, which a
   till re-runs before taking the bundle into service), then run through the till's own
   self-test and, given a key, signed; a refused one is not written.

``OUT/export-report.md`` and ``.json`` compare all variants with the Keras model;
``OUT/predictions.csv`` holds every model's estimate for every test face.
"""

from __future__ import annotations

import csv
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from agegate.edge.age_model import AgeModel, self_test
from agegate.edge.bundle import Calibration, FlagRates, QualityFloors, SourceFigures, Validation, normalise, prepare_face, quality_problems, write_bundle
from agegate.edge.signing import load_private_key, sign_bundle
from agegate.training import metrics
from agegate.training.evaluate import split_faces
from agegate.training.faces import FaceSet, decode, find_face
from agegate.training.model import ensemble_members, load_inference_model, shift_answers
from agegate.training.run import PRETRAINED, FitConfig, RunDir, kept_epoch, read_history, serving_spec, write_json

from .convert import convert, saved_model
from .measure import Measurement, measure_bundle, measure_keras
from .options import ExportError, ExportOptions

log = logging.getLogger(__name__)

REPORT = "export-report"
PREDICTIONS = "predictions.csv"


@dataclass
class VariantResult:
    variant: str
    measurement: Measurement
    sha256: str
    accepted: bool
    path: Path | None  # the bundle, when accepted
    validation: Validation | None = None
    quality: list[str] | None = None  # why the validation figures fall short of the floors

    def reason(self, keras_mae: float, tolerance: float) -> str:
        delta = self.measurement.mae - keras_mae
        verdict = "within" if delta <= tolerance else "beyond"
        text = f"MAE {self.measurement.mae:.3f} is {delta:+.3f} years from the Keras model's {keras_mae:.3f}, {verdict} the tolerance of {tolerance:g}"
        if self.quality:
            text += "; below the quality floors: " + "; ".join(self.quality)
        return text


@dataclass
class ExportReport:
    run: Path
    out: Path
    tolerance: float
    keras: Measurement
    results: list[VariantResult]
    faces: int

    @property
    def refused(self) -> list[VariantResult]:
        return [r for r in self.results if not r.accepted]


def export_run(run_dir: str | Path, out_dir: str | Path, options: ExportOptions = ExportOptions()) -> ExportReport:
    o = options
    variants, data, limit, challenge_age = o.variants, o.data, o.limit, o.challenge_age
    run, out = RunDir(run_dir), Path(out_dir)
    config = run.load_config()
    spec = serving_spec(config)
    members = [RunDir(r) for r in o.ensemble_with]
    if members:  # before any face is prepared: a wrong member is said at once
        ensemble_members(run, members)
        labels = _labels_identity(config.data)
        for member in members:
            if _labels_identity(member.load_config().data) != labels:
                raise ExportError(f"--ensemble-with {member.path}: its data folders' labels differ from {run.path}'s")
    taken = [out / v for v in variants if (out / v).exists()]
    if taken and not o.overwrite:
        raise ExportError(f"{', '.join(map(str, taken))} already exist(s): choose another --out or pass --overwrite")
    private_key = _private_key(o.sign_key)
    for path in taken:
        shutil.rmtree(path)

    # The faces: the test split to measure on, training faces to calibrate int8 with.
    test = split_faces(config, data, "test", limit)
    val = split_faces(config, data, "val", limit)
    calibration = None
    if "int8" in variants:
        train = split_faces(config, data, "train", limit)  # from the crop cache that fit filled
        pick = np.random.default_rng(config.seed).permutation(len(train))[:o.calibration_size]
        calibration = normalise(train.images[np.sort(pick)], spec.preprocessing)
        log.info("int8 calibration on %d training faces", len(calibration))

    model = load_inference_model(run, mirror_average=o.mirror_average, ensemble_with=members)
    shift = 0.0
    if o.flag_under18 is not None:
        # The operating point is chosen on validation faces, never on the test faces it is then measured on.
        shift, spec = shift_answers(model, val, spec, o.flag_under18, challenge_age)
        log.info("answers shifted by %+.1f years: %.0f %% of the %d validation faces' under-18s flagged at %g", shift,
                 100 * o.flag_under18, len(val), challenge_age)
    keras = measure_keras(model, test.images, test.ages, spec, challenge_age, file_bytes=sum(r.model.stat().st_size for r in [run, *members]), sources=test.sources)
    log.info("keras: %s", metrics.headline(keras.summary))

    fields = _manifest_fields(run, config, spec, o.name, o.version)
    fields["training"]["mirror_average"] = o.mirror_average
    if members:
        fields["training"]["ensemble_with"] = [_run_fields(m, m.load_config()) for m in members]
    if o.flag_under18 is not None:
        fields["training"]["answer_shift"] = {"years": shift, "under18_flagged_target": o.flag_under18, "chosen_on": "validation faces, all sources pooled"}
    scratch = Path(tempfile.mkdtemp(prefix="agegate-export-"))
    try:
        saved = saved_model(model, scratch / "saved_model")
        if o.golden_images:
            golden = _golden_from_photos(o.golden_images, spec, config)
        else:
            golden = test.images[_golden_indices(test.ages, o.golden_faces)]
        job = _Job(out, fields, test, val, keras, o.tolerance, o.threads, challenge_age, data or config.data, limit, golden,
                   o.golden_tolerance, private_key, o.floors, o.calibrated)
        results = [_export_variant(job, variant, convert(saved, variant, calibration)) for variant in variants]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    report = ExportReport(run.path, out, o.tolerance, keras, results, len(test))
    _write_report(report, data or config.data, limit, o.threads, o.floors)
    _write_predictions(out / PREDICTIONS, test.files, test.ages, [keras, *(r.measurement for r in results)])
    return report


@dataclass
class _Job:
    """What every variant of one export shares."""

    out: Path
    fields: dict[str, Any]  # the manifest, less variant and metrics
    test: FaceSet
    val: FaceSet
    keras: Measurement
    tolerance: float
    threads: int
    challenge_age: float
    data: str | Path
    limit: int | None
    golden: np.ndarray  # prepared crops packed as self-test faces (uint8)
    golden_tolerance: float
    private_key: Any  # Ed25519PrivateKey or None
    floors: QualityFloors
    calibrated: bool  # the under-18 floor judged at the model's calibrated threshold


def _export_variant(job: _Job, variant: str, flatbuffer: bytes) -> VariantResult:
    """Stage the bundle, measure it like the till, then write it or refuse it."""
    out, fields, keras, tolerance = job.out, job.fields, job.keras, job.tolerance
    staging = out / f".{variant}.staging"
    staged = write_bundle(staging, flatbuffer, variant=variant, **fields)
    try:
        measured = measure_bundle(staging, job.test.images, job.test.ages, job.challenge_age, job.threads, sources=job.test.sources)
        till = AgeModel.from_dir(staging, num_threads=job.threads)
        golden_ages = till.predict_prepared(job.golden)
        validation = validation_figures(job.val.ages, till.predict_prepared(job.val.images), job.val.sources, job.challenge_age)
    finally:
        shutil.rmtree(staging)
    quality = quality_problems(staged.model_copy(update={"validation": validation}), job.floors, job.calibrated)
    accepted = measured.mae - keras.mae <= tolerance and not quality
    result = VariantResult(variant, measured, staged.sha256, accepted, out / variant if accepted else None, validation, quality)
    if accepted:
        figures = _bundle_metrics(measured, keras, tolerance, job.threads, job.data, job.limit)
        golden = (job.golden, golden_ages)
        written = write_bundle(out / variant, flatbuffer, variant=variant, metrics=figures, validation=validation, golden=golden,
                               golden_tolerance=job.golden_tolerance, **fields)
        # What a till checks before service: hashes, the interpreter, the golden faces.
        till_view = AgeModel.from_dir(out / variant, num_threads=job.threads)
        assert written.sha256 == staged.sha256 == till_view.manifest.sha256
        self_test(till_view)
        if job.private_key is not None:
            sign_bundle(out / variant, job.private_key)
        log.info("%s: %s; %.2f ms per face; written to %s%s", variant, metrics.headline(measured.summary), measured.ms_per_face, out / variant,
                 " (signed)" if job.private_key is not None else "")
    else:
        log.error("%s refused: %s; no bundle written", variant, result.reason(keras.mae, tolerance))
    return result


def validation_figures(true: np.ndarray, predicted: np.ndarray, sources: np.ndarray, challenge_age: float) -> Validation:
    """The manifest's record of how the model did on the validation faces of every source."""
    summary = metrics.summarise_sources(true, predicted, sources, challenge_age)

    def rates(flags: dict[str, Any]) -> dict[str, Any]:
        return {k: flags[k] for k in ("threshold", "under18_flagged", "teen_flagged", "over30_flagged")}

    calibrated = metrics.calibrated_threshold(true, predicted)
    return Validation(
        split="val",
        faces=int(len(true)),
        challenge_age=float(challenge_age),
        mae=float(summary["mae"]),
        prediction_spread=float(np.std(predicted)) if np.all(np.isfinite(predicted)) else 0.0,
        at_challenge=FlagRates(**rates(summary["challenge"])),
        calibrated=Calibration(target=calibrated["target"], **rates(calibrated)) if calibrated else None,
        sources={name: SourceFigures(faces=s["n"], mae=s["mae"], at_challenge=FlagRates(**rates(s["challenge"]))) for name, s in summary["sources"].items()},
    )


def _golden_from_photos(paths: Sequence[str | Path], spec, config) -> np.ndarray:
    """Self-test faces from photos the bundle may carry (e.g. a public-domain portrait), cut as at
    training: the largest face each, and its mirror image. For bundles that are shipped where the
    training data's licence does not allow copies of its faces."""
    detector = config.detector_spec.create()
    crops = []
    for path in paths:
        image = decode(Path(path))
        if image is None:
            raise ExportError(f"--golden-image {path}: not a readable image")
        box, landmarks, _ = find_face(detector, image)
        if box is None:
            raise ExportError(f"--golden-image {path}: no face found")
        crop = prepare_face(image, box, spec, landmarks)
        crops += [crop, np.ascontiguousarray(crop[:, ::-1])]
    return np.stack(crops)


def _golden_indices(ages: np.ndarray, n: int) -> np.ndarray:
    """``n`` test faces spread over the ages present (youngest to oldest)."""
    order = np.argsort(ages, kind="stable")
    return np.unique(order[np.linspace(0, len(order) - 1, min(n, len(order))).round().astype(int)])


def _private_key(path: str | Path | None):
    if path is None:
        return None
    try:
        return load_private_key(Path(path))
    except (OSError, ValueError) as exc:
        raise ExportError(f"--sign-key {path}: {exc}") from None


def _run_fields(run: RunDir, config: FitConfig) -> dict[str, Any]:
    """A run's kept epoch, its validation MAE, seed and settings (data folders by name only):
    the exported run's in the manifest, and each run averaged with it (``ensemble_with``)."""
    epoch, val_mae = kept_epoch(run, config)
    return {"best_epoch": epoch, "best_val_mae": val_mae, "seed": config.seed,
            "run": {**config.to_json(), "data": [Path(d).name for d in config.data]}}


def _manifest_fields(run: RunDir, config: FitConfig, spec, name: str | None, version: str | None) -> dict[str, Any]:
    """Everything in a bundle's manifest except the variant, metrics and hash."""
    history = read_history(run.history)
    epochs = int(history[-1]["epoch"]) if history else 0
    if config.backbone == PRETRAINED:
        from agegate.training.pretrained import LICENCE as weights_licence

        weights = f"dlib's face-age network: {weights_licence}"
    else:
        weights = f"ImageNet weights from {Path(config.weights).name}" if config.weights else "none (trained from scratch)"
    if config.backbone == PRETRAINED and not epochs:
        data, licence = "none: the published weights as they are (no training data of ours)", weights_licence
    else:
        data = f"{config.data_description} (labels: {_labels_identity(config.data)})"
        licence = config.data_licence or "not stated in the data folders' READMEs: check before shipping"
        if config.backbone == PRETRAINED:
            licence += f"; starting weights: {weights_licence}"
    return {
        "name": name or f"agegate-age-{config.backbone}",
        "version": (version or run.name)[:50],
        "input": spec.input,
        "preprocessing": spec.preprocessing,
        "crop": spec.crop,
        "output": spec.output,
        "training": {
            "data": data,
            "licence": licence,
            "backbone": config.backbone,
            "pretrained": weights,
            "image_size": config.image_size,
            "crop_margin": config.margin,
            "crop_shift_y": config.shift_y,
            "detector": config.detector_spec.key(),
            "epochs": epochs,
            **_run_fields(run, config),
        },
    }


def _labels_identity(folders: Sequence[str]) -> str:
    """Each data folder by name and the sha256 of its labels.csv: no path of the machine it was trained on."""
    from agegate.edge.bundle import sha256_bytes

    parts = []
    for folder in folders:
        labels = Path(folder) / "labels.csv"
        digest = sha256_bytes(labels.read_bytes())[:16] if labels.is_file() else "file names"
        parts.append(f"{Path(folder).name} {digest}")
    return ", ".join(parts)


def _bundle_metrics(m: Measurement, keras: Measurement, tolerance: float, threads: int, data: str | Path, limit: int | None) -> dict[str, Any]:
    """This file's own figures on the test split, beside the Keras model's."""
    return {
        "split": "test",
        "data": [Path(d).name for d in ([data] if isinstance(data, (str, Path)) else data)],
        "limit": limit,
        **m.summary,
        "keras_mae": keras.mae,
        "mae_vs_keras": m.mae - keras.mae,
        "tolerance": tolerance,
        "ms_per_face": round(m.ms_per_face, 3),
        "threads": threads,
        "runtime": m.runtime,
        "file_bytes": m.file_bytes,
    }


def _row(name: str, m: Measurement, keras_mae: float, status: str) -> dict[str, Any]:
    c = m.summary["challenge"]
    return {
        "model": name,
        "file_bytes": m.file_bytes,
        "mae": m.mae,
        "mae_vs_keras": m.mae - keras_mae,
        "mae_15_35": m.summary["mae_15_35"],
        "under18_flagged": c["under18_flagged"],
        "over30_flagged": c["over30_flagged"],
        "ms_per_face": m.ms_per_face,
        "runtime": m.runtime,
        "status": status,
    }


def _write_report(report: ExportReport, data, limit: int | None, threads: int, floors: QualityFloors) -> None:
    k = report.keras
    rows = [_row("keras", k, k.mae, "reference")]
    for r in report.results:
        rows.append({**_row(r.variant, r.measurement, k.mae, "accepted" if r.accepted else "REFUSED"), "sha256": r.sha256, "bundle": str(r.path) if r.path else None})
    write_json(
        report.out / f"{REPORT}.json",
        {
            "run": str(report.run),
            "data": str(data),
            "split": "test",
            "limit": limit,
            "faces": report.faces,
            "tolerance": report.tolerance,
            "threads": threads,
            "models": rows,
            "keras": k.summary,
            "variants": {r.variant: r.measurement.summary for r in report.results},
            "validation": {r.variant: r.validation.model_dump() if r.validation else None for r in report.results},
            "quality_floors": floors.model_dump(),
            "refusals": {r.variant: r.reason(k.mae, report.tolerance) for r in report.refused},
        },
    )

    def pct(v: float | None) -> str:
        return "n/a" if v is None else f"{100 * v:.1f} %"

    def opt(v: float | None, fmt: str) -> str:
        return "n/a" if v is None else format(v, fmt)

    lines = [
        f"# Export of {report.run.name}",
        "",
        f"{report.faces} test faces from `{data}`" + (f" (limited to {limit})" if limit else "") + f"; every model sees the same crops. "
        f"Bundles are measured with the till's AgeModel ({rows[-1]['runtime'] if report.results else 'n/a'}, {threads} thread(s), one face at a time); "
        f"Keras in batches. A variant is refused when its MAE is more than {report.tolerance:g} years worse than the Keras model's, "
        f"or when its validation figures fall below the quality floors (under-18s flagged at least {100 * floors.min_under18_flagged:g} %, "
        f"MAE at most {floors.max_mae:g} years, estimates spread at least {floors.min_prediction_spread:g} years).",
        "",
        "| model | file size | MAE (years) | vs Keras | MAE 15-35 | under-18s flagged | 30+ flagged | ms per face | status |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        size = f"{row['file_bytes'] / 1e6:.2f} MB" if row["file_bytes"] else "n/a"
        lines.append(
            f"| {row['model']} | {size} | {row['mae']:.3f} | {row['mae_vs_keras']:+.3f} | {opt(row['mae_15_35'], '.3f')} | "
            f"{pct(row['under18_flagged'])} | {pct(row['over30_flagged'])} | {row['ms_per_face']:.2f} | {row['status']} |"
        )
    for r in report.refused:
        lines += ["", f"**{r.variant} refused**: {r.reason(k.mae, report.tolerance)}"]
    (report.out / f"{REPORT}.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


def _write_predictions(path: Path, files: list[str], true: np.ndarray, measured: list[Measurement]) -> None:
    """Every model's estimate for every test face: the report's figures can be recomputed from this."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file_name", "real_age", *(m.name for m in measured)])
        for i, name in enumerate(files):
            writer.writerow([name, f"{true[i]:g}", *(f"{m.ages[i]:.4f}" for m in measured)])
