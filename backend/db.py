"""The backend's database: tables, migrations, and idempotent writes of validated events.

One schema for SQLite (the default: a file, no set-up) and PostgreSQL (a chain), declared
here with SQLAlchemy and created or upgraded by the Alembic migrations in ``migrations/``.
Every event table is keyed by the event's ``event_id`` and written with
``INSERT … ON CONFLICT DO NOTHING``, so a replayed event (QoS 1 delivers at least once; a
till re-sends after a lost PUBACK; two ingesters share a database) changes nothing.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable

from alembic import command
from alembic.config import Config
from sqlalchemy import (
    Boolean, Column, DateTime, Float, ForeignKey, Integer, LargeBinary, MetaData, String, Table, Text,
    create_engine, event, select,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from agegate.edge.events import Alert, Status, TransactionSummary

DEFAULT_URL = "sqlite:///agegate-backend.sqlite3"
MIGRATIONS = Path(__file__).resolve().parent / "migrations"

metadata = MetaData()

# Ids are as long as the till lets them be (PosMessage: 64); store and till ids come from topics.
ID = 64

transactions = Table(
    "transactions", metadata,
    Column("event_id", String(36), primary_key=True),
    Column("schema_version", Integer, nullable=False),
    Column("timestamp", DateTime, nullable=False),
    Column("store_id", String(ID), nullable=False, index=True),
    Column("till_id", String(ID), nullable=False),
    Column("transaction_id", String(ID), nullable=False),
    Column("operator_id", String(ID)),
    Column("started_at", DateTime, nullable=False),
    Column("ended_at", DateTime, nullable=False, index=True),
    Column("ended_by", String(16), nullable=False),
    Column("age_band", String(16), nullable=False),
    Column("items", Integer, nullable=False),
    Column("restricted_items", Integer, nullable=False),
    Column("decision", String(32)),
    Column("id_checked", Boolean, nullable=False),
    Column("outcome", String(32), nullable=False),
    Column("model_version", String(ID)),
)

# Items per POS category of each summary: one row per (summary, category), so that
# "age band × category" is a GROUP BY, not JSON parsing.
transaction_items = Table(
    "transaction_items", metadata,
    Column("event_id", String(36), ForeignKey("transactions.event_id", ondelete="CASCADE"), primary_key=True),
    Column("category", String(ID), primary_key=True),
    Column("items", Integer, nullable=False),
    Column("restricted_items", Integer, nullable=False),
)

alerts = Table(
    "alerts", metadata,
    Column("event_id", String(36), primary_key=True),
    Column("schema_version", Integer, nullable=False),
    Column("timestamp", DateTime, nullable=False, index=True),
    Column("store_id", String(ID), nullable=False, index=True),
    Column("till_id", String(ID), nullable=False),
    Column("transaction_id", String(ID), nullable=False),
    Column("operator_id", String(ID)),
    Column("type", String(32), nullable=False),
    Column("category", String(ID)),
    Column("likely_minor", Boolean, nullable=False),
    Column("estimate_age", Float),
    Column("challenge_age", Float, nullable=False),
    Column("model_version", String(ID)),
    Column("reason", Text, nullable=False),
)

statuses = Table(
    "statuses", metadata,
    Column("event_id", String(36), primary_key=True),
    Column("timestamp", DateTime, nullable=False),
    Column("store_id", String(ID), nullable=False),
    Column("till_id", String(ID), nullable=False),
    Column("state", String(16), nullable=False),
    Column("camera_state", String(16)),
    Column("version", String(ID), nullable=False),
    Column("model_name", String(ID)),
    Column("model_version", String(ID)),
    Column("last_model_rejection", Text),
    # When the backend received it, in arrival order: a till's last will (`offline`) carries the time it
    # was registered at connect, before that connection's `online`; only arrival order says which is last.
    Column("received_at", DateTime, nullable=False),
)

# Payloads that failed validation: kept (never lost silently), one row per distinct
# (topic, payload); a redelivered copy only raises `times`.
rejected = Table(
    "rejected", metadata,
    Column("digest", String(64), primary_key=True),
    Column("first_seen", DateTime, nullable=False),
    Column("last_seen", DateTime, nullable=False),
    Column("times", Integer, nullable=False),
    Column("broker", String(255), nullable=False),
    Column("topic", Text, nullable=False),
    Column("reason", Text, nullable=False),
    Column("payload", LargeBinary, nullable=False),
)

TABLES = {"transactions": transactions, "transaction_items": transaction_items, "alerts": alerts,
          "statuses": statuses, "rejected": rejected}


def connect(url: str = DEFAULT_URL) -> Engine:
    """An engine for ``url``, its schema migrated to the latest revision."""
    engine = create_engine(url, future=True, pool_pre_ping=True)
    if engine.dialect.name == "sqlite":
        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # noqa: ANN001
            # WAL: `serve` reads while `ingest` writes; foreign keys for the items' cascade.
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA busy_timeout=10000")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()
    migrate(engine)
    return engine


def migrate(engine: Engine, revision: str = "head") -> None:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, revision)


def utc_naive(moment: datetime) -> datetime:
    """Stored as naive UTC: one convention for SQLite (which has no time zones) and PostgreSQL."""
    if moment.tzinfo is not None:
        moment = moment.astimezone(timezone.utc).replace(tzinfo=None)
    return moment


def _insert(conn: Connection, table: Table):
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    return dialect.insert(table)


@dataclass
class Written:
    new: int = 0
    duplicates: int = 0
    rejected: int = 0


def write(conn: Connection, events: Iterable[Alert | TransactionSummary | Status],
          bad: Iterable[tuple[str, str, bytes, str]] = (), received_at: datetime | None = None,
          arrived: dict[str, datetime] | None = None) -> Written:
    """Store validated events and rejected payloads ``(broker, topic, payload, reason)`` in ``conn``'s transaction.

    ``arrived`` maps event ids to the moment each message arrived (else ``received_at``, else now).
    Idempotent: events already stored (by ``event_id``) are counted as duplicates and left alone.
    """
    received_at = utc_naive(received_at or datetime.now(timezone.utc))
    unique: dict[str, Alert | TransactionSummary | Status] = {}
    given = 0
    for e in events:
        given += 1
        unique.setdefault(str(e.event_id), e)
    result = Written()
    by_table: dict[Table, list] = {transactions: [], alerts: [], statuses: []}
    for e in unique.values():
        by_table[_table_of(e)].append(e)
    for table, rows in by_table.items():
        if not rows:
            continue
        ids = [str(e.event_id) for e in rows]
        seen = set(conn.scalars(select(table.c.event_id).where(table.c.event_id.in_(ids))))
        fresh = [e for e in rows if str(e.event_id) not in seen]
        if fresh:
            conn.execute(_insert(conn, table).on_conflict_do_nothing(index_elements=["event_id"]),
                         [_row(e, utc_naive((arrived or {}).get(str(e.event_id), received_at))) for e in fresh])
            if table is transactions:
                items = [r for e in fresh for r in _item_rows(e)]  # type: ignore[arg-type]
                if items:
                    conn.execute(_insert(conn, transaction_items).on_conflict_do_nothing(
                        index_elements=["event_id", "category"]), items)
        result.new += len(fresh)
    result.duplicates = given - result.new
    for broker, topic, payload, reason in bad:
        digest = hashlib.sha256(topic.encode() + b"\0" + payload).hexdigest()
        stmt = _insert(conn, rejected).values(digest=digest, first_seen=received_at, last_seen=received_at, times=1,
                                              broker=broker, topic=topic, reason=reason[:2000], payload=payload)
        conn.execute(stmt.on_conflict_do_update(index_elements=["digest"],
                                                set_={"times": rejected.c.times + 1, "last_seen": received_at}))
        result.rejected += 1
    return result


def _table_of(e: Alert | TransactionSummary | Status) -> Table:
    if isinstance(e, TransactionSummary):
        return transactions
    if isinstance(e, Alert):
        return alerts
    return statuses


def _row(e: Alert | TransactionSummary | Status, received_at: datetime) -> dict:
    common = {"event_id": str(e.event_id), "timestamp": utc_naive(e.timestamp), "store_id": e.store_id, "till_id": e.till_id}
    model_version = e.model.version if e.model else None
    if isinstance(e, TransactionSummary):
        return {**common, "schema_version": e.schema_version, "transaction_id": e.transaction_id,
                "operator_id": e.operator_id, "started_at": utc_naive(e.started_at), "ended_at": utc_naive(e.ended_at),
                "ended_by": e.ended_by, "age_band": e.age_band, "items": e.items, "restricted_items": e.restricted_items,
                "decision": e.decision, "id_checked": e.id_checked, "outcome": e.outcome, "model_version": model_version}
    if isinstance(e, Alert):
        return {**common, "schema_version": e.schema_version, "transaction_id": e.transaction_id,
                "operator_id": e.operator_id, "type": e.type, "category": e.category, "likely_minor": e.likely_minor,
                "estimate_age": e.estimate.age if e.estimate else None, "challenge_age": e.thresholds.challenge_age,
                "model_version": model_version, "reason": e.reason}
    return {**common, "state": e.state, "camera_state": e.camera_state, "version": e.version,
            "model_name": e.model.name if e.model else None, "model_version": model_version,
            "last_model_rejection": e.last_model_rejection, "received_at": received_at}


def _item_rows(e: TransactionSummary) -> list[dict]:
    return [{"event_id": str(e.event_id), "category": category, "items": n,
             "restricted_items": e.restricted_items_by_category.get(category, 0)}
            for category, n in e.items_by_category.items()]
