"""agegate-train: data reading and splitting, the crops, metrics, the pipeline, and a real
(tiny) fit that is interrupted and resumed, then evaluated and explored."""

from __future__ import annotations

import csv
import dataclasses
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import ALL_AGE_FACES, UTKFACE, require_all_age_faces, require_utkface

from agegate.edge.bundle import prepare_face
from agegate.edge.detectors import create_detector
from agegate.training import metrics
from agegate.training.data import (
    Record,
    limit_per_split,
    parse_utkface_name,
    read_data,
    read_readme,
    stratified_split,
)
from agegate.training.distribute import plan
from agegate.training.faces import DetectorSpec, find_face, prepare_faces
from agegate.training.run import FitConfig, RunDir, serving_spec

TINY = ["--backbone", "resnet50", "--image-size", "32", "--limit", "48", "--epochs", "3", "--batch-size", "8"]


# --- metrics -----------------------------------------------------------------------------


def test_metrics_on_a_hand_made_example():
    true = np.array([10, 16, 17, 20, 30, 40, 70])
    pred = np.array([12, 20, 26, 20, 24, 40, 60])
    s = metrics.summarise(true, pred, challenge_age=25)
    assert s["n"] == 7
    assert s["mae"] == pytest.approx((2 + 4 + 9 + 0 + 6 + 0 + 10) / 7)
    bands = s["mae_by_band"]
    assert list(bands) == ["0-12", "13-17", "18-24", "25-34", "35-49", "50-64", "65+"]
    assert bands["0-12"] == {"n": 1, "mae": 2.0}
    assert bands["13-17"] == {"n": 2, "mae": 6.5}
    assert bands["25-34"] == {"n": 1, "mae": 6.0}
    assert bands["50-64"] == {"n": 0, "mae": None}
    assert bands["65+"] == {"n": 1, "mae": 10.0}
    # 15-35: 16, 17, 20, 30 -> errors 4, 9, 0, 6
    assert s["mae_15_35"] == pytest.approx(19 / 4) and s["n_15_35"] == 4
    # Under-18s (10, 16, 17) predicted 12, 20, 26: two are under 25 and flagged.
    c = s["challenge"]
    assert c["under18_n"] == 3 and c["under18_flagged"] == pytest.approx(2 / 3)
    # 30+ (30, 40, 70) predicted 24, 40, 60: one false alarm.
    assert c["over30_n"] == 3 and c["over30_flagged"] == pytest.approx(1 / 3)
    curve = {p["threshold"]: p for p in metrics.threshold_curve(true, pred)}
    assert curve[27.0]["under18_flagged"] == 1.0 and curve[14.0]["under18_flagged"] == pytest.approx(1 / 3)
    assert curve[40.0]["over30_flagged"] == pytest.approx(1 / 3)
    assert max(curve) == 40.0


def test_the_loss_weighs_the_errors_a_till_pays_for():
    """Huber (delta 5 years) on years; wrong_side triples a minor estimated over 23 and a person
    30+ estimated under 27; the overestimate penalty doubles any over-estimate of the under-25s."""
    from agegate.training.model import ChallengeHuberLoss

    true = np.array([[16.0], [16.0], [40.0], [40.0], [10.0], [22.0]], dtype=np.float32)
    pred = np.array([[20.0], [24.0], [30.0], [26.0], [14.0], [24.0]], dtype=np.float32)
    huber = np.array([8.0, 27.5, 37.5, 57.5, 8.0, 2.0])  # 0.5 e^2 within 5 years, 5 |e| - 12.5 beyond
    wrong_side = ChallengeHuberLoss(delta=5.0, wrong_side=2.0)
    np.testing.assert_allclose(np.asarray(wrong_side.call(true, pred)), huber * [1, 3, 1, 3, 1, 1])
    over = ChallengeHuberLoss(delta=5.0, penalty=1.0)
    np.testing.assert_allclose(np.asarray(over.call(true, pred)), huber * [2, 2, 1, 1, 2, 2])
    # --overestimate-below 18: the 22-year-old's over-estimate counts once, the minors' still twice
    minors_only = ChallengeHuberLoss(delta=5.0, penalty=1.0, penalty_below=18.0)
    np.testing.assert_allclose(np.asarray(minors_only.call(true, pred)), huber * [2, 2, 1, 1, 2, 1])
    assert ChallengeHuberLoss.from_config(minors_only.get_config()).penalty_below == 18.0
    assert over.penalty_below == 25.0  # the challenge age unless said otherwise
    from agegate.training.run import FitConfig

    with pytest.raises(ValueError, match="--overestimate-below 250"):
        FitConfig(data="x", overestimate_below=250).check()  # years, not months
    # normalised targets give the same weights: the ages are recovered with offset and scale
    normalised = ChallengeHuberLoss(delta=0.5, wrong_side=2.0, offset=30.0, scale=10.0)
    np.testing.assert_allclose(np.asarray(normalised.call((true - 30) / 10, (pred - 30) / 10)), huber / 100 * [1, 3, 1, 3, 1, 1], rtol=1e-5)
    restored = ChallengeHuberLoss.from_config(wrong_side.get_config())
    assert (restored.wrong_side, restored.margin, restored.delta) == (2.0, 2.0, 5.0)


