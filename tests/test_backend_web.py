"""`agegate-backend serve` as a process, read by the headless Chromium the console tests use:
the reports page with its plots, the token, the JSON API and the CSV export of each table."""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone

import httpx
import pytest
from playwright.sync_api import expect

from agegate.backend import db
from backend_helpers import alert, status, summary
from agegate.testing.net import free_port

TOKEN = "backend-test-token-0c4e"


@pytest.fixture
def served(tmp_path):
    """`agegate-backend serve` on a free port, over a database of a few events."""
    url = f"sqlite:///{tmp_path / 'web.sqlite3'}"
    engine = db.connect(url)
    now = datetime.now(timezone.utc)
    with engine.begin() as conn:
        db.write(conn, [
            summary(band="18-24", items={"wine": 3, "bread": 1}, restricted={"wine": 3}, decision="clear", outcome="clear"),
            summary(band="50-64", items={"wine": 1}, restricted={"wine": 1}, decision="clear", outcome="clear"),
            summary(band="13-17", items={"cider": 1}, restricted={"cider": 1}, decision="age_check_required",
                    outcome="unverified_sale", operator="op-9", tx="U1"),
            summary(band="18-24", items={"bread": 2}, when=now - timedelta(days=40)),  # outside the default week
            alert(tx="U1", operator="op-9", age=16), alert("unverified_sale", tx="U1", operator="op-9", age=16),
            status(), status("offline", till="till-2"),
        ], [("127.0.0.1:1883", "agegate/store-1/till-1/alerts", b"\xff\xfe", "not a valid Alert: Invalid JSON")])
    engine.dispose()
    port = free_port()
    env = {**os.environ, "AGEGATE_BACKEND_TOKEN": TOKEN}
    proc = subprocess.Popen([sys.executable, "-m", "agegate.backend", "--db", url, "serve", "--port", str(port)],
                            env=env, stdout=subprocess.DEVNULL, stderr=open(tmp_path / "serve.log", "wb"))
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            httpx.get(f"{base}/healthz", timeout=1)
            break
        except httpx.HTTPError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((tmp_path / "serve.log").read_text())
            time.sleep(0.2)
    yield base
    proc.terminate()
    proc.wait(10)


@pytest.mark.network
def test_the_reports_page_in_a_browser(served, browser, screenshot_dir):
    assert httpx.get(f"{served}/reports").status_code == 401  # the token guards the page
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    try:
        page.goto(f"{served}/reports?token={TOKEN}")
        assert "token" not in page.url  # traded for a cookie, out of the address bar
        purchases = page.locator("#table-purchases tbody tr")
        expect(purchases).to_have_count(4)  # the 40-day-old sale is outside the default week
        rows = [[c.strip() for c in purchases.nth(i).locator("td").all_inner_texts()] for i in range(4)]
        assert ["18-24", "wine", "3", "3", "75.0 %"] in rows and ["50-64", "wine", "1", "1", "25.0 %"] in rows
        assert ["13-17", "cider", "1", "1", "100.0 %"] in rows and ["18-24", "bread", "1", "0", "100.0 %"] in rows
        expect(page.locator("#purchases svg.plot rect")).not_to_have_count(0)
        expect(page.locator("#integrity svg.plot title").first).to_contain_text("prompts and unverified")
        integrity = page.locator("#table-integrity tbody tr td").all_inner_texts()
        assert integrity[1:] == ["store-1", "till-1", "op-9", "1", "1", "0", "1"]
        tills = page.locator("#table-tills tbody tr")
        expect(tills).to_have_count(2)
        expect(tills.nth(1)).to_contain_text("offline")
        expect(page.locator("#rejected")).to_contain_text("1 payloads (1 distinct)")
        # The same style as the till console: its stylesheet, served from the till's package files.
        assert page.evaluate("getComputedStyle(document.querySelector('header')).backgroundColor") == "rgb(20, 33, 61)"
        page.screenshot(path=str(screenshot_dir / "backend-reports.png"), full_page=True)  # docs/ by `make screenshots`
        # A longer range takes in the old sale.
        start = (datetime.now(timezone.utc) - timedelta(days=60)).date()
        page.fill("input[name=from]", start.isoformat())
        page.click("button[type=submit]")
        expect(page.locator("#table-bands")).to_contain_text("18-24")
        bread = [r for r in page.locator("#table-purchases tbody tr").all_inner_texts() if "bread" in r]
        assert len(bread) == 1 and "\t3\t" in bread[0]
        # Each table exports as CSV, with the page's cookie.
        with page.expect_download() as download:
            page.click("#table-integrity caption a:text('CSV')")
        rows = list(csv.reader(io.StringIO(open(download.value.path()).read())))
        assert rows[0][:4] == ["day", "store_id", "till_id", "operator_id"] and rows[1][3] == "op-9"
    finally:
        page.context.close()


@pytest.mark.network
def test_the_json_api_and_csv_exports(served):
    auth = {"Authorization": f"Bearer {TOKEN}"}
    body = httpx.get(f"{served}/api/purchases", headers=auth).json()
    wine = {r["age_band"]: r["items"] for r in body["rows"] if r["category"] == "wine"}
    assert wine == {"18-24": 3, "50-64": 1} and body["from"] < body["to"]
    assert httpx.get(f"{served}/api/tills", headers=auth).json()["rows"][0]["state"] == "online"
    for name in ("purchases", "bands", "integrity", "tills", "rejected"):
        r = httpx.get(f"{served}/export/{name}.csv", headers=auth)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv") and len(r.text.splitlines()) >= 2
    assert httpx.get(f"{served}/api/nothing", headers=auth).status_code == 404
    assert httpx.get(f"{served}/api/purchases?from=2026-02-01&to=2026-01-01", headers=auth).status_code == 422
    assert httpx.get(f"{served}/api/purchases", headers={"Authorization": "Bearer wrong"}).status_code == 401


def test_serving_beyond_this_machine_needs_the_token(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "AGEGATE_BACKEND_TOKEN"}
    result = subprocess.run([sys.executable, "-m", "agegate.backend", "--db", f"sqlite:///{tmp_path / 'x.sqlite3'}", "serve",
                             "--host", "0.0.0.0", "--port", str(free_port())], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 78 and "needs AGEGATE_BACKEND_TOKEN" in result.stderr
