"""The IoU tracker and its per-person age smoothing, driven with explicit times."""

from __future__ import annotations

import threading

import pytest

from agegate.edge.tracker import AgeEstimate, Tracker, iou

LEFT = (100, 120, 80, 80)
RIGHT = (300, 120, 90, 90)  # a little nearer the camera: the larger face


def jitter(box, i):
    """The box moved by a few pixels, as a detector's box wobbles from frame to frame."""
    x, y, w, h = box
    d = (i % 5) - 2
    return (x + d, y - d, w + d, h)


def test_iou():
    assert iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert iou((0, 0, 10, 10), (10, 0, 10, 10)) == 0.0  # touching edges
    assert iou((0, 0, 10, 10), (5, 0, 10, 10)) == pytest.approx(50 / 150)


def test_a_blurry_outlier_frame_does_not_move_the_median():
    t = Tracker(min_hits=1)
    ages = [30, 31, 29, 30, 70, 30, 31]  # frame 4 was blurred and read as 70
    for i, age in enumerate(ages):
        t.update(i * 0.1, [(jitter(LEFT, i), age)])
    est = t.customer(0.6)
    assert est.age == 30
    assert est.samples == 7
    assert len(t) == 1 and est.track_id == 1  # one person throughout, despite the wobble


def test_spread_is_half_the_interquartile_range():
    t = Tracker(min_hits=1)
    for i, age in enumerate([24, 20, 28, 22, 26]):
        t.update(i * 0.1, [(LEFT, age)])
    est = t.customer(0.4)
    assert (est.age, est.spread, est.samples) == (24.0, 2.0, 5)  # quartiles 22 and 26


def test_one_sample_has_no_spread():
    t = Tracker(min_hits=1)
    t.update(5.0, [(LEFT, 33.0)])
    assert t.customer(5.0) == AgeEstimate(age=33.0, spread=0.0, samples=1, first_seen=5.0, last_seen=5.0, track_id=1)


def test_two_people_side_by_side_keep_separate_tracks():
    t = Tracker(min_hits=1)
    for i in range(10):
        people = [(jitter(LEFT, i), 19.0), (jitter(RIGHT, i + 2), 52.0)]
        t.update(i * 0.1, people if i % 2 else people[::-1])  # the detector's order changes
    assert len(t) == 2
    right = t.customer(0.9)
    assert (right.age, right.spread, right.samples) == (52.0, 0.0, 10)
    # The larger person steps away; the other one's ages were never mixed with theirs.
    for i in range(10, 25):
        t.update(i * 0.1, [(jitter(LEFT, i), 19.0)])
    left = t.customer(2.4)
    assert left.track_id != right.track_id
    assert (left.age, left.spread) == (19.0, 0.0)
    assert left.first_seen == 0.0


def test_a_person_who_leaves_is_forgotten_and_the_next_starts_afresh():
    t = Tracker(min_hits=1, forget_after_s=2.0)
    for i in range(10):
        t.update(i * 0.1, [(LEFT, 60.0)])
    first = t.customer(0.9)
    t.update(2.0, [])
    assert len(t) == 1  # 1.1 s unseen: still remembered
    t.update(3.0, [])
    assert len(t) == 0  # 2.1 s unseen: forgotten
    assert t.customer(3.0) is None
    # A teenager steps into the same place: a new track, none of the adult's samples.
    t.update(3.1, [(LEFT, 16.0)])
    new = t.customer(3.1)
    assert new.track_id != first.track_id
    assert (new.age, new.samples, new.first_seen) == (16.0, 1, 3.1)


def test_the_customer_is_the_largest_recent_face():
    t = Tracker(min_hits=1, forget_after_s=5.0)
    t.update(0.0, [(LEFT, 20.0), (RIGHT, 45.0)])
    assert t.customer(0.0).age == 45.0  # RIGHT is larger
    t.update(1.5, [(LEFT, 21.0)])  # RIGHT has not been seen for 1.5 s
    assert t.customer(1.5, max_staleness_s=1.0).age == 20.5
    assert t.customer(1.5, max_staleness_s=2.0).age == 45.0
    assert t.customer(9.0) is None  # nobody seen lately


