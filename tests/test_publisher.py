"""The publisher and the MQTT transport on a real Mosquitto and a real SQLite outbox, without the
daemon: events stored while the broker is away drain oldest first, each once; a clean stop
flushes what was just published; an event the outbox cannot take goes out from memory."""

from __future__ import annotations

import subprocess
import time
import uuid

import pytest
from conftest import fill_disk, mount_tmpfs

from agegate.edge.config import Settings
from agegate.edge.events import Alert, ModelRef, Stats, Thresholds, TransactionSummary
from agegate.edge.mqtt import MqttTransport
from agegate.edge.outbox import Outbox
from agegate.edge.publisher import INFLIGHT_MAX, Publisher
from agegate.edge.status import outbox_status
from agegate.testing.mqtt import Subscriber
from agegate.testing.net import wait_until

MODEL = ModelRef(name="m", version="1", sha256="0" * 64)
BASE = "agegate/store-7/till-3"


def publisher_for(broker, outbox: Outbox | None) -> Publisher:
    settings = Settings(store_id="store-7", till_id="till-3", mqtt_host=broker.host, mqtt_port=broker.port,
                        mqtt_client_id=f"till-{uuid.uuid4().hex[:6]}")
    return Publisher(settings, MqttTransport(settings), outbox=outbox, model_ref=lambda: MODEL,
                     camera_state=lambda: "streaming")


def alert(i: int) -> Alert:
    return Alert(type="no_face", store_id="store-7", till_id="till-3", model=MODEL, transaction_id=f"T{i}", estimate=None,
                 thresholds=Thresholds(challenge_age=25, legal_age=18), reason="No face was seen in the customer zone.")


def summary(i: int) -> TransactionSummary:
    return TransactionSummary(store_id="store-7", till_id="till-3", model=MODEL, transaction_id=f"S{i}",
                              started_at=alert(0).timestamp, ended_at=alert(0).timestamp, ended_by="shutdown",
                              age_band="unknown", items=1, restricted_items=0, decision=None, id_checked=False,
                              outcome="no_restricted_items", thresholds=Thresholds(challenge_age=25, legal_age=18))


def test_events_stored_while_the_broker_is_away_drain_oldest_first_each_once(tmp_path, persistent_broker):
    sub = Subscriber(persistent_broker.host, persistent_broker.port, f"{BASE}/alerts",
                     client_id=f"backend-{uuid.uuid4().hex[:6]}", persistent=True)
    persistent_broker.stop()  # the backend's session is kept on disk; the broker is away
    box = Outbox(tmp_path)
    pub = publisher_for(persistent_broker, box)
    pub.start()
    pub.transport.start()
    try:
        events = [alert(i) for i in range(INFLIGHT_MAX + 150)]  # more than one turn of the pump
        for e in events:
            pub.publish(e)
        time.sleep(1.5)  # a pump turn or more while disconnected
        assert len(box) == len(events) and pub.inflight == 0  # stored, none handed to paho yet
        persistent_broker.start()
        wait_until(lambda: len(box) == 0, what="the outbox to drain")
        wanted = [str(e.event_id) for e in events]
        sub.wait_for(lambda m: len(m) >= len(wanted) or None, timeout=30)
        time.sleep(0.5)  # a duplicate would arrive right behind
        assert sub.event_ids("alerts") == wanted  # oldest first, each exactly once
        assert pub.inflight == 0 and pub.pending_in_memory == 0
    finally:
        pub.stop(timeout_s=1)
        sub.close()
        box.close()


def test_a_clean_stop_delivers_what_was_just_published_then_says_stopped(tmp_path, broker):
    sub = Subscriber(broker.host, broker.port, f"{BASE}/#")
    box = Outbox(tmp_path)
    pub = publisher_for(broker, box)
    pub.start()
    pub.transport.start()
    wait_until(pub.transport.connected.is_set, what="connected")
    summaries = [summary(i) for i in range(50)]
    for s in summaries:
        pub.publish(s)
    wait_until(lambda: len(box) == 0, what="the outbox to drain")
    last = summaries[0].model_copy(update={"transaction_id": "LAST", "event_id": uuid.uuid4()})
    summaries.append(last)
    pub.publish(last)
    pub.stop()  # at once: the publisher thread has not handed the last summary to paho yet
    try:
        assert len(box) == 0  # all acknowledged before the disconnect
        got = sub.wait_for(lambda m: len([p for t, p in m if t.endswith("/transactions")]) >= 51 or None)
        assert got and sub.event_ids("transactions") == [str(s.event_id) for s in summaries]
        sub.wait_for(lambda m: [p for t, p in m if t.endswith("/status") and p["state"] == "stopped"])
        assert [p["state"] for p in sub.on("status")] == ["online", "stopped"]
    finally:
        sub.close()
        box.close()


