"""The till console in a real headless Chromium (Debian's, driven by Playwright) against the
real daemon fed by a video of a real face, with a real .tflite bundle and a real broker:
the status page, the installer view and its zone, the decision history, trying a photo,
/metrics, and the token. The docs' screenshots (docs/console-*.png) are taken here of the shipped
model; `make screenshots` copies them into docs/, a test run leaves them in a temporary folder.

`make test` installs chromium when it is missing (apt-get install chromium)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import date, timedelta
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest
from playwright.sync_api import Browser, Page, expect
from prometheus_client.parser import text_string_to_metric_families

from agegate.edge.config import EX_CONFIG
from agegate.edge.history import DecisionLog
from agegate.testing.brokers import Mosquitto
from agegate.testing.daemon import DaemonProcess

TOKEN = "console-test-token-5f2c9a1e"
FACE_RGB = (0, 230, 118)  # FACE_COLOUR in console.js
MODEL_VERSION = "2026.11.22"


class ConsoleDaemon(DaemonProcess):
    """The real daemon; its console pages are tested once it has seen the face."""

    def start(self, wait_for_face: bool = True) -> "ConsoleDaemon":
        return super().start(wait_for_face=wait_for_face)


# --- fixtures: one broker, bundle, daemon and browser for the module ------------------------------------------
# Other daemons in this module take other till ids: one client id per till on the broker.


@pytest.fixture(scope="module")
def module_broker(tmp_path_factory, mosquitto_binary):
    b = Mosquitto(tmp_path_factory.mktemp("broker"))
    b.start()
    yield b
    b.stop()


@pytest.fixture(scope="module")
def bundle21(tmp_path_factory) -> Path:
    """A real bundle that answers 21 (under Challenge 25, over 18), with a release-like name and version."""
    from bundle_factory import make_constant_bundle

    return make_constant_bundle(tmp_path_factory.mktemp("bundle") / "agegate-age", 21, name="agegate-age",
                                version=MODEL_VERSION)


def seed_history(state: Path) -> None:
    """120 decisions of the last days and 3 past 30 days (pruned at the daemon's start)."""
    seed = DecisionLog(state, keep_days=3650)
    now = time.time()
    for i in range(120):
        decision, age = [("clear", 31.0 + i % 30), ("age_check_required", 19.0 + i % 6), ("no_face", None)][i % 3]
        seed.record(transaction_id=f"OLD-{i:03d}", decision=decision, age=age, spread=age and 1.5, samples=age and 15,
                    likely_minor=False, model_name="agegate-age", model_version="2026.10.01",
                    ts=now - 2 * 86400 - i * 3600)
    for i in range(3):
        seed.record(transaction_id=f"EXPIRED-{i}", decision="clear", ts=now - 40 * 86400)
    seed.close()


@pytest.fixture(scope="module")
def till(tmp_path_factory, module_broker, face_video, bundle21):
    """The daemon with a token, whose history already holds 120 decisions of the last days and 3 past 30 days."""
    tmp = tmp_path_factory.mktemp("till")
    seed_history(tmp / "state")
    d = ConsoleDaemon(tmp, token=TOKEN, broker=module_broker, camera=face_video, model_dir=bundle21, face_wait_s=1)
    yield d.start()
    d.stop()


@pytest.fixture
def page(browser: Browser, till: ConsoleDaemon):
    """A browser tab that has signed in with the token once (/console?token=…), as an engineer would."""
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    tab = context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda e: errors.append(str(e)))
    tab.goto(f"{till.url}/console?token={TOKEN}")
    assert tab.url == f"{till.url}/console", "the token must not stay in the address bar"
    yield tab
    context.close()
    assert not errors, errors


def shot(tab: Page, folder: Path, name: str) -> None:
    """console-<name>.png in ``folder``; `make screenshots` puts them in docs/ (README and console.md show them)."""
    tab.screenshot(path=str(folder / f"console-{name}.png"), full_page=True)


