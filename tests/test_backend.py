"""agegate-backend on real parts: Mosquitto, `agegate-backend ingest` as a process, SQLite and a
throwaway PostgreSQL (agegate.testing.postgres starts one with initdb), the till daemon itself."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import date, timedelta

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, select

from agegate.backend import db, reports
from agegate.testing.backend import IngestProcess
from agegate.testing.net import wait_until
from backend_helpers import EventPublisher, alert, count, postgres_or_skip, status, summary


@pytest.fixture(scope="module")
def postgres():
    pg = postgres_or_skip()
    yield pg
    pg.remove()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.network)])
def database_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'backend.sqlite3'}"
    pg = request.getfixturevalue("postgres")
    return pg.create_database(f"t_{abs(hash(request.node.name)) % 10**8}")


def test_the_backend_imports_no_till_code():
    """Only the shared event models: no OpenCV, no LiteRT, not the till's HTTP server or console."""
    code = ("import sys, agegate.backend.cli, agegate.backend.ingest, agegate.backend.web, agegate.backend.reports;"
            "bad = [m for m in ('cv2', 'ai_edge_litert', 'agegate.edge.api', 'agegate.edge.console', 'agegate.edge.daemon',"
            " 'agegate.edge.bundle', 'agegate.edge.mqtt') if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_migrations_build_exactly_the_declared_tables(database_url):
    engine = db.connect(database_url)
    with engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), db.metadata) == []
    db.migrate(engine)  # a second run is a no-op


def test_ingest_stores_each_event_once_and_keeps_what_is_invalid(tmp_path, broker, database_url):
    ingest = IngestProcess(tmp_path, database_url, [broker]).start()
    pub = EventPublisher(broker)
    try:
        sales = [summary(band="18-24", items={"beer": 2, "bakery": 1}, restricted={"beer": 2}, operator="op-1",
                         decision="clear", outcome="clear"),
                 summary(band="18-24", items={"bakery": 3}),
                 summary(band="65+", items={"beer": 1}, restricted={"beer": 1}, decision="clear", outcome="clear"),
                 summary(band="13-17", items={"beer": 1, "bakery": 1}, restricted={"beer": 1}, operator="op-2",
                         decision="age_check_required", outcome="unverified_sale", tx="K9")]
        alerts = [alert(tx="K9", operator="op-2", age=16.0), alert("unverified_sale", tx="K9", operator="op-2", age=16.0)]
        online = status()
        for e in [*sales, *alerts, online]:
            pub.send(e)
        # The till vanishes: the broker publishes its last will, stamped when the till connected.
        pub.send(status("offline").model_copy(update={"timestamp": online.timestamp - timedelta(seconds=1)}))
        pub.send(sales[0])  # a replay (a till re-sending after a lost PUBACK): not doubled
        pub.send(alerts[1])
        # Bad payloads: kept, counted, never stored as events.
        pub.send("agegate/store-1/till-1/transactions", b"{not json")
        pub.send("agegate/store-1/till-1/transactions", json.dumps({**json.loads(sales[1].to_json()), "items": "many"}).encode())
        pub.send("agegate/store-9/till-1/alerts", alerts[0].model_copy(update={"event_id": alerts[1].event_id.__class__(int=7)}).to_json())
        pub.send("agegate/store-1/till-1/transactions", b"{not json")  # the same bad payload twice: one row, times 2
        wait_until(lambda: count(database_url, "rejected") == 3 and count(database_url, "transactions") == 4
                   and count(database_url, "alerts") == 2 and count(database_url, "statuses") == 2, what="the events in the DB")
    finally:
        pub.close()
        assert ingest.stop() == 0
    log = ingest.log()
    assert "Input should be a valid integer" in log and "topic names store 'store-9'" in log and "Invalid JSON" in log

    engine = create_engine(database_url)
    with engine.connect() as conn:
        rejected = {(r.topic, r.reason): r.times for r in conn.execute(select(db.rejected))}
        assert sorted(rejected.values()) == [1, 1, 2]  # the repeated bad payload: one row, seen twice
        today = date.today()
        columns, rows = reports.purchases(conn, today - timedelta(days=1), today + timedelta(days=1))
        table = {(r[0], r[1]): r[2:] for r in rows}
        # Computed from what was sent: beer 2 (18-24) + 1 (65+) + 1 (13-17) = 4; bakery 1 + 3 (18-24) + 1 (13-17) = 5.
        assert table[("18-24", "beer")] == [2, 2, 0.5] and table[("65+", "beer")] == [1, 1, 0.25]
        assert table[("18-24", "bakery")] == [4, 0, 0.8] and table[("13-17", "bakery")] == [1, 0, 0.2]
        _, integrity = reports.integrity(conn, today - timedelta(days=1), today + timedelta(days=1))
        assert [r[1:] for r in integrity] == [["store-1", "till-1", "op-2", 1, 1, 0, 1]]
        _, tills = reports.tills(conn)
        assert [t[:4] for t in tills] == [["store-1", "till-1", "offline", None]]  # the last to arrive, not the latest stamp
        # Nothing in the past: a range with no sales is empty, not an error.
        assert reports.purchases(conn, today - timedelta(days=30), today - timedelta(days=20))[1] == []
    engine.dispose()


def test_two_ingesters_sharing_a_subscription_split_the_events_and_write_each_once(tmp_path, broker, database_url):
    """A chain's scale-out: `--share` ingesters on one database; each event goes to one of them."""
    a = IngestProcess(tmp_path, database_url, [broker], client_id="ingest-a", extra=("--share", "backend")).start()
    b = IngestProcess(tmp_path, database_url, [broker], client_id="ingest-b", extra=("--share", "backend")).start()
    pub = EventPublisher(broker)
    try:
        for i in range(60):
            pub.send(summary(tx=f"S{i}", items={"beer": 1}))
        wait_until(lambda: count(database_url, "transactions") == 60, what="60 summaries")
    finally:
        pub.close()
        a.stop()
        b.stop()
    assert count(database_url, "transaction_items") == 60
    took = [int(p.log().split("'new': ")[-1].split(",")[0]) for p in (a, b)]
    assert sum(took) == 60 and min(took) > 0, took  # both worked, neither wrote an event the other had


def test_the_backend_install_pulls_no_camera_or_model_runtime():
    """`pip install agegate[backend]` (resolved, not installed): the database and broker clients, not the till's runtime."""
    from test_packaging import resolve

    names = resolve("backend")
    assert {"sqlalchemy", "alembic", "psycopg", "psycopg-binary", "paho-mqtt", "fastapi"} <= names
    heavy = {n for n in names if n.startswith(("opencv", "ai-edge-litert", "tflite", "tensorflow", "keras", "torch"))}
    assert not heavy, f"the backend extra pulls {sorted(heavy)}"