def test_without_an_outbox_events_go_out_from_memory_and_say_so(broker):
    sub = Subscriber(broker.host, broker.port, f"{BASE}/#")
    pub = publisher_for(broker, None)
    pub.start()
    pub.transport.start()
    try:
        wait_until(pub.transport.connected.is_set, what="connected")
        e = alert(1)
        pub.publish(e)
        assert pub.durable(str(e.event_id)) is False and pub.durable(str(uuid.uuid4())) is True
        pub.publish(Stats(store_id="store-7", till_id="till-3", model=MODEL, interval_s=1, uptime_s=1,
                          camera_state="streaming", camera_fps=1, camera_reconnects=0, processed_fps=1,
                          detect_ms=None, infer_ms=None, faces_estimated=0, outbox_ok=False, outbox_pending=0,
                          outbox_dropped_alerts=0, outbox_dropped_summaries=0, decisions={}, pos_rejected=0, alerts_published=1, publish_failures=0))
        sub.wait_for(lambda m: [p for t, p in m if t.endswith("/alerts")] and [p for t, p in m if t.endswith("/stats")])
        assert sub.event_ids("alerts") == [str(e.event_id)]
        wait_until(lambda: pub.pending_in_memory == 0, what="the broker's PUBACK")
    finally:
        pub.stop(timeout_s=1)
        sub.close()


def test_events_with_no_durable_copy_wait_in_memory_for_the_broker_to_come_back(persistent_broker):
    """No outbox (an unusable state disk): alerts decided while the broker is away are held in
    paho's bounded queue, counted as pending in memory, and delivered when it is back."""
    sub = Subscriber(persistent_broker.host, persistent_broker.port, f"{BASE}/alerts",
                     client_id=f"backend-{uuid.uuid4().hex[:6]}", persistent=True)
    pub = publisher_for(persistent_broker, None)
    pub.start()
    pub.transport.start()
    try:
        wait_until(pub.transport.connected.is_set, what="connected")
        persistent_broker.stop()
        wait_until(lambda: not pub.transport.connected.is_set(), what="the broker to be gone")
        events = [alert(i) for i in range(5)]
        for e in events:
            pub.publish(e)
        assert pub.pending_in_memory == 5 and not any(pub.durable(str(e.event_id)) for e in events)
        persistent_broker.start()
        wanted = [str(e.event_id) for e in events]
        sub.wait_for(lambda m: len(m) >= len(wanted) or None, timeout=30)
        assert sub.event_ids("alerts") == wanted
        wait_until(lambda: pub.pending_in_memory == 0, what="the broker's PUBACKs")
    finally:
        pub.stop(timeout_s=1)
        sub.close()


@pytest.mark.root
def test_the_outbox_status_says_how_the_disk_is_now_not_since_start(tmp_path, broker):
    """A full state disk is said (ok false, the event counted in memory); once there is room
    again the next event is stored and the status is ok again, not for the rest of the run."""
    state = tmp_path / "state"
    mount_tmpfs(state, "4m")
    box = Outbox(state)
    pub = publisher_for(broker, box)
    try:
        assert outbox_status(box, pub).ok
        fill_disk(state)
        pub.publish(summary(1))  # does not fit: sent from memory
        full = outbox_status(box, pub)
        assert not full.ok and full.durable  # the reserve is still there for alerts
        (state / "filler").unlink()
        pub.publish(summary(2))
        again = outbox_status(box, pub)
        assert again.ok and again.durable and again.pending == 1
    finally:
        pub.stop(timeout_s=1)
        box.close()
        if subprocess.run(["umount", str(state)], capture_output=True).returncode:
            subprocess.run(["umount", "-l", str(state)], capture_output=True)
