"""Settings: defaults documented in config.example.env, and one clear line for a bad value."""

from __future__ import annotations

import json
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


def _cli(*args, **env):
    full = {"PATH": "/usr/bin:/bin", **env}
    return subprocess.run([sys.executable, "-m", "agegate.edge.cli", *map(str, args)], env=full,
                          capture_output=True, text=True, timeout=120)


def test_uncommenting_the_whole_example_file_is_a_valid_configuration(tmp_path):
    # Every `# AGEGATE_X=default` line uncommented, empty ones included: empty means the default.
    lines = re.findall(r"^# (AGEGATE_[A-Z0-9_]+=.*)$", (ROOT / "config.example.env").read_text(), re.M)
    env = tmp_path / "agegate.env"
    env.write_text("\n".join(lines) + "\n")
    assert "AGEGATE_MODEL_DIR=" in lines and "AGEGATE_MQTT_CA_FILE=" in lines
    s = load_settings(env)
    assert s == Settings()
    r = _cli("check", "--timeout", "0.2", "--env-file", env, AGEGATE_MQTT_PORT="1")
    assert "OK   config" in r.stdout and r.returncode != EX_CONFIG, r.stdout + r.stderr


def test_misspelled_setting_stops_start_up_naming_the_closest(tmp_path):
    env = tmp_path / "agegate.env"
    env.write_text("AGEGATE_CHALENGE_AGE=30\n")
    r = _cli("run", "--env-file", env)
    assert r.returncode == EX_CONFIG
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "AGEGATE_CHALENGE_AGE" in lines[0] and "did you mean AGEGATE_CHALLENGE_AGE" in lines[0]
    r = _cli("check", AGEGATE_MQTT_PROT="1884")
    assert r.returncode == EX_CONFIG and "AGEGATE_MQTT_PROT (environment)" in r.stderr and "AGEGATE_MQTT_PORT" in r.stderr


def test_names_read_outside_settings_are_not_rejected(monkeypatch, tmp_path):
    monkeypatch.setenv("AGEGATE_SHARED_DIR", str(tmp_path))
    monkeypatch.setenv("AGEGATE_CACHE_DIR", str(tmp_path))
    assert load_settings().challenge_age == 25


def test_every_bad_value_is_reported_at_once(monkeypatch):
    monkeypatch.setenv("AGEGATE_MQTT_PORT", "70000")
    monkeypatch.setenv("AGEGATE_DETECTOR", "magic")
    monkeypatch.setenv("AGEGATE_TIL_ID", "t")
    with pytest.raises(ConfigError) as err:
        load_settings()
    text = str(err.value)
    assert "\n" not in text
    assert "AGEGATE_MQTT_PORT" in text and "AGEGATE_DETECTOR:" in text and "AGEGATE_TIL_ID" in text


def test_config_command_shows_each_value_and_its_source(tmp_path):
    env = tmp_path / "agegate.env"
    env.write_text("AGEGATE_TILL_ID=till-7\nAGEGATE_CHALLENGE_AGE=21\nAGEGATE_HTTP_TOKEN=0123456789abcdef0123\n")
    r = _cli("config", "--json", "--env-file", env, AGEGATE_CHALLENGE_AGE="30")
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert set(rows) == {"AGEGATE_" + n.upper() for n in Settings.model_fields}
    assert rows["AGEGATE_TILL_ID"] == {"value": "till-7", "source": f"env file {env}"}
    assert rows["AGEGATE_CHALLENGE_AGE"] == {"value": 30.0, "source": "environment"}
    assert rows["AGEGATE_STORE_ID"] == {"value": "store-1", "source": "default"}
    assert rows["AGEGATE_HTTP_TOKEN"]["value"] != "0123456789abcdef0123" and "0123456789abcdef" not in r.stdout
    r = _cli("config", "--env-file", env)
    line = next(line for line in r.stdout.splitlines() if line.startswith("AGEGATE_TILL_ID "))
    assert "till-7" in line and str(env) in line
