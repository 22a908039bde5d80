"""The daemon end to end on real parts: a video with a face (or none) → real detector →
real .tflite bundle → POS over HTTP and MQTT → alerts and summaries at an independent
subscriber of a real Mosquitto broker, validated against the published JSON Schemas."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import jsonschema
import pytest

from agegate.testing.daemon import DaemonProcess
from agegate.testing.mqtt import Subscriber, publish_once

ROOT = Path(__file__).resolve().parents[1]
SCHEMAS = {p.name.removesuffix(".schema.json"): json.loads(p.read_text()) for p in (ROOT / "docs" / "schemas").glob("*.schema.json")}
TOPIC_SCHEMA = {"alerts": "alert", "transactions": "transaction_summary", "status": "status", "stats": "stats"}
BASE = "agegate/store-7/till-3"


def validate_all(sub: Subscriber) -> int:
    n = 0
    for topic, payload, _ in sub.messages:
        suffix = topic.rsplit("/", 1)[-1]
        if suffix in TOPIC_SCHEMA:
            jsonschema.validate(payload, SCHEMAS[TOPIC_SCHEMA[suffix]])
            n += 1
    return n


@pytest.fixture
def run_daemon(tmp_path, broker):
    started = []

    def _run(camera, model_dir, wait_for_face=False, **settings):
        d = DaemonProcess(tmp_path, broker=broker, camera=camera, model_dir=model_dir, **settings)
        started.append(d)
        return d.start(wait_for_face=wait_for_face)

    yield _run
    for d in started:
        d.stop()


def test_young_face_over_http_and_mqtt(run_daemon, broker, face_video, constant_bundles):
    sub = Subscriber(broker.host, broker.port, f"{BASE}/#")
    d = run_daemon(face_video, constant_bundles[16], wait_for_face=True)

    # Through HTTP: the answer carries the decision at once.
    assert d.pos("transaction_start", "T1").json()["decision"] is None
    assert d.pos("item", "T1", category="bakery").json()["decision"] is None
    answer = d.pos("item", "T1", restricted=True).json()
    assert answer["decision"] == "age_check_required" and answer["likely_minor"] is True and answer["check_id"] is True
    assert answer["estimate"]["age"] == pytest.approx(16, abs=0.01) and answer["estimate"]["samples"] >= 1
    assert answer["model"]["name"] == "test-constant-16"
    d.pos("transaction_end", "T1")

    # Through MQTT: same rules, alert on the same topic.
    for msg in ({"type": "transaction_start", "transaction_id": "M1"},
                {"type": "item", "transaction_id": "M1", "category": "alcohol", "restricted": True},
                {"type": "transaction_end", "transaction_id": "M1"}):
        publish_once(broker.host, broker.port, f"{BASE}/pos", json.dumps(msg))

    alerts = sub.wait_for(lambda m: [p for t, p in m if t.endswith("/alerts")] if len([1 for t, p in m if t.endswith("/transactions")]) >= 2 else None)
    by_tx = {(a["transaction_id"], a["type"]) for a in alerts}
    assert by_tx == {("T1", "age_check_required"), ("T1", "unverified_sale"), ("M1", "age_check_required"), ("M1", "unverified_sale")}
    first = next(a for a in alerts if a["transaction_id"] == "T1" and a["type"] == "age_check_required")
    assert first["event_id"] == answer["alert_event_id"]
    assert first["store_id"] == "store-7" and first["till_id"] == "till-3" and first["likely_minor"] is True
    assert first["thresholds"] == {"challenge_age": 25.0, "legal_age": 18.0, "estimate_threshold": None, "calibrated": False}
    assert len(first["model"]["sha256"]) == 64
    summaries = {s["transaction_id"]: s for s in sub.on("transactions")}
    assert summaries["T1"]["age_band"] == "13-17" and summaries["T1"]["items"] == 2
    assert summaries["T1"]["outcome"] == "unverified_sale" and "estimate" not in summaries["T1"]
    assert summaries["M1"]["restricted_items"] == 1

    sub.wait_for(lambda m: [p for t, p in m if t.endswith("/stats") and p["faces_estimated"] > 0])
    assert sub.on("status")[0]["state"] == "online"
    assert validate_all(sub) >= 6

    assert d.stop() == 0
    stopped = sub.wait_for(lambda m: [p for t, p in m if t.endswith("/status") and p["state"] == "stopped"])
    assert stopped[0]["camera_state"] in ("streaming", "stopped")
    sub.close()


def test_adult_face_is_clear_and_id_check_closes_the_loop(run_daemon, broker, face_video, constant_bundles):
    sub = Subscriber(broker.host, broker.port, f"{BASE}/#")
    d = run_daemon(face_video, constant_bundles[40], wait_for_face=True)
    answer = d.pos("item", "A1", restricted=True).json()
    assert answer["decision"] == "clear" and answer["check_id"] is False and answer["alert_event_id"] is None
    d.pos("transaction_end", "A1")

    d2_answer = d.pos("item", "A2", restricted=True).json()
    assert d2_answer["decision"] == "clear"
    d.pos("id_checked", "A2")
    d.pos("transaction_end", "A2")
    summaries = sub.wait_for(lambda m: [p for t, p in m if t.endswith("/transactions")] if len([1 for t, p in m if t.endswith("/transactions")]) >= 2 else None)
    assert {s["transaction_id"]: s["outcome"] for s in summaries} == {"A1": "clear", "A2": "id_checked"}
    assert {s["age_band"] for s in summaries} == {"35-49"}
    assert sub.on("alerts") == []
    validate_all(sub)
    sub.close()


def test_empty_scene_gives_no_face(run_daemon, broker, empty_video, constant_bundles):
    sub = Subscriber(broker.host, broker.port, f"{BASE}/#")
    d = run_daemon(empty_video, constant_bundles[40], face_wait_s=0.5)
    answer = d.pos("item", "E1", restricted=True).json()
    assert answer["decision"] == "no_face" and answer["check_id"] is True and answer["estimate"] is None
    d.pos("transaction_end", "E1")
    alerts = sub.wait_for(lambda m: [p for t, p in m if t.endswith("/alerts")])
    assert [(a["type"], a["transaction_id"], a["estimate"]) for a in alerts] == [("no_face", "E1", None)]
    summary = sub.wait_for(lambda m: [p for t, p in m if t.endswith("/transactions")])[0]
    assert summary["age_band"] == "unknown" and summary["outcome"] == "not_assessed"
    validate_all(sub)
    sub.close()


def test_bad_pos_input_is_rejected_and_the_daemon_keeps_serving(run_daemon, broker, face_video, constant_bundles):
    sub = Subscriber(broker.host, broker.port, f"{BASE}/stats")
    d = run_daemon(face_video, constant_bundles[21])
    url = f"{d.url}/v1/pos"
    cases = {
        "not json": httpx.post(url, content=b"{not json", headers={"content-type": "application/json"}),
        "wrong type": httpx.post(url, json={"type": "item", "transaction_id": "X", "restricted": "maybe"}),
        "unknown type": httpx.post(url, json={"type": "refund", "transaction_id": "X"}),
        "missing id": httpx.post(url, json={"type": "item"}),
        "1 MB": httpx.post(url, content=b'{"type": "item", "transaction_id": "' + b"x" * 1_000_000 + b'"}',
                           headers={"content-type": "application/json"}),
    }
    for name, r in cases.items():
        assert 400 <= r.status_code < 500, (name, r.status_code, r.text)
        assert r.json()["detail"], name
    assert cases["1 MB"].status_code == 413
    assert "restricted" in cases["wrong type"].json()["detail"]
    assert "type" in cases["unknown type"].json()["detail"]

    for bad in (b"\xff\xfe garbage", b'{"type": "item"}', b"[" * 50_000):
        publish_once(broker.host, broker.port, f"{BASE}/pos", bad)
    rejected = sub.wait_for(lambda m: sum(p["pos_rejected"] for _, p in m) >= 8 and m, timeout=20)
    assert sum(p["pos_rejected"] for _, p in rejected) == 8
    assert "MQTT POS message rejected" in d.log()

    # Still serving, and still deciding.
    assert httpx.get(f"{d.url}/healthz").status_code == 200
    assert d.pos("item", "OK1", restricted=True).json()["decision"] in ("age_check_required", "no_face")
    assert d.proc.poll() is None
    sub.close()


def test_openapi_schema_describes_the_pos_api(run_daemon, face_video, constant_bundles):
    d = run_daemon(face_video, constant_bundles[40])
    spec = httpx.get(f"{d.url}/openapi.json").json()
    assert "/v1/pos" in spec["paths"]
    body = spec["paths"]["/v1/pos"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body["$ref"].endswith("/PosMessage")
    assert set(spec["components"]["schemas"]["PosMessage"]["properties"]["type"]["enum"]) == {
        "transaction_start", "item", "id_checked", "transaction_end"}


def test_the_calibrated_threshold_setting_changes_a_real_decision(run_daemon, broker, face_video, tmp_path):
    """A model that estimates 27 for this face, whose manifest records that it flags 99 % of
    under-18s only below 29.5: at the challenge age 25 the sale is clear; told to use the
    model's calibrated threshold, the same till asks for ID. Its status says which is in use."""
    from bundle_factory import make_constant_bundle, stand_in_validation

    bundle = make_constant_bundle(tmp_path / "age27", 27, validation=stand_in_validation(calibrated_threshold=29.5))
    sub = Subscriber(broker.host, broker.port, f"{BASE}/#")
    plain = run_daemon(face_video, bundle, wait_for_face=True)
    assert plain.pos("item", "P1", restricted=True).json()["decision"] == "clear"
    assert plain.status()["thresholds"] == {"challenge_age": 25.0, "legal_age": 18.0, "estimate_threshold": None, "calibrated": False}
    plain.stop()

    calibrated = run_daemon(face_video, bundle, wait_for_face=True, decision_threshold="calibrated")
    answer = calibrated.pos("item", "C1", restricted=True).json()
    assert answer["decision"] == "age_check_required" and answer["check_id"] is True and answer["likely_minor"] is False
    assert answer["thresholds"]["estimate_threshold"] == 29.5 and answer["thresholds"]["calibrated"] is True
    alert = sub.wait_for(lambda m: [p for t, p in m if p.get("event_id") == answer["alert_event_id"]])[0]
    assert "under 29.5, the model's calibrated threshold for the challenge age 25" in alert["reason"]
    status = calibrated.status()
    assert status["model"]["validation"]["calibrated"]["threshold"] == 29.5
    # The retained status on the broker carries the figures and the threshold in use, valid against its schema.
    online = sub.wait_for(lambda m: [p for _, p in m if p.get("state") == "online" and (p.get("thresholds") or {}).get("calibrated")])
    assert online[0]["model_validation"]["at_challenge"]["under18_flagged"] == 0.97
    jsonschema.validate(online[0], SCHEMAS["status"])
    sub.close()


