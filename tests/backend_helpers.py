"""The backend's real parts for its tests: `agegate-backend ingest` as a process, a publisher of the
till's events, a throwaway PostgreSQL (agegate.testing.postgres), and events made with the till's own models."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

from sqlalchemy import create_engine, func, select

from agegate.backend import db
from agegate.edge.events import Alert, Estimate, ModelRef, Status, Thresholds, TransactionSummary
from agegate.testing.mqtt import Publisher
from agegate.testing.postgres import ThrowawayPostgres

MODEL = ModelRef(name="agegate-age", version="2026.11.22", sha256="0" * 64)
THRESHOLDS = Thresholds(challenge_age=25, legal_age=18)


def summary(store="store-1", till="till-1", tx=None, band="18-24", items=None, restricted=None, operator=None,
            decision=None, outcome="no_restricted_items", id_checked=False, when=None) -> TransactionSummary:
    items = items or {"bakery": 1}
    restricted = restricted or {}
    ended = when or datetime.now(timezone.utc)
    return TransactionSummary(
        store_id=store, till_id=till, model=MODEL, transaction_id=tx or uuid.uuid4().hex[:12], started_at=ended - timedelta(minutes=2),
        ended_at=ended, age_band=band, items=sum(items.values()), restricted_items=sum(restricted.values()),
        items_by_category=items, restricted_items_by_category=restricted, operator_id=operator, decision=decision,
        id_checked=id_checked, outcome=outcome, thresholds=THRESHOLDS)


def alert(type_="age_check_required", store="store-1", till="till-1", tx="T1", operator=None, age=19.0) -> Alert:
    return Alert(type=type_, store_id=store, till_id=till, model=MODEL, transaction_id=tx, category="alcohol",
                 operator_id=operator, likely_minor=age < 18, estimate=Estimate(age=age, spread=1, samples=9),
                 thresholds=THRESHOLDS, reason="test")


def status(state="online", store="store-1", till="till-1") -> Status:
    return Status(store_id=store, till_id=till, model=MODEL, state=state, camera_state="streaming" if state == "online" else None,
                  version="0.3.0")


def topic(event, prefix="agegate") -> str:
    kind = {"transaction_summary": "transactions", "status": "status"}.get(event.type, "alerts")
    return f"{prefix}/{event.store_id}/{event.till_id}/{kind}"


class EventPublisher(Publisher):
    """A QoS 1 publisher of the till's events on their topics (a till's MQTT link, as far as the broker can tell)."""

    def __init__(self, broker, client_id: str | None = None):
        super().__init__(broker.host, broker.port, client_id=client_id)

    def send(self, event_or_topic, payload: bytes | None = None, retain: bool = False) -> None:
        if payload is None:
            self.publish(topic(event_or_topic), event_or_topic.to_json(), retain=retain)
        else:
            self.publish(event_or_topic, payload, retain=retain)


class IngestProcess:
    """`agegate-backend ingest` as its own process, as systemd would run it."""

    def __init__(self, tmp: Path, url: str, brokers: list, client_id: str = "backend-test", extra: tuple[str, ...] = ()):
        self.url, self.log_path = url, tmp / f"ingest-{uuid.uuid4().hex[:6]}.log"
        self.args = [sys.executable, "-m", "agegate.backend", "--db", url, "ingest", "--client-id", client_id]
        for b in brokers:
            self.args += ["--broker", f"127.0.0.1:{b.port}"]
        self.args += list(extra)
        self.proc: subprocess.Popen | None = None

    def start(self) -> "IngestProcess":
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.args, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while b"connected to" not in self.log_path.read_bytes():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"ingest did not connect:\n{self.log()}")
            time.sleep(0.1)
        time.sleep(0.3)  # the SUBACK
        return self

    def stop(self) -> int:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(30)
        self._log.close()
        return self.proc.returncode if self.proc else 0

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def count(url: str, table: str) -> int:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return conn.scalar(select(func.count()).select_from(db.TABLES[table]))
    finally:
        engine.dispose()


def postgres_or_skip():
    """A throwaway PostgreSQL, or a skip with the reason where it cannot run; never a skip in CI."""
    import pytest

    try:
        return ThrowawayPostgres().start()
    except (FileNotFoundError, KeyError) as exc:  # KeyError: no `postgres` user to run it as root
        if os.environ.get("CI"):
            raise RuntimeError(f"PostgreSQL is needed in CI: {exc}") from exc
        pytest.skip(f"PostgreSQL cannot run here: {exc}")