def test_a_smaller_face_never_stands_in_for_the_customer():
    t = Tracker(min_hits=1)
    for i in range(5):
        t.update(i * 0.1, [(LEFT, 40.0)])
    t.update(0.5, [(LEFT, 40.0), (RIGHT, None)])  # the larger face arrives, not yet estimated
    assert t.customer(0.5) is None
    t.update(0.6, [(LEFT, 40.0), (RIGHT, 17.0)])
    assert t.customer(0.6).age == 17.0


def test_old_samples_leave_the_window():
    t = Tracker(min_hits=1, window_s=3.0, forget_after_s=5.0)
    for i in range(10):
        t.update(i * 0.1, [(LEFT, 40.0)])
    for i in range(5):
        t.update(4.0 + i * 0.1, [(LEFT, 20.0)])
    est = t.customer(4.4)  # the window reaches back to 1.4 s: after the last 40
    assert (est.age, est.samples) == (20.0, 5)
    # Seen but not estimated for longer than the window: no age to give.
    for i in range(40):
        t.update(4.5 + i * 0.1, [(LEFT, None)])
    assert t.customer(8.4) is None


def test_at_most_max_samples_are_kept():
    t = Tracker(min_hits=1, max_samples=15)
    for i in range(25):
        t.update(i * 0.01, [(LEFT, 20.0 if i < 10 else 30.0)])
    est = t.customer(0.24)
    assert (est.samples, est.age) == (15, 30.0)  # the ten 20s were pushed out


def test_each_face_joins_the_track_it_overlaps_most():
    t = Tracker(min_hits=1, iou_threshold=0.3)
    t.update(0.0, [((100, 100, 100, 100), 30.0), ((140, 100, 100, 100), 60.0)])
    # Both new boxes overlap both tracks; greedy matching pairs each with its nearest.
    t.update(0.1, [((150, 100, 100, 100), 61.0), ((95, 100, 100, 100), 31.0)])
    assert len(t) == 2
    t.update(0.2, [((150, 100, 100, 100), None)])
    assert t.customer(0.2, max_staleness_s=0.05).age == 60.5


def test_clear_forgets_everyone():
    t = Tracker(min_hits=1)
    t.update(0.0, [(LEFT, 30.0)])
    t.clear()
    assert len(t) == 0 and t.customer(0.0) is None


def test_customer_can_be_read_while_the_vision_thread_updates():
    t = Tracker(min_hits=1, forget_after_s=0.5)
    errors: list[BaseException] = []

    def vision():
        try:
            for i in range(3000):
                t.update(i * 0.01, [(jitter(LEFT, i), 25.0), (jitter(RIGHT, i), 35.0)] if i % 7 else [])
        except BaseException as exc:  # reported below
            errors.append(exc)

    thread = threading.Thread(target=vision)
    thread.start()
    seen = set()
    while thread.is_alive():
        est = t.customer(1e9, max_staleness_s=2e9)
        if est is not None:
            seen.add(est.age)
    thread.join()
    assert not errors
    assert seen <= {35.0}


def test_bad_settings_are_refused():
    with pytest.raises(ValueError):
        Tracker(min_hits=1, iou_threshold=0)
    with pytest.raises(ValueError):
        Tracker(min_hits=1, max_samples=0)


def test_a_one_frame_false_face_does_not_become_the_customer():
    t = Tracker(min_hits=3)
    customer, poster = (300, 150, 80, 80), (20, 20, 160, 160)
    for i in range(6):
        t.update(i * 0.1, [(customer, 30.0)])
    t.update(0.6, [(customer, 30.0), (poster, 12.0)])  # a larger false detection, one frame only
    assert t.customer(0.6).age == 30.0
    for i in range(7, 10):  # seen in three frames, it is a person: the larger face is the customer
        t.update(i * 0.1, [(customer, 30.0), (poster, 12.0)])
    assert t.customer(0.9).age == 12.0


def test_update_answers_each_persons_latest_estimate_also_on_frames_without_one():
    t = Tracker(min_hits=1)
    assert t.update(0.0, [(LEFT, 30.0), (RIGHT, None)]) == [30.0, None]
    assert t.update(0.1, [(jitter(LEFT, 1), None), (jitter(RIGHT, 1), 50.0)]) == [30.0, 50.0]
    assert t.update(5.0, [(LEFT, None)]) == [None]  # forgotten after its window: no stale age
