"""``agegate-edge``: run the till daemon, check a till's set-up, or try photos.

    agegate-edge run [--env-file FILE]
    agegate-edge check [--env-file FILE] [--json]
    agegate-edge config [--env-file FILE] [--json]
    agegate-edge estimate IMAGE... [--json] [--env-file FILE]
    agegate-edge model install BUNDLE | status [--json] | rollback [--env-file FILE]
    agegate-edge --version

``--env-file`` goes before or after the command.

Exit codes: 0 fine, 1 a check or start-up failed, 2 bad command line, 78 bad setting.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from pathlib import Path

import cv2
import numpy as np
from pydantic import SecretStr

from .. import __version__
from .config import EX_CONFIG, ConfigError, Settings, load_settings, setting_sources
from .logs import native_stderr_filtered, quiet_opencv, setup_logging

log = logging.getLogger("agegate")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = load_settings(args.env_file)
    except ConfigError as exc:
        print(f"agegate-edge: {exc}", file=sys.stderr)
        return EX_CONFIG
    setup_logging(settings.log_level, settings.log_format)
    quiet_opencv()
    return args.func(settings, args)


ENV_FILE_HELP = "read AGEGATE_* settings from this file (the environment wins)"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="agegate-edge", description="agegate till daemon")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    p.add_argument("--env-file", type=Path, help=ENV_FILE_HELP)
    # The same option after the command (`agegate-edge run --env-file X`, as the docs write it). SUPPRESS:
    # left out there, it must not overwrite a value given before the command.
    after = argparse.ArgumentParser(add_help=False)
    after.add_argument("--env-file", type=Path, default=argparse.SUPPRESS, help=ENV_FILE_HELP)
    sub = p.add_subparsers(required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run the daemon", parents=[after])
    run.set_defaults(func=cmd_run)

    check = sub.add_parser("check", help="check config, model, camera, HTTP port, state directory and broker; "
                           "non-zero exit if one fails",
                           parents=[after])
    check.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the camera and broker")
    check.add_argument("--json", action="store_true", help="one JSON object: each check's verdict and detail")
    check.set_defaults(func=cmd_check)

    conf = sub.add_parser("config", help="the settings in force and where each comes from", parents=[after])
    conf.add_argument("--json", action="store_true", help="one JSON object: each setting's value and source")
    conf.set_defaults(func=cmd_config)

    est = sub.add_parser("estimate", help="detect faces in photos and print their estimated ages", parents=[after])
    est.add_argument("images", nargs="+", type=Path)
    est.add_argument("--json", action="store_true", help="one JSON line per image")
    est.add_argument("--zone", action="store_true", help="only faces in the customer zone, as at the till")
    est.set_defaults(func=cmd_estimate)

    model = sub.add_parser("model", help="installed model bundles: install, status, rollback")
    msub = model.add_subparsers(required=True, metavar="ACTION")
    inst = msub.add_parser("install", help="check a bundle (directory or .tar.gz) and make it the active model",
                           parents=[after])
    inst.add_argument("bundle", type=Path)
    inst.set_defaults(func=cmd_model_install)
    status = msub.add_parser("status", help="active and previous model, last rejection", parents=[after])
    status.add_argument("--json", action="store_true", help="one JSON object: active, previous, last_rejected")
    status.set_defaults(func=cmd_model_status)
    msub.add_parser("rollback", help="go back to the previous model (after the first install: the bundle the till "
                   "was set up with)", parents=[after]).set_defaults(func=cmd_model_rollback)
    return p


# --- run ----------------------------------------------------------------------------------------------


def cmd_run(settings: Settings, args: argparse.Namespace) -> int:
    from .console import create_console
    from .daemon import Daemon, StartupError

    try:
        daemon = Daemon(settings, console=create_console)
        daemon.start()
    except StartupError as exc:
        print(f"agegate-edge: {exc}", file=sys.stderr)
        return EX_CONFIG if str(exc).startswith("AGEGATE_") else 1

    def _on_signal(signum, frame):
        log.info("signal %s: stopping", signal.Signals(signum).name)
        daemon.request_stop()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    try:
        daemon.run()
    finally:
        daemon.stop()
    return 0


# --- check ----------------------------------------------------------------------------------------------


def describe_quality(manifest, settings: Settings) -> str:
    """The model's recorded validation figures, the threshold the till decides with, and any shortfall."""
    from .bundle import quality_problems
    from .decision import decision_thresholds

    v = manifest.validation
    if v is None:
        return "records no validation figures (exported before agegate 0.2): a delivered copy would be refused"

    def pct(x: float | None) -> str:
        return "n/a" if x is None else f"{100 * x:.1f} %"

    a = v.at_challenge
    text = (f"on {v.faces} validation faces: MAE {v.mae:.2f}, at {a.threshold:g} flags {pct(a.under18_flagged)} of under-18s "
            f"({pct(a.teen_flagged)} of 13-17s) and {pct(a.over30_flagged)} of people 30+")
    if v.calibrated is not None:
        c = v.calibrated
        text += f"; calibrated threshold {c.threshold:g} flags {pct(c.under18_flagged)} of under-18s and {pct(c.over30_flagged)} of 30+"
    t = decision_thresholds(settings, manifest)
    text += f"; deciding at estimates under {t.flag_below:g}" + (" (calibrated)" if t.calibrated else " (the challenge age)")
    problems = quality_problems(manifest, settings.quality_floors, calibrated=settings.uses_calibrated_threshold)
    return text + (f"; BELOW THE QUALITY FLOORS: {'; '.join(problems)}" if problems else "")


