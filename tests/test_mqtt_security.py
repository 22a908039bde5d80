"""The daemon's MQTT link over TLS with a username and password, and with a client
certificate, against a real Mosquitto configured that way; and its last will."""

from __future__ import annotations

import signal
import subprocess

import pytest

from agegate.testing.brokers import Mosquitto
from agegate.testing.daemon import DaemonProcess

BASE = "agegate/store-7/till-3"


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A CA, a server certificate for 127.0.0.1 and a till client certificate."""
    d = tmp_path_factory.mktemp("pki")
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=agegate test CA",
            "-keyout", "ca.key", "-out", "ca.crt", cwd=d)
    for name, ext in (("server", "subjectAltName=IP:127.0.0.1"), ("till", "extendedKeyUsage=clientAuth")):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", f"{name}.key",
                "-out", f"{name}.csr", cwd=d)
        (d / f"{name}.ext").write_text(ext + "\n")
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                "-days", "2", "-extfile", f"{name}.ext", "-out", f"{name}.crt", cwd=d)
    return d


def secure_broker(tmp_path, pki, require_cert: bool) -> Mosquitto:
    b = Mosquitto(tmp_path)
    passwd = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(passwd), "till-3", "correct horse"], check=True,
                   capture_output=True)
    b.conf.write_text(
        f"listener {b.port} 127.0.0.1\nallow_anonymous false\npassword_file {passwd}\n"
        f"cafile {pki / 'ca.crt'}\ncertfile {pki / 'server.crt'}\nkeyfile {pki / 'server.key'}\n"
        f"require_certificate {'true' if require_cert else 'false'}\npersistence false\n"
        f"log_dest file {tmp_path / 'mosquitto.log'}\n" + b.run_as
    )
    b.start()
    return b


def run_till(tmp_path, broker, face_video, bundle, **settings):
    d = DaemonProcess(tmp_path, broker=broker, camera=face_video, model_dir=bundle, **settings)
    return d.start()


@pytest.mark.parametrize("client_cert", [False, True], ids=["password", "password+client-cert"])
def test_tls_with_credentials(tmp_path, pki, face_video, constant_bundles, mosquitto_binary, client_cert):
    broker = secure_broker(tmp_path, pki, require_cert=client_cert)
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "AGEGATE_MQTT_PASSWORD").write_text("correct horse")  # as systemd's LoadCredential= provides it
    extra = {"mqtt_cert_file": pki / "till.crt", "mqtt_key_file": pki / "till.key"} if client_cert else {}
    d = DaemonProcess(tmp_path, broker=broker, camera=face_video, model_dir=constant_bundles[16],
                      mqtt_username="till-3", mqtt_ca_file=pki / "ca.crt", **extra)
    d.env["CREDENTIALS_DIRECTORY"] = str(creds)
    d.start()
    try:
        status = _wait_status(d)
        assert status["mqtt"]["connected"] is True
    finally:
        assert d.stop() == 0
        broker.stop()


def test_wrong_password_is_refused_and_logged(tmp_path, pki, face_video, constant_bundles, mosquitto_binary):
    broker = secure_broker(tmp_path, pki, require_cert=False)
    d = DaemonProcess(tmp_path, broker=broker, camera=face_video, model_dir=constant_bundles[16],
                      mqtt_username="till-3", mqtt_password="wrong", mqtt_ca_file=pki / "ca.crt")
    d.start()
    try:
        import time

        time.sleep(2)
        assert _status(d)["mqtt"]["connected"] is False
        assert "refused the connection (auth): Not authorized" in d.log()
        # The POS still gets answers while the broker refuses us.
        assert d.pos("item", "P1", restricted=True).json()["decision"] == "age_check_required"
    finally:
        d.stop()
        broker.stop()


def test_last_will_says_offline_when_the_daemon_dies(tmp_path, broker, face_video, constant_bundles):
    from agegate.testing.mqtt import Subscriber

    sub = Subscriber(broker.host, broker.port, f"{BASE}/status")
    d = run_till(tmp_path, broker, face_video, constant_bundles[40])
    sub.wait_for(lambda m: [p for _, p in m if p["state"] == "online"])
    d.stop(sig=signal.SIGKILL)
    offline = sub.wait_for(lambda m: [p for _, p in m if p["state"] == "offline"])
    assert offline[0]["till_id"] == "till-3" and offline[0]["model"]["name"] == "test-constant-40"
    sub.close()
    # Retained: a backend that subscribes later still learns the till is offline.
    late = Subscriber(broker.host, broker.port, f"{BASE}/status")
    assert late.wait_for(lambda m: [p for _, p in m])[-1]["state"] == "offline"
    late.close()


def _status(d):
    import httpx

    return httpx.get(f"{d.url}/v1/status", timeout=5).json()


def _wait_status(d, timeout=15):
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        s = _status(d)
        if s["mqtt"]["connected"]:
            return s
        time.sleep(0.2)
    raise AssertionError(f"never connected:\n{d.log()}")


def test_check_names_an_auth_refusal(tmp_path, pki, face_video, constant_bundles, mosquitto_binary):
    from test_cli import run_cli

    from agegate.testing.net import free_port

    broker = secure_broker(tmp_path, pki, require_cert=False)
    try:
        r = run_cli("check", "--json", camera=face_video, model_dir=constant_bundles[16], mqtt_host=broker.host,
                    mqtt_port=broker.port, mqtt_username="till-3", mqtt_password="wrong",
                    mqtt_ca_file=pki / "ca.crt", http_port=free_port(), state_dir=tmp_path / "state")
    finally:
        broker.stop()
    import json

    broker_check = [c for c in json.loads(r.stdout)["checks"] if c["name"] == "broker"][0]
    assert r.returncode == 1 and not broker_check["ok"]
    assert ": auth: the broker refused the connection: Not authorized" in broker_check["detail"], broker_check
