"""``agegate-backend``: ``ingest`` the tills' events, ``serve`` the reports, ``report`` one to the terminal."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from datetime import date, datetime, timedelta, timezone

from . import db


def _today() -> date:
    return datetime.now(timezone.utc).date()


def format_table(columns: list[str], rows: list[list]) -> str:
    """A plain-text table (for the terminal and `make demo`)."""
    cells = [columns] + [["" if v is None else (f"{v:.1%}" if isinstance(v, float) else str(v)) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="agegate-backend", description=__doc__)
    parser.add_argument("--db", default=os.environ.get("AGEGATE_BACKEND_DB", db.DEFAULT_URL),
                        help="SQLAlchemy URL: sqlite:///file.sqlite3 (default) or postgresql+psycopg://user@host/db "
                             "(env AGEGATE_BACKEND_DB)")
    parser.add_argument("--log-level", default="INFO")
    sub = parser.add_subparsers(dest="command", required=True)

    ingest = sub.add_parser("ingest", help="subscribe to the tills' events and store them")
    ingest.add_argument("--broker", action="append", default=None, metavar="HOST[:PORT]",
                        help="a broker to subscribe to (repeat for several; default localhost:1883)")
    ingest.add_argument("--prefix", default=os.environ.get("AGEGATE_MQTT_PREFIX", "agegate"))
    ingest.add_argument("--client-id", default="agegate-backend",
                        help="MQTT client id: keep it stable, the broker keeps the session under it")
    ingest.add_argument("--username", default=os.environ.get("AGEGATE_BACKEND_MQTT_USERNAME"))
    ingest.add_argument("--ca-file", help="CA certificate: connect with TLS")
    ingest.add_argument("--share", metavar="GROUP",
                        help="subscribe as one of a group of ingesters ($share/GROUP/...): each event goes to one of "
                             "them; give each its own --client-id")

    serve = sub.add_parser("serve", help="the reports as a web page and a JSON API")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8090)

    report = sub.add_parser("report", help="print a report")
    report.add_argument("name", choices=["purchases", "bands", "integrity", "tills", "rejected"])
    report.add_argument("--days", type=int, default=7, help="the last N days, today included (UTC)")

    sub.add_parser("migrate", help="create or upgrade the database's tables (ingest and serve do it too)")

    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)  # "Context impl SQLiteImpl" on every start says nothing
    engine = db.connect(args.db)

    if args.command == "migrate":
        print(f"{engine.url.render_as_string(hide_password=True)}: at the latest schema")
        return 0
    if args.command == "report":
        from . import reports

        end = _today()
        start = end - timedelta(days=args.days - 1)
        with engine.connect() as conn:
            columns, rows = {
                "purchases": lambda: reports.purchases(conn, start, end),
                "bands": lambda: reports.transactions_by_band(conn, start, end),
                "integrity": lambda: reports.integrity(conn, start, end),
                "tills": lambda: reports.tills(conn),
                "rejected": lambda: reports.rejected_payloads(conn),
            }[args.name]()
        print(format_table(columns, rows))
        return 0
    if args.command == "serve":
        import uvicorn

        from .web import create_app

        token = os.environ.get("AGEGATE_BACKEND_TOKEN") or None
        if token is None and args.host not in ("127.0.0.1", "localhost", "::1"):
            # The reports name cashiers' logins: beyond this machine, only with the token.
            print(f"agegate-backend serve: listening on {args.host} needs AGEGATE_BACKEND_TOKEN", file=sys.stderr)
            return 78
        uvicorn.run(create_app(engine, token=token), host=args.host, port=args.port, log_level="warning")
        return 0

    from .ingest import BrokerAddress, Ingester

    brokers = [BrokerAddress.parse(b) for b in (args.broker or ["localhost:1883"])]
    ingester = Ingester(engine, brokers, prefix=args.prefix, client_id=args.client_id, username=args.username,
                        password=os.environ.get("AGEGATE_BACKEND_MQTT_PASSWORD"), ca_file=args.ca_file,
                        share=args.share)
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    ingester.start()
    logging.getLogger(__name__).info("ingesting from %s into %s", ", ".join(map(str, brokers)),
                                     engine.url.render_as_string(hide_password=True))
    while not done.wait(30):
        logging.getLogger(__name__).info("so far: %s", dict(ingester.counts))
    ingester.stop()
    logging.getLogger(__name__).info("stopped: %s", dict(ingester.counts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
