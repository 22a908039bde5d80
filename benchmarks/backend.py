"""``make bench-backend``: how many events per second agegate-backend ingests, into SQLite and PostgreSQL.

    python -m benchmarks.backend [--events N] [--tills N] [--databases sqlite,postgresql] [--out docs]

Real parts: a Mosquitto with persistence on a free port, ``agegate-backend ingest`` as its own
process (persistent session, QoS 1, acknowledging after each commit), a throwaway PostgreSQL
cluster with its durable defaults (agegate.testing.postgres), and SQLite in WAL mode. A
publisher sends the events of ``--tills`` tills (one status each, then summaries with item
counts per category and alerts, in the till's own models) at QoS 1 as fast as the broker takes
them, and re-sends 2 % of them (replays, as a till's outbox does after a lost PUBACK). Halfway
through, the broker is stopped and started again. The clock runs from the first publish to
the moment the database holds every distinct event; then the tables are checked: each event
exactly once, nothing lost, nothing doubled. Writes ``backend-bench.json`` and
``backend-bench.md`` into ``--out`` (docs/, beside docs/backend.md).
"""

from __future__ import annotations

import argparse
import json
import random
import re
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy import create_engine, func, select, text
from tqdm import tqdm

from agegate import __version__
from agegate.backend import db
from agegate.ages import AGE_BANDS
from agegate.edge.events import Alert, Estimate, ModelRef, Status, Thresholds, TransactionSummary
from agegate.testing.backend import IngestProcess
from agegate.testing.brokers import Mosquitto
from agegate.testing.postgres import ThrowawayPostgres

from . import machine

ROOT = Path(__file__).resolve().parents[1]
MODEL = ModelRef(name="agegate-age", version="bench", sha256="0" * 64)
THRESHOLDS = Thresholds(challenge_age=25, legal_age=18)
CATEGORIES = ["bakery", "dairy", "produce", "beer", "wine", "spirits", "tobacco", "household"]
RESTRICTED = {"beer", "wine", "spirits", "tobacco"}


def make_events(n: int, tills: int, seed: int = 16) -> list[tuple[str, bytes, str, int]]:
    """``(topic, payload, event_id, category rows)`` for n events: a status per till, ~85 % summaries, ~15 % alerts."""
    rng = random.Random(seed)
    now = datetime.now(timezone.utc)
    out = []
    for t in range(tills):
        e = Status(store_id=f"store-{t // 10}", till_id=f"till-{t % 10}", model=MODEL, state="online",
                   camera_state="streaming", version=__version__)
        out.append((f"agegate/{e.store_id}/{e.till_id}/status", e.to_json(), str(e.event_id), 0))
    while len(out) < n:
        t = rng.randrange(tills)
        store, till = f"store-{t // 10}", f"till-{t % 10}"
        if rng.random() < 0.15:
            e = Alert(type=rng.choice(["age_check_required", "no_face", "unverified_sale"]), store_id=store, till_id=till,
                      model=MODEL, transaction_id=uuid.uuid4().hex[:12], category="beer", operator_id=f"op-{rng.randrange(40)}",
                      estimate=Estimate(age=rng.uniform(14, 30), spread=1, samples=9), thresholds=THRESHOLDS, reason="bench")
            out.append((f"agegate/{store}/{till}/alerts", e.to_json(), str(e.event_id), 0))
            continue
        basket = [rng.choice(CATEGORIES) for _ in range(rng.randint(1, 12))]
        items = {c: basket.count(c) for c in set(basket)}
        restricted = {c: k for c, k in items.items() if c in RESTRICTED}
        band = rng.choice(AGE_BANDS)[0]
        e = TransactionSummary(
            store_id=store, till_id=till, model=MODEL, transaction_id=uuid.uuid4().hex[:12],
            started_at=now - timedelta(minutes=3), ended_at=now, age_band=band, items=len(basket),
            restricted_items=sum(restricted.values()), items_by_category=items, restricted_items_by_category=restricted,
            operator_id=f"op-{rng.randrange(40)}", decision="clear" if restricted else None, id_checked=False,
            outcome="clear" if restricted else "no_restricted_items", thresholds=THRESHOLDS)
        out.append((f"agegate/{store}/{till}/transactions", e.to_json(), str(e.event_id), len(items)))
    return out[:n]


def _stored(url: str) -> tuple[int, int]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            events = sum(conn.scalar(select(func.count()).select_from(t)) for t in (db.transactions, db.alerts, db.statuses))
            return events, conn.scalar(select(func.count()).select_from(db.transaction_items))
    finally:
        engine.dispose()


