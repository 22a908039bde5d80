"""The durable outbox: every alert and transaction summary is stored before it is published
and deleted only when the broker has acknowledged it (QoS 1 PUBACK).

An SQLite file in WAL mode under AGEGATE_STATE_DIR, so events survive a broker outage, a
daemon restart and a power cut (``synchronous=FULL``: a row is on disk before publish()
returns). It is bounded: when full, the oldest analytics summary is dropped first, and
only when no summary is left the oldest alert; every drop is logged and counted. When the
state directory is unusable (read-only, full, missing), :class:`Outbox` raises
:class:`OutboxError` and the caller publishes live instead, loudly.

A damaged file (SQLite says corrupt or "not a database", or ``PRAGMA quick_check`` fails)
must not become a restart loop: the rows that can still be read are salvaged, the file is
moved aside as ``outbox.sqlite3.corrupt-<time>`` (kept for a post-mortem), a fresh outbox
takes the salvaged rows, and :attr:`Outbox.quarantined` says so (in the status and stats).

A full state disk must not stop alerts first: ``outbox.reserve`` (RESERVE_BYTES of
pre-allocated space) is released when an alert no longer fits, and while it is gone
summaries are not stored (they go out live), so the space left is kept for alerts.

The same file keeps the decision state of the open transactions (table ``open_transactions``,
one JSON row each, written by the TransactionBook on every change and deleted when the
transaction ends), so that a sale interrupted by a kill or a power cut is ended honestly at
the next start (``ended_by: "restart"``, with its ``unverified_sale`` when one is due).

Threading: called from the deciding threads (add, the open transactions) and the
publisher's thread (pending, acknowledged: publisher.py); one connection guarded by one lock.
"""

from __future__ import annotations

import errno
import logging
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

ALERT, SUMMARY = 0, 1  # priority: lower numbers are kept longer
FILE_NAME = "outbox.sqlite3"
RESERVE_FILE = "outbox.reserve"
RESERVE_BYTES = 2 * 1024 * 1024  # alerts once the disk is otherwise full: about 70 in the 3 MiB end-to-end test (WAL frames and the history share it)
RESERVE_RETRY_S = 30.0  # how often a released reserve is tried again
SALVAGE_MAX_PROBES = 50_000  # seeks past damaged pages while salvaging, at most
ACK_BATCH = 500  # rows deleted by one statement (SQLite allows at least 999 parameters)
COLUMNS = "event_id, priority, topic, payload, qos, retain, created"


class OutboxError(Exception):
    """The outbox cannot store events; the message says why."""


class KeptForAlerts(OutboxError):
    """A summary refused while the reserve is released: the space left is for alerts, which still fit."""


@dataclass(frozen=True)
class Pending:
    row_id: int
    topic: str
    payload: bytes
    qos: int
    retain: bool


def _is_corruption(exc: sqlite3.Error) -> bool:
    return getattr(exc, "sqlite_errorname", "") in ("SQLITE_CORRUPT", "SQLITE_NOTADB") or "malformed" in str(exc)


def _is_full(exc: sqlite3.Error) -> bool:
    return getattr(exc, "sqlite_errorname", "") == "SQLITE_FULL" or "disk is full" in str(exc)


class _Corrupt(sqlite3.DatabaseError):
    pass


