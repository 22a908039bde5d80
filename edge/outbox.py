"""The durable outbox: every alert and transaction summary is stored before it is published
and deleted only when the broker has acknowledged it (QoS 1 PUBACK).

An SQLite file in WAL mode under AGEGATE_STATE_DIR, so events survive a broker outage, a
daemon restart and a power cut (``synchronous=FULL``: a row is on disk before publish()
returns). It is bounded: when full, the oldest analytics summary is dropped first, and
only when no summary is left the oldest alert; every drop is logged and counted. When the
state directory is unusable (read-only, full, missing), :class:`Outbox` raises
:class:`OutboxError` and the caller publishes live instead, loudly.

Threading: called from the deciding threads (add), paho's network thread (acknowledged)
and the daemon's main loop (pending); one connection guarded by one lock.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

ALERT, SUMMARY = 0, 1  # priority: lower numbers are kept longer
FILE_NAME = "outbox.sqlite3"


class OutboxError(Exception):
    """The outbox cannot store events; the message says why."""


@dataclass(frozen=True)
class Pending:
    row_id: int
    topic: str
    payload: bytes
    qos: int
    retain: bool


class Outbox:
    def __init__(self, state_dir: Path, max_events: int = 10_000):
        self.path = Path(state_dir) / FILE_NAME
        self.max_events = max_events
        self.dropped = {ALERT: 0, SUMMARY: 0}
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS outbox ("
                " id INTEGER PRIMARY KEY AUTOINCREMENT, event_id TEXT NOT NULL, priority INTEGER NOT NULL,"
                " topic TEXT NOT NULL, payload BLOB NOT NULL, qos INTEGER NOT NULL, retain INTEGER NOT NULL,"
                " created REAL NOT NULL)"
            )
            self._db.execute("CREATE INDEX IF NOT EXISTS outbox_priority ON outbox (priority, id)")
        except (OSError, sqlite3.Error) as exc:
            raise OutboxError(f"AGEGATE_STATE_DIR: cannot use {self.path}: {exc}") from None

    def add(self, event_id: str, priority: int, topic: str, payload: bytes, qos: int, retain: bool = False) -> int:
        """Store one event durably; returns its row id. Makes room first when full."""
        with self._lock:
            try:
                self._make_room()
                cur = self._db.execute(
                    "INSERT INTO outbox (event_id, priority, topic, payload, qos, retain, created) VALUES (?,?,?,?,?,?,?)",
                    (event_id, priority, topic, payload, qos, int(retain), time.time()),
                )
                return int(cur.lastrowid)
            except sqlite3.Error as exc:
                raise OutboxError(f"cannot store event {event_id} in {self.path}: {exc}") from None

    def acknowledged(self, row_id: int) -> None:
        """The broker has the event: forget it."""
        with self._lock:
            try:
                self._db.execute("DELETE FROM outbox WHERE id = ?", (row_id,))
            except sqlite3.Error as exc:  # it will be sent again: at-least-once, never lost
                log.error("cannot delete acknowledged event %d from the outbox: %s", row_id, exc)

    def pending(self, exclude: set[int] | frozenset[int] = frozenset(), limit: int = 100) -> list[Pending]:
        """Oldest first, skipping rows already handed to the MQTT client."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, topic, payload, qos, retain FROM outbox ORDER BY id LIMIT ?", (limit + len(exclude),)
            ).fetchall()
        return [Pending(r[0], r[1], bytes(r[2]), r[3], bool(r[4])) for r in rows if r[0] not in exclude][:limit]

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _make_room(self) -> None:
        count = self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
        while count >= self.max_events:
            # The oldest of the least important events goes: summaries before alerts.
            row = self._db.execute("SELECT id, priority, event_id FROM outbox ORDER BY priority DESC, id LIMIT 1").fetchone()
            self._db.execute("DELETE FROM outbox WHERE id = ?", (row[0],))
            self.dropped[row[1]] += 1
            kind = "alert" if row[1] == ALERT else "transaction summary"
            (log.error if row[1] == ALERT else log.warning)(
                "outbox full (%d events): dropped the oldest %s %s", self.max_events, kind, row[2])
            count -= 1