def test_the_rank_penalty_asks_adults_to_be_estimated_12_years_above_minors():
    """--rank-penalty K: each (under-18, 30+) pair of the batch adds K x how far the adult's estimate
    falls short of 12 years above the minor's, averaged over the pairs, once to the batch's mean."""
    from agegate.training.model import ChallengeHuberLoss

    true = np.array([[16.0], [16.0], [40.0], [40.0], [10.0], [22.0]], dtype=np.float32)
    pred = np.array([[20.0], [24.0], [30.0], [26.0], [14.0], [24.0]], dtype=np.float32)
    plain = np.asarray(ChallengeHuberLoss(delta=5.0).call(true, pred))
    # minors estimated 20, 24, 14; adults 30, 26: gaps 10, 6, 6, 2, 16, 12 -> shortfalls 2, 6, 6, 10, 0, 0
    shortfall = (2 + 6 + 6 + 10 + 0 + 0) / 6
    ranked = ChallengeHuberLoss(delta=5.0, rank=2.0)
    np.testing.assert_allclose(np.asarray(ranked.call(true, pred)), plain + 2.0 * shortfall, rtol=1e-6)
    # normalised targets: the same pairs, the shortfall in the target's units
    normalised = ChallengeHuberLoss(delta=0.5, rank=2.0, offset=30.0, scale=10.0)
    np.testing.assert_allclose(np.asarray(normalised.call((true - 30) / 10, (pred - 30) / 10)), plain / 100 + 2.0 * shortfall / 10, rtol=1e-5)
    # adults far enough above every minor, or no pair at all: nothing added
    apart = pred.copy(); apart[2:4] = 40.0
    np.testing.assert_allclose(np.asarray(ranked.call(true, apart)), np.asarray(ChallengeHuberLoss(delta=5.0).call(true, apart)))
    np.testing.assert_allclose(np.asarray(ranked.call(true[:2], pred[:2])), plain[:2])
    # its gradient lifts the adults and lowers the minors of the short pairs; the 10-year-old (12
    # and more below both adults) and the 22-year-old (in no pair) are left alone
    import tensorflow as tf

    estimates = tf.Variable(pred)
    with tf.GradientTape() as tape:
        pairs_only = ranked.order_shortfall(tf.constant(true), estimates)
    grad = tape.gradient(pairs_only, estimates).numpy().reshape(-1)
    assert grad[0] > 0 and grad[1] > 0 and grad[2] < 0 and grad[3] < 0 and grad[4] == 0 and grad[5] == 0
    assert ChallengeHuberLoss.from_config(ranked.get_config()).rank == 2.0
    from agegate.training.run import FitConfig

    with pytest.raises(ValueError, match="--rank-penalty 20"):
        FitConfig(data="x", rank_penalty=20).check()


def test_the_label_distribution_loss_asks_for_a_peak_at_the_true_age():
    """AgeDistributionLoss = the Huber loss on the expected age + weight x KL(normal(age, sigma) || p):
    nothing more for the target distribution itself, more for one with the same mean spread wider."""
    from agegate.training.model import AgeDistributionLoss, ChallengeHuberLoss

    classes = np.array([0.25] + list(range(1, 81)), dtype=np.float32)

    def normal(mean, sigma):
        p = np.exp(-0.5 * ((classes - mean) / sigma) ** 2)
        return p / p.sum()

    true = np.array([[16.0], [40.0]], dtype=np.float32)
    peaked, wide = np.stack([normal(16, 2), normal(40, 2)]), np.stack([normal(16, 8), normal(40, 8)])
    loss = AgeDistributionLoss(class_ages=classes.tolist(), sigma=2.0, weight=5.0, delta=5.0, penalty=1.0)
    huber = ChallengeHuberLoss(delta=5.0, penalty=1.0)
    for probabilities in (peaked, wide):
        expected = (probabilities @ classes)[:, None].astype(np.float32)
        y_pred = np.concatenate([expected, probabilities], axis=1).astype(np.float32)
        got = np.asarray(loss.call(true, y_pred))
        kl = (got - np.asarray(huber.call(true, expected))) / 5.0
        if probabilities is peaked:
            np.testing.assert_allclose(kl, 0.0, atol=1e-5)
        else:
            assert (kl > 0.5).all()  # KL(N(a, 2) || N(a, 8)) = log 4 + 1/32 - 1/2, about 0.92
    restored = AgeDistributionLoss.from_config(loss.get_config())
    assert (restored.sigma, restored.weight, restored.penalty, len(restored.class_ages), restored.penalised) == (2.0, 5.0, 1.0, 81, False)
    # penalised: a young face estimated too old has its distribution term counted 1 + penalty times too;
    # an adult's, or a young face estimated too young, as before.
    penalised = AgeDistributionLoss(class_ages=classes.tolist(), sigma=2.0, weight=5.0, delta=5.0, penalty=1.0, penalised=True)
    assert AgeDistributionLoss.from_config(penalised.get_config()).penalised
    true = np.array([[16.0], [16.0], [40.0]], dtype=np.float32)
    probabilities = np.stack([normal(22, 4), normal(12, 4), normal(46, 4)])
    y_pred = np.concatenate([(probabilities @ classes)[:, None], probabilities], axis=1).astype(np.float32)
    plain_huber = np.asarray(huber.call(true, y_pred[:, :1]))
    kl_plain = (np.asarray(loss.call(true, y_pred)) - plain_huber) / 5.0
    kl_penalised = (np.asarray(penalised.call(true, y_pred)) - plain_huber) / 5.0
    assert (kl_plain > 0.1).all()
    np.testing.assert_allclose(kl_penalised, kl_plain * np.array([2.0, 1.0, 1.0]), rtol=1e-5)