def table_bytes(url: str) -> int:
    """What the event tables and their indexes take on disk (for docs/deploy.md's sizing)."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            if engine.dialect.name == "postgresql":
                return sum(conn.scalar(text(f"SELECT pg_total_relation_size('{t}')")) for t in db.TABLES)
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
            return conn.scalar(text("SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()"))
    finally:
        engine.dispose()


def run_one(name: str, url: str, events: list, workdir: Path, replay_share: float = 0.02) -> dict:
    broker = Mosquitto(workdir / f"broker-{name}", persistent=True, max_queued_messages=1_000_000).start()
    ingest = IngestProcess(workdir, url, [broker], client_id=f"bench-{name}").start(timeout=60, settle_s=0.5)

    rng = random.Random(7)
    replays = rng.sample(events, int(len(events) * replay_share))
    sequence = events[: len(events) // 2] + replays[: len(replays) // 2] + ["RESTART"] + events[len(events) // 2:] + replays[len(replays) // 2:]
    pub = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-publisher-{name}", clean_session=False)
    pub.max_inflight_messages_set(200)
    pub.max_queued_messages_set(0)  # unbounded: what the broker has not acknowledged waits in paho
    # PUBACKs counted by message id: a message published while the broker restarts has an
    # info whose is_published() raises (rc "not connected") even after paho re-sends it.
    acknowledged: set[int] = set()
    pub.on_publish = lambda client, userdata, mid, reason_code, properties: acknowledged.add(mid)
    pub.connect("127.0.0.1", broker.port)
    pub.loop_start()
    expected_events, expected_items = len(events), sum(e[3] for e in events)
    restart_s = 0.0
    infos = []
    started = time.perf_counter()
    with tqdm(total=expected_events, desc=f"{name}: events in the database", unit="ev", file=sys.stderr) as bar:
        for item in sequence:
            if item == "RESTART":
                t0 = time.perf_counter()
                broker.stop()
                broker.start()
                restart_s = time.perf_counter() - t0
                continue
            topic, payload, _, _ = item
            infos.append(pub.publish(topic, payload, qos=1))
        while True:
            stored, items = _stored(url)
            bar.update(stored - bar.n)
            if stored >= expected_events and items >= expected_items:
                break
            if time.perf_counter() - started > 600:
                raise RuntimeError(f"{name}: only {stored} of {expected_events} events after 600 s")
            time.sleep(0.2)
    elapsed = time.perf_counter() - started
    unacknowledged = sum(1 for i in infos if i.mid not in acknowledged)
    pub.disconnect()
    pub.loop_stop()
    time.sleep(1.0)  # late duplicates (redeliveries) would land now; they must change nothing
    stored, items = _stored(url)
    ingest.stop()
    broker.stop()
    log = ingest.log()
    counts = re.findall(r"stopped: (\{.*\})", log)
    return {"database": name, "events": expected_events, "replays_sent": len(replays), "seconds": round(elapsed, 2),
            "events_per_s": round(expected_events / elapsed), "broker_restart_s": round(restart_s, 2),
            "stored_events": stored, "stored_category_rows": items, "expected_category_rows": expected_items,
            "lost": expected_events - stored if stored < expected_events else 0,
            "doubled": stored - expected_events if stored > expected_events else 0,
            "publisher_unacknowledged_at_end": unacknowledged,
            "ingest_lost_broker": log.count("lost broker"),
            "payload_bytes_per_event": round(sum(len(e[1]) for e in events) / len(events)),
            "stored_bytes_per_event": round(table_bytes(url) / max(stored, 1)), "ingest_counts": counts[-1] if counts else None}


def render(result: dict) -> str:
    m = result["machine"]
    lines = [f"# agegate-backend ingest benchmark ({result['date']})", "",
             f"`{result['command']}` on {m['cpu']} ({m['cores_usable']} usable cores, load average {m['load_average_after']} after), "
             f"Python {m['python']}, {m['mosquitto']}, "
             f"PostgreSQL {m['postgres']}, SQLite {m['sqlite']}. {result['events']} events from {result['tills']} tills "
             f"(statuses, transaction summaries, alerts) published at QoS 1 to one broker, 2 % of them sent twice; the "
             f"broker stopped and restarted halfway through. Clock: first publish to the last distinct event committed.", "",
             "| database | events | events/s | seconds | broker restart (s) | stored | lost | doubled | category rows (stored / expected) | payload bytes/event | stored bytes/event |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["runs"]:
        lines.append(f"| {r['database']} | {r['events']} | {r['events_per_s']} | {r['seconds']} | {r['broker_restart_s']} | "
                     f"{r['stored_events']} | {r['lost']} | {r['doubled']} | {r['stored_category_rows']} / {r['expected_category_rows']} | "
                     f"{r['payload_bytes_per_event']} | {r['stored_bytes_per_event']} |")
    lines += ["", "ingest's own counts at the end of each run (new, duplicates dropped, rejected), and how often it saw the "
              "broker go (the restart):", ""]
    lines += [f"- {r['database']}: {r['ingest_counts']}; lost the broker {r['ingest_lost_broker']} time(s)" for r in result["runs"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.backend", description=__doc__.split("\n\n")[0])
    p.add_argument("--events", type=int, default=20000)
    p.add_argument("--tills", type=int, default=200)
    p.add_argument("--databases", default="sqlite,postgresql")
    p.add_argument("--out", type=Path, default=ROOT / "docs")
    args = p.parse_args(argv)
    import sqlite3

    events = make_events(args.events, args.tills)
    workdir = Path(tempfile.mkdtemp(prefix="agegate-bench-backend-"))
    runs, pg = [], None
    try:
        for name in args.databases.split(","):
            if name == "sqlite":
                url = f"sqlite:///{workdir / 'bench.sqlite3'}"
            else:
                pg = ThrowawayPostgres(durable=True).start()
                url = pg.create_database("bench")
            runs.append(run_one(name, url, events, workdir))
            print(json.dumps(runs[-1]), file=sys.stderr)
        postgres_version = re.search(r"\d+\.\d+", subprocess.run(
            [str(pg.bindir / "postgres"), "--version"], capture_output=True, text=True).stdout).group() if pg else None
    finally:
        if pg:
            pg.remove()
    load = machine.load_average()
    result = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "events": args.events, "tills": args.tills,
              "command": "make bench-backend" + (f" BACKEND_BENCH_ARGS='{' '.join(argv or sys.argv[1:])}'" if (argv or sys.argv[1:]) else ""),
              "machine": {**machine.describe(), "postgres": postgres_version, "sqlite": sqlite3.sqlite_version,
                          "load_average_after": load},
              "runs": runs}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "backend-bench.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "backend-bench.md").write_text(render(result))
    print(render(result))
    return 0 if all(r["lost"] == 0 and r["doubled"] == 0 for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