def cmd_check(settings: Settings, args: argparse.Namespace) -> int:
    from .capture import Camera
    from .loader import StateDirUnusable, load_detector, load_model, open_model_store

    results: list[tuple[str, bool, str]] = [("config", True, f"store {settings.store_id}, till {settings.till_id}")]

    def item(name: str, fn) -> None:
        try:
            results.append((name, True, fn()))
        except Exception as exc:  # each check reports its own failure and the rest go on
            results.append((name, False, str(exc)))

    def model() -> str:
        try:  # the model the daemon would run: an installed one first
            store, note = open_model_store(settings, create=False), ""
        except StateDirUnusable as exc:
            store, note = None, f" ({exc}: installed models not looked at)"
        with native_stderr_filtered():  # LiteRT's "Created TensorFlow Lite XNNPACK delegate" on every load
            m = load_model(settings, store)
        grey = np.full((240, 240, 3), 128, np.uint8)
        age = m.estimate(grey, [(60, 60, 120, 120)])[0]
        line = f"{m.manifest.name} {m.manifest.version} ({m.manifest.variant}, {m.runtime}) answers {age:.1f} on a test crop"
        return f"{line}, from {m.bundle.path}{note}; {describe_quality(m.manifest, settings)}"

    def detector() -> str:
        d = load_detector(settings)
        d.detect(np.zeros((480, 640, 3), np.uint8))
        return f"{d.name} ready"

    def camera() -> str:
        frame = Camera.probe(settings.camera, timeout=args.timeout)
        h, w = frame.image.shape[:2]
        return f"{settings.camera}: got a {w}x{h} frame"

    item("model", model)
    item("detector", detector)
    item("camera", camera)
    item("http", lambda: _check_http(settings))
    item("state", lambda: _check_state_dir(settings))
    item("broker", lambda: _check_broker(settings, args.timeout))
    failed = [n for n, ok, _ in results if not ok]
    if args.json:
        print(json.dumps({"ok": not failed, "checks": [{"name": n, "ok": ok, "detail": d} for n, ok, d in results]}))
        return 1 if failed else 0
    width = max(len(n) for n, _, _ in results)
    for name, ok, detail in results:
        print(f"{'OK  ' if ok else 'FAIL'} {name:<{width}}  {detail}")
    print("all checks passed" if not failed else f"failed: {', '.join(failed)}")
    return 1 if failed else 0


# --- config ----------------------------------------------------------------------------------------------


