"""The local decision log behind the console's history page: numbers only, pruned after N days.

One row per restricted-item decision the till made (``clear`` included): when, the POS's
transaction id, the decision, the smoothed estimate (age, spread, samples), whether the
customer looked under the legal age, and the model's name and version. Never a picture.

An SQLite file ``history.sqlite3`` in WAL mode under AGEGATE_STATE_DIR, so the console can
read while the till writes. ``synchronous=NORMAL``: a power cut may lose the last few rows
(the outbox, not this log, is what carries alerts durably), and the POS answer never waits
for an fsync. Rows older than AGEGATE_HISTORY_DAYS days are deleted at start-up and at most
once an hour after that; at most ``max_rows`` are kept whatever the POS does.

Threading: one connection shared by the HTTP workers, the MQTT POS worker (which record)
and the console (which reads), behind one lock held for a single statement or page.
A failing write is logged and dropped: the history must never stop the till answering.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from dataclasses import dataclass
from datetime import date, datetime, time as dtime
from pathlib import Path
from typing import Iterator

from .events import PosAnswer

log = logging.getLogger(__name__)

FILE_NAME = "history.sqlite3"
PRUNE_EVERY_S = 3600.0
COLUMNS = ("time", "transaction_id", "decision", "age", "spread", "samples", "likely_minor",
           "model_name", "model_version")


class HistoryError(Exception):
    """The log cannot be opened; the message names the file and says why."""


@dataclass(frozen=True)
class Row:
    id: int
    ts: float  # unix seconds
    transaction_id: str
    decision: str
    age: float | None
    spread: float | None
    samples: int | None
    likely_minor: bool
    model_name: str | None
    model_version: str | None

    @property
    def local_time(self) -> datetime:
        """When, in the till's local time zone (with its offset)."""
        return datetime.fromtimestamp(self.ts).astimezone()

    def csv_fields(self) -> list[str]:
        def num(v: float | int | None) -> str:
            return "" if v is None else f"{v:g}"

        return [self.local_time.isoformat(timespec="seconds"), self.transaction_id, self.decision, num(self.age),
                num(self.spread), num(self.samples), "1" if self.likely_minor else "0",
                self.model_name or "", self.model_version or ""]


@dataclass(frozen=True)
class Query:
    """A filter on the log: local calendar days ``since``..``until`` (both included), one decision."""

    since: date | None = None
    until: date | None = None
    decision: str | None = None

    def where(self) -> tuple[str, list]:
        clauses, args = [], []
        if self.since is not None:
            clauses.append("ts >= ?")
            args.append(_local_midnight(self.since))
        if self.until is not None:
            clauses.append("ts < ?")
            args.append(_next_midnight(self.until))
        if self.decision:
            clauses.append("decision = ?")
            args.append(self.decision)
        return (" WHERE " + " AND ".join(clauses)) if clauses else "", args


def _local_midnight(day: date) -> float:
    try:
        return datetime.combine(day, dtime.min).astimezone().timestamp()
    except (OverflowError, ValueError, OSError):  # 0001-01-01 or 9999-12-31: beyond what the clock can say
        return float("-inf") if day.year < 1970 else float("inf")


def _next_midnight(day: date) -> float:
    return float("inf") if day == date.max else _local_midnight(date.fromordinal(day.toordinal() + 1))


