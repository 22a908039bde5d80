"""`agegate-edge estimate` and `agegate-edge check` as an engineer runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import cv2


def run_cli(*args, **env):
    full = {"PATH": os.environ.get("PATH", ""), **{f"AGEGATE_{k.upper()}": str(v) for k, v in env.items()}}
    return subprocess.run([sys.executable, "-m", "agegate.edge.cli", *map(str, args)], env=full,
                          capture_output=True, text=True, timeout=120)


def test_estimate_json_lines(tmp_path, astronaut_bgr, constant_bundles):
    photo = tmp_path / "astronaut.jpg"
    cv2.imwrite(str(photo), astronaut_bgr)
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    r = run_cli("estimate", "--json", photo, text, tmp_path / "missing.png", model_dir=constant_bundles[21])
    lines = [json.loads(line) for line in r.stdout.splitlines()]
    assert r.returncode == 1, r.stderr  # two of the three could not be read: a script must notice
    assert [rec["path"] for rec in lines] == [str(photo), str(text), str(tmp_path / "missing.png")]
    face = lines[0]["faces"]
    assert len(face) == 1 and face[0]["age"] == 21.0 and lines[0]["error"] is None
    x, y, w, h = face[0]["box"]
    assert 150 < x < 220 and 40 < y < 110 and 70 < w < 130  # the astronaut's face
    assert lines[1]["error"] == "not a readable image" and lines[1]["faces"] == []
    assert lines[2]["error"] == "no such file"


def test_estimate_fails_when_every_input_fails(tmp_path, constant_bundles):
    r = run_cli("estimate", tmp_path / "missing.png", model_dir=constant_bundles[21])
    assert r.returncode == 1 and "no such file" in r.stdout


def test_check_passes_on_a_working_till(tmp_path, broker, face_video, constant_bundles):
    from agegate.testing.net import free_port

    r = run_cli("check", camera=face_video, model_dir=constant_bundles[40], mqtt_host=broker.host,
                mqtt_port=broker.port, http_port=free_port(), state_dir=tmp_path / "state")
    assert r.returncode == 0, r.stdout + r.stderr
    verdicts = {line.split()[1]: line.split()[0] for line in r.stdout.splitlines() if line[:4] in ("OK  ", "FAIL")}
    assert verdicts == {"config": "OK", "model": "OK", "detector": "OK", "camera": "OK", "http": "OK", "state": "OK",
                        "broker": "OK"}
    assert "answers 40.0" in r.stdout
    # The model's recorded figures, and the threshold the till decides with.
    assert "on 100 validation faces: MAE 5.00, at 25 flags 97.0 % of under-18s" in r.stdout
    assert "calibrated threshold 28 flags 99.0 % of under-18s" in r.stdout and "deciding at estimates under 25 (the challenge age)" in r.stdout
    r = run_cli("check", camera=face_video, model_dir=constant_bundles[40], mqtt_host=broker.host, mqtt_port=broker.port,
                decision_threshold="calibrated")
    assert "deciding at estimates under 28 (calibrated)" in r.stdout


def test_check_names_what_fails(tmp_path, constant_bundles):
    from agegate.testing.net import free_port

    r = run_cli("check", "--timeout", "1", camera=tmp_path / "gone.avi", model_dir=constant_bundles[40],
                mqtt_port=free_port(), http_port=free_port(), state_dir=tmp_path / "state")
    assert r.returncode == 1
    failed = {line.split()[1] for line in r.stdout.splitlines() if line.startswith("FAIL")}
    assert failed == {"camera", "broker"}
    assert "gone.avi" in r.stdout


def test_bad_bundle_stops_start_up_with_its_reason(tmp_path, constant_bundles):
    import shutil

    from agegate.testing.net import free_port

    bad = tmp_path / "bundle"
    shutil.copytree(constant_bundles[40], bad)
    data = bytearray((bad / "model.tflite").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (bad / "model.tflite").write_bytes(bytes(data))
    r = run_cli("run", model_dir=bad, http_port=free_port())
    assert r.returncode == 78
    assert "AGEGATE_MODEL_DIR" in r.stderr and "sha256" in r.stderr


def test_estimate_exits_non_zero_when_one_file_fails(tmp_path, astronaut_bgr, constant_bundles):
    photo = tmp_path / "astronaut.jpg"
    cv2.imwrite(str(photo), astronaut_bgr)
    r = run_cli("estimate", photo, tmp_path / "missing.png", model_dir=constant_bundles[21])
    assert r.returncode == 1 and "age 21.0" in r.stdout and "no such file" in r.stdout
    assert run_cli("estimate", photo, model_dir=constant_bundles[21]).returncode == 0


def test_env_file_after_the_command_as_the_readme_writes_it(tmp_path, constant_bundles):
    env = tmp_path / "agegate.env"
    env.write_text(f"AGEGATE_MODEL_DIR={constant_bundles[40]}\nAGEGATE_MQTT_PORT=0\n")
    for args in (["check", "--env-file", env], ["--env-file", env, "check"], ["run", "--env-file", env]):
        r = run_cli(*args)
        # The file was read: its bad port stops start-up, where an ignored file would not.
        assert r.returncode == 78 and "AGEGATE_MQTT_PORT" in r.stderr, (args, r.stderr)
    r = run_cli("model", "status", "--env-file", env)
    assert r.returncode == 78 and "AGEGATE_MQTT_PORT" in r.stderr


def test_version(tmp_path):
    from agegate import __version__

    r = run_cli("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"agegate-edge {__version__}"
    for module, prog in (("agegate.training.cli", "agegate-train"), ("agegate.export.cli", "agegate-export")):
        r = subprocess.run([sys.executable, "-m", module, "--version"], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0 and r.stdout.strip() == f"{prog} {__version__}", r.stderr


def test_check_json(tmp_path, broker, face_video, constant_bundles):
    from agegate.testing.net import free_port

    r = run_cli("check", "--json", camera=face_video, model_dir=constant_bundles[40], mqtt_host=broker.host,
                mqtt_port=broker.port, http_port=free_port(), state_dir=tmp_path / "state")
    assert r.returncode == 0, r.stdout + r.stderr
    report = json.loads(r.stdout)
    assert report["ok"] is True
    assert [c["name"] for c in report["checks"]] == ["config", "model", "detector", "camera", "http", "state", "broker"]
    assert all(c["ok"] for c in report["checks"]) and "answers 40.0" in report["checks"][1]["detail"]


def test_model_status_json(tmp_path, constant_bundles):
    state = tmp_path / "state"
    r = run_cli("model", "status", "--json", state_dir=state)
    assert r.returncode == 0, r.stderr
    status = json.loads(r.stdout)
    assert status["active"] is None and status["previous"] is None and status["default_bundle"].endswith("default_bundle")
    # A test bundle without self-test faces is refused: the refusal is in the status.
    assert run_cli("model", "install", constant_bundles[40], state_dir=state).returncode == 1
    status = json.loads(run_cli("model", "status", "--json", state_dir=state).stdout)
    assert status["active"] is None and "self-test" in status["last_rejected"]["reason"]


def _failed_checks(*args, **env) -> dict[str, str]:
    r = run_cli("check", "--json", "--timeout", "2", *args, **env)
    report = json.loads(r.stdout)
    assert r.returncode == (0 if report["ok"] else 1), r.stderr
    return {c["name"]: c["detail"] for c in report["checks"] if not c["ok"]}


def test_check_fails_what_run_would_refuse_a_taken_port_and_an_unusable_state_dir(tmp_path, broker, face_video,
                                                                                  constant_bundles):
    import socket

    taken = socket.create_server(("127.0.0.1", 0))  # as a daemon already running would hold it
    not_a_dir = tmp_path / "state"
    not_a_dir.write_text("a file where the state directory should be")
    try:
        failed = _failed_checks(camera=face_video, model_dir=constant_bundles[40], mqtt_host=broker.host,
                                mqtt_port=broker.port, http_port=taken.getsockname()[1], state_dir=not_a_dir)
    finally:
        taken.close()
    assert set(failed) == {"http", "state"}, failed
    assert "AGEGATE_HTTP_PORT" in failed["http"] and "in use" in failed["http"]
    assert "AGEGATE_STATE_DIR" in failed["state"] and "not a directory" in failed["state"]
    read_only = tmp_path / "ro"
    read_only.mkdir()
    os.chmod(read_only, 0o500)
    if os.geteuid() != 0:  # root writes anywhere; a full-disk case is in test_faults
        assert "cannot write" in _failed_checks(camera=face_video, model_dir=constant_bundles[40],
                                                mqtt_host=broker.host, mqtt_port=broker.port,
                                                state_dir=read_only)["state"]


def test_check_says_why_the_broker_is_unreachable(tmp_path, broker, face_video, constant_bundles):
    import socket

    from agegate.testing.net import free_port

    common = dict(camera=face_video, model_dir=constant_bundles[40], http_port=free_port(), state_dir=tmp_path)
    assert _failed_checks(**common, mqtt_host="no-such-broker.invalid")["broker"].startswith(
        "no-such-broker.invalid:1883: dns: the host name does not resolve")
    assert "refused: connection refused" in _failed_checks(**common, mqtt_port=free_port())["broker"]
    # Something that accepts TCP but never speaks MQTT.
    silent = socket.create_server(("127.0.0.1", 0))
    try:
        detail = _failed_checks(**common, mqtt_port=silent.getsockname()[1])["broker"]
    finally:
        silent.close()
    assert "timeout: connected, but no MQTT answer" in detail, detail
    # TLS asked of a broker that speaks plain MQTT.
    detail = _failed_checks(**common, mqtt_host=broker.host, mqtt_port=broker.port, mqtt_tls="true")["broker"]
    assert ": tls: TLS handshake failed" in detail, detail


def test_logs_in_journald_form_under_systemd_and_json_when_asked(tmp_path, constant_bundles):
    """systemd points stderr at the journal and says so in JOURNAL_STREAM (device:inode of that stream)."""
    from agegate.testing.net import free_port

    common = {"PATH": os.environ.get("PATH", ""), "AGEGATE_CAMERA": str(tmp_path / "gone.avi"),
              "AGEGATE_MODEL_DIR": str(constant_bundles[40]), "AGEGATE_STATE_DIR": str(tmp_path / "state"),
              "AGEGATE_HTTP_PORT": str(free_port()), "AGEGATE_MQTT_PORT": str(free_port())}

    def stderr_of(extra: dict, journal: bool) -> str:
        out = tmp_path / "stderr.txt"
        with open(out, "w") as f:
            st = os.fstat(f.fileno())
            env = {**common, **extra}
            if journal:
                env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
            subprocess.run([sys.executable, "-m", "agegate.edge.cli", "check", "--timeout", "1"], env=env,
                           stdout=subprocess.DEVNULL, stderr=f, timeout=120)
        return out.read_text()

    journal = stderr_of({}, journal=True).splitlines()
    camera = [line for line in journal if "agegate.edge.capture" in line]
    # The camera's retries are warnings: priority 4, and no timestamp of ours (the journal stamps lines).
    assert camera and all(line.startswith("<4>agegate.edge.capture: camera ") for line in camera), journal
    assert all(line.startswith("<") for line in journal), journal
    # Redirected elsewhere (JOURNAL_STREAM names another stream): plain text with a timestamp.
    text = stderr_of({"JOURNAL_STREAM": "1:1"}, journal=False).splitlines()
    assert any(" WARNING agegate.edge.capture: camera " in line and line[:2] == "20" for line in text), text
    records = [json.loads(line) for line in stderr_of({"AGEGATE_LOG_FORMAT": "json"}, journal=True).splitlines()]
    warning = next(r for r in records if r["logger"] == "agegate.edge.capture")
    assert warning["level"] == "WARNING" and warning["priority"] == 4 and warning["ts"].endswith("+00:00")


def test_check_and_estimate_hide_native_library_noise(tmp_path, astronaut_bgr, constant_bundles):
    from agegate.testing.net import free_port

    # A camera index with no device: OpenCV itself prints "[ WARN:…] … can't open camera by index".
    r = run_cli("check", "--timeout", "1", camera="9", model_dir=constant_bundles[40], http_port=free_port(),
                state_dir=tmp_path / "state", mqtt_port=free_port())
    assert "FAIL camera" in r.stdout and "camera 9: OpenCV cannot open it" in r.stderr  # in its own words
    assert "[ WARN" not in r.stderr and "XNNPACK" not in r.stderr, r.stderr
    photo = tmp_path / "astronaut.jpg"
    cv2.imwrite(str(photo), astronaut_bgr)
    r = run_cli("estimate", photo, model_dir=constant_bundles[21])
    assert r.returncode == 0 and r.stderr == "", r.stderr


def test_estimate_over_many_files_shows_a_progress_bar_with_an_eta_on_a_terminal(tmp_path, astronaut_bgr,
                                                                                 constant_bundles):
    import pty

    photos = []
    for i in range(4):
        photos.append(tmp_path / f"p{i}.jpg")
        cv2.imwrite(str(photos[-1]), astronaut_bgr)
    import fcntl
    import struct
    import termios

    main, term = pty.openpty()  # stderr is a terminal, as for an engineer at a shell: 40 rows of 120 columns
    fcntl.ioctl(term, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    env = {"PATH": os.environ.get("PATH", ""), "AGEGATE_MODEL_DIR": str(constant_bundles[21])}
    proc = subprocess.run([sys.executable, "-m", "agegate.edge.cli", "estimate", *map(str, photos)], env=env,
                          stdout=subprocess.PIPE, stderr=term, text=True, timeout=120)
    os.close(term)
    shown = b""
    while True:
        try:
            chunk = os.read(main, 4096)
        except OSError:
            break
        if not chunk:
            break
        shown += chunk
    os.close(main)
    bar = shown.decode(errors="replace")
    assert proc.returncode == 0 and proc.stdout.count("age 21.0") == 4
    assert "4/4" in bar and "100%" in bar and "<" in bar and "photo/s" in bar, bar  # [elapsed<remaining, rate]
    # Not on a pipe: scripts reading stderr get no bar.
    assert run_cli("estimate", *photos, model_dir=constant_bundles[21]).stderr == ""


def test_check_and_estimate_use_the_installed_model_as_the_daemon_does(tmp_path, astronaut_bgr, constant_bundles):
    """After `model install`, the daemon runs the installed bundle: `check` and `estimate` must
    answer with it too, not with AGEGATE_MODEL_DIR or the shipped bundle (they used to)."""
    from bundle_factory import make_constant_bundle

    installed = make_constant_bundle(tmp_path / "minor", 16, golden=True, name="installed-16", version="7")
    settings = {"model_dir": constant_bundles[40], "state_dir": tmp_path / "state"}
    r = run_cli("model", "install", installed, **settings)
    assert r.returncode == 0, r.stdout + r.stderr
    photo = tmp_path / "astronaut.jpg"
    cv2.imwrite(str(photo), astronaut_bgr)
    r = run_cli("estimate", "--json", photo, **settings)
    assert r.returncode == 0, r.stderr
    assert [f["age"] for f in json.loads(r.stdout)["faces"]] == [16.0]
    r = run_cli("check", "--timeout", "1", camera=tmp_path / "none.avi", **settings)
    model_line = next(line for line in r.stdout.splitlines() if line.split()[1:2] == ["model"])
    assert "installed-16 7" in model_line and "answers 16.0" in model_line, model_line


def test_the_cli_loads_models_without_the_daemons_server_parts(tmp_path, astronaut_bgr, constant_bundles):
    """`estimate` (like `check` and `model`) loads through agegate.edge.loader: no FastAPI, uvicorn or console."""
    photo = tmp_path / "astronaut.jpg"
    cv2.imwrite(str(photo), astronaut_bgr)
    script = ("import sys, contextlib, io\n"
              "from agegate.edge import cli\n"
              "with contextlib.redirect_stdout(io.StringIO()):\n"
              f"    rc = cli.main(['estimate', {str(photo)!r}])\n"
              "heavy = sorted(m for m in ('fastapi', 'uvicorn', 'agegate.edge.daemon', 'agegate.edge.console') if m in sys.modules)\n"
              "print(rc, heavy)\n")
    env = {"PATH": os.environ.get("PATH", ""), "AGEGATE_MODEL_DIR": str(constant_bundles[21]),
           "AGEGATE_STATE_DIR": str(tmp_path / "state")}
    r = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert r.stdout.strip().splitlines()[-1] == "0 []", r.stdout + r.stderr


def test_estimate_creates_nothing_where_no_model_was_installed(tmp_path, astronaut_bgr, constant_bundles):
    photo = tmp_path / "astronaut.jpg"
    cv2.imwrite(str(photo), astronaut_bgr)
    r = run_cli("estimate", photo, model_dir=constant_bundles[21], state_dir=tmp_path / "state")
    assert r.returncode == 0, r.stderr
    assert not (tmp_path / "state").exists()  # looking is not installing: no folders appear