def cmd_config(settings: Settings, args: argparse.Namespace) -> int:
    sources = setting_sources(args.env_file)
    rows = {}
    for name, value in settings.model_dump(mode="json").items():
        key = "AGEGATE_" + name.upper()
        if isinstance(getattr(settings, name), SecretStr):
            value = "**********"  # where a secret comes from is worth showing; the secret is not
        rows[key] = {"value": value, "source": sources[key]}
    if args.json:
        print(json.dumps(rows))
        return 0
    width = max(map(len, rows))
    for key, row in rows.items():
        shown = "" if row["value"] is None else row["value"]
        print(f"{key:<{width}}  {str(shown).lower() if isinstance(shown, bool) else shown}  ({row['source']})")
    return 0


def _check_broker(settings: Settings, timeout: float) -> str:
    """Connect as the daemon would and say what failed: DNS, refused, timeout, TLS, auth."""
    import threading

    from .mqtt import describe_connect_error, describe_refusal, make_client

    where = f"{settings.mqtt_host}:{settings.mqtt_port}"
    result: dict = {}
    done = threading.Event()
    # The daemon's own client set-up (auth, TLS) under another client id, so a running daemon is not kicked off.
    client = make_client(settings, client_id_suffix="-check")
    client.connect_timeout = timeout

    def on_connect(c, u, flags, reason_code, props):
        result["refusal"] = reason_code if reason_code.is_failure else None
        done.set()

    def on_connect_fail(c, u):
        result["error"] = c.last_connect_error
        done.set()

    client.on_connect, client.on_connect_fail = on_connect, on_connect_fail
    try:
        client.connect_async(settings.mqtt_host, settings.mqtt_port, keepalive=10)
        client.loop_start()
        # The TCP connect has its own timeout (connect_timeout): leave it time to report first.
        if not done.wait(timeout + 1):
            raise RuntimeError(f"{where}: timeout: connected, but no MQTT answer (CONNACK) within {timeout:g} s")
        if "error" in result:
            kind, text = describe_connect_error(result["error"], timeout)
            raise RuntimeError(f"{where}: {kind}: {text}")
        if result["refusal"] is not None:
            kind, text = describe_refusal(result["refusal"])
            raise RuntimeError(f"{where}: {kind}: the broker refused the connection: {text}")
        return f"{where} accepted the connection"
    finally:
        client.disconnect()
        client.loop_stop()


def _check_http(settings: Settings) -> str:
    """The POS API's address can be listened on, as ``run`` needs (it stops if not)."""
    from .daemon import StartupError, bind_http

    try:
        bind_http(settings).close()
    except StartupError as exc:
        raise RuntimeError(f"{exc} (is a daemon already running?)") from None
    return f"{settings.http_host}:{settings.http_port} is free to listen on"


def _check_state_dir(settings: Settings) -> str:
    """The state directory holds the outbox, the history and installed models: without a writable
    one, ``run`` goes on degraded (alerts not kept across outages), which a check must not pass."""
    import os
    import tempfile

    d = settings.state_dir
    if not d.exists():
        parent = next(p for p in d.parents if p.exists())
        if not (parent.is_dir() and os.access(parent, os.W_OK | os.X_OK)):
            raise RuntimeError(f"AGEGATE_STATE_DIR: {d} does not exist and cannot be created in {parent}")
        return f"{d} will be created at start"
    if not d.is_dir():
        raise RuntimeError(f"AGEGATE_STATE_DIR: {d} is not a directory")
    try:
        with tempfile.NamedTemporaryFile(dir=d, prefix=".check-") as f:
            f.write(b"x" * 4096)
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        raise RuntimeError(f"AGEGATE_STATE_DIR: cannot write in {d}: {exc.strerror or exc}") from None
    return f"{d} is writable"


# --- model ----------------------------------------------------------------------------------------------
# The running daemon follows the store's state within a few seconds (MODEL_SCAN_S): these
# commands change what is installed; the daemon swaps to it without a restart.


def _store(settings: Settings):
    from .loader import StartupError, open_model_store

    try:
        return open_model_store(settings)
    except StartupError as exc:
        raise SystemExit(f"agegate-edge: {exc}") from None


