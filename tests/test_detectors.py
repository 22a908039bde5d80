"""Face detectors on the real astronaut photo, the customer zone and its ordering."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import YUNET_MODEL

from agegate.edge.detectors import Detector, DetectorError, Face, Zone, create_detector, customer_faces
from agegate.edge.tracker import iou

# Eileen Collins' face on the 512x512 astronaut photo, measured by hand from the image
# (hairline to chin, ear to ear): x 177-269, y 62-176.
TRUE_FACE = (177, 62, 92, 114)


@pytest.fixture(scope="module")
def haar() -> Detector:
    return create_detector("haar")


@pytest.fixture(scope="module")
def yunet() -> Detector:
    return create_detector("yunet", YUNET_MODEL)


@pytest.fixture(scope="module")
def blank_frames() -> list[np.ndarray]:
    grey = np.full((480, 640, 3), 128, np.uint8)
    noise = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    return [grey, noise]


@pytest.fixture(params=["haar", "yunet"])
def detector(request) -> Detector:
    return request.getfixturevalue(request.param)


def test_finds_the_one_face_on_the_astronaut_photo(detector, astronaut_bgr):
    faces = detector.detect(astronaut_bgr)
    assert len(faces) == 1
    (face,) = faces
    assert iou(face.box, TRUE_FACE) >= 0.6, face
    x, y, w, h = face.box
    assert 160 <= x and x + w <= 290 and 50 <= y and y + h <= 190


def test_finds_no_face_on_a_blank_or_noisy_frame(detector, blank_frames):
    for frame in blank_frames:
        assert detector.detect(frame) == []


def test_is_reusable_across_frame_sizes(detector, astronaut_bgr):
    first = detector.detect(astronaut_bgr)
    # A 640x480 till scene with the photo (its top 440 rows) at (64, 20): the same face, moved.
    scene = np.full((480, 640, 3), 90, np.uint8)
    scene[20:460, 64:576] = astronaut_bgr[:440]
    (in_scene,) = detector.detect(scene)
    x, y, w, h = first[0].box
    assert iou(in_scene.box, (x + 64, y + 20, w, h)) >= 0.8
    assert detector.detect(astronaut_bgr) == first  # back to the first size, same answer


def test_a_frame_that_is_not_bgr_is_refused(detector, astronaut_bgr):
    with pytest.raises(ValueError, match="BGR"):
        detector.detect(astronaut_bgr[:, :, 0])


def test_min_face_px_drops_smaller_faces(astronaut_bgr):
    assert create_detector("haar", min_face_px=150).detect(astronaut_bgr) == []
    assert create_detector("yunet", YUNET_MODEL, min_face_px=150).detect(astronaut_bgr) == []


def test_the_two_backends_agree(haar, yunet, astronaut_bgr):
    (h,) = haar.detect(astronaut_bgr)
    (y,) = yunet.detect(astronaut_bgr)
    assert iou(h.box, y.box) >= 0.5
    assert haar.name == "haar" and yunet.name == "yunet"
    assert h.score > 0  # the cascade's level weight
    assert 0.7 <= y.score <= 1.0


def test_yunet_score_threshold(astronaut_bgr):
    strict = create_detector("yunet", YUNET_MODEL, score_threshold=0.99)
    assert strict.detect(astronaut_bgr) == []


def test_yunet_boxes_are_clipped_to_the_frame(yunet, astronaut_bgr):
    # The face cut by the left edge (YuNet's own box starts at x = -9) and by the bottom
    # edge (its box ends at y = 170): the boxes stop at the frame.
    left_cut = np.ascontiguousarray(astronaut_bgr[:, 200:])
    (face,) = yunet.detect(left_cut)
    x, y, w, h = face.box
    assert x == 0 and w > 40 and y + h <= left_cut.shape[0]
    bottom_cut = np.ascontiguousarray(astronaut_bgr[:150])
    (face,) = yunet.detect(bottom_cut)
    x, y, w, h = face.box
    assert y + h == 150 and x + w <= 512


def test_create_detector_errors():
    with pytest.raises(DetectorError, match="unknown detector 'dlib'; choose one of: yunet, haar"):
        create_detector("dlib")


def test_yunet_ships_with_the_package_and_is_the_default(astronaut_bgr):
    """No path, no ../shared: the packaged ONNX file (with its MIT licence beside it) is used."""
    from agegate.edge.config import Settings
    from agegate.edge.detectors import DEFAULT_KIND, YUNET_MODEL as shipped

    assert DEFAULT_KIND == "yunet" and Settings().detector == "yunet"
    assert shipped.is_file() and 200_000 < shipped.stat().st_size < 300_000
    assert "MIT License" in (shipped.parent / "LICENSE-YuNet.txt").read_text()
    detector = create_detector("yunet")
    (face,) = detector.detect(astronaut_bgr)
    assert iou(face.box, TRUE_FACE) >= 0.6


@pytest.mark.parametrize("size", [300, 360])
def test_a_photo_gives_the_faces_the_daemon_finds_in_the_same_frame(detector, astronaut_bgr, size):
    """A 640x480 till frame saved as a photo: detect_in_photo must find what detect() finds on
    the frame. It used to pad every photo by 25 % first, and Haar then lost these faces."""
    import cv2

    from agegate.edge.detectors import detect_in_photo

    scene = np.full((480, 640, 3), 90, np.uint8)
    scene[480 - size :, 100 : 100 + size] = cv2.resize(astronaut_bgr, (size, size), interpolation=cv2.INTER_AREA)
    live = detector.detect(scene)
    assert len(live) == 1
    assert [f.box for f in detect_in_photo(detector, scene)] == [f.box for f in live]


def test_a_face_cut_by_the_photo_edge_is_searched_again_padded(yunet, astronaut_bgr):
    from agegate.edge.detectors import detect_in_photo

    tight = np.ascontiguousarray(astronaut_bgr[90:190, 180:270])  # chin and hair cut off, as in data-set crops
    (face,) = detect_in_photo(yunet, tight)
    x, y, w, h = face.box
    assert x < 0 or y < 0 or x + w > tight.shape[1] or y + h > tight.shape[0]  # the whole face, beyond the cut
    # The landmarks came from the padded search too: in the photo's coordinates, on the face.
    (whole,) = detect_in_photo(yunet, astronaut_bgr)
    moved = np.asarray(whole.landmarks) - [180, 90]
    assert np.abs(np.asarray(face.landmarks) - moved).max() < 4


def test_yunet_gives_five_landmarks_where_the_face_is(yunet, haar, astronaut_bgr):
    (face,) = yunet.detect(astronaut_bgr)
    right_eye, left_eye, nose, right_mouth, left_mouth = np.asarray(face.landmarks)
    x, y, w, h = face.box
    assert all(x <= px <= x + w and y <= py <= y + h for px, py in face.landmarks)
    assert right_eye[0] < nose[0] < left_eye[0] and right_mouth[0] < left_mouth[0]  # the person's right is the image's left
    assert max(right_eye[1], left_eye[1]) < nose[1] < min(right_mouth[1], left_mouth[1])
    assert all(f.landmarks is None for f in haar.detect(astronaut_bgr))  # Haar has none: its faces are cut by the box


def test_create_detector_names_a_missing_or_broken_model(tmp_path):
    missing = tmp_path / "yunet.onnx"
    with pytest.raises(DetectorError, match="no such file") as err:
        create_detector("yunet", missing)
    assert str(missing) in str(err.value)
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not an onnx model")
    with pytest.raises(DetectorError, match="does not load") as err:
        create_detector("yunet", broken)
    assert str(broken) in str(err.value) and "\n" not in str(err.value)


def test_zone_parse():
    assert Zone.parse("0.2,0.1,0.8,1.0") == Zone(0.2, 0.1, 0.8, 1.0)
    assert Zone.parse(" 0, 0 ,1,1 ") == Zone() == Zone(0.0, 0.0, 1.0, 1.0)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0.2,0.1,0.8", "four numbers"),
        ("0.2,0.1,0.8,1.0,0.5", "four numbers"),
        ("left,top,right,bottom", "four numbers"),
        ("0.8,0.1,0.2,1.0", "x0 < x1"),
        ("0.2,0.5,0.8,0.5", "y0 < y1"),
        ("-0.1,0,1,1", "0 <= x0"),
        ("0,0,1.5,1", "x1 <= 1"),
        ("nan,0,1,1", "must have"),
    ],
)
def test_zone_parse_errors(text, message):
    with pytest.raises(ValueError, match=message):
        Zone.parse(text)


def test_zone_contains_by_the_face_centre():
    zone = Zone(0.25, 0.0, 0.75, 1.0)  # the middle half of a 640x480 frame: x 160..480
    assert zone.contains(Face((300, 100, 80, 80), 1.0), 640, 480)
    assert not zone.contains(Face((40, 100, 80, 80), 1.0), 640, 480)  # centre x 80
    # Mostly outside, but the centre (x 170) is inside: it counts.
    assert zone.contains(Face((100, 100, 140, 140), 1.0), 640, 480)
    # Mostly inside, but the centre (x 490) is outside: it does not.
    assert not zone.contains(Face((400, 100, 180, 180), 1.0), 640, 480)


def test_customer_faces_leaves_out_the_cashier_and_puts_the_largest_first():
    zone = Zone.parse("0.2,0.0,0.8,1.0")
    cashier = Face((10, 50, 200, 200), 0.99)  # the biggest face, but at the till's side
    passer_by = Face((420, 60, 60, 60), 0.95)
    customer = Face((220, 100, 160, 160), 0.80)
    faces = customer_faces([cashier, passer_by, customer], zone, 640, 480)
    assert faces == [customer, passer_by]
    assert customer_faces([cashier], zone, 640, 480) == []
    assert customer_faces([], Zone(), 640, 480) == []
