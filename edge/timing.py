"""Timing helpers shared by the camera, the vision loop and the daemon: :class:`Pacer` lets events
through at a rate (the camera's decode, the vision loop's age estimates), :class:`StageTimer` keeps
what a stage cost (the vision loop's stages, and capture, decide and publish in the daemon).
Kept apart from both users so that neither imports the other for them."""

from __future__ import annotations

import math
import threading
from typing import Callable


class Pacer:
    """Lets events through at most ``fps`` times a second (every one when ``fps`` is 0 or None).

    Due times lie on a fixed grid, so a source whose frames arrive a little early (jitter)
    still gives the asked rate rather than skipping to the next frame; a quarter period of
    slack is allowed. After a hold-up the grid restarts from now instead of bursting.
    """

    SLACK = 0.25

    def __init__(self, fps: float | None):
        self.period = 1.0 / fps if fps else 0.0
        self._next = -math.inf

    def due(self, now: float) -> bool:
        if not self.period:
            return True
        if now < self._next - self.SLACK * self.period:
            return False
        self._next = self._next + self.period if now - self._next < self.period else now + self.period
        return True


class StageTimer:
    """Running totals for one stage: read and reset by the stats publisher (:meth:`take`), and
    kept since start-up for the status and benchmarks (:meth:`totals`)."""

    def __init__(self, observe: Callable[[float], None] | None = None) -> None:
        self._lock = threading.Lock()
        self.count = 0
        self.total_s = 0.0
        self._all_count = 0
        self._all_s = 0.0
        self.observe = observe  # also told each measurement (seconds per item), e.g. a metrics histogram

    def add(self, seconds: float, count: int = 1) -> None:
        with self._lock:
            self.count += count
            self.total_s += seconds
            self._all_count += count
            self._all_s += seconds
        if self.observe is not None:
            for _ in range(count):
                self.observe(seconds / count)

    def take(self) -> tuple[int, float]:
        """(count, total seconds) since the last take."""
        with self._lock:
            out = (self.count, self.total_s)
            self.count, self.total_s = 0, 0.0
            return out

    def totals(self) -> dict[str, float]:
        """Count and seconds since start-up (never reset)."""
        with self._lock:
            return {"count": self._all_count, "total_s": round(self._all_s, 6)}