class DecisionLog:
    def __init__(self, state_dir: Path, keep_days: int = 30, max_rows: int = 1_000_000):
        self.path = Path(state_dir) / FILE_NAME
        self.keep_days = keep_days
        self.max_rows = max_rows
        self._lock = threading.Lock()
        self._next_prune = 0.0
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS decisions ("
                " id INTEGER PRIMARY KEY AUTOINCREMENT, ts REAL NOT NULL, transaction_id TEXT NOT NULL,"
                " decision TEXT NOT NULL, age REAL, spread REAL, samples INTEGER, likely_minor INTEGER NOT NULL,"
                " model_name TEXT, model_version TEXT)"
            )
            self._db.execute("CREATE INDEX IF NOT EXISTS decisions_ts ON decisions (ts)")
            self.prune()
        except (OSError, sqlite3.Error) as exc:
            raise HistoryError(f"AGEGATE_STATE_DIR: cannot use {self.path}: {exc}") from None

    def record(self, *, transaction_id: str, decision: str, age: float | None = None, spread: float | None = None,
               samples: int | None = None, likely_minor: bool = False, model_name: str | None = None,
               model_version: str | None = None, ts: float | None = None) -> None:
        """Add one decision; logs and drops it when the disk fails."""
        ts = time.time() if ts is None else ts
        try:
            with self._lock:
                self._db.execute(
                    "INSERT INTO decisions (ts, transaction_id, decision, age, spread, samples, likely_minor,"
                    " model_name, model_version) VALUES (?,?,?,?,?,?,?,?,?)",
                    (ts, transaction_id, decision, age, spread, samples, int(likely_minor), model_name, model_version),
                )
            if time.monotonic() >= self._next_prune:
                self.prune()
        except sqlite3.Error as exc:
            log.error("decision history: cannot record %s for %s: %s", decision, transaction_id, exc)

    def record_answer(self, answer: PosAnswer) -> None:
        """Add the decision a POS answer carries (the daemon's ``on_decision`` hook)."""
        est, model = answer.estimate, answer.model
        self.record(transaction_id=answer.transaction_id, decision=answer.decision or "", likely_minor=answer.likely_minor,
                    age=est.age if est else None, spread=est.spread if est else None,
                    samples=est.samples if est else None,
                    model_name=model.name if model else None, model_version=model.version if model else None)

    def prune(self, now: float | None = None) -> int:
        """Delete rows older than keep_days and beyond max_rows; returns how many went."""
        now = time.time() if now is None else now
        with self._lock:
            self._next_prune = time.monotonic() + PRUNE_EVERY_S
            gone = self._db.execute("DELETE FROM decisions WHERE ts < ?", (now - self.keep_days * 86400.0,)).rowcount
            last = self._db.execute("SELECT MAX(id) FROM decisions").fetchone()[0]
            if last is not None:
                gone += self._db.execute("DELETE FROM decisions WHERE id <= ?", (last - self.max_rows,)).rowcount
        if gone:
            log.info("decision history: pruned %d rows older than %d days", gone, self.keep_days)
        return gone

    def page(self, query: Query = Query(), *, limit: int = 50, offset: int = 0) -> tuple[list[Row], int]:
        """Newest first: ``limit`` rows from ``offset``, and how many match in all."""
        where, args = query.where()
        with self._lock:
            total = self._db.execute(f"SELECT COUNT(*) FROM decisions{where}", args).fetchone()[0]
            # By time, not by insert order: rows recorded with an earlier ts (a seeded or imported history,
            # a clock set back) belong where their time puts them.
            rows = self._db.execute(f"SELECT * FROM decisions{where} ORDER BY ts DESC, id DESC LIMIT ? OFFSET ?",
                                    [*args, limit, offset]).fetchall()
        return [_row(r) for r in rows], total

    def rows(self, query: Query = Query(), batch: int = 1000) -> Iterator[Row]:
        """Every matching row, oldest first by time, read a batch at a time (for the CSV download)."""
        where, args = query.where()
        after = (float("-inf"), 0)  # (ts, id) of the last row read: a keyset that is stable while rows arrive
        joiner = " AND " if where else " WHERE "
        while True:
            with self._lock:
                got = self._db.execute(f"SELECT * FROM decisions{where}{joiner}(ts, id) > (?, ?) ORDER BY ts, id LIMIT ?",
                                       [*args, *after, batch]).fetchall()
            if not got:
                return
            for r in got:
                yield _row(r)
            after = (got[-1][1], got[-1][0])

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _row(r: tuple) -> Row:
    return Row(id=r[0], ts=r[1], transaction_id=r[2], decision=r[3], age=r[4], spread=r[5], samples=r[6],
               likely_minor=bool(r[7]), model_name=r[8], model_version=r[9])


def open_history(state_dir: Path, keep_days: int) -> DecisionLog | None:
    """The log, or None (the console then says the history is unavailable) when the state dir is unusable."""
    try:
        return DecisionLog(state_dir, keep_days=keep_days)
    except HistoryError as exc:
        log.error("%s; the console will show no decision history", exc)
        return None


__all__ = ["COLUMNS", "DecisionLog", "HistoryError", "Query", "Row", "open_history"]
