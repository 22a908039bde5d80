"""Faults survived by the real daemon on real parts: broker down at start and restarted as a
new process, SIGKILL with alerts pending, camera lost, a flood of POS messages, an unusable
state directory, and a model that throws at inference."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
import uuid

import httpx
import pytest

from agegate.testing.daemon import DaemonProcess
from agegate.testing.mqtt import Subscriber, publish_once
from agegate.testing.net import wait_until
from conftest import mount_tmpfs

BASE = "agegate/store-7/till-3"


def backend(broker) -> Subscriber:
    """The store backend: a durable session, so the broker queues alerts for it while it is away."""
    return Subscriber(broker.host, broker.port, f"{BASE}/#", client_id=f"backend-{uuid.uuid4().hex[:6]}", persistent=True)


def young_sale(d: DaemonProcess, tx: str) -> dict:
    answer = d.pos("item", tx, restricted=True).json()
    d.pos("transaction_end", tx)
    return answer


def test_broker_down_at_start_then_up(tmp_path, persistent_broker, face_video, constant_bundles):
    sub = backend(persistent_broker)
    persistent_broker.stop()  # the backend's session is on disk; the broker is down
    d = DaemonProcess(tmp_path, broker=persistent_broker, camera=face_video, model_dir=constant_bundles[16]).start(wait_for_face=True)
    try:
        answers = [young_sale(d, f"D{i}") for i in range(3)]  # the POS keeps getting answers
        assert {a["decision"] for a in answers} == {"age_check_required"}
        assert d.status()["mqtt"]["connected"] is False and d.status()["outbox"]["pending"] == 9
        # Said at once, with the reason, and once: paho retries every few seconds meanwhile.
        refused = f"MQTT broker 127.0.0.1:{persistent_broker.port}: unreachable (refused)"
        wait_until(lambda: refused in d.log(), timeout=5, what="the unreachable broker to be logged")
        time.sleep(3)
        assert d.log().count(refused) == 1, d.log()
        persistent_broker.start()
        wait_until(lambda: d.status()["outbox"]["pending"] == 0, what="the outbox to drain")
        assert f"MQTT broker 127.0.0.1:{persistent_broker.port}: connected" in d.log()
        alerts = sub.wait_for(lambda m: (a := [p for t, p in m if t.endswith("/alerts")]) and len(a) >= 6 and a)
        assert {a["event_id"] for a in alerts} >= {a["alert_event_id"] for a in answers}
        assert sorted(a["transaction_id"] for a in alerts if a["type"] == "unverified_sale") == ["D0", "D1", "D2"]
        assert [s["state"] for s in sub.on("status")][-1] == "online"
    finally:
        d.stop()
        sub.close()


def test_broker_restarted_as_a_new_process_mid_run(tmp_path, persistent_broker, face_video, constant_bundles):
    sub = backend(persistent_broker)
    d = DaemonProcess(tmp_path, broker=persistent_broker, camera=face_video, model_dir=constant_bundles[16]).start(wait_for_face=True)
    try:
        wait_until(lambda: d.status()["mqtt"]["connected"], what="connected")
        before = young_sale(d, "B0")
        sub.wait_for(lambda m: [p for t, p in m if p.get("event_id") == before["alert_event_id"]])
        online_before = len([p for p in sub.on("status") if p["state"] == "online"])

        old_pid = persistent_broker.proc.pid
        persistent_broker.stop()
        wait_until(lambda: not d.status()["mqtt"]["connected"], what="the daemon to see the broker gone")
        # The loss with what happened (not paho's "Unspecified error"), then why reconnecting fails.
        wait_until(lambda: "unreachable (refused)" in d.log(), timeout=10, what="the failed reconnect to be logged")
        # A broker going down closes the socket cleanly or, on a busy machine, resets it: either is said.
        lost = re.search(r"connection lost: (.+?); reconnecting", d.log())
        assert lost and (lost[1] == "the broker closed the connection" or "Connection reset by peer" in lost[1]), d.log()
        assert "Unspecified error" not in d.log()
        during = [young_sale(d, f"B{i}") for i in range(1, 6)]
        assert all(a["decision"] == "age_check_required" for a in during)
        persistent_broker.start()
        assert persistent_broker.proc.pid != old_pid

        wait_until(lambda: d.status()["mqtt"]["connected"], what="reconnect")
        wanted = {a["alert_event_id"] for a in during}
        sub.wait_for(lambda m: wanted <= {p.get("event_id") for _, p in m} or None)
        wait_until(lambda: d.status()["outbox"]["pending"] == 0, what="the outbox to drain")
        # Status went online again after the reconnect.
        sub.wait_for(lambda m: len([p for t, p in m if t.endswith("/status") and p["state"] == "online"]) > online_before)
        # The POS subscription was restored: an MQTT POS message is decided again.
        publish_once(persistent_broker.host, persistent_broker.port, f"{BASE}/pos",
                     json.dumps({"type": "item", "transaction_id": "AFTER", "restricted": True}))
        sub.wait_for(lambda m: [p for t, p in m if t.endswith("/alerts") and p["transaction_id"] == "AFTER"])
        summaries = {s["transaction_id"] for s in sub.on("transactions")}
        assert {f"B{i}" for i in range(6)} <= summaries
    finally:
        d.stop()
        sub.close()


def test_sigkill_with_alerts_pending_delivers_them_after_restart(tmp_path, persistent_broker, face_video, constant_bundles):
    sub = backend(persistent_broker)
    persistent_broker.stop()
    d = DaemonProcess(tmp_path, broker=persistent_broker, camera=face_video, model_dir=constant_bundles[16]).start(wait_for_face=True)
    answers = [young_sale(d, f"K{i}") for i in range(4)]
    assert d.status()["outbox"]["pending"] == 12
    d.stop(sig=signal.SIGKILL)  # power cut: nothing flushed, nothing said

    persistent_broker.start()
    d2 = DaemonProcess(tmp_path, broker=persistent_broker, camera=face_video, model_dir=constant_bundles[16]).start()
    try:
        wanted = {a["alert_event_id"] for a in answers}
        sub.wait_for(lambda m: wanted <= {p.get("event_id") for _, p in m} or None)
        wait_until(lambda: d2.status()["outbox"]["pending"] == 0, what="the outbox to drain")
        assert sorted(s["transaction_id"] for s in sub.on("transactions")) == ["K0", "K1", "K2", "K3"]
    finally:
        d2.stop()
        sub.close()


def test_camera_lost_and_back(tmp_path, broker, face_video, constant_bundles):
    camera = tmp_path / "camera.avi"  # does not exist yet: the camera is unplugged
    sub = Subscriber(broker.host, broker.port, f"{BASE}/#")
    d = DaemonProcess(tmp_path, broker=broker, camera=camera, model_dir=constant_bundles[16],
                      camera_stall_timeout_s=1).start(wait_streaming=False)
    try:
        assert d.status()["camera"]["state"] in ("starting", "reconnecting")
        answer = d.pos("item", "C1", restricted=True).json()
        assert answer["decision"] == "camera_unavailable" and answer["check_id"] is True
        alert = sub.wait_for(lambda m: [p for t, p in m if t.endswith("/alerts")])[0]
        assert alert["type"] == "camera_unavailable" and alert["event_id"] == answer["alert_event_id"]
        stats = sub.wait_for(lambda m: [p for t, p in m if t.endswith("/stats")])[-1]
        assert stats["camera_state"] in ("starting", "reconnecting")

        shutil.copy(face_video, camera)  # plugged back in: picked up after the back-off
        wait_until(lambda: d.status()["customer"], timeout=60, what="the camera to come back")
        assert d.status()["camera"]["reconnects"] >= 1
        assert d.pos("item", "C2", restricted=True).json()["decision"] == "age_check_required"
    finally:
        d.stop()
        sub.close()


def test_flood_of_pos_messages_keeps_memory_bounded(tmp_path, broker, face_video, constant_bundles):
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    d = DaemonProcess(tmp_path, broker=broker, camera=face_video, model_dir=constant_bundles[40]).start()
    try:
        wait_until(lambda: d.status()["mqtt"]["connected"], what="connected")
        rss_before = d.rss_kb()
        flood = paho.Client(CallbackAPIVersion.VERSION2, client_id="flood")
        flood.max_inflight_messages_set(1000)
        flood.connect(broker.host, broker.port)
        flood.loop_start()
        for i in range(10_000):
            kind = ("transaction_start", "item", "transaction_end", "bogus")[i % 4]
            flood.publish(f"{BASE}/pos", json.dumps({"type": kind, "transaction_id": f"F{i // 4}"}), qos=1)
        # and HTTP at the same time, from several threads
        def hammer(n):
            with httpx.Client() as c:
                for i in range(n):
                    c.post(f"{d.url}/v1/pos", json={"type": "item", "transaction_id": f"H{i}"})
        threads = [threading.Thread(target=hammer, args=(250,)) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        flood.disconnect()
        flood.loop_stop()
        time.sleep(2)
        status = d.status()
        assert d.proc.poll() is None
        assert status["open_transactions"] <= 64
        growth_mb = (d.rss_kb() - rss_before) / 1024
        assert growth_mb < 80, f"RSS grew by {growth_mb:.0f} MB"
        # Still deciding
        assert d.pos("item", "AFTER", restricted=True).json()["decision"] == "clear"
        assert "MQTT POS message rejected" in d.log()
    finally:
        d.stop()


# As root both mount a tmpfs; without root the read-only one is a directory without write permission.
@pytest.mark.parametrize("fault", ["read-only", pytest.param("full", marks=pytest.mark.root)])
def test_unusable_state_dir_alerts_still_go_out_live(tmp_path, broker, face_video, constant_bundles, fault):
    state = tmp_path / "state"
    if os.geteuid() != 0:
        if fault == "full":
            pytest.skip("a full filesystem needs root to mount a tiny tmpfs")
        state.mkdir()
        state.chmod(0o500)
    else:
        mount_tmpfs(state, "64k" if fault == "full" else "1m")
        if fault == "full":
            with open(state / "filler", "wb") as f:
                try:
                    f.write(b"\0" * 1024 * 1024)
                except OSError:
                    pass
        else:
            subprocess.run(["mount", "-o", "remount,ro", str(state)], check=True)
    sub = Subscriber(broker.host, broker.port, f"{BASE}/#")
    d = DaemonProcess(tmp_path, broker=broker, camera=face_video, model_dir=constant_bundles[16])
    d.env["AGEGATE_STATE_DIR"] = str(state)
    try:
        d.start(wait_for_face=True)
        wait_until(lambda: d.status()["mqtt"]["connected"], what="connected")
        answer = young_sale(d, "S1")
        assert answer["decision"] == "age_check_required"
        assert answer["durable"] is False  # the POS is told the alert is in memory only
        sub.wait_for(lambda m: [p for t, p in m if p.get("event_id") == answer["alert_event_id"]])
        assert d.status()["outbox"]["ok"] is False and d.status()["outbox"]["durable"] is False
        assert "AGEGATE_STATE_DIR" in d.log() and "published live" in d.log()
    finally:
        d.stop()
        sub.close()
        if os.geteuid() == 0:
            subprocess.run(["umount", str(state)], capture_output=True)
        else:
            state.chmod(0o700)


def test_model_that_throws_is_reported_and_answers_cannot_assess(tmp_path, broker, face_video):
    from bundle_factory import make_failing_bundle

    bundle = make_failing_bundle(tmp_path / "failing")
    sub = Subscriber(broker.host, broker.port, f"{BASE}/#")
    d = DaemonProcess(tmp_path, broker=broker, camera=face_video, model_dir=bundle).start()
    try:
        wait_until(lambda: d.status()["vision_errors"] > 0, what="the model to fail")
        answer = d.pos("item", "M1", restricted=True).json()
        assert answer["decision"] == "cannot_assess" and answer["check_id"] is True
        alert = sub.wait_for(lambda m: [p for t, p in m if t.endswith("/alerts")])[0]
        assert alert["type"] == "cannot_assess" and "gather index out of bounds" in alert["reason"]
        assert d.proc.poll() is None and "vision step failed" in d.log()
        assert d.log().count("vision step failed") < 5  # reported, not logged every frame
    finally:
        d.stop()
        sub.close()


def test_a_model_that_answers_nan_means_cannot_assess_and_the_live_view_still_answers(tmp_path, broker, face_video):
    from bundle_factory import make_constant_bundle

    bundle = make_constant_bundle(tmp_path / "nan", float("nan"), validation=None)
    sub = Subscriber(broker.host, broker.port, f"{BASE}/#")
    d = DaemonProcess(tmp_path, broker=broker, camera=face_video, model_dir=bundle).start()
    try:
        wait_until(lambda: d.status()["vision_errors"] > 0, what="the model's NaN to be seen")
        answer = d.pos("item", "NAN1", restricted=True).json()
        assert answer["decision"] == "cannot_assess" and answer["estimate"] is None
        alert = sub.wait_for(lambda m: [p for t, p in m if t.endswith("/alerts")])[0]
        assert alert["type"] == "cannot_assess" and "non-finite age" in alert["reason"]
        live = httpx.get(f"{d.url}/console/api/live", timeout=10)
        assert live.status_code == 200 and live.json()["camera"] == "streaming"
    finally:
        d.stop()
        sub.close()


@pytest.mark.root
@pytest.mark.parametrize("then", ["broker_returns", "killed_first"])
def test_sales_that_fill_the_state_disk_keep_alerts_on_the_reserve_then_say_they_are_in_memory(
        tmp_path, persistent_broker, face_video, constant_bundles, then):
    """Issue 12 item 5 end to end: the real daemon, its state directory on a 3 MiB tmpfs (2 MiB of
    it the outbox's reserve), the broker down, young customers' sales over HTTP until the disk is
    full. (a) Once summaries no longer fit, alerts are still stored, from the reserve, and the status
    says so; (b) once the reserve is used up, the POS answer says ``durable: false`` and the status
    counts the events in memory and says the outbox is not durable; (c) when the broker comes back
    every alert and summary arrives exactly once; or, killed before that, only the events the status
    counted in memory are lost."""
    state = tmp_path / "state"
    mount_tmpfs(state, "3m")
    sub = backend(persistent_broker)
    persistent_broker.stop()
    d = DaemonProcess(tmp_path, broker=persistent_broker, camera=face_video, model_dir=constant_bundles[16])
    d2 = None
    answers: dict[str, dict] = {}  # transaction -> the item's POS answer
    from_reserve = []  # (outbox status before, after) of each sale made while the reserve was released
    try:
        d.start(wait_for_face=True)
        assert (state / "outbox.reserve").exists()
        before = d.status()["outbox"]
        for i in range(400):  # about 60 sales fill it; the bound only stops a runaway
            tx = f"F{i}"
            reserve_released = not (state / "outbox.reserve").exists()
            answers[tx] = young_sale(d, tx)
            after = d.status()["outbox"]
            assert after["pending"] + after["pending_in_memory"] == 3 * len(answers), after  # nothing unaccounted
            if answers[tx]["durable"] is False:
                break
            if reserve_released:
                from_reserve.append((before, after))
            before = after
        else:
            pytest.fail("400 sales did not fill a 3 MiB state disk")
        # (a) While the reserve covered them (the last such sale may have been the one that used it
        # up), both alerts of a sale went to disk and its summary stayed in memory, and the status
        # said alerts were durable.
        assert len(from_reserve) >= 10, from_reserve
        for b, a in from_reserve[:-1]:
            assert (a["pending"] - b["pending"], a["pending_in_memory"] - b["pending_in_memory"]) == (2, 1), (b, a)
            assert a["durable"] is True and a["ok"] is False, a
        assert "its space is kept for alerts" in d.log()

        # (b) The reserve is used up: more sales are answered, each saying its alert is in memory only.
        for i in range(3):
            answers[f"M{i}"] = young_sale(d, f"M{i}")
            assert answers[f"M{i}"]["decision"] == "age_check_required" and answers[f"M{i}"]["durable"] is False
        box = d.status()["outbox"]
        assert box["durable"] is False and box["ok"] is False and box["dropped_alerts"] == 0
        in_memory = box["pending_in_memory"]
        assert in_memory >= 3 * 2 + len(from_reserve) and box["pending"] + in_memory == 3 * len(answers)

        delivering = d
        if then == "killed_first":
            d.stop(sig=signal.SIGKILL)  # the disk still full: what was only in memory is gone
            d2 = DaemonProcess(tmp_path, broker=persistent_broker, camera=face_video, model_dir=constant_bundles[16])
            d2.start()
            delivering = d2
        persistent_broker.start()
        wait_until(lambda: delivering.status()["outbox"]["pending_in_memory"] == 0, what="the memory queue to drain")
        expected = 3 * len(answers) - (in_memory if then == "killed_first" else 0)

        def all_delivered(messages):  # a sale ended again by the next start (below) sends two more
            events = [p for t, p in messages if t.endswith(("/alerts", "/transactions"))]
            again = [p for t, p in messages if t.endswith("/transactions") and p.get("ended_by") == "restart"]
            return len(events) >= expected + 2 * len(again) or None

        # Waited for twice: the count can reach what was expected before a restart's two extra
        # events are in (an earlier event still on its way), so again once the outbox has drained.
        sub.wait_for(all_delivered)
        wait_until(lambda: delivering.status()["outbox"]["pending"] == 0 or "acknowledged event(s)" in delivering.log(),
                   what="the outbox to drain, or to say why not")
        sub.wait_for(all_delivered)
        alerts, summaries = sub.on("alerts"), sub.on("transactions")
        ids = [e["event_id"] for e in alerts + summaries]
        # Sales whose end could not be forgotten on the full disk, ended again by the next start.
        again = [s["transaction_id"] for s in summaries if s.get("ended_by") == "restart"]
        assert len(ids) == len(set(ids)) == expected + 2 * len(again), (len(ids), len(set(ids)), expected, again)
        if then == "broker_returns":
            assert {a["event_id"] for a in alerts if a["type"] == "age_check_required"} == \
                {a["alert_event_id"] for a in answers.values()}
            assert sorted(a["transaction_id"] for a in alerts if a["type"] == "unverified_sale") == sorted(answers)
            assert sorted(s["transaction_id"] for s in summaries) == sorted(answers)
        else:  # every alert whose POS answer said durable arrived
            durable = {a["alert_event_id"] for a in answers.values() if a["durable"]}
            assert durable <= {a["event_id"] for a in alerts}
        # Open in issue 12 (found by this test; the checks above hold): (1) the outbox cannot delete
        # acknowledged rows while the disk is full (a delete needs new WAL pages), so the status keeps
        # counting them as pending and the next start sends them again; (2) a sale whose end could
        # not be forgotten is ended again by the next start, with a second unverified_sale alert.
        # When both are fixed this test passes instead of reporting xfail.
        if again:
            pytest.xfail(f"sales {again} ended twice: their end could not be forgotten on the full disk")
        if delivering.status()["outbox"]["pending"]:
            pytest.xfail("acknowledged rows cannot be deleted from the outbox while the disk is full")
    finally:
        for p in (d, d2):
            if p is not None and p.proc is not None and p.proc.poll() is None:
                p.stop()
        sub.close()
        if subprocess.run(["umount", str(state)], capture_output=True).returncode:
            subprocess.run(["umount", "-l", str(state)], capture_output=True)