class Outbox:
    def __init__(self, state_dir: Path, max_events: int = 10_000):
        self.path = Path(state_dir) / FILE_NAME
        self.reserve = Path(state_dir) / RESERVE_FILE
        self.max_events = max_events
        self.dropped = {ALERT: 0, SUMMARY: 0}
        self.quarantined: Path | None = None  # where a damaged outbox was moved at start-up
        self.salvaged = 0  # rows rescued from it
        self.broken = False  # an error on the open file since start (SQLite said so); see the log
        self._lock = threading.Lock()
        self._reserve_tried = 0.0
        self._reserve_released = False  # summaries wait for the reserve to be back, not for a missing one
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            try:
                self._db = self._open()
            except sqlite3.DatabaseError as exc:
                if not _is_corruption(exc):
                    raise
                self._db = self._quarantine(exc)
        except (OSError, sqlite3.Error) as exc:
            raise OutboxError(f"AGEGATE_STATE_DIR: cannot use {self.path}: {exc}") from None
        self._keep_reserve()

    def _open(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute(
                "CREATE TABLE IF NOT EXISTS outbox ("
                " id INTEGER PRIMARY KEY AUTOINCREMENT, event_id TEXT NOT NULL, priority INTEGER NOT NULL,"
                " topic TEXT NOT NULL, payload BLOB NOT NULL, qos INTEGER NOT NULL, retain INTEGER NOT NULL,"
                " created REAL NOT NULL)"
            )
            db.execute("CREATE INDEX IF NOT EXISTS outbox_priority ON outbox (priority, id)")
            db.execute("CREATE TABLE IF NOT EXISTS open_transactions (transaction_id TEXT PRIMARY KEY, state TEXT NOT NULL)")
            # Damaged pages are found now, not by the first pending() in the main loop.
            verdict = db.execute("PRAGMA quick_check").fetchone()[0]
            if verdict != "ok":
                raise _Corrupt(f"database disk image is malformed ({verdict})")
        except BaseException:
            db.close()
            raise
        return db

    def _quarantine(self, exc: sqlite3.Error) -> sqlite3.Connection:
        """Salvage readable rows, move the damaged file aside, start a fresh outbox with them."""
        rows = _salvage(self.path)
        aside = self.path.with_name(f"{FILE_NAME}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}")
        for suffix in ("", "-wal", "-shm"):
            src = Path(f"{self.path}{suffix}")
            if src.exists():
                os.replace(src, Path(f"{aside}{suffix}"))
        db = self._open()
        db.executemany(f"INSERT INTO outbox ({COLUMNS}) VALUES (?,?,?,?,?,?,?)", rows)
        self.quarantined, self.salvaged = aside, len(rows)
        log.error("outbox %s is damaged (%s): moved to %s; %d events salvaged into a fresh outbox, "
                  "any others are lost", self.path, exc, aside.name, len(rows))
        return db

    def _keep_reserve(self) -> bool:
        """Make sure the reserve file exists (at most every RESERVE_RETRY_S once released); True if it does."""
        if self.reserve.exists():
            return True
        now = time.monotonic()
        if self._reserve_tried and now - self._reserve_tried < RESERVE_RETRY_S:
            return False
        self._reserve_tried = now
        try:
            fd = os.open(self.reserve, os.O_WRONLY | os.O_CREAT, 0o600)
            try:
                try:
                    os.posix_fallocate(fd, 0, RESERVE_BYTES)
                except OSError as exc:
                    if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                        raise
                    os.write(fd, b"\0" * RESERVE_BYTES)  # a file system without fallocate
                os.fsync(fd)
            finally:
                os.close(fd)
            self._reserve_released = False
            return True
        except OSError as exc:
            self.reserve.unlink(missing_ok=True)
            log.warning("cannot reserve %d KiB for alerts in %s: %s", RESERVE_BYTES >> 10, self.reserve.parent,
                        exc.strerror or exc)
            return False

    def _release_reserve(self) -> bool:
        try:
            self.reserve.unlink()
        except OSError:
            return False
        self._reserve_tried = time.monotonic()
        self._reserve_released = True
        log.error("state disk full: released the %d KiB kept for alerts; transaction summaries are not "
                  "stored until there is room again", RESERVE_BYTES >> 10)
        return True

    def add(self, event_id: str, priority: int, topic: str, payload: bytes, qos: int, retain: bool = False) -> int:
        """Store one event durably; returns its row id. Makes room first when full."""
        with self._lock:
            if priority != ALERT and not self._keep_reserve() and self._reserve_released:
                raise KeptForAlerts(f"cannot store event {event_id}: the state disk is full, its space is kept for alerts")
            row = (event_id, priority, topic, payload, qos, int(retain), time.time())
            try:
                try:
                    self._make_room()
                    return int(self._db.execute(f"INSERT INTO outbox ({COLUMNS}) VALUES (?,?,?,?,?,?,?)", row).lastrowid)
                except sqlite3.Error as exc:
                    if not (priority == ALERT and _is_full(exc) and self._release_reserve()):
                        raise
                    return int(self._db.execute(f"INSERT INTO outbox ({COLUMNS}) VALUES (?,?,?,?,?,?,?)", row).lastrowid)
            except sqlite3.Error as exc:
                self.broken = self.broken or _is_corruption(exc)
                raise OutboxError(f"cannot store event {event_id} in {self.path}: {exc}") from None

    def acknowledged(self, *row_ids: int) -> None:
        """The broker has these events: forget them (one statement, so one sync, for a batch)."""
        with self._lock:
            for start in range(0, len(row_ids), ACK_BATCH):
                batch = row_ids[start:start + ACK_BATCH]
                try:
                    self._db.execute(f"DELETE FROM outbox WHERE id IN ({','.join('?' * len(batch))})", batch)
                except sqlite3.Error as exc:  # they will be sent again: at-least-once, never lost
                    log.error("cannot delete %d acknowledged event(s) from the outbox: %s", len(batch), exc)

    def pending(self, exclude: set[int] | frozenset[int] = frozenset(), limit: int = 100, after: int = 0) -> list[Pending]:
        """Oldest first, from the row after ``after``, skipping the rows in ``exclude``."""
        with self._lock:
            try:
                rows = self._db.execute(
                    "SELECT id, topic, payload, qos, retain FROM outbox WHERE id > ? ORDER BY id LIMIT ?",
                    (after, limit + len(exclude)),
                ).fetchall()
            except sqlite3.Error as exc:  # damaged since start-up: the next start quarantines it
                if not self.broken:
                    log.error("cannot read the outbox %s: %s; stored events wait for a restart", self.path, exc)
                self.broken = True
                return []
        return [Pending(r[0], r[1], bytes(r[2]), r[3], bool(r[4])) for r in rows if r[0] not in exclude][:limit]

    # --- open transactions (edge/decision.py's TransactionStore) ------------------------------

    def keep_transaction(self, transaction_id: str, state: str) -> None:
        """Store (or replace) one open transaction's state, durably, before the POS is answered."""
        with self._lock:
            try:
                self._db.execute("INSERT OR REPLACE INTO open_transactions (transaction_id, state) VALUES (?, ?)",
                                 (transaction_id, state))
            except sqlite3.Error as exc:
                self.broken = self.broken or _is_corruption(exc)
                raise OutboxError(f"cannot store open transaction {transaction_id} in {self.path}: {exc}") from None

    def forget_transaction(self, transaction_id: str) -> None:
        """The transaction has ended (its summary is in the outbox)."""
        with self._lock:
            try:
                self._db.execute("DELETE FROM open_transactions WHERE transaction_id = ?", (transaction_id,))
            except sqlite3.Error as exc:
                self.broken = self.broken or _is_corruption(exc)
                raise OutboxError(f"cannot forget open transaction {transaction_id} in {self.path}: {exc}") from None

    def open_transactions(self) -> list[str]:
        """The stored states of transactions that were open when the daemon last stopped."""
        with self._lock:
            try:
                return [r[0] for r in self._db.execute("SELECT state FROM open_transactions ORDER BY rowid")]
            except sqlite3.Error as exc:
                self.broken = self.broken or _is_corruption(exc)
                raise OutboxError(f"cannot read the open transactions in {self.path}: {exc}") from None

    def __len__(self) -> int:
        with self._lock:
            try:
                return self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
            except sqlite3.Error:
                self.broken = True
                return 0

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


def _salvage(path: Path) -> list[tuple]:
    """Every row of a damaged outbox that can still be read, oldest first, as (COLUMNS) tuples.

    Reads in id order and, where a page cannot be read, seeks past it one id at a time
    (at most SALVAGE_MAX_PROBES seeks, up to the highest id ever handed out when that is
    readable). Rows whose values are not of their column's type are dropped.
    """
    rows: list[tuple] = []
    try:
        db = sqlite3.connect(path, isolation_level=None)
    except sqlite3.Error:
        return rows
    try:
        try:
            top = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'outbox'").fetchone()
            top = int(top[0]) if top else None
        except (sqlite3.Error, TypeError, ValueError):
            top = None
        start, probes = 0, 0
        while probes < SALVAGE_MAX_PROBES and (top is None or start <= top):
            try:
                for r in db.execute(f"SELECT id, {COLUMNS} FROM outbox WHERE id >= ? ORDER BY id", (start,)):
                    start = r[0] + 1
                    if (isinstance(r[1], str) and isinstance(r[2], int) and isinstance(r[3], str)
                            and isinstance(r[4], (bytes, str)) and isinstance(r[5], int) and isinstance(r[7], float)):
                        rows.append(r[1:])
                break  # read to the end
            except sqlite3.Error:
                start += 1
                probes += 1
    finally:
        db.close()
    return rows
