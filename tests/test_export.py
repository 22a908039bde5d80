"""agegate-export: a real (tiny) run converted to all four variants, each measured through
the till's own AgeModel; the refusal path; verify; and the bundle used as the daemon uses it."""

from __future__ import annotations

import csv
import json
import shutil

import cv2
import numpy as np
import pytest
from conftest import UTKFACE, require_utkface

from agegate.edge.age_model import AgeModel
from agegate.edge.bundle import load_bundle
from agegate.export.cli import main
from agegate.training import metrics
from agegate.training.data import read_sources
from agegate.training.faces import find_face
from agegate.training.run import RunDir, serving_spec

VARIANTS = ("float32", "float16", "dynamic", "int8")

pytestmark = pytest.mark.slow

# A 2-epoch model on 48 faces is far from the default quality floors; these let it through, to
# test everything else. The floors themselves are tested on a constant model below.
LOW_FLOORS = ["--min-under18-flagged", "0", "--max-mae", "100", "--min-spread", "0"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A ResNet50 trained for 2 epochs on 48 real faces per split (its answers vary by face)."""
    from agegate.training.fit import fit
    from agegate.training.run import FitConfig

    data = require_utkface()
    path = tmp_path_factory.mktemp("runs") / "tiny"
    fit(FitConfig(data=str(data), backbone="resnet50", image_size=32, limit=48, epochs=2, batch_size=8, keep_checkpoints=1), path, verbose=0)
    return path


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    d = tmp_path_factory.mktemp("keys")
    assert main(["keygen", "--private", str(d / "signing.pem"), "--public", str(d / "signing.pub")]) == 0
    assert main(["keygen", "--private", str(d / "other.pem"), "--public", str(d / "other.pub")]) == 0
    return d


@pytest.fixture(scope="module")
def exported(run, keys, tmp_path_factory):
    """All four variants, signed. The tiny model's activations are far from settled, so int8
    can be years off here: the tolerance is wide for this fixture (the refusal test uses a strict one)."""
    out = tmp_path_factory.mktemp("bundles")
    code = main(["convert", str(run), "--out", str(out), "--limit", "48", "--tolerance", "100", "--calibration-size", "40",
                 "--version", "t1", "--sign-key", str(keys / "signing.pem"), *LOW_FLOORS])  # fmt: skip
    assert code == 0
    return out


def _unclipped(output_spec, ages) -> bool:
    """Whether no answer reached the bundle's clip: a bundle of several answers (an ensemble, a
    mirror average) clips only their mean, so its answer equals their mean only when none was clipped."""
    return all(output_spec.min_age < a < output_spec.max_age for a in ages)


def _predictions(out):
    with open(out / "predictions.csv") as f:
        return list(csv.DictReader(f))


def test_all_four_variants_are_written_with_a_manifest_describing_them(run, exported):
    config = RunDir(run).load_config()
    spec = serving_spec(config)
    report = json.loads((exported / "export-report.json").read_text())
    keras_mae = report["keras"]["mae"]
    sizes = {}
    for variant in VARIANTS:
        bundle = load_bundle(exported / variant)  # checks the sha256 against the file
        m = bundle.manifest
        assert m.variant == variant and m.name == "agegate-age-resnet50" and m.version == "t1"
        assert (m.input.height, m.input.width, m.input.color) == (32, 32, "RGB")
        assert m.preprocessing == spec.preprocessing and (m.preprocessing.scale, m.preprocessing.mean) == (1.0, (0.0, 0.0, 0.0))
        assert m.crop.margin == config.margin and (m.output.scale, m.output.offset) == (config.target_scale, config.target_offset)
        assert "utkface-part1: non-commercial research purposes only" in m.training.licence
        assert m.training.data.startswith("utkface-part1: ") and "/" not in m.training.data.split("(labels:")[1]  # no machine's path
        # Validation figures, measured on this very file: what a till shows, uses and checks.
        assert m.validation.faces == 48 and m.validation.split == "val" and m.validation.prediction_spread > 0
        assert m.validation.calibrated.under18_flagged >= 0.99 and set(m.validation.sources) == {"utkface-part1"}
        t = m.training
        assert (t.backbone, t.epochs, t.image_size, t.run["seed"]) == ("resnet50", 2, 32, config.seed) and not t.model_extra
        assert m.metrics["n"] == 48 and set(m.metrics["mae_by_band"]) == set(metrics.BAND_NAMES)
        assert m.metrics["keras_mae"] == pytest.approx(keras_mae)
        assert m.metrics["mae_vs_keras"] == pytest.approx(m.metrics["mae"] - keras_mae)
        assert m.metrics["file_bytes"] == len(bundle.model_bytes) and m.metrics["ms_per_face"] > 0
        assert m.metrics["challenge"]["age"] == 25 and m.metrics["runtime"] == "ai_edge_litert"
        sizes[variant] = len(bundle.model_bytes)
    assert sizes["float16"] < 0.6 * sizes["float32"] and sizes["int8"] < 0.35 * sizes["float32"] and sizes["dynamic"] < 0.35 * sizes["float32"]
    # Without quantisation the LiteRT model answers what Keras answers.
    variants = {row["model"]: row for row in report["models"]}
    assert abs(variants["float32"]["mae_vs_keras"]) < 0.01 and abs(variants["float16"]["mae_vs_keras"]) < 0.05
    assert "| int8 |" in (exported / "export-report.md").read_text()


def test_recorded_figures_are_recomputable_from_the_predictions(exported):
    rows = _predictions(exported)
    true = np.array([float(r["real_age"]) for r in rows])
    assert len(rows) == 48
    for variant in VARIANTS:
        pred = np.array([float(r[variant]) for r in rows])
        recorded = load_bundle(exported / variant).manifest.metrics
        again = metrics.summarise(true, pred, 25)
        assert recorded["mae"] == pytest.approx(again["mae"], abs=1e-3)
        assert recorded["challenge"]["under18_flagged"] == pytest.approx(again["challenge"]["under18_flagged"])
    keras = np.array([float(r["keras"]) for r in rows])
    float32 = np.array([float(r["float32"]) for r in rows])
    assert np.ptp(keras) > 0.1 and np.max(np.abs(keras - float32)) < 0.05


def test_the_daemon_loads_the_bundle_and_gives_the_measured_ages(run, exported):
    """From the raw photo, as the till does: detector box -> AgeModel.estimate."""
    rows = {r["file_name"]: r for r in _predictions(exported)}
    config = RunDir(run).load_config()
    paths = {r.file: r.path for s in read_sources(config.data) for r in s.records if r.file in rows}
    detector = config.detector_spec.create()  # the run's, as the manifest records
    checked = 0
    for variant in ("float32", "int8"):
        model = AgeModel.from_dir(exported / variant)
        for name in list(rows)[:8]:
            image = cv2.imread(str(paths[name]))
            box, _, _ = find_face(detector, image)
            if box is None:
                continue
            age = model.estimate(image, [box])[0]
            assert age == pytest.approx(float(rows[name][variant]), abs=1e-3), (variant, name)
            checked += 1
    assert checked >= 10


def test_bundles_carry_golden_faces_and_a_till_takes_them_into_service(exported, keys, tmp_path):
    from agegate.edge.bundle import QualityFloors
    from agegate.edge.model_store import ModelStore
    from agegate.edge.signing import load_public_key

    rows = {r["file_name"]: r for r in _predictions(exported)}
    for variant in VARIANTS:
        bundle = load_bundle(exported / variant)
        faces, ages = bundle.golden
        assert bundle.manifest.self_test.faces == 16 == len(faces) and bundle.manifest.self_test.tolerance == 1.0
        measured = np.array([float(r[variant]) for r in rows.values()])
        assert all(np.min(np.abs(measured - age)) < 1e-3 for age in ages)  # the ages measured at export
        np.testing.assert_allclose(AgeModel(bundle).predict_prepared(faces), ages, atol=1e-4)
    store = ModelStore(tmp_path / "till", public_key=load_public_key(keys / "signing.pub"),
                       floors=QualityFloors(min_under18_flagged=0, max_mae=100, min_prediction_spread=0))
    record = store.install(exported / "int8")
    assert record["variant"] == "int8" and record["sha256"] == load_bundle(exported / "int8").manifest.sha256


def test_verify_accepts_a_good_bundle_and_catches_a_one_byte_change(exported, keys, tmp_path, capsys):
    assert main(["verify", str(exported / "int8"), "--public-key", str(keys / "signing.pub"), *LOW_FLOORS]) == 0
    out = capsys.readouterr().out
    assert "matches sha256" in out and "signed by" in out and "loads in AgeModel" in out and "self-test: 16 golden faces" in out
    assert "validation figures clear the quality floors" in out
    assert main(["verify", str(exported / "int8"), "--public-key", str(keys / "signing.pub")]) == 1  # the default floors
    assert "below the quality floors" in capsys.readouterr().err
    assert main(["verify", str(exported / "int8"), "--public-key", str(keys / "other.pub")]) == 1
    assert "signature does not match" in capsys.readouterr().err

    tampered = tmp_path / "tampered"
    shutil.copytree(exported / "dynamic", tampered)
    manifest = json.loads((tampered / "manifest.json").read_text())
    manifest["metrics"]["mae"] = 1.0  # a better figure than measured
    (tampered / "manifest.json").write_text(json.dumps(manifest))
    assert main(["verify", str(tampered), "--public-key", str(keys / "signing.pub")]) == 1
    assert "signature does not match" in capsys.readouterr().err
    assert main(["sign", str(tampered), "--key", str(keys / "other.pem")]) == 1  # a till's default floors would refuse it
    assert "below the quality floors" in capsys.readouterr().err
    assert main(["sign", str(tampered), "--key", str(keys / "other.pem"), *LOW_FLOORS]) == 0  # re-signed by someone else
    assert main(["verify", str(tampered), "--public-key", str(keys / "other.pub"), *LOW_FLOORS]) == 0
    capsys.readouterr()

    assert main(["verify", str(exported / "float16"), "--data", str(UTKFACE), *LOW_FLOORS]) == 0
    assert "reproduces its recorded test MAE" in capsys.readouterr().out

    broken = tmp_path / "broken"
    shutil.copytree(exported / "float32", broken)
    data = bytearray((broken / "model.tflite").read_bytes())
    data[len(data) // 2] ^= 0x01
    (broken / "model.tflite").write_bytes(bytes(data))
    assert main(["verify", str(broken)]) == 1
    assert "does not match the manifest" in capsys.readouterr().err

    (broken / "manifest.json").unlink()
    assert main(["verify", str(broken)]) == 1
    assert "manifest.json: missing" in capsys.readouterr().err


def test_a_variant_worse_than_keras_beyond_the_tolerance_is_refused(run, tmp_path, capsys):
    out = tmp_path / "strict"
    assert main(["convert", str(run), "--out", str(out), "--variant", "float16", "--limit", "48", "--tolerance", "-1", *LOW_FLOORS]) == 1
    err = capsys.readouterr().err
    assert "refused float16" in err and "beyond the tolerance of -1" in err
    assert not (out / "float16").exists() and not list(out.glob(".*staging"))
    report = json.loads((out / "export-report.json").read_text())
    assert [r["status"] for r in report["models"]] == ["reference", "REFUSED"]


def test_a_constant_model_is_refused_by_the_quality_floors(run, tmp_path, capsys):
    """The run's model with its last layer zeroed: it answers one age for every face. It converts
    faithfully (within the tolerance of its Keras model), and is refused for what it is."""
    import keras

    constant = tmp_path / "constant-run"
    shutil.copytree(run, constant)
    model = keras.models.load_model(constant / "model.keras", compile=False)
    dense = model.get_layer("age")
    dense.set_weights([np.zeros_like(w) for w in dense.get_weights()])
    model.save(constant / "model.keras")
    out = tmp_path / "constant"
    assert main(["convert", str(constant), "--out", str(out), "--variant", "float16", "--limit", "48"]) == 1
    err = capsys.readouterr().err
    assert "refused float16" in err and "within the tolerance" in err and "hardly vary (spread 0.00 years" in err
    assert not (out / "float16").exists()
    report = json.loads((out / "export-report.json").read_text())
    assert report["validation"]["float16"]["prediction_spread"] < 0.01 and "hardly vary" in report["refusals"]["float16"]


def test_convert_will_not_overwrite_bundles_unasked(run, exported, capsys):
    assert main(["convert", str(run), "--out", str(exported), "--variant", "int8", "--limit", "48", *LOW_FLOORS]) == 1
    assert "already exist" in capsys.readouterr().err
    assert load_bundle(exported / "int8")  # untouched


def test_an_ensemble_bundle_answers_the_mean_of_its_runs_and_records_them(tmp_path, capsys):
    """--ensemble-with: one .tflite answering the mean of several runs' models (three runs of dlib's
    net, as the shipped default), each member in the manifest; a run that cuts or sizes its faces
    otherwise cannot be averaged, said in one line."""
    from agegate.training.fit import fit
    from agegate.training.run import FitConfig

    data = str(require_utkface())
    runs = [tmp_path / f"seed-{seed}" for seed in (1234, 7, 8)]
    own_bundles = [tmp_path / f"seed-{seed}-bundles" for seed in (1234, 7, 8)]
    for seed, run_dir, bundles in zip((1234, 7, 8), runs, own_bundles):
        fit(FitConfig(data=data, backbone="dlibresnet10", limit=48, epochs=1, batch_size=8, keep_checkpoints=1, seed=seed), run_dir, verbose=0)
        assert main(["convert", str(run_dir), "--out", str(bundles), "--variant", "float32", "--limit", "48", *LOW_FLOORS]) == 0
    out = tmp_path / "ensemble"
    assert main(["convert", str(runs[0]), "--out", str(out), "--variant", "float32", "--limit", "48", "--ensemble-with", *map(str, runs[1:]), *LOW_FLOORS]) == 0
    bundle = load_bundle(out / "float32")
    assert [m["run"]["seed"] for m in bundle.manifest.training.ensemble_with] == [7, 8]
    assert all(m["best_epoch"] == 1 for m in bundle.manifest.training.ensemble_with)

    members = [AgeModel.from_dir(d / "float32") for d in own_bundles]
    mean = AgeModel.from_dir(out / "float32")
    config = RunDir(runs[0]).load_config()
    detector = config.detector_spec.create()
    faces = [r for s in read_sources(config.data) for r in s.records if r.split == "test"][:12]
    out_spec = mean.manifest.output
    checked, differ = 0, 0
    for record in faces:
        image = cv2.imread(str(record.path))
        box, _, _ = find_face(detector, image)
        if box is None:
            continue
        ages = [m.estimate(image, [box])[0] for m in members]
        if not _unclipped(out_spec, ages):
            continue  # a member's answer clipped by its own bundle; the ensemble clips only the mean
        assert mean.estimate(image, [box])[0] == pytest.approx(sum(ages) / len(ages), abs=1e-3)
        checked, differ = checked + 1, differ + (max(ages) - min(ages) > 0.1)
    assert checked >= 3 and differ >= 1  # the seeds answer differently: the mean is not any one of them

    bigger = tmp_path / "bigger"
    shutil.copytree(runs[1], bigger)
    settings = json.loads((bigger / "config.json").read_text())
    (bigger / "config.json").write_text(json.dumps({**settings, "image_size": 80}))
    capsys.readouterr()
    assert main(["convert", str(runs[0]), "--out", str(tmp_path / "refused"), "--variant", "float32", "--limit", "48",
                 "--ensemble-with", str(bigger), *LOW_FLOORS]) == 1  # fmt: skip
    assert "serving spec differs" in capsys.readouterr().err and not (tmp_path / "refused" / "float32").exists()


def test_mirror_average_and_the_chosen_operating_point_travel_in_the_bundle(run, exported, tmp_path):
    """--mirror-average: the bundle answers the mean for the face and its mirror image;
    --flag-under18: its answers are moved down (output.offset) until that share of the
    validation under-18s is flagged, which the manifest's validation figures then show."""
    out = tmp_path / "mirrored"
    assert main(["convert", str(run), "--out", str(out), "--variant", "float32", "--limit", "48", "--mirror-average",
                 "--flag-under18", "0.9", *LOW_FLOORS]) == 0  # fmt: skip
    bundle = load_bundle(out / "float32")
    shift = bundle.manifest.training.answer_shift
    assert bundle.manifest.training.mirror_average is True
    assert shift["under18_flagged_target"] == 0.9 and shift["years"] <= 0
    assert bundle.manifest.output.offset == pytest.approx(load_bundle(exported / "float32").manifest.output.offset + shift["years"])
    assert bundle.manifest.validation.at_challenge.under18_flagged >= 0.9

    plain, mirrored = AgeModel.from_dir(exported / "float32"), AgeModel.from_dir(out / "float32")
    config = RunDir(run).load_config()
    faces = [r for s in read_sources(config.data) for r in s.records if r.split == "test"][:12]
    detector = config.detector_spec.create()
    checked = 0
    for record in faces:
        image = cv2.imread(str(record.path))
        box, _, _ = find_face(detector, image)
        if box is None:
            continue
        crop = plain.prepare(image, box)
        face, mirror = plain.predict_prepared([crop, np.ascontiguousarray(crop[:, ::-1])])
        out_spec = bundle.manifest.output  # a one-epoch model's young answers, shifted down, may meet its clip at 0
        if not _unclipped(out_spec, (face, mirror)):
            continue  # the plain bundle clipped one of them; the mirrored one clips only their mean
        expected = np.clip((face + mirror) / 2 + shift["years"], out_spec.min_age, out_spec.max_age)
        assert mirrored.estimate(image, [box])[0] == pytest.approx(expected, abs=1e-3)
        checked += 1
    assert checked >= 3
