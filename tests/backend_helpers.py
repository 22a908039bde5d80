"""The backend's tests' own parts: a publisher of the till's events and events made with the till's own
models; `agegate-backend ingest` as a process and a throwaway PostgreSQL come from the harness
(agegate.testing)."""

from __future__ import annotations

import os
import uuid
from datetime import datetime, timedelta, timezone

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
