"""Open transactions outlive the process: a sale interrupted by SIGKILL is ended at the next
start (``ended_by: "restart"``, with its ``unverified_sale``), and a clean shutdown ends open
sales with ``ended_by: "shutdown"`` and no integrity alert. Real daemon, real Mosquitto,
real signals, the real SQLite file."""

from __future__ import annotations

import signal
import sqlite3

from agegate.testing.daemon import DaemonProcess
from agegate.testing.mqtt import Subscriber
from test_faults import backend


def _alerts(sub: Subscriber, tx: str, kind: str) -> list[dict]:
    return [a for a in sub.on("alerts") if a["transaction_id"] == tx and a["type"] == kind]


def _summaries(sub: Subscriber, tx: str) -> list[dict]:
    return [s for s in sub.on("transactions") if s["transaction_id"] == tx]


def test_a_sale_killed_mid_way_is_ended_at_restart_with_its_unverified_sale(tmp_path, broker, face_video, constant_bundles):
    sub = backend(broker)
    d = DaemonProcess(tmp_path, broker=broker, camera=face_video, model_dir=constant_bundles[16]).start(wait_for_face=True)
    try:
        d.pos("transaction_start", "K1")
        d.pos("item", "K1")
        assert d.pos("item", "K1", restricted=True).json()["decision"] == "age_check_required"
        d.pos("item", "K1", restricted=True)
        sub.wait_for(lambda m: _alerts(sub, "K1", "age_check_required"))
    finally:
        d.stop(sig=signal.SIGKILL)  # mid-sale: no transaction_end, no shutdown
    assert not _summaries(sub, "K1")

    d2 = DaemonProcess(tmp_path, broker=broker, camera=face_video, model_dir=constant_bundles[40]).start()
    try:
        summary = sub.wait_for(lambda m: _summaries(sub, "K1"))[0]
        assert summary["ended_by"] == "restart"
        assert (summary["items"], summary["restricted_items"]) == (3, 2)
        assert (summary["decision"], summary["outcome"], summary["age_band"]) == ("age_check_required", "unverified_sale", "13-17")
        unverified = sub.wait_for(lambda m: _alerts(sub, "K1", "unverified_sale"))
        assert len(unverified) == 1 and unverified[0]["likely_minor"] is True and "restarted" in unverified[0]["reason"]
        assert d2.status()["open_transactions"] == 0
    finally:
        d2.stop()
    # Ended once: a third start finds nothing left to end.
    assert sqlite3.connect(tmp_path / "state" / "outbox.sqlite3").execute("SELECT COUNT(*) FROM open_transactions").fetchone()[0] == 0
    sub.close()


def test_shutdown_ends_open_sales_without_an_integrity_alert(tmp_path, broker, face_video, constant_bundles):
    sub = backend(broker)
    d = DaemonProcess(tmp_path, broker=broker, camera=face_video, model_dir=constant_bundles[16]).start(wait_for_face=True)
    try:
        assert d.pos("item", "S1", restricted=True).json()["decision"] == "age_check_required"
        d.pos("item", "S2", restricted=True)
        d.pos("id_checked", "S2")
    finally:
        assert d.stop() == 0
    s1 = sub.wait_for(lambda m: _summaries(sub, "S1"))[0]
    s2 = sub.wait_for(lambda m: _summaries(sub, "S2"))[0]
    assert (s1["ended_by"], s1["outcome"], s1["restricted_items"]) == ("shutdown", "interrupted", 1)
    assert (s2["ended_by"], s2["outcome"]) == ("shutdown", "id_checked")
    assert not [a for a in sub.on("alerts") if a["type"] == "unverified_sale"]

    # Nothing is ended a second time at the next start.
    d2 = DaemonProcess(tmp_path, broker=broker, camera=face_video, model_dir=constant_bundles[40]).start()
    try:
        d2.pos("transaction_start", "PROBE")  # ending only an open transaction publishes a summary
        assert d2.pos("transaction_end", "PROBE").status_code == 200
        sub.wait_for(lambda m: _summaries(sub, "PROBE"))
        assert len(_summaries(sub, "S1")) == 1 and not [a for a in sub.on("alerts") if a["type"] == "unverified_sale"]
    finally:
        d2.stop()
        sub.close()
