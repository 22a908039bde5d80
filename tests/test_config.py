"""Settings: defaults documented in config.example.env, and one clear line for a bad value."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from agegate.edge.config import EX_CONFIG, ConfigError, Settings, load_settings

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for key in list(__import__("os").environ):
        if key.startswith("AGEGATE_") or key == "CREDENTIALS_DIRECTORY":
            monkeypatch.delenv(key)


def test_example_env_documents_every_setting_with_its_default():
    text = (ROOT / "config.example.env").read_text()
    documented = dict(re.findall(r"^# (AGEGATE_[A-Z0-9_]+)=(.*)$", text, re.M))
    defaults = Settings()
    for name, field in Settings.model_fields.items():
        key = "AGEGATE_" + name.upper()
        assert key in documented, f"{key} missing from config.example.env"
        value = getattr(defaults, name)
        shown = documented[key]
        if value is None:
            assert shown == "", f"{key}: example shows {shown!r}, default is unset"
        elif isinstance(value, bool):
            assert shown == str(value).lower(), key
        elif isinstance(value, (int, float)):
            assert float(shown) == float(value), key
        else:
            assert shown == str(value), f"{key}: example shows {shown!r}, default is {value!r}"
    assert set(documented) == {"AGEGATE_" + n.upper() for n in Settings.model_fields}


@pytest.mark.parametrize(
    "env, expected",
    [
        ({"AGEGATE_MQTT_PORT": "70000"}, "AGEGATE_MQTT_PORT"),
        ({"AGEGATE_MQTT_PORT": "abc"}, "AGEGATE_MQTT_PORT"),
        ({"AGEGATE_DETECTOR": "magic"}, "AGEGATE_DETECTOR"),
        ({"AGEGATE_CUSTOMER_ZONE": "0.8,0,0.2,1"}, "AGEGATE_CUSTOMER_ZONE"),
        ({"AGEGATE_CHALLENGE_AGE": "17", "AGEGATE_LEGAL_AGE": "18"}, "AGEGATE_LEGAL_AGE"),
        ({"AGEGATE_DETECTOR_MODEL": "/nonexistent/yunet.onnx"}, "AGEGATE_DETECTOR_MODEL"),
        ({"AGEGATE_MODEL_DIR": "/nonexistent/bundle"}, "AGEGATE_MODEL_DIR"),
        ({"AGEGATE_STORE_ID": "bad/store"}, "AGEGATE_STORE_ID"),
        ({"AGEGATE_MQTT_TOPIC_PREFIX": "a/#"}, "AGEGATE_MQTT_TOPIC_PREFIX"),
    ],
)
def test_bad_value_names_the_setting(monkeypatch, env, expected):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ConfigError) as err:
        load_settings()
    assert expected in str(err.value)
    assert "\n" not in str(err.value)


def test_env_file_and_environment(tmp_path, monkeypatch):
    env = tmp_path / "agegate.env"
    env.write_text("AGEGATE_TILL_ID=till-7\nAGEGATE_STORE_ID=store-9\nAGEGATE_CHALLENGE_AGE=21\n")
    monkeypatch.setenv("AGEGATE_STORE_ID", "store-from-env")
    s = load_settings(env)
    assert (s.till_id, s.store_id, s.challenge_age) == ("till-7", "store-from-env", 21.0)
    assert s.topic_base == "agegate/store-from-env/till-7"


def test_password_from_credentials_directory(tmp_path, monkeypatch):
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "AGEGATE_MQTT_PASSWORD").write_text("s3cret")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    monkeypatch.setenv("AGEGATE_MQTT_USERNAME", "till-1")
    s = load_settings()
    assert s.mqtt_password.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(s)


def test_cli_exits_78_with_one_line(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "AGEGATE_HTTP_PORT": "0"}
    r = subprocess.run([sys.executable, "-m", "agegate.edge.cli", "run"], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == EX_CONFIG
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "AGEGATE_HTTP_PORT" in lines[0], r.stderr