def cmd_model_install(settings: Settings, args: argparse.Namespace) -> int:
    from .bundle import BundleError

    if not args.bundle.exists():
        print(f"agegate-edge: {args.bundle}: no such file or directory", file=sys.stderr)
        return 1
    try:
        record = _store(settings).install(args.bundle)
    except BundleError as exc:
        print(f"rejected: {exc}", file=sys.stderr)
        return 1
    print(f"installed and active: {record['name']} {record['version']} (sha256 {record['sha256']})")
    return 0


def cmd_model_status(settings: Settings, args: argparse.Namespace) -> int:
    state = _store(settings).status()
    if args.json:
        print(json.dumps({"active": state.get("active"), "previous": state.get("previous"),
                          "last_rejected": state.get("last_rejected"),
                          "default_bundle": None if state.get("active") else str(settings.bundle_dir)}))
        return 0
    for role in ("active", "previous"):
        r = state.get(role)
        print(f"{role + ':':10} " + (f"{r['name']} {r['version']} ({r['variant']}) sha256 {r['sha256']} "
                                     f"installed at {r['installed_at']}" if r else "none"))
    if not state.get("active"):
        print(f"{'':10} the daemon uses {settings.bundle_dir}")
    rej = state.get("last_rejected")
    if rej:
        print(f"{'rejected:':10} {rej['source']} at {rej['at']}: {rej['reason']}")
    return 0


def cmd_model_rollback(settings: Settings, args: argparse.Namespace) -> int:
    from .bundle import BundleError

    try:
        record = _store(settings).rollback()
    except BundleError as exc:
        print(f"agegate-edge: {exc}", file=sys.stderr)
        return 1
    if record is None:
        print(f"rolled back; no installed model is active: the daemon uses {settings.bundle_dir}")
    else:
        print(f"rolled back; active: {record['name']} {record['version']} (sha256 {record['sha256']})")
    return 0


# --- estimate ----------------------------------------------------------------------------------------------


def cmd_estimate(settings: Settings, args: argparse.Namespace) -> int:
    from .detectors import customer_faces, detect_in_photo
    from .loader import StartupError, StateDirUnusable, load_detector, load_model, open_model_store

    from tqdm import tqdm

    try:
        try:  # the model the daemon would run: an installed one first
            store = open_model_store(settings, create=False)
        except StateDirUnusable as exc:
            print(f"agegate-edge: {exc}: using the configured model, not an installed one", file=sys.stderr)
            store = None
        with native_stderr_filtered():  # LiteRT's "Created TensorFlow Lite XNNPACK delegate" on every load
            model, detector = load_model(settings, store), load_detector(settings)
    except StartupError as exc:
        print(f"agegate-edge: {exc}", file=sys.stderr)
        return 1
    zone = settings.zone
    failures = 0
    # A bar with an ETA on a terminal's stderr (none when stderr is a file or pipe: disable=None);
    # results go to stdout through tqdm.write, which keeps the bar below them.
    progress = tqdm(args.images, unit="photo", disable=None if len(args.images) > 1 else True, file=sys.stderr)
    for path in progress:
        record: dict = {"path": str(path), "faces": [], "error": None}
        image = cv2.imread(str(path), cv2.IMREAD_COLOR) if path.is_file() else None
        if image is None:
            record["error"] = "not a readable image" if path.exists() else "no such file"
            failures += 1
        else:
            faces = detect_in_photo(detector, image)
            if args.zone:
                h, w = image.shape[:2]
                faces = customer_faces(faces, zone, w, h)
            ages = model.estimate(image, [f.box for f in faces], [f.landmarks for f in faces]) if faces else []
            record["faces"] = [
                {"box": [int(v) for v in f.box], "score": round(float(f.score), 3), "age": round(float(a), 1)}
                for f, a in zip(faces, ages)
            ]
        if args.json:
            line = json.dumps(record)
        elif record["error"]:
            line = f"{path}: error: {record['error']}"
        elif not record["faces"]:
            line = f"{path}: no face found"
        else:
            line = f"{path}: " + ", ".join(f"age {f['age']:.1f} at {tuple(f['box'])}" for f in record["faces"])
        progress.write(line, file=sys.stdout)
        sys.stdout.flush()
    return 1 if failures else 0  # a script must learn that a photo was not read


if __name__ == "__main__":
    sys.exit(main())