def astronaut_jpeg(astronaut_bgr) -> bytes:
    ok, data = cv2.imencode(".jpg", astronaut_bgr, [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    return data.tobytes()


# --- pages -------------------------------------------------------------------------------------------------------


def test_status_page_shows_the_model_and_refreshes(page: Page, till: ConsoleDaemon, tmp_path):
    expect(page.locator("[data-field=model-version]")).to_have_text(MODEL_VERSION)
    model = till.get("/console/api/status").json()["model"]
    expect(page.locator("#h-model + dl")).to_contain_text(model["sha256"])
    expect(page.locator("#h-camera + dl")).to_contain_text("streaming")
    expect(page.get_by_role("heading", name="Last decisions")).to_be_visible()
    # What the model is worth and what the till decides with, from its signed manifest.
    expect(page.locator("[data-field=model-validation]")).to_contain_text("MAE 5.00 years on 100 faces")
    expect(page.locator("[data-field=model-validation]")).to_contain_text("under-18s flagged 97.0 %")
    expect(page.locator("[data-field=estimate-threshold]")).to_contain_text("estimates under 25")
    expect(page.locator("[data-field=challenge-age]")).to_have_text("25")
    expect(page.locator("[data-field=legal-age]")).to_have_text("18")
    # Frames analysed, not the camera's rate: the till analyses at most AGEGATE_DETECT_FPS (10) of them.
    camera = till.status()["camera"]
    assert 0 < camera["processed_fps"] <= 10.5 and camera["processed_fps"] <= camera["fps"] + 0.5, camera
    analysed = float(page.locator("[data-field=processed-fps]").inner_text().split()[0])
    assert 0 < analysed <= 10.5
    expect(page.locator("[data-field=last-rejection]")).to_have_text("none")

    # A bundle refused by `agegate-edge model install` shows as the last rejection, by the path given.
    not_a_bundle = tmp_path / "not-a-bundle"
    not_a_bundle.mkdir()
    (not_a_bundle / "README").write_text("no manifest here")
    r = subprocess.run([sys.executable, "-m", "agegate.edge.cli", "model", "install", str(not_a_bundle)],
                       env=till.env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "manifest.json: missing" in r.stderr
    expect(page.locator("[data-field=last-rejection]")).to_contain_text("not-a-bundle", timeout=15_000)
    expect(page.locator("[data-field=last-rejection]")).to_contain_text(f"{not_a_bundle}/manifest.json: missing")

    # A decision made now, through the POS API with the bearer token, shows on the open page.
    answer = till.pos("item", "S-1", restricted=True).json()
    assert answer["decision"] == "age_check_required"
    till.pos("transaction_end", "S-1")
    expect(page.locator("table.decisions tbody tr").first).to_contain_text("S-1", timeout=10_000)
    expect(page.locator("table.decisions tbody tr").first).to_contain_text("21.0")


def test_installer_view_boxes_the_face_and_sets_the_zone(page: Page, till: ConsoleDaemon):
    page.get_by_role("link", name="Installer view").click()
    expect(page.locator("#faces")).to_contain_text("about 21.0 years, in the customer zone", timeout=10_000)
    # The box is on the picture itself: read the canvas where its left edge is drawn.
    drawn = page.evaluate("""() => {
        const f = window.agegateDrawn.find((f) => f.in_zone);
        const [x, y, w, h] = f.box;
        const px = document.getElementById('view').getContext('2d').getImageData(x, y + Math.round(h / 2), 1, 1).data;
        return {box: f.box, rgb: [px[0], px[1], px[2]]};
    }""")
    assert drawn["rgb"] == list(FACE_RGB), drawn
    assert 40 <= drawn["box"][2] <= 200  # a face-sized box on the 640x480 picture
    live = till.get("/console/api/live")
    assert live.headers["cache-control"] == "no-store" and live.json()["frame"]["width"] == 640

    # Drawing on the picture changes the zone's fields (not yet applied).
    box = page.locator("#view").bounding_box()
    page.mouse.move(box["x"] + 0.02 * box["width"], box["y"] + 0.02 * box["height"])
    page.mouse.down()
    page.mouse.move(box["x"] + 0.12 * box["width"], box["y"] + 0.22 * box["height"], steps=5)
    page.mouse.up()
    assert float(page.get_by_label("Right").input_value()) == pytest.approx(0.12, abs=0.02)
    expect(page.locator("#zone-msg")).to_contain_text("save it to apply")

    # A zone the face is not in: saved to zone.json, applied live, and the till no longer sees a customer.
    for name, value in (("Left", "0"), ("Top", "0"), ("Right", "0.1"), ("Bottom", "0.2")):
        page.get_by_label(name).fill(value)
    page.get_by_role("button", name="Save zone").click()
    expect(page.locator("#zone-msg")).to_have_text("Saved: the till now uses 0,0,0.1,0.2.")
    saved = json.loads((Path(till.env["AGEGATE_STATE_DIR"]) / "zone.json").read_text())
    assert saved["customer_zone"] == "0,0,0.1,0.2"
    expect(page.locator("#faces")).to_contain_text("outside the customer zone", timeout=10_000)
    time.sleep(2)  # longer than AGEGATE_FACE_STALE_S: the customer seen before no longer counts
    assert till.pos("item", "Z-1", restricted=True).json()["decision"] == "no_face"

    # A zone that is not one: refused with the reason, nothing changes.
    page.get_by_label("Left").fill("0.9")
    page.get_by_role("button", name="Save zone").click()
    expect(page.locator("#zone-msg")).to_contain_text("Not saved: zone 0.9,0,0.1,0.2 must have 0 <= x0 < x1")
    bad = till.request("PUT", "/console/api/zone", json={"x0": 0.2, "y0": 0.5, "x1": 0.8, "y1": 0.5})
    assert bad.status_code == 422 and "y0 < y1" in bad.json()["detail"]
    assert till.request("PUT", "/console/api/zone", json={"x0": 0.2}).status_code == 422
    assert till.get("/console/api/status").json()["zone"]["text"] == "0,0,0.1,0.2"

    # Back to AGEGATE_CUSTOMER_ZONE: zone.json is gone and the face counts again.
    page.get_by_role("button", name="Reset to default").click()
    expect(page.locator("#zone-msg")).to_contain_text("the till uses AGEGATE_CUSTOMER_ZONE 0.15,0,0.85,1")
    assert not (Path(till.env["AGEGATE_STATE_DIR"]) / "zone.json").exists()
    expect(page.locator("#faces")).to_contain_text("in the customer zone", timeout=10_000)


def test_try_a_photo_shows_the_age_and_refuses_what_is_not_a_photo(page: Page, till: ConsoleDaemon, astronaut_bgr):
    jpeg = astronaut_jpeg(astronaut_bgr)
    page.get_by_role("link", name="Try a photo").click()
    page.get_by_label("Photo", exact=True).set_input_files({"name": "astronaut.jpg", "mimeType": "image/jpeg", "buffer": jpeg})
    page.get_by_role("button", name="Estimate").click()
    expect(page.locator("#photo-msg")).to_contain_text(f"1 face found", timeout=15_000)
    expect(page.locator("#photo-faces tbody tr").first).to_contain_text("21.0")
    assert page.evaluate("document.getElementById('photo-view').width") == 512

    api = f"{till.url}/console/api/photo"
    png = cv2.imencode(".png", astronaut_bgr)[1].tobytes()
    r = httpx.post(api, content=png, headers={**till.auth, "content-type": "image/png"}, timeout=30)
    assert r.status_code == 200 and [f["age"] for f in r.json()["faces"]] == [21.0]
    # The page works without JavaScript too: the form's own POST answers a page.
    r = httpx.post(f"{till.url}/console/photo", files={"image": ("a.jpg", jpeg, "image/jpeg")}, headers=till.auth)
    assert r.status_code == 200 and "<td class=\"num\">21.0</td>" in r.text

    def upload(data: bytes, name: str = "x.jpg") -> httpx.Response:
        return httpx.post(api, files={"image": (name, data, "application/octet-stream")}, headers=till.auth, timeout=30)

    refused = {
        "text": upload(b"just some text, not a picture", "notes.txt"),
        "truncated": upload(jpeg[:200]),
        "bomb": upload(b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR" + (100_000).to_bytes(4, "big") * 2 + b"\x08\x02\x00\x00\x00"),
        "11 MB": upload(jpeg + b"\x00" * (11 * 1024 * 1024)),
        "no file": httpx.post(api, data={"image": "text"}, headers=till.auth),
    }
    assert {k: r.status_code for k, r in refused.items()} == {"text": 422, "truncated": 422, "bomb": 422, "11 MB": 413,
                                                              "no file": 422}
    assert "not a JPEG or PNG" in refused["text"].json()["detail"]
    assert "megapixels" in refused["bomb"].json()["detail"]
    # Nothing of the photos reached the state directory.
    state = Path(till.env["AGEGATE_STATE_DIR"])
    files = {str(p.relative_to(state)) for p in state.rglob("*") if p.is_file()}
    # The status page's test refused a bundle with no photo in it: its record is no photo either.
    files = {f for f in files if not (f == "models/state.json" or (f.startswith("models/rejected/")
                                                                   and f.endswith("-not-a-bundle/reason.txt")))}
    assert files <= {"outbox.sqlite3", "outbox.sqlite3-wal", "outbox.sqlite3-shm", "outbox.reserve",
                     "history.sqlite3", "history.sqlite3-wal", "history.sqlite3-shm", "models/.lock"}, files


def test_history_lists_pos_decisions_filters_pages_and_downloads(page: Page, till: ConsoleDaemon, tmp_path):
    for tx in ("H-1", "H-2"):
        assert till.pos("item", tx, restricted=True).json()["decision"] == "age_check_required"
        till.pos("transaction_end", tx)
    page.get_by_role("link", name="Decision history").click()
    rows = page.locator("table.decisions tbody tr")
    expect(rows.first).to_contain_text("H-2")
    expect(rows.first).to_contain_text("age check required")
    expect(rows.first).to_contain_text(f"agegate-age {MODEL_VERSION}")
    expect(page.locator("#count")).to_contain_text("page 1 of 3")  # 120 seeded + this module's, 50 a page
    assert page.locator("text=EXPIRED-").count() == 0  # older than AGEGATE_HISTORY_DAYS: pruned at start-up

    page.get_by_role("link", name="Older →").click()
    expect(page.locator("#count")).to_contain_text("page 2 of 3")
    expect(rows.first).to_contain_text("OLD-")

    page.get_by_label("Decision").select_option("age_check_required")
    page.get_by_label("From").fill(date.today().isoformat())
    page.get_by_role("button", name="Filter").click()
    expect(page.locator("#count")).to_contain_text("page 1 of 1")
    texts = rows.all_inner_texts()
    assert texts and all("age check required" in t for t in texts) and any("H-1" in t for t in texts)

    with page.expect_download() as download:
        page.get_by_role("link", name="Download CSV").click()
    lines = Path(download.value.path()).read_text().splitlines()
    assert lines[0] == "time,transaction_id,decision,age,spread,samples,likely_minor,model_name,model_version"
    assert {line.split(",")[2] for line in lines[1:]} == {"age_check_required"}
    assert any(line.split(",")[1] == "H-1" and line.split(",")[3] == "21" for line in lines[1:])

    api = till.get("/console/api/history", params={"decision": "no_face", "to": (date.today() - timedelta(days=1)).isoformat()})
    assert api.json()["total"] == 40
    assert till.get("/console/api/history", params={"from": "yesterday"}).status_code == 422
    assert till.get("/console/api/history", params={"decision": "maybe"}).status_code == 422


def test_history_queries_at_the_edges_get_answers_not_500s(till: ConsoleDaemon):
    for page_no in ("²", "9" * 30, "1" * 5000, "0", "-1"):  # "²".isdigit() is True; int("²") is not
        r = till.get("/console/api/history", params={"page": page_no})
        assert r.status_code == 422 and "page" in r.json()["detail"], (page_no, r.status_code, r.text)
    everything = till.get("/console/api/history").json()["total"]
    # The ends of the calendar are days like any other: everything is between them.
    for params in ({"to": "9999-12-31"}, {"from": "0001-01-01"}, {"from": "0001-01-01", "to": "9999-12-31"}):
        r = till.get("/console/api/history", params=params)
        assert r.status_code == 200 and r.json()["total"] == everything, (params, r.status_code, r.text)
        csv_lines = till.get("/console/history.csv", params=params).text.splitlines()
        assert csv_lines[0].startswith("time,transaction_id") and len(csv_lines) == everything + 1, params
        assert till.get("/console/history", params=params).status_code == 200


def test_the_zone_editor_refuses_a_zone_no_face_fits_in(till: ConsoleDaemon):
    before = till.get("/console/api/status").json()["zone"]["text"]
    for zone in ({"x0": 0, "y0": 0, "x1": 1e-320, "y1": 1}, {"x0": 0.5, "y0": 0.5, "x1": 0.51, "y1": 1}):
        r = till.request("PUT", "/console/api/zone", json=zone)
        assert r.status_code == 422 and "no face fits" in r.json()["detail"], (zone, r.status_code, r.text)
    assert till.get("/console/api/status").json()["zone"]["text"] == before


def test_metrics_in_prometheus_format(till: ConsoleDaemon):
    till.pos("item", "M-1", restricted=True)
    r = till.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(r.text) for s in family.samples}

    def value(name: str, **labels) -> float:
        return samples[(name, tuple(sorted(labels.items())))]

    assert value("agegate_frames_processed_total") > 10
    assert value("agegate_decisions_total", decision="age_check_required") >= 1
    assert value("agegate_decisions_total", decision="clear") == 0
    assert value("agegate_alerts_published_total", type="age_check_required") >= 1
    assert value("agegate_detect_seconds_count") > 10 and value("agegate_inference_seconds_count") > 10
    assert value("agegate_detect_seconds_bucket", le="+Inf") == value("agegate_detect_seconds_count")
    assert value("agegate_camera_reconnects_total") >= 0 and value("agegate_camera_streaming") == 1
    assert ("agegate_outbox_pending", ()) in samples and value("agegate_mqtt_connected") == 1
    model = dict(next(labels for name, labels in samples if name == "agegate_model_info"))
    assert model["version"] == MODEL_VERSION and len(model["sha256"]) == 64
    # The decision above took its time through the latency histogram.
    assert value("agegate_decision_seconds_count") >= 1
    assert value("agegate_decision_seconds_bucket", le="+Inf") == value("agegate_decision_seconds_count")
    # Refusals, drops and publish failures are counted from the start, at their current value.
    rejected_before = value("agegate_pos_rejected_total")
    assert till.request("POST", "/v1/pos", json={"type": "item"}).status_code == 422
    assert value("agegate_outbox_dropped_total", kind="alert") == 0 == value("agegate_outbox_dropped_total", kind="summary")
    assert value("agegate_publish_failures_total") == 0
    from agegate import __version__

    assert dict(next(labels for name, labels in samples if name == "agegate_build_info"))["version"] == __version__
    # The standard process series; uptime is process_start_time_seconds.
    status = till.status()
    assert abs(time.time() - value("process_start_time_seconds") - status["uptime_s"]) < 15
    assert value("process_resident_memory_bytes") > 10e6 and value("process_open_fds") > 5
    after = {(s.name, tuple(sorted(s.labels.items()))): s.value
             for family in text_string_to_metric_families(till.get("/metrics").text) for s in family.samples}
    assert after[("agegate_pos_rejected_total", ())] == rejected_before + 1


# --- security ---------------------------------------------------------------------------------------------------


def test_without_the_token_every_route_but_healthz_is_refused(browser: Browser, till: ConsoleDaemon):
    for path in ("/console", "/console/installer", "/console/api/live", "/console/history.csv", "/metrics",
                 "/v1/status", "/openapi.json", "/docs", "/console/static/console.js"):
        r = httpx.get(till.url + path)
        assert r.status_code == 401, path
        assert r.headers["www-authenticate"].startswith("Bearer")
    assert httpx.get(f"{till.url}/console/api/live", headers={"Authorization": "Bearer wrong-token-1234567"}).status_code == 401
    assert httpx.get(f"{till.url}/console?token=wrong-token-1234567", follow_redirects=False).status_code == 401
    assert httpx.post(f"{till.url}/v1/pos", json={"type": "item", "transaction_id": "X", "restricted": True}).status_code == 401
    assert httpx.put(f"{till.url}/console/api/zone", json={"x0": 0, "y0": 0, "x1": 1, "y1": 1}).status_code == 401
    assert httpx.get(f"{till.url}/healthz").status_code == 200
    # The POS API keeps working as specified, with the bearer token.
    answer = till.pos("item", "K-1", restricted=True)
    assert answer.status_code == 200 and answer.json()["decision"] == "age_check_required"

    # A browser that never opened /console?token=… gets nothing; one that did holds a strict, HttpOnly cookie.
    context = browser.new_context()
    tab = context.new_page()
    assert tab.goto(f"{till.url}/console/history").status == 401
    assert "needs its token" in tab.content()
    tab.goto(f"{till.url}/console/history?token={TOKEN}&decision=clear")
    assert tab.url == f"{till.url}/console/history?decision=clear"
    cookie = next(c for c in context.cookies() if c["name"] == "token")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    context.close()


def test_listening_beyond_loopback_needs_a_token(tmp_path):
    def run(**env) -> subprocess.CompletedProcess:
        full = {"PATH": "/usr/bin:/bin", "AGEGATE_STATE_DIR": str(tmp_path), **env}
        return subprocess.run([sys.executable, "-m", "agegate.edge.cli", "run"], env=full, capture_output=True,
                              text=True, timeout=60)

    r = run(AGEGATE_HTTP_HOST="0.0.0.0")
    assert r.returncode == EX_CONFIG
    assert r.stderr.strip().splitlines() == [
        "agegate-edge: invalid configuration: AGEGATE_HTTP_TOKEN is required when AGEGATE_HTTP_HOST (0.0.0.0) "
        "is not 127.0.0.1, localhost or ::1"]
    r = run(AGEGATE_HTTP_HOST="0.0.0.0", AGEGATE_HTTP_TOKEN="short;secret")
    assert r.returncode == EX_CONFIG and "AGEGATE_HTTP_TOKEN must be at least 16" in r.stderr
    assert "short;secret" not in r.stderr


def test_a_till_on_another_address_serves_the_pos_with_its_token(tmp_path, module_broker, face_video, bundle21):
    # 127.0.0.2 is loopback on Linux but not one of the names that may go without a token.
    d = ConsoleDaemon(tmp_path, token=TOKEN, http_host="127.0.0.2", broker=module_broker, camera=face_video,
                      model_dir=bundle21, till_id="till-4").start()
    try:
        assert d.pos("item", "A-1", restricted=True).json()["decision"] == "age_check_required"
        assert httpx.post(f"{d.url}/v1/pos", json={"type": "item", "transaction_id": "A-2"}).status_code == 401
    finally:
        assert d.stop() == 0


def test_local_till_without_token_keeps_its_zone_across_restarts(tmp_path, module_broker, face_video, bundle21):
    d = ConsoleDaemon(tmp_path, broker=module_broker, camera=face_video, model_dir=bundle21, till_id="till-5").start()
    try:
        assert httpx.post(f"{d.url}/v1/pos", json={"type": "item", "transaction_id": "L-1", "restricted": True}).json()[
            "decision"] == "age_check_required"  # no token: the POS API as before
        saved = httpx.put(f"{d.url}/console/api/zone", json={"x0": 0.1, "y0": 0.05, "x1": 0.9, "y1": 0.95})
        assert saved.status_code == 200 and saved.json()["saved"] is True
        # Without a token the console answers requests addressed to the loopback names only (DNS rebinding).
        assert httpx.get(f"{d.url}/console", headers={"Host": "attacker.example:8787"}).status_code == 403
        assert httpx.get(f"{d.url}/console", headers={"Host": f"localhost:{d.http_port}"}).status_code == 200
        assert d.stop() == 0

        d.start()  # the saved zone wins over AGEGATE_CUSTOMER_ZONE
        zone = httpx.get(f"{d.url}/console/api/status").json()["zone"]
        assert zone["text"] == "0.1,0.05,0.9,0.95" and zone["saved"] is True
        assert "saved from the console" in d.log()
    finally:
        d.stop()


@pytest.mark.parametrize("content", ['{"customer_zone": "0.9,0,0.1,1"}', "not json", '{"zone": 1}', '{"customer_zone": 7}'])
def test_a_saved_zone_that_is_not_one_falls_back_to_the_default(tmp_path, caplog, content):
    from agegate.edge.zone import ZoneStore
    from agegate.edge.detectors import Zone

    (tmp_path / "zone.json").write_text(content)
    default = Zone(0.15, 0.0, 0.85, 1.0)
    store = ZoneStore(tmp_path, default)
    assert (store.current, store.saved) == (default, False)
    assert "is not usable" in caplog.text and "using AGEGATE_CUSTOMER_ZONE" in caplog.text
    store.save(Zone(0.1, 0.2, 0.3, 0.4))
    assert ZoneStore(tmp_path, default).current == Zone(0.1, 0.2, 0.3, 0.4)
    store.reset()
    assert not (tmp_path / "zone.json").exists() and ZoneStore(tmp_path, default).saved is False


def test_uploads_stay_in_memory():
    """Starlette spools a file part over 1 MB to a temporary file; the console's parser never does."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    from starlette.datastructures import Headers

    from agegate.edge.console.photo import InMemoryMultiPartParser

    photo = np.random.default_rng(0).integers(0, 255, 3 * 1024 * 1024, dtype=np.uint8).tobytes()
    request = httpx.Request("POST", "http://till/", files={"image": ("big.jpg", photo, "image/jpeg")})
    body = request.read()

    async def parse():
        async def stream():
            for i in range(0, len(body), 65536):
                yield body[i : i + 65536]

        form = await InMemoryMultiPartParser(Headers(raw=[(k.lower(), v) for k, v in request.headers.raw]), stream(),
                                            max_files=1).parse()
        upload = form["image"]
        rolled = upload.file._rolled  # True once SpooledTemporaryFile has moved to a file on disk
        data = await upload.read()
        await form.close()
        return rolled, data

    with ThreadPoolExecutor(1) as pool:  # a thread of its own: Playwright's loop may be running in this one
        rolled, data = pool.submit(asyncio.run, parse()).result()
    assert rolled is False and data == photo


# --- the API's description ------------------------------------------------------------------------------------


API_PATHS = {"/v1/pos", "/v1/status", "/healthz", "/console/api/status", "/console/api/live", "/console/api/zone",
             "/console/api/history", "/console/history.csv", "/console/api/photo", "/metrics"}


def test_openapi_describes_every_route_its_security_and_its_refusals(till: ConsoleDaemon):
    from agegate.edge.api_models import ConsoleStatus, LiveView
    from agegate.edge.status import TillStatus

    doc = till.get("/openapi.json").json()
    assert set(doc["paths"]) == API_PATHS
    assert doc["components"]["securitySchemes"]["bearer"] == {
        "type": "http", "scheme": "bearer", "description": doc["components"]["securitySchemes"]["bearer"]["description"]}
    assert "HTTPValidationError" not in json.dumps(doc)  # FastAPI's list-shaped 422, which the till never sends
    for path, operations in doc["paths"].items():
        for method, op in operations.items():
            responses = op["responses"]
            assert "200" in responses and op.get("summary"), (path, method)
            ok = responses["200"]["content"]
            if "application/json" in ok:
                assert ok["application/json"]["schema"] != {}, (path, method)  # typed, not "any object"
            for code, answer in responses.items():
                if code not in ("200",):
                    assert answer["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorAnswer"}
            if path == "/healthz":
                assert op["security"] == [] and "401" not in responses
                continue
            assert op["security"] == [{"bearer": []}, {"cookie": []}] and "401" in responses, (path, method)
            if method in ("post", "put"):
                assert "413" in responses and "422" in responses, (path, method)
    # The answers are what the document declares, and the declaration misses none of their fields.
    for path, model in (("/v1/status", TillStatus), ("/console/api/status", ConsoleStatus), ("/console/api/live", LiveView)):
        body = till.get(path).json()
        model.model_validate(body)
        assert set(body) <= set(model.model_fields), (path, set(body) - set(model.model_fields))
    refused = till.request("POST", "/v1/pos", json={"type": "item"})
    assert refused.status_code == 422 and isinstance(refused.json()["detail"], str)
    assert httpx.get(till.url + "/v1/status").json().keys() == {"detail"}  # 401 without the token, as ErrorAnswer


def test_docs_page_works_without_internet(browser: Browser, till: ConsoleDaemon):
    context = browser.new_context(extra_http_headers=till.auth)
    outside: list[str] = []

    def only_the_till(route):
        if route.request.url.startswith(till.url):
            return route.continue_()
        outside.append(route.request.url)
        return route.abort()  # a till without internet

    context.route("**/*", only_the_till)
    tab = context.new_page()
    tab.goto(f"{till.url}/docs")
    expect(tab.locator(".swagger-ui .opblock-summary-path").first).to_be_visible(timeout=20_000)
    expect(tab.locator(".swagger-ui")).to_contain_text("/v1/pos")
    expect(tab.locator(".swagger-ui")).to_contain_text("/console/api/status")
    context.close()
    assert outside == [], outside


# --- the docs' screenshots ---------------------------------------------------------------------------------------


def test_screenshots_of_the_shipped_model(tmp_path, browser: Browser, module_broker, face_video, astronaut_bgr,
                                          screenshot_dir):
    """docs/console-*.png as a retailer will see them: the model shipped in the package (edge/default_bundle),
    not a test bundle, on the demo video's face; every page checked before it is photographed."""
    from agegate.edge.bundle import load_bundle
    from agegate.edge.config import DEFAULT_BUNDLE_DIR

    shipped = load_bundle(DEFAULT_BUNDLE_DIR).manifest
    seed_history(tmp_path / "state")
    d = ConsoleDaemon(tmp_path, broker=module_broker, camera=face_video, model_dir=DEFAULT_BUNDLE_DIR,
                      till_id="till-4", face_wait_s=1)
    d.start()
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    tab = context.new_page()
    try:
        assert d.pos("item", "T-1001", restricted=True).json()["model"]["version"] == shipped.version
        d.pos("transaction_end", "T-1001")
        time.sleep(5)  # the frames-analysed rate covers the last 5 s: a full window, not the start-up's
        tab.goto(f"{d.url}/console")
        expect(tab.locator("[data-field=model-version]")).to_have_text(shipped.version)
        expect(tab.locator("#h-model + dl")).to_contain_text(shipped.variant)
        expect(tab.locator("[data-field=model-validation]")).to_contain_text(f"on {shipped.validation.faces} faces")
        expect(tab.locator("table.decisions tbody tr").first).to_contain_text("T-1001", timeout=10_000)
        shot(tab, screenshot_dir, "status")

        tab.get_by_role("link", name="Installer view").click()
        expect(tab.locator("#faces")).to_contain_text("in the customer zone", timeout=10_000)
        shot(tab, screenshot_dir, "installer")

        tab.get_by_role("link", name="Decision history").click()
        expect(tab.locator("table.decisions tbody tr").first).to_contain_text("T-1001")
        shot(tab, screenshot_dir, "history")

        tab.get_by_role("link", name="Try a photo").click()
        tab.get_by_label("Photo", exact=True).set_input_files(
            {"name": "astronaut.jpg", "mimeType": "image/jpeg", "buffer": astronaut_jpeg(astronaut_bgr)})
        tab.get_by_role("button", name="Estimate").click()
        expect(tab.locator("#photo-msg")).to_contain_text("1 face found", timeout=15_000)
        expect(tab.locator("#photo-msg")).to_contain_text(shipped.version)
        shot(tab, screenshot_dir, "photo")
    finally:
        context.close()
        d.stop()
