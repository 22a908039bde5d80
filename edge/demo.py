"""``make demo``: the till daemon on its embedded defaults, with a simulated POS.

It writes a demo video of a real face (the public-domain astronaut photo that
scikit-image ships: NASA's Eileen Collins), starts a local MQTT broker when none is
configured (mosquitto if installed, else the pure-Python amqtt broker), runs
``agegate-edge run`` on that video, plays three sales through the POS API, and prints the
answers the till got and what an independent MQTT subscriber received. It ends with the
purchases-by-age-band table that ``agegate-backend`` built from the demo's own events: its
ingester subscribes to the same broker from the start and writes a SQLite file
(:data:`DEMO_BACKEND_DB`, kept after the demo so that ``agegate-backend serve`` can show it).

The video, the broker, the daemon's process and the subscriber are the tests' and benchmarks' own
(agegate.testing): the demo is a developer's tool (``make demo`` installs the ``dev`` extra), never
part of a till's install, so it shares their harness rather than keeping copies of it.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from agegate.testing.brokers import start_local_broker
from agegate.testing.daemon import Address, DaemonProcess
from agegate.testing.mqtt import Subscriber
from agegate.testing.net import wait_until
from agegate.testing.videos import astronaut_bgr, write_demo_video

DEMO_BACKEND_DB = Path(tempfile.gettempdir()) / "agegate-demo-backend.sqlite3"
DEMO_SALES = [  # (transaction, [(POS message type, restricted, category)])
    ("T-1001", [("item", False, "bakery"), ("item", True, "wine"), ("id_checked", False, None)]),
    ("T-1002", [("item", True, "beer")]),
    ("T-1003", [("item", True, "vodka")]),  # scanned while nobody is in front of the camera
]
DEMO_OPERATOR = "login-1017"  # the cashier's till login as a POS would send it: an opaque token, never a name


def main() -> int:
    workdir = Path(tempfile.mkdtemp(prefix="agegate-demo-"))
    video = write_demo_video(workdir / "customer.avi", astronaut_bgr())
    print(f"demo video with a real face: {video}")

    stop_broker = None
    if os.environ.get("AGEGATE_MQTT_HOST"):
        host, port = os.environ["AGEGATE_MQTT_HOST"], int(os.environ.get("AGEGATE_MQTT_PORT", "1883"))
        print(f"using the configured broker {host}:{port}")
    else:
        host = "127.0.0.1"
        port, described, stop_broker = start_local_broker(workdir)
        print(f"started a local broker: {described}")

    backend = _start_backend(host, port)
    sub = Subscriber(host, port, "agegate/#", client_id=f"agegate-demo-backend-{os.getpid()}")

    # The developer's own AGEGATE_* settings apply; the model is the shipped one unless they name another.
    daemon = DaemonProcess(workdir, broker=Address(host, port), camera=video, defaults={}, base_env=os.environ,
                           stats_interval_s=2, log_level="ERROR", log_to_terminal=True)
    url = daemon.url
    try:
        try:
            daemon.start(wait_for_face=True, timeout=90)
        except RuntimeError as exc:
            raise SystemExit(f"the daemon did not see the customer: {exc}") from None
        print(f"daemon ready on {url} (OpenAPI docs at {url}/docs)\n")
        for tx, steps in DEMO_SALES:
            if tx == "T-1003":
                print("(the customer steps away from the camera)")
                wait_until(lambda: daemon.status()["customer"] is None, what="the customer to step away")
            print(f"POS  transaction_start {tx}")
            daemon.request("POST", "/v1/pos", json={"type": "transaction_start", "transaction_id": tx,
                                                    "operator_id": DEMO_OPERATOR})
            for kind, restricted, category in steps:
                r = daemon.pos(kind, tx, restricted=restricted, category=category).json()
                if kind == "item" and restricted:
                    est = r["estimate"]
                    seen = f"estimated age {est['age']:.1f} ± {est['spread']:.1f} over {est['samples']} frames" if est else "no estimate"
                    print(f"POS  item {category} (restricted) -> {r['decision']}: {r['message']} [{seen}]")
                elif kind == "id_checked":
                    print(f"POS  id_checked {tx}")
                else:
                    print(f"POS  item {category}")
            daemon.request("POST", "/v1/pos", json={"type": "transaction_end", "transaction_id": tx})
            print(f"POS  transaction_end {tx}\n")
        time.sleep(2.5)  # long enough for one stats message
    finally:
        returncode = daemon.stop(timeout=30)
        time.sleep(0.5)
        sub.close()
        if backend is not None:  # before the broker goes: what is on its way arrives first
            _stop_backend(backend, [tx for tx, _ in DEMO_SALES])
        if stop_broker:
            stop_broker()

    print("an independent MQTT subscriber received:")
    for topic, p, _retained in sub.messages:
        kind = topic.rsplit("/", 1)[-1]
        if kind == "alerts":
            print(f"  {topic}: {p['type']} for {p['transaction_id']} — {p['reason']}")
        elif kind == "transactions":
            print(f"  {topic}: {p['transaction_id']} age band {p['age_band']}, outcome {p['outcome']}")
        elif kind == "status":
            print(f"  {topic}: {p['state']}")
        elif kind == "stats":
            print(f"  {topic}: {p['processed_fps']} frames/s processed, detect {p['detect_ms']} ms, infer {p['infer_ms']} ms per face")
    if backend is not None:
        _print_backend_tables(backend)
    shutil.rmtree(workdir, ignore_errors=True)
    return 0 if returncode == 0 else 1


def _start_backend(host: str, port: int):
    """agegate-backend's ingester on the demo's broker, into a fresh DEMO_BACKEND_DB (None without the extra)."""
    try:
        from agegate.backend import db
        from agegate.backend.ingest import BrokerAddress, Ingester
    except ImportError as exc:  # `pip install agegate[edge]` only: the till runs, the backend part is skipped
        print(f"(agegate-backend is not installed: {exc}; `make demo` installs it)")
        return None
    for suffix in ("", "-wal", "-shm"):
        Path(f"{DEMO_BACKEND_DB}{suffix}").unlink(missing_ok=True)
    ingester = Ingester(db.connect(f"sqlite:///{DEMO_BACKEND_DB}"), [BrokerAddress(host, port)],
                        client_id=f"agegate-demo-ingest-{os.getpid()}")
    ingester.start()
    return ingester


def _stop_backend(ingester, transaction_ids: list[str], timeout: float = 15.0) -> None:
    from sqlalchemy import func, select

    from agegate.backend.db import transactions

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:  # the summaries are on their way through the broker
        with ingester.engine.connect() as conn:
            stored = conn.scalar(select(func.count()).select_from(transactions)
                                 .where(transactions.c.transaction_id.in_(transaction_ids)))
        if stored >= len(transaction_ids):
            break
        time.sleep(0.2)
    ingester.stop()


def _print_backend_tables(ingester) -> None:
    from datetime import datetime, timezone

    from agegate.backend import reports
    from agegate.backend.cli import format_table

    today = datetime.now(timezone.utc).date()
    with ingester.engine.connect() as conn:
        purchases = reports.purchases(conn, today, today)
        integrity = reports.integrity(conn, today, today)
    print(f"\nagegate-backend ingested the demo's events ({dict(ingester.counts)}) into {DEMO_BACKEND_DB}.")
    print("Purchases by age band and category, today:\n")
    print(format_table(*purchases))
    print("\nChallenge 25 prompts and unverified sales per till and cashier login, today:\n")
    print(format_table(*integrity))
    print(f"\nBrowse them: agegate-backend --db sqlite:///{DEMO_BACKEND_DB} serve   (then http://127.0.0.1:8090/reports)")


if __name__ == "__main__":
    sys.exit(main())