def test_an_ensemble_of_nets_answering_in_other_units_answers_the_mean_of_their_ages():
    import keras

    from agegate.edge.bundle import OutputSpec
    from agegate.training.model import with_ensemble

    def net(weight, bias):
        inputs = keras.Input((3,))
        return keras.Model(inputs, keras.layers.Dense(1, kernel_initializer=keras.initializers.Constant(weight),
                                                      bias_initializer=keras.initializers.Constant(bias))(inputs))

    first, second = net(0.1, -0.2), net(-0.05, 0.3)
    units = [OutputSpec(scale=10.0, offset=30.0), OutputSpec(scale=20.0, offset=40.0)]  # normalised by their own faces
    x = np.random.default_rng(2).normal(0, 1, (8, 3)).astype(np.float32)
    ages = [m.predict(x, verbose=0)[:, 0] * u.scale + u.offset for m, u in zip((first, second), units)]
    raw = with_ensemble([first, second], units).predict(x, verbose=0)[:, 0]
    assert np.abs(ages[0] - ages[1]).max() > 1.0
    np.testing.assert_allclose(raw * units[0].scale + units[0].offset, (ages[0] + ages[1]) / 2, atol=1e-4)  # read as the first net reads


def test_the_minors_flagged_figure_counts_only_the_under_18s():
    from agegate.training.model import MinorsFlagged

    rng = np.random.default_rng(3)
    true = rng.uniform(1, 70, 200).astype(np.float32)
    estimate = (true + rng.normal(0, 8, 200)).astype(np.float32)
    offset, scale = 33.0, 15.0  # a model answering normalised ages
    metric = MinorsFlagged(scale=scale, offset=offset)
    for i in range(0, 200, 64):  # batch by batch, as Keras feeds it; some batches hold few minors
        metric.update_state(((true[i:i + 64] - offset) / scale)[:, None], ((estimate[i:i + 64] - offset) / scale)[:, None])
    minors = true < metrics.MINOR_AGE
    expected = float(np.mean(estimate[minors] < 25.0))
    assert 0.0 < expected < 1.0
    assert float(metric.result()) == pytest.approx(expected, abs=1e-6)


def test_the_kept_epoch_follows_the_runs_rule():
    from agegate.training.run import best_epoch

    def row(epoch, mae, flagged):
        return {"epoch": float(epoch), "val_age_mae": mae, "val_under18_flagged": flagged}

    history = [row(1, 6.9, 0.95), row(2, 6.1, 0.965), row(3, 6.3, 0.98), row(4, 6.2, 0.975), row(5, 6.6, 0.99)]
    by_mae, by_minors = FitConfig(data="x"), FitConfig(data="x", best_by="minors", best_min_flagged=0.97)
    assert best_epoch(history, by_mae)["epoch"] == 2
    assert best_epoch(history, by_minors)["epoch"] == 4  # the lowest MAE of the epochs flagging 97 %
    assert best_epoch(history[:2], by_minors)["epoch"] == 2  # none flags 97 %: the one flagging most
    # Each epoch added either becomes the best or leaves it: a run can save its best as it goes.
    for n in range(1, len(history)):
        before, after = best_epoch(history[:n], by_minors), best_epoch(history[:n + 1], by_minors)
        assert after is before or after is history[n]
    assert best_epoch([{"epoch": 1.0, "loss": 3.0}], by_minors) is None
    with pytest.raises(ValueError, match="lacks it"):
        best_epoch([{"epoch": 1.0, "val_age_mae": 6.0}], by_minors)
    with pytest.raises(ValueError, match="--best-by 'loss'"):
        FitConfig(data="x", best_by="loss").check()
    with pytest.raises(ValueError, match="--label-penalised .* needs --label-sigma"):
        FitConfig(data="x", backbone="dlibresnet10", image_size=64, label_penalised=True).check()
    with pytest.raises(ValueError, match="--best-min-flagged 97"):
        FitConfig(data="x", best_by="minors", best_min_flagged=97).check()


def test_a_net_trained_from_scratch_updates_its_batch_norm_statistics_fast_enough():
    """MobileNetV3's batch norm momentum 0.999 left its moving statistics so far behind that the
    model answered one age in inference mode; from scratch every backbone runs at 0.99 at most."""
    import keras

    from agegate.training.model import FROM_SCRATCH_BN_MOMENTUM, build_model

    for name in ("mobilenetv3small", "efficientnetb0", "resnet50"):
        model = build_model(FitConfig(data="x", backbone=name, image_size=64, target_offset=30.0, target_scale=20.0))
        base = next(layer for layer in model.layers if isinstance(layer, keras.Model))
        norms = [layer for layer in base.layers if isinstance(layer, keras.layers.BatchNormalization)]
        assert norms and max(layer.momentum for layer in norms) <= FROM_SCRATCH_BN_MOMENTUM, name


