"""The crop aligned to YuNet's five landmarks (CropSpec.align "landmarks"), on a real photo and the real detector."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from agegate import edge
from agegate.edge.bundle import (
    FIVE_POINT_TEMPLATE, TEMPLATE_FRAMING, BundleError, CropSpec, InputSpec, OutputSpec, Preprocessing, ServingSpec,
    alignment, five_point_template, load_bundle, prepare_face,
)
from agegate.edge.detectors import create_detector, detect_in_photo


def _spec(align: str, size: int = 64) -> ServingSpec:
    margin, shift = TEMPLATE_FRAMING
    return ServingSpec(
        input=InputSpec(height=size, width=size), preprocessing=Preprocessing(), output=OutputSpec(),
        crop=CropSpec(margin=margin, shift_y=shift, align=align,
                      template=five_point_template(margin, shift) if align == "landmarks" else None),
    )


@pytest.fixture(scope="module")
def yunet():
    return create_detector("yunet")


def _turned(image: np.ndarray, degrees: float, landmarks) -> tuple[np.ndarray, np.ndarray]:
    """The photo turned about a point off its centre, and where the same landmarks land in it."""
    h, w = image.shape[:2]
    turn = cv2.getRotationMatrix2D((w * 0.4, h * 0.3), degrees, 1.0)
    return cv2.warpAffine(image, turn, (w, h), borderMode=cv2.BORDER_REPLICATE), np.asarray(landmarks) @ turn[:, :2].T + turn[:, 2]


def test_a_turned_face_gives_the_same_aligned_crop(yunet, astronaut_bgr):
    """Turn the photo 25 degrees: the box crop turns with the head, the aligned crop does not."""
    (face,) = detect_in_photo(yunet, astronaut_bgr)
    aligned, boxed = _spec("landmarks", 128), _spec("box", 128)
    upright = prepare_face(astronaut_bgr, face.box, aligned, face.landmarks).astype(int)
    turned, points = _turned(astronaut_bgr, 25, face.landmarks)
    inner = slice(24, 104)  # the face, not the border the warp repeats
    again = prepare_face(turned, face.box, aligned, points).astype(int)
    assert np.abs(again - upright)[inner, inner].mean() < 6
    box_upright = prepare_face(astronaut_bgr, face.box, boxed).astype(int)
    box_turned = prepare_face(turned, face.box, boxed).astype(int)
    assert np.abs(box_turned - box_upright)[inner, inner].mean() > 3 * np.abs(again - upright)[inner, inner].mean()


def test_the_landmarks_land_on_the_template(yunet, astronaut_bgr):
    (face,) = detect_in_photo(yunet, astronaut_bgr)
    for degrees in (0, -30, 40):
        turned, points = _turned(astronaut_bgr, degrees, face.landmarks)
        matrix = alignment(points, face.box, FIVE_POINT_TEMPLATE, (64, 64))
        placed = points @ matrix[:, :2].T + matrix[:, 2]
        # A similarity cannot fit one face's five points exactly to the average face: within 3 px of 64.
        assert np.abs(placed - np.asarray(FIVE_POINT_TEMPLATE) * 64).max() < 3
        eyes = placed[1] - placed[0]
        assert abs(np.degrees(np.arctan2(eyes[1], eyes[0]))) < 3  # upright whatever the turn


def test_without_trustworthy_landmarks_an_aligned_bundle_cuts_by_the_box(yunet, astronaut_bgr):
    (face,) = detect_in_photo(yunet, astronaut_bgr)
    by_box = prepare_face(astronaut_bgr, face.box, _spec("box"))
    x, y, w, h = face.box
    far_too_small = [(x + w / 2 + dx, y + h / 2 + dy) for dx, dy in [(-2, -2), (2, -2), (0, 0), (-1, 2), (1, 2)]]
    for landmarks in (None, [(np.nan, 1.0)] * 5, [(100.0, 100.0)] * 5, far_too_small, [(1, 2)] * 3):
        assert np.array_equal(prepare_face(astronaut_bgr, face.box, _spec("landmarks"), landmarks), by_box)
    assert not np.array_equal(prepare_face(astronaut_bgr, face.box, _spec("landmarks"), face.landmarks), by_box)


def test_a_face_at_the_frame_edge_is_filled_by_the_border(yunet, astronaut_bgr):
    (face,) = detect_in_photo(yunet, astronaut_bgr)
    crop = prepare_face(astronaut_bgr, face.box, _spec("landmarks"), np.asarray(face.landmarks) - [0, 200])
    assert crop.shape == (64, 64, 3) and crop.dtype == np.uint8  # points above the frame: no error, a crop


def test_the_template_follows_the_box_framing():
    assert five_point_template(*TEMPLATE_FRAMING) == FIVE_POINT_TEMPLATE
    wider = np.asarray(five_point_template(0.25, 0.0))
    # A crop with more margin shows the same face smaller: its points closer together, about the centre.
    ratio = np.ptp(wider[:, 0]) / np.ptp(np.asarray(FIVE_POINT_TEMPLATE)[:, 0])
    assert ratio == pytest.approx((1 + 2 * TEMPLATE_FRAMING[0]) / 1.5, rel=1e-3)


def test_a_manifest_aligned_to_landmarks_without_a_template_is_refused(tmp_path):
    bundle = tmp_path / "b"
    shutil.copytree(Path(edge.__file__).parent / "default_bundle", bundle)  # the shipped bundle: a real one
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["crop"]["align"] = "landmarks"
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="template"):
        load_bundle(bundle)
    manifest["crop"]["template"] = [[0.3, 0.3], [0.7, 0.3], [0.5, 0.5], [0.35, 0.7], [0.65, 0.7]]
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    assert load_bundle(bundle).manifest.crop.align == "landmarks"  # the sha256 is of the model, not the manifest
    manifest["crop"]["template"] = [[0.3, 0.3], [0.7, 0.3], [0.5, 0.5], [0.35, 0.7], [0.65, 3.0]]
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="fractions of the crop"):
        load_bundle(bundle)