def test_ending_or_id_checking_a_transaction_that_is_not_open_changes_nothing(run_daemon, broker, face_video,
                                                                              constant_bundles):
    import time

    sub = Subscriber(broker.host, broker.port, f"{BASE}/#")
    d = run_daemon(face_video, constant_bundles[40])
    d.pos("item", "E1")
    first = d.pos("transaction_end", "E1").json()
    again = d.pos("transaction_end", "E1").json()  # the POS repeats itself
    never = d.pos("transaction_end", "NEVER-STARTED").json()
    checked = d.pos("id_checked", "NOT-OPEN").json()
    # id_checked for an unknown id opens nothing that would linger until the idle timeout.
    assert d.status()["open_transactions"] == 0
    sub.wait_for(lambda m: [p for t, p in m if t.endswith("/transactions")])
    time.sleep(1.5)  # a second summary, were one published, arrives within this
    summaries = [p for t, p, _ in sub.messages if t.endswith("/transactions")]
    assert [(s["transaction_id"], s["items"]) for s in summaries] == [("E1", 1)]
    for answer in (again, never, checked):
        assert answer["unknown_transaction"] is True and "not open" in answer["message"], answer
    assert first["unknown_transaction"] is False
    jsonschema.validate(again, SCHEMAS["pos_answer"])
    sub.close()


def test_the_root_redirects_to_the_console(run_daemon, face_video, constant_bundles):
    d = run_daemon(face_video, constant_bundles[40])
    r = httpx.get(f"{d.url}/", timeout=10)
    assert r.status_code in (302, 303, 307) and r.headers["location"].endswith("/console")
    assert httpx.get(f"{d.url}/", timeout=10, follow_redirects=True).status_code == 200