def test_plots_say_what_they_show():
    from agegate.training import plots

    # Uniform sizes: one bar with every image, not one dot.
    assert plots.size_bars([(200, 200)] * 42) == [("200x200", 42)]
    many = [(100 + i % 20, 100) for i in range(200)] + [(640, 480)] * 50
    bars = plots.size_bars(many, top=3)
    assert bars[0] == ("640x480", 50) and bars[-1] == ("18 other sizes", 180) and sum(n for _, n in bars) == 250
    # Learning curves over 3 epochs: whole-epoch ticks only.
    history = [{"epoch": e, "loss": 1 / e, "val_loss": 1.2 / e, "age_mae": 9 / e, "val_age_mae": 10 / e} for e in (1, 2, 3)]
    fig = plots.learning_curves_figure(history)
    for ax in fig.axes:
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks
    # The line at 18 says what it is.
    fig = plots.predicted_vs_true_figure(np.array([10.0, 30.0]), np.array([12.0, 28.0]))
    assert "true age 18: minors to its left" in [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    plots.plt.close("all")


def test_band_edges():
    assert list(metrics.band_of([0, 12.9, 13, 17.99, 18, 24.5, 25, 34, 35, 49, 50, 64, 65, 110])) == [
        "0-12", "0-12", "13-17", "13-17", "18-24", "18-24", "25-34", "25-34", "35-49", "35-49", "50-64", "50-64", "65+", "65+",
    ]  # fmt: skip


# --- reading, checking and splitting ------------------------------------------------------


def test_utkface_file_names_give_ages():
    assert parse_utkface_name("23_1_2_20170116174525125.jpg.chip.jpg") == 23
    assert parse_utkface_name("1_0_0_20161219140623097.jpg") == 1
    assert parse_utkface_name("folder/100_1_0_20170110183726390.jpg.chip.jpg") == 100
    assert parse_utkface_name("face.jpg") is None
    assert parse_utkface_name("999_0_0_2017.jpg") is None


def _real_faces(n: int) -> list[Path]:
    root = require_utkface()
    with open(root / "labels.csv") as f:
        names = [row["file_name"] for row in csv.DictReader(f)][100 : 100 + n]
    return [root / "images" / name for name in names]


def test_utkface_folder_without_labels_csv(tmp_path):
    for src in _real_faces(6):
        shutil.copy(src, tmp_path / src.name)
    (tmp_path / "holiday.jpg").write_bytes(b"x")
    data = read_data(tmp_path, seed=1)
    assert data.source == "utkface-names"
    assert sorted(r.age for r in data.records) == sorted(parse_utkface_name(p.name) for p in _real_faces(6))
    assert [p.file for p in data.problems] == ["holiday.jpg"]
    assert {r.split for r in data.records} <= {"train", "val", "test"}


def test_reader_skips_bad_labels_and_corrupt_images_with_a_report(tmp_path, caplog):
    faces = _real_faces(8)
    (tmp_path / "images").mkdir()
    for src in faces:
        shutil.copy(src, tmp_path / "images" / src.name)
    (tmp_path / "images" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG")
    rows = [(p.name, parse_utkface_name(p.name)) for p in faces]
    rows += [("corrupt.jpg", 30), ("nan-age.jpg", "abc"), ("too-old.jpg", 250), ("missing.jpg", 40), (faces[0].name, 99)]
    with open(tmp_path / "labels.csv", "w", newline="") as f:
        csv.writer(f).writerows([("file_name", "real_age"), *rows])
    with open(tmp_path / "splits.csv", "w", newline="") as f:
        csv.writer(f).writerows([("file_name", "split"), *((name, "train") for name, _ in rows)])

    data = read_data(tmp_path, seed=1)
    problems = {p.file: p.problem for p in data.problems}
    assert "not a number" in problems["nan-age.jpg"]
    assert "outside" in problems["too-old.jpg"]
    assert problems["missing.jpg"] == "file not found"
    assert "listed twice" in problems[faces[0].name]
    assert "skipped" in caplog.text
    # No val rows in splits.csv: some train faces become validation faces.
    assert {r.split for r in data.records} == {"train", "val"}

    config = FitConfig(data=str(tmp_path), image_size=32, target_offset=0.0, target_scale=1.0)
    crops = prepare_faces(data.records, serving_spec(config), name="all")
    assert [(p.file, p.problem) for p in crops.problems] == [("corrupt.jpg", "unreadable image")]
    assert len(crops) == len(faces) and crops.images.shape == (len(faces), 32, 32, 3)
    assert sorted(crops.files) == sorted(p.name for p in faces)


def test_group_aware_split_keeps_people_apart_and_is_stratified():
    rng = np.random.default_rng(0)
    records = []
    for person in range(300):
        base = rng.uniform(1, 90)
        for k in range(rng.integers(1, 8)):
            records.append(Record(f"p{person}_{k}.jpg", Path("x"), float(min(110, base + k)), group=f"p{person}"))
    split = stratified_split(records, {"train": 0.7, "val": 0.1, "test": 0.2}, seed=3)
    sides: dict[str, set[str]] = {}
    for r in split:
        sides.setdefault(r.group, set()).add(r.split)
    assert all(len(s) == 1 for s in sides.values()), "a person is on two sides of the split"
    share = {s: sum(r.split == s for r in split) / len(split) for s in ("train", "val", "test")}
    assert share["train"] == pytest.approx(0.7, abs=0.05) and share["test"] == pytest.approx(0.2, abs=0.05)
    for band in metrics.BAND_NAMES:  # every band is represented in train and test
        in_band = [r for r in split if metrics.band_of([r.age])[0] == band]
        assert {r.split for r in in_band} >= {"train", "test"}, band
    assert split == stratified_split(records, {"train": 0.7, "val": 0.1, "test": 0.2}, seed=3)


def test_shared_data_splits_csv_is_honoured_and_licence_read():
    root = require_utkface()
    data = read_data(root)
    counts = {s: len(data.split(s)) for s in ("train", "val", "test")}
    assert counts == {"train": 6720, "val": 960, "test": 1919} and not data.problems
    assert data.has_splits and data.source == "labels.csv"
    assert read_readme(root)[1].startswith("non-commercial research purposes only")
    small = limit_per_split(data.records, 14, seed=5)
    for s in ("train", "val", "test"):
        picked = [r for r in small if r.split == s]
        assert len(picked) == 14 and {metrics.band_of([r.age])[0] for r in picked} == set(metrics.BAND_NAMES)


def test_training_crops_are_the_tills_crops(tmp_path):
    """A training crop is prepare_face(photo, box found by the till's own detector)."""
    photos = _real_faces(4)
    records = [Record(p.name, p, float(parse_utkface_name(p.name)), split="test") for p in photos]
    spec = serving_spec(FitConfig(data="x", image_size=64, margin=0.1, target_offset=0.0, target_scale=1.0))
    crops = prepare_faces(records, spec, DetectorSpec("haar"), cache_dir=tmp_path, name="test")
    detector = create_detector("haar")
    for i, photo in enumerate(photos):
        image = cv2.imread(str(photo))
        box, _, _ = find_face(detector, image)
        if box is not None:
            assert np.array_equal(crops.images[i], prepare_face(image, box, spec))
            assert not crops.fallback[i]
    assert (~crops.fallback).sum() >= 3
    again = prepare_faces(records, spec, DetectorSpec("haar"), cache_dir=tmp_path, name="test")  # from the cache
    assert np.array_equal(again.images, crops.images) and again.files == crops.files
    assert len(list(tmp_path.glob("crops/test-64px-m0.1-s0-haar-*.npz"))) == 1
    assert len(list(tmp_path.glob("scans/*-haar-*.json"))) == 1  # the boxes, kept per source for every command


def test_aligned_training_crops_are_the_tills_aligned_crops(tmp_path):
    """With --align landmarks a training crop is prepare_face(photo, box, YuNet's landmarks), as the till
    cuts it; the landmarks are kept in the scan cache, so a second command cuts the same crops from it."""
    photos = _real_faces(4)
    records = [Record(p.name, p, float(parse_utkface_name(p.name)), split="test") for p in photos]
    config = FitConfig(data="x", backbone="dlibresnet10", image_size=64, margin=-0.05, shift_y=0.08, align="landmarks",
                       target_offset=0.0, target_scale=1.0)
    config.check()
    spec = serving_spec(config)
    assert spec.crop.align == "landmarks" and spec.crop.template is not None
    crops = prepare_faces(records, spec, DetectorSpec("yunet"), cache_dir=tmp_path, name="test")
    detector = create_detector("yunet")
    aligned = 0
    for i, photo in enumerate(photos):
        image = cv2.imread(str(photo))
        box, landmarks, _ = find_face(detector, image)
        if box is not None:
            assert landmarks is not None and len(landmarks) == 5
            assert np.array_equal(crops.images[i], prepare_face(image, box, spec, landmarks))
            aligned += not np.array_equal(crops.images[i], prepare_face(image, box, spec))  # not the box crop
    assert aligned >= 3
    again = prepare_faces(records, spec, DetectorSpec("yunet"), cache_dir=tmp_path, name="test")
    assert np.array_equal(again.images, crops.images)
    assert len(list(tmp_path.glob("crops/test-64px-aligned-yunet-*.npz"))) == 1
    (scans,) = tmp_path.glob("scans/*-yunet-*.json")
    assert all(len(entry[5]) == 5 for entry in json.loads(scans.read_text()).values() if entry[2] is not None)
    bad = dataclasses.replace(config, align="eyes")
    with pytest.raises(ValueError, match="--align 'eyes'"):
        bad.check()


def test_strategy_plan():
    assert plan(0, None).kind == "default" and not plan(0, None).mixed_precision
    assert plan(2, None) == plan(2, "") and plan(2, None).kind == "mirrored" and plan(2, None).mixed_precision
    assert not plan(1, None, "off").mixed_precision
    cluster = json.dumps({"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 1}})
    p = plan(0, cluster)
    assert p.kind == "multi_worker" and p.workers == 2 and not p.chief
    assert plan(0, cluster.replace('"index": 1', '"index": 0')).chief


MULTI_WORKER_FIT = """
import numpy as np, keras
from agegate.training.distribute import choose_strategy
from agegate.training.pipeline import evaluation_batches
strategy, plan = choose_strategy()
assert plan.kind == "multi_worker", plan
with strategy.scope():
    model = keras.Sequential([keras.Input((4, 4, 3)), keras.layers.Flatten(), keras.layers.Dense(1)])
    model.compile(optimizer="adam", loss="mse", metrics=["mae"])
images = np.random.default_rng(0).integers(0, 255, (16, 4, 4, 3), dtype=np.uint8)
history = model.fit(evaluation_batches(images, np.ones(16, np.float32), 4), epochs=2, verbose=0)
print("ok", history.history["mae"])
"""


@pytest.mark.slow
def test_multi_worker_strategy_runs_keras_fit():
    """TF_CONFIG naming a cluster of two local workers: Keras fit runs under our MultiWorkerMirroredStrategy."""
    import os
    import socket
    import subprocess
    import sys

    ports = []
    for _ in range(2):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", MULTI_WORKER_FIT],
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    outputs = [w.communicate(timeout=300) for w in workers]
    for w, (out, err) in zip(workers, outputs):
        assert w.returncode == 0 and "ok" in out, err[-3000:]
    assert outputs[0][0] == outputs[1][0]  # the same figures on both workers: reduced across them


def test_pipeline_is_the_same_after_a_resume():
    from agegate.training.pipeline import training_batches

    images = np.random.default_rng(0).integers(0, 255, (10, 16, 16, 3), dtype=np.uint8)
    targets = np.arange(10, dtype=np.float32)
    straight = list(training_batches(images, targets, 4, seed=7, first_epoch=0, epochs=3).as_numpy_iterator())
    resumed = list(training_batches(images, targets, 4, seed=7, first_epoch=2, epochs=3).as_numpy_iterator())
    assert len(straight) == 9 and len(resumed) == 3  # 3 batches (4, 4, 2) per epoch
    for (x1, y1), (x2, y2) in zip(straight[6:], resumed):
        assert np.array_equal(x1, x2) and np.array_equal(y1, y2)
    epoch0 = np.concatenate([y for _, y in straight[:3]]).ravel()
    epoch1 = np.concatenate([y for _, y in straight[3:6]]).ravel()
    assert sorted(epoch0) == list(range(10)) and not np.array_equal(epoch0, epoch1)
    x, _ = straight[0]
    assert x.dtype == np.float32 and x.min() >= 0 and x.max() <= 255
    assert not np.array_equal(x[0], images[int(straight[0][1][0, 0])])  # augmented


def test_balanced_sampling_draws_the_rare_bands_more_and_is_the_same_after_a_resume():
    from agegate.training.pipeline import band_balance_weights, training_batches

    ages = np.array([15.0] * 10 + [30.0] * 90, dtype=np.float32)  # 10 teens, 90 adults
    weights = band_balance_weights(ages, 1.0)  # each band equally likely
    assert weights.sum() == pytest.approx(1.0) and weights[0] == pytest.approx(9 * weights[-1])
    images = np.zeros((100, 8, 8, 3), np.uint8)
    draw = lambda first: np.concatenate([y for _, y in training_batches(images, ages, 50, 3, first, 4, weights, 400).as_numpy_iterator()]).ravel()  # noqa: E731
    straight, resumed = draw(0), draw(3)
    assert len(straight) == 1600 and len(resumed) == 400
    assert np.array_equal(straight[1200:], resumed)
    assert 0.4 < float(np.mean(straight == 15.0)) < 0.6  # a tenth of the faces, half of the draws
    assert 0.05 < float(np.mean(draw(0)[:400] == 15.0)) and np.mean(band_balance_weights(ages, 0.0)[:10]) == pytest.approx(0.01)


def test_gender_balanced_sampling_gives_each_band_as_many_women_as_men():
    from agegate.training.metrics import band_of
    from agegate.training.pipeline import band_balance_weights

    # Young adults mostly women, the middle-aged mostly men, as in the train splits; ten faces
    # whose gender is unknown among the young adults.
    ages = np.array([20.0] * 40 + [45.0] * 40 + [20.0] * 10, dtype=np.float32)
    groups = ["female"] * 30 + ["male"] * 10 + ["female"] * 10 + ["male"] * 30 + [None] * 10
    weights = band_balance_weights(ages, 1.0, groups)
    g = np.array(groups, dtype=object)
    young, old = ages == 20.0, ages == 45.0
    assert weights.sum() == pytest.approx(1.0)
    assert weights[young].sum() == pytest.approx(0.5) and weights[old].sum() == pytest.approx(0.5)  # bands as without genders
    assert weights[young & (g == None)].sum() == pytest.approx(0.5 * 10 / 50)  # noqa: E711 the unknown keep their share
    for band in (young, old):
        assert weights[band & (g == "female")].sum() == pytest.approx(weights[band & (g == "male")].sum())
    # Without groups, nothing changes: bit for bit the weights of band balance as written before
    # groups existed (numpy integer counts to the power; bands of 15 and 26, where float ** differs).
    uneven = np.array([20.0] * 15 + [45.0] * 26, dtype=np.float32)
    names, counts = np.unique(band_of(uneven), return_counts=True)
    before = np.array([dict(zip(names, counts))[b] ** -0.5 for b in band_of(uneven)])
    assert np.array_equal(band_balance_weights(uneven, 0.5), before / before.sum())
    assert np.array_equal(band_balance_weights(uneven, 0.5, [None] * len(uneven)), before / before.sum())
    # With balance 0 the bands keep their natural shares; only the genders inside them are evened.
    natural = band_balance_weights(ages, 0.0, groups)
    assert natural[young].sum() == pytest.approx(50 / 90) and len(set(band_of(ages))) == 2


def test_balancing_groups_refuses_data_that_never_says_them_and_joins_kinds(tmp_path):
    from agegate.training.data import read_sources
    from agegate.training.fit import RunError, balance_groups_of

    (tmp_path / "images").mkdir()
    rows = ["file_name,real_age"]
    for i in range(4):
        cv2.imwrite(str(tmp_path / "images" / f"p{i}.jpg"), np.full((32, 32, 3), 100 + i, np.uint8))
        rows.append(f"p{i}.jpg,{20 + i}")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    sources = read_sources([tmp_path])
    with pytest.raises(RunError, match="--balance-gender: no train face's gender is known"):
        balance_groups_of(sources, sources[0].records, ("gender",))
    (tmp_path / "meta.csv").write_text("file_name,gender,race\np0.jpg,F,2\np1.jpg,M,\n")
    sources = read_sources([tmp_path])
    genders = balance_groups_of(sources, sources[0].records, ("gender",))
    assert genders[(tmp_path.name, "p0.jpg")] == "female" and genders[(tmp_path.name, "p1.jpg")] == "male"
    assert genders[(tmp_path.name, "p2.jpg")] is None
    both = balance_groups_of(sources, sources[0].records, ("gender", "ethnicity"))
    assert both[(tmp_path.name, "p0.jpg")] == "female/Asian" and both[(tmp_path.name, "p1.jpg")] is None  # a kind unsaid: unknown


def test_answer_shift_reaches_the_share_asked_for_and_never_moves_answers_up():
    true = np.array([10, 14, 16, 17, 30, 40, 50], dtype=float)
    pred = np.array([12, 20, 26.3, 24, 31, 24, 45], dtype=float)
    assert metrics.answer_shift(true, pred, 0.75) == 0.0  # 3 of 4 minors already under 25
    shift = metrics.answer_shift(true, pred, 1.0)  # the 16-year-old at 26.3 must come under 25
    assert shift == pytest.approx(-1.4) and np.all((pred + shift)[true < 18] < 25)
    with pytest.raises(ValueError, match="no under-18s"):
        metrics.answer_shift(np.array([30.0]), np.array([20.0]), 0.97)


def test_calibrated_threshold_and_constant_models():
    true = np.array([10, 14, 16, 17, 20, 30, 40, 50], dtype=float)
    pred = np.array([12, 20, 22.04, 26, 25, 31, 24, 45], dtype=float)
    c = metrics.calibrated_threshold(true, pred, target=0.75)  # 3 of the 4 minors: the third-lowest estimate is 22.04
    assert c["threshold"] == pytest.approx(22.1) and c["under18_flagged"] == 0.75 and c["over30_flagged"] == 0.0
    c = metrics.calibrated_threshold(true, pred, target=1.0)
    assert c["threshold"] == pytest.approx(26.1) and c["under18_flagged"] == 1.0 and c["over30_flagged"] == pytest.approx(1 / 3)
    assert c["teen_flagged"] == 1.0 and c["teen_n"] == 3
    assert metrics.calibrated_threshold(np.array([30.0]), np.array([31.0])) is None
    assert metrics.constant_predictions(np.full(50, 34.4)) and metrics.constant_predictions(np.array([30, 30.2, np.nan]))
    assert not metrics.constant_predictions(pred)


# --- a real tiny run: fit, interrupt, resume, eval, eda ------------------------------------


@pytest.fixture(scope="module")
def interrupted_run(tmp_path_factory):
    """A ResNet50 fit on two real sources, 24 faces per split of each, stopped after 2 of 3 epochs
    (genders and ethnic groups evened: UTKFace's file names say both, All-Age-Faces' meta.csv the gender)."""
    from agegate.training.fit import fit

    data = [str(require_utkface()), str(require_all_age_faces())]
    run = tmp_path_factory.mktemp("runs") / "tiny"
    config = FitConfig(data=data, backbone="resnet50", image_size=32, limit=24, epochs=3, batch_size=8, balance_gender=True, balance_ethnicity=True)
    result = fit(config, run, max_epochs_this_run=2, verbose=0)
    return run, result


def _history_epochs(run: Path) -> list[int]:
    with open(run / "history.csv") as f:
        return [int(row["epoch"]) for row in csv.DictReader(f)]


@pytest.mark.slow
def test_interrupted_run_has_its_checkpoints_and_settings(interrupted_run):
    run, result = interrupted_run
    assert not result.complete and result.epochs_done == 2
    assert _history_epochs(run) == [1, 2]
    assert RunDir(run).saved_epochs() == [1, 2]
    config = json.loads((run / "config.json").read_text())
    assert config["backbone"] == "resnet50" and config["image_size"] == 32 and config["epochs"] == 3 and config["limit"] == 24
    assert config["data"] == [str(UTKFACE.resolve()), str(ALL_AGE_FACES.resolve())]
    assert "utkface-part1: non-commercial" in config["data_licence"] and "all-age-faces: none stated" in config["data_licence"].lower()
    assert config["target_scale"] > 1 and 10 < config["target_offset"] < 60 and config["balance"] == 0.5 and config["balance_gender"] is config["balance_ethnicity"] is True
    report = json.loads((run / "data-report.json").read_text())
    assert set(report["sources"]) == {"utkface-part1", "all-age-faces"}
    assert report["sources"]["all-age-faces"]["faces_per_split_and_band"]["train"]["13-17"] > 0
    assert report["crops"]["train"]["faces"] == 48 and 0 <= report["crops"]["train"]["fallback_share"] < 0.3
    assert set(report["crops"]["train"]["fallback_share_by_source"]) == {"utkface-part1", "all-age-faces"}
    assert (run / "model.keras").exists()


@pytest.mark.slow
def test_checkpoint_restores_model_and_optimizer_exactly(interrupted_run):
    import keras

    from agegate.training.data import read_sources, records_of
    from agegate.training.faces import default_cache_dir
    from agegate.training.faces import prepare_faces as crops_of

    run, result = interrupted_run
    restored = keras.models.load_model(run / "checkpoints" / "epoch-002.keras")
    for a, b in zip(result.model.weights, restored.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)
    assert int(restored.optimizer.iterations.numpy()) == int(result.model.optimizer.iterations.numpy()) == 12
    for a, b in zip(result.model.optimizer.variables, restored.optimizer.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)
    # The loss (with its Huber delta) and metric come back too: same figures on the same batch.
    config = RunDir(run).load_config()
    records = [r for r in records_of(read_sources(config.data), 24, config.seed) if r.split == "val"]
    val = crops_of(records, serving_spec(config), config.detector_spec, default_cache_dir(), name="val")
    x, y = val.images[:16].astype(np.float32), ((val.ages[:16] - config.target_offset) / config.target_scale)[:, None]
    before = result.model.evaluate(x, y, verbose=0, return_dict=True)
    after = restored.evaluate(x, y, verbose=0, return_dict=True)
    assert after == pytest.approx(before, rel=1e-5)


@pytest.mark.slow
def test_resume_continues_where_it_stopped(interrupted_run, capsys):
    from agegate.training.cli import main

    run, _ = interrupted_run
    assert main(["fit", "--out", str(run), "--resume", "--image-size", "48"]) == 1
    assert "--resume continues a run with its own settings" in capsys.readouterr().err
    assert main(["fit", "--out", str(run), "--resume", "--epochs", "1"]) == 1
    assert "the run already has 2 epochs" in capsys.readouterr().err
    assert main(["fit", str(UTKFACE), "--out", str(run)] + TINY) == 1
    assert "already holds a run" in capsys.readouterr().err

    assert main(["fit", "--out", str(run), "--resume", "--verbose", "0"]) == 0
    assert "3/3 epochs, complete" in capsys.readouterr().out
    assert _history_epochs(run) == [1, 2, 3]
    assert RunDir(run).saved_epochs() == [2, 3]  # keeps the last 2
    import keras

    resumed = keras.models.load_model(run / "checkpoints" / "epoch-003.keras")
    assert int(resumed.optimizer.iterations.numpy()) == 18  # 12 before the interruption + 6

    # A finished run is extended with --resume --epochs N.
    assert main(["fit", "--out", str(run), "--resume", "--epochs", "4", "--verbose", "0"]) == 0
    assert "4/4 epochs, complete" in capsys.readouterr().out
    assert _history_epochs(run) == [1, 2, 3, 4] and RunDir(run).load_config().epochs == 4

    assert main(["fit", "--out", str(run), "--resume", "--verbose", "0"]) == 0  # nothing left to do
    assert _history_epochs(run) == [1, 2, 3, 4]

    # Each session that trained says where: the same seed trains another model on another kind of CPU.
    sessions = [json.loads(line) for line in RunDir(run).sessions.read_text().splitlines()]
    assert [s["from_epoch"] for s in sessions] == [0, 2, 3]  # the session with nothing left to do trained nothing
    assert all(s["cpu"] and s["cores"] >= 1 and s["tensorflow"] and s["strategy"] for s in sessions)


@pytest.mark.slow
def test_eval_writes_metrics_consistent_with_its_predictions(interrupted_run, capsys):
    from agegate.training.cli import main

    run, _ = interrupted_run
    assert main(["eval", str(run), "--limit", "24"]) == 0
    assert "MAE" in capsys.readouterr().out
    m = json.loads((run / "metrics.json").read_text())
    with open(run / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    true = np.array([float(r["real_age"]) for r in rows])
    pred = np.array([float(r["predicted_age"]) for r in rows])
    assert m["n"] == len(rows) == 48 and m["split"] == "test"
    assert set(m["mae_by_band"]) == set(metrics.BAND_NAMES)
    assert all(m["mae_by_band"][b]["n"] > 0 for b in metrics.BAND_NAMES)
    again = metrics.summarise(true, pred, 25)
    assert m["mae"] == pytest.approx(again["mae"], abs=1e-3)
    for band in metrics.BAND_NAMES:
        assert m["mae_by_band"][band]["mae"] == pytest.approx(again["mae_by_band"][band]["mae"], abs=1e-3)
    assert m["mae_15_35"] == pytest.approx(again["mae_15_35"], abs=1e-3)
    assert m["challenge"] == pytest.approx(again["challenge"])
    assert len(m["threshold_curve"]) == len(metrics.CURVE_THRESHOLDS)
    assert np.ptp(pred) > 0.1, "the model answers the same age for every face"
    # Per source, each on its own test faces, and the pooled figure their weighted mean.
    sources = np.array([r["source"] for r in rows])
    assert set(m["sources"]) == {"utkface-part1", "all-age-faces"}
    for name, figures in m["sources"].items():
        assert figures["n"] == 24 == int((sources == name).sum())
        assert figures["mae"] == pytest.approx(metrics.mae(true[sources == name], pred[sources == name]), abs=1e-3)
    assert m["mae"] == pytest.approx(sum(f["mae"] * f["n"] for f in m["sources"].values()) / 48, abs=1e-3)
    assert m["calibrated"]["under18_flagged"] >= 0.99
    for name in ("learning_curves", "predicted_vs_true", "error_by_band", "threshold_curve"):
        assert (run / "plots" / f"{name}.png").stat().st_size > 5000
    # --mirror-average: the mean of the face's and its mirror image's answers, recorded as such
    assert m["mirror_average"] is False
    assert main(["eval", str(run), "--limit", "24", "--mirror-average"]) == 0
    mirrored = json.loads((run / "metrics.json").read_text())
    with open(run / "predictions.csv") as f:
        averaged = np.array([float(r["predicted_age"]) for r in csv.DictReader(f)])
    assert mirrored["mirror_average"] is True and mirrored["n"] == 48
    assert 0 < np.abs(averaged - pred).max() < 20  # the same faces, answered a little differently


@pytest.mark.slow
def test_eda_writes_report_and_plots(tmp_path, capsys):
    from agegate.training.cli import main

    data = require_utkface()
    assert main(["eda", str(data), "--out", str(tmp_path), "--limit", "14", "--samples-per-band", "2"]) == 0
    report = json.loads((tmp_path / "eda.json").read_text())
    assert report["faces"] == 42 and report["licence"].startswith("non-commercial")
    assert report["faces_per_split_and_band"]["test"] == {b: 2 for b in metrics.BAND_NAMES}
    assert 0 <= report["fallback_share"] < 0.3 and report["image_sizes"] == {"200x200": 42}
    # The photos with no face found are named, as many as the share says.
    assert len(report["no_face_found"]) == round(report["fallback_share"] * 42)
    assert all(f in (tmp_path / "report.md").read_text() for f in report["no_face_found"])
    text = (tmp_path / "report.md").read_text()
    assert "non-commercial research purposes only" in text and "| test |" in text
    for name in ("age_histogram", "band_counts", "samples_by_band", "image_sizes"):
        assert (tmp_path / f"{name}.png").stat().st_size > 5000
