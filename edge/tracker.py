"""Who is who across frames, and each person's age smoothed over the last few seconds.

One frame's estimate is noisy: a blink, motion blur or a turned head can move it by
years. The tracker links face boxes from frame to frame by overlap (IoU, greedy, best
pairs first), keeps each person's recent estimates, and answers the median of them with
a spread (half the interquartile range), so a single bad frame does not move the answer
and two people at the till never share one.

The customer is the largest face seen recently in at least ``min_hits`` frames: a
detector's false positive on a shelf or a poster rarely lands on the same spot in
consecutive frames, so it never becomes a track that counts. If that person has no estimate yet,
:meth:`Tracker.customer` answers None rather than someone else's age: a smaller face
behind the customer must never stand in for them.

Times are seconds on one clock chosen by the caller (the daemon passes ``time.monotonic()``).

Threading: :meth:`Tracker.update` is called from one thread (the vision loop) and
:meth:`Tracker.customer` is read from others (the API and decision threads); every
public method takes the tracker's lock, held only for a few list operations.
"""

from __future__ import annotations

import itertools
import threading
from collections import deque
from dataclasses import dataclass, field

import numpy as np

Box = tuple[int, int, int, int]  # x, y, w, h in pixels


@dataclass(frozen=True)
class AgeEstimate:
    age: float  # median of the estimates in the window, years
    spread: float  # half the interquartile range of those estimates; 0 for one sample
    samples: int  # how many estimates that is
    first_seen: float  # when this person's track began
    last_seen: float  # when their face was last matched
    track_id: int


@dataclass
class _Track:
    track_id: int
    box: Box
    first_seen: float
    last_seen: float
    ages: deque[tuple[float, float]] = field(default_factory=deque)  # (time, age)
    hits: int = 0  # frames in which this face was seen

    @property
    def area(self) -> int:
        return self.box[2] * self.box[3]


def iou(a: Box, b: Box) -> float:
    """Intersection over union of two (x, y, w, h) boxes; 0 when they do not touch."""
    ix = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    iy = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    if ix <= 0 or iy <= 0:
        return 0.0
    inter = ix * iy
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


class Tracker:
    def __init__(
        self,
        *,
        iou_threshold: float = 0.3,
        window_s: float = 3.0,
        max_samples: int = 15,
        forget_after_s: float = 2.0,
        min_hits: int = 3,
    ):
        if not 0.0 < iou_threshold <= 1.0 or window_s <= 0 or max_samples < 1 or forget_after_s <= 0:
            raise ValueError("need 0 < iou_threshold <= 1, window_s > 0, max_samples >= 1, forget_after_s > 0")
        self.iou_threshold = iou_threshold
        self.window_s = window_s
        self.max_samples = max_samples
        self.forget_after_s = forget_after_s
        self.min_hits = max(1, min_hits)
        self._tracks: list[_Track] = []
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def update(self, now: float, observations: list[tuple[Box, float | None]]) -> list[float | None]:
        """Add one frame's faces: ``(box, age)``, age None where it was not estimated this frame.

        Each face joins the track it overlaps most (IoU at least ``iou_threshold``, each
        track taking one face); a face that matches none starts a new track. Tracks not
        seen for ``forget_after_s`` are dropped, and estimates older than ``window_s``.
        Returns, per face, its person's latest estimate within the window (None if none).
        """
        with self._lock:
            self._tracks = [t for t in self._tracks if now - t.last_seen <= self.forget_after_s]
            pairs = sorted(
                (
                    (iou(track.box, box), ti, oi)
                    for ti, track in enumerate(self._tracks)
                    for oi, (box, _) in enumerate(observations)
                ),
                reverse=True,
            )
            latest: list[float | None] = []
            matched: dict[int, _Track] = {}  # observation index -> track
            taken: set[int] = set()
            for overlap, ti, oi in pairs:
                if overlap < self.iou_threshold:
                    break
                if ti not in taken and oi not in matched:
                    taken.add(ti)
                    matched[oi] = self._tracks[ti]
            for oi, (box, age) in enumerate(observations):
                track = matched.get(oi)
                if track is None:
                    track = _Track(next(self._ids), box, now, now, deque(maxlen=self.max_samples))
                    self._tracks.append(track)
                track.box, track.last_seen = box, now
                track.hits += 1
                if age is not None:
                    track.ages.append((now, float(age)))
                while track.ages and track.ages[0][0] < now - self.window_s:
                    track.ages.popleft()
                latest.append(track.ages[-1][1] if track.ages else None)
        return latest

    def customer(self, now: float, max_staleness_s: float = 1.0) -> AgeEstimate | None:
        """The smoothed age of the largest face seen within ``max_staleness_s``.

        None when no face was seen that recently, or when the largest one has no
        estimate within ``window_s`` of ``now`` (a smaller face never stands in).
        """
        with self._lock:
            recent = [t for t in self._tracks if now - t.last_seen <= max_staleness_s and t.hits >= self.min_hits]
            if not recent:
                return None
            track = max(recent, key=lambda t: t.area)
            ages = [age for at, age in track.ages if at >= now - self.window_s]
            if not ages:
                return None
            q25, median, q75 = np.percentile(ages, [25, 50, 75])
            return AgeEstimate(
                age=float(median),
                spread=float(q75 - q25) / 2.0,
                samples=len(ages),
                first_seen=track.first_seen,
                last_seen=track.last_seen,
                track_id=track.track_id,
            )

    def __len__(self) -> int:
        """How many people are being tracked."""
        with self._lock:
            return len(self._tracks)

    def clear(self) -> None:
        """Forget everyone (e.g. when the camera reconnects or the model changes)."""
        with self._lock:
            self._tracks.clear()
