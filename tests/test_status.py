"""The till's status as one typed model (edge/status.py), and the supervision of the vision thread.

A real daemon (the CLI's ``run``, real Mosquitto, a real video and model) declares TillStatus in
its OpenAPI document and answers it; the console's status is the same model extended; /metrics,
the stats event and systemd's status line say what the status says. In-process, a real daemon's
vision thread is broken so that it dies on every start: the supervisor restarts it, but not in a
tight loop, and once the fault is gone the restarted loop analyses frames again.
"""

from __future__ import annotations

import logging
import re
import time

import httpx

from agegate.edge.api_models import ConsoleStatus
from agegate.edge.config import Settings
from agegate.edge.status import TillStatus, status_line
from agegate.testing.daemon import DaemonProcess
from agegate.testing.mqtt import Subscriber
from agegate.testing.net import free_port, wait_until


def _wait(predicate, timeout: float, what: str):
    return wait_until(predicate, timeout, what, every=0.05)  # the predicates here drive the supervisor


def _metric(text: str, name: str) -> float:
    (value,) = re.findall(rf"^{name} (\S+)$", text, re.M)
    return float(value)


def test_the_status_is_one_typed_model_that_every_report_renders(tmp_path, broker, face_video, constant_bundles):
    sub = Subscriber(broker.host, broker.port, "agegate/store-7/till-3/stats")
    d = DaemonProcess(tmp_path, broker=broker, camera=face_video, model_dir=constant_bundles[40],
                      stats_interval_s=1).start(wait_for_face=True)
    try:
        doc = httpx.get(f"{d.url}/openapi.json", timeout=10).json()
        schemas = doc["components"]["schemas"]
        declared = doc["paths"]["/v1/status"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
        assert declared == {"$ref": "#/components/schemas/TillStatus"}
        assert set(schemas["TillStatus"]["properties"]) == set(TillStatus.model_fields)
        # The console's status is the same model extended: every field of the till's, and its own.
        console_ref = doc["paths"]["/console/api/status"]["get"]["responses"]["200"]["content"]["application/json"]
        assert console_ref["schema"] == {"$ref": "#/components/schemas/ConsoleStatus"}
        assert issubclass(ConsoleStatus, TillStatus)
        assert set(schemas["TillStatus"]["properties"]) < set(schemas["ConsoleStatus"]["properties"])

        body = d.status()
        status = TillStatus.model_validate(body)
        assert set(body) == set(TillStatus.model_fields)
        assert status.camera.state == "streaming" and status.mqtt.connected and status.customer is not None
        console = httpx.get(f"{d.url}/console/api/status", timeout=10).json()
        ConsoleStatus.model_validate(console)
        for same in ("version", "store_id", "till_id", "detector", "thresholds", "mqtt"):
            assert console[same] == body[same], same
        assert {k: console["model"][k] for k in body["model"]} == body["model"]
        assert set(console) - set(body) == {"zone", "last_decisions", "history_available", "token_required"}

        # /metrics renders the status's figures (those that stand still while the till is idle).
        metrics = httpx.get(f"{d.url}/metrics", timeout=10).text
        assert _metric(metrics, "agegate_camera_streaming") == 1.0
        assert _metric(metrics, "agegate_mqtt_connected") == 1.0
        assert _metric(metrics, "agegate_outbox_pending") == body["outbox"]["pending"]
        assert _metric(metrics, "agegate_publish_failures_total") == body["mqtt"]["publish_failures"]
        model = body["model"]
        assert (f'agegate_model_info{{name="{model["name"]}",runtime="{model["runtime"]}",sha256="{model["sha256"]}",'
                f'variant="{model["variant"]}",version="{model["version"]}"}} 1.0') in metrics

        # The stats event carries the status's camera, broker and outbox figures and its model.
        stats = sub.wait_for(lambda m: [p for _, p in m if p.get("type") == "stats"], 10)[-1]
        assert stats["model"] == {k: model[k] for k in ("name", "version", "sha256")}
        assert stats["camera_state"] == "streaming" and stats["outbox_ok"] is body["outbox"]["ok"] is True
        assert stats["outbox_durable"] is body["outbox"]["durable"] is True

        # systemd's status line, rendered from the typed status.
        assert status_line(status) == (f"camera streaming, broker connected, outbox {status.outbox.pending} pending, "
                                       f"model {model['name']} {model['version']}")
    finally:
        d.stop()
        sub.close()


def test_the_status_line_says_when_events_are_not_kept(tmp_path, broker, face_video, constant_bundles):
    """No outbox (the state directory is a file): the line says n/a and NOT DURABLE, as /v1/status does."""
    state = tmp_path / "state-is-a-file"
    state.write_text("")
    d = DaemonProcess(tmp_path, broker=broker, camera=face_video, model_dir=constant_bundles[40],
                      state_dir=state).start()
    try:
        status = TillStatus.model_validate(d.status())
        assert status.outbox.available is False and status.outbox.durable is False and status.model_store is None
        assert status_line(status).startswith("camera streaming, broker connected, outbox n/a pending (NOT DURABLE), ")
    finally:
        d.stop()


# --- supervision --------------------------------------------------------------------------------------------


def test_the_restart_delay_grows_while_a_thread_keeps_dying_and_resets_after_a_good_run():
    from agegate.edge.daemon import RestartGate

    gate = RestartGate(min_s=1, max_s=8, stable_s=60)
    t = gate.started_at
    delays = []
    for _ in range(6):  # each start dies half a second later
        t += 0.5
        delays.append(gate.died(t))
        assert not gate.due(t + delays[-1] - 0.01) and gate.due(t + delays[-1])
        t += delays[-1]
        gate.started(t)
    assert delays == [1, 2, 4, 8, 8, 8]
    assert gate.died(t + 61) == 1  # it ran more than a minute: healthy again


def test_a_vision_thread_that_dies_is_restarted_but_not_in_a_tight_loop(tmp_path, broker, face_video,
                                                                        constant_bundles, monkeypatch, caplog):
    from agegate.edge.daemon import VISION_RESTART_MIN_S, Daemon

    settings = Settings(store_id="store-1", till_id="till-1", camera=str(face_video), model_dir=constant_bundles[40],
                        mqtt_host=broker.host, mqtt_port=broker.port, http_port=free_port(), state_dir=tmp_path / "state")
    daemon = Daemon(settings)
    gate = daemon.vision_restarts
    try:
        daemon.start()
        first = daemon.vision
        _wait(lambda: first.frames.totals()["count"] > 0, 30, "the vision loop's first frames")

        # The camera's frame source raises outside a frame's step: the loop ends, as a bug there would end it.
        broken = True
        latest = daemon.camera.latest

        def failing_latest(*args, **kwargs):
            if broken:
                raise RuntimeError("camera library crashed")
            return latest(*args, **kwargs)

        monkeypatch.setattr(daemon.camera, "latest", failing_latest)
        caplog.set_level(logging.WARNING, logger="agegate.edge")
        _wait(lambda: not first.alive, 10, "the vision thread to die")
        assert first.death == "RuntimeError: camera library crashed"

        def supervise_for(seconds: float) -> int:
            """Run the main loop's thread check back to back (far more often than its one a second)."""
            calls, end = 0, time.monotonic() + seconds
            while time.monotonic() < end:
                daemon._revive_threads()
                calls += 1
            return calls

        assert supervise_for(VISION_RESTART_MIN_S / 2) > 1000
        assert daemon.vision is first and gate.restarts == 0, "restarted before its delay"
        assert "restarting it in 1 s" in caplog.text and "RuntimeError: camera library crashed" in caplog.text

        _wait(lambda: supervise_for(0.01) and gate.restarts == 1, 5, "the first restart")
        second = daemon.vision
        assert second is not first and daemon.book.vision is second
        _wait(lambda: not second.alive, 10, "the restarted thread to die too")
        supervise_for(1.5)  # it died within a minute of its start: the next start waits 2 s
        assert gate.restarts == 1 and daemon.vision is second
        assert "restarting it in 2 s" in caplog.text

        broken = False  # the fault goes away: the next restart brings the loop back for good
        _wait(lambda: supervise_for(0.01) and gate.restarts == 2, 5, "the second restart")
        third = daemon.vision
        _wait(lambda: third.frames.totals()["count"] > 0, 30, "frames analysed by the restarted loop")
        assert third.alive and daemon.status().camera.state == "streaming"
        assert caplog.text.count("vision thread restarted") == 2
    finally:
        daemon.request_stop()
        daemon.stop()
