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


def test_credential_files_as_deploy_md_writes_them(tmp_path, monkeypatch):
    """The unit loads both credentials, so both files exist: `openssl rand -hex 32 >` leaves a
    newline, and an empty file is a till without that secret (no token; a broker without passwords)."""
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "AGEGATE_HTTP_TOKEN").write_text("0123456789abcdef0123456789abcdef\n")
    (creds / "AGEGATE_MQTT_PASSWORD").write_text("")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    s = load_settings()
    assert s.http_token.get_secret_value() == "0123456789abcdef0123456789abcdef"
    assert s.mqtt_password is None  # was "set but AGEGATE_MQTT_USERNAME is not"
    (creds / "AGEGATE_HTTP_TOKEN").write_text("")
    assert load_settings().http_token is None


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


# Cases from systemd.exec(5)'s EnvironmentFile= description. Empty values and `$` are left out of the
# comparison with systemd's own parser below: its environment.d reader (the one systemd parser that
# runs without a service manager) drops empty values and expands $VAR, which EnvironmentFile= does not.
SYSTEMD_CASES = (
    "T_PLAIN=value\n"
    "T_HASH=1 # not a comment: only a line's first character starts one\n"
    "  T_BLANKS  =  inner  blanks  kept  \t\n"
    "T_SINGLE='verbatim \\n \\\\ \"quotes\"'\n"
    "T_DOUBLE=\"esc \\\" \\\\ kept \\q \\n\"\n"
    "T_MULTI='two\nlines'\n"
    "T_JOINED=one\\\ntwo\n"
    "T_DQJOINED=\"one\\\ntwo\"\n"
    "T_BACKSLASH=a\\\\b\\c\n"
    "T_MIXED=\"a\"b'c'\n"
    "T_AFTER=\"x\"  y\n"
    "T_LEAD=\\ lead\n"
    "T_TAIL=tail\\ \n"
    "T_CRLF=dos\r\n"
    "export T_EXPORT=1\n"
    "; T_SEMI=1\n"
    "# T_COMMENTED=1\n"
    "   # T_INDENTED_COMMENT=1\n"
    "T_NO_EQUALS\n"
    "T_LAST=end"
)
SYSTEMD_EXPECTED = {
    "T_PLAIN": "value", "T_HASH": "1 # not a comment: only a line's first character starts one",
    "T_BLANKS": "inner  blanks  kept", "T_SINGLE": 'verbatim \\n \\\\ "quotes"', "T_DOUBLE": 'esc " \\ kept \\q \\n',
    "T_MULTI": "two\nlines", "T_JOINED": "onetwo", "T_DQJOINED": "onetwo", "T_BACKSLASH": "a\\bc",
    "T_MIXED": "ab'c'", "T_AFTER": "xy", "T_LEAD": " lead", "T_TAIL": "tail ", "T_CRLF": "dos", "T_LAST": "end",
}


def test_env_file_is_read_as_systemd_reads_it():
    from agegate.edge.envfile import parse_env_text

    values, problems = parse_env_text(SYSTEMD_CASES, "agegate.env")
    assert values == SYSTEMD_EXPECTED
    # What systemd ignores is said, with its line: a setting written so would silently not apply.
    assert any(p.startswith("agegate.env:18: 'export T_EXPORT'") and "no `export`" in p for p in problems), problems
    assert any(p.startswith("agegate.env:22: no '=' in 'T_NO_EQUALS'") for p in problems), problems
    assert len(problems) == 2, problems


GENERATOR = Path("/usr/lib/systemd/user-environment-generators/30-systemd-environment-d-generator")


@pytest.mark.skipif(not GENERATOR.exists(), reason="systemd's environment.d generator is not installed")
def test_env_file_reader_agrees_with_systemds_own_parser(tmp_path):
    """systemd's env-file parser (env-file.c) as systemd itself runs it, on the same text."""
    import codecs
    import os

    from agegate.edge.envfile import parse_env_text

    (tmp_path / "environment.d").mkdir()
    (tmp_path / "environment.d" / "agegate.conf").write_text(SYSTEMD_CASES)
    out = subprocess.run([str(GENERATOR)], env={"XDG_CONFIG_HOME": str(tmp_path), "PATH": os.environ["PATH"]},
                         capture_output=True, text=True, timeout=30, check=True).stdout
    theirs = {}
    for line in out.splitlines():
        name, _, value = line.partition("=")
        if name.startswith("T_"):  # the machine's /etc/environment.d adds its own
            if value.startswith('"'):  # printed C-escaped in double quotes
                value = codecs.decode(value[1:-1], "unicode_escape")
            theirs[name] = value
    assert parse_env_text(SYSTEMD_CASES)[0] == theirs == SYSTEMD_EXPECTED


def test_check_refuses_an_env_file_systemd_would_read_otherwise(tmp_path):
    # python-dotenv read these as AGEGATE_CHALLENGE_AGE=30 and a store id; systemd does not.
    env = tmp_path / "agegate.env"
    env.write_text("AGEGATE_CHALLENGE_AGE=30 # the chain's policy\nexport AGEGATE_STORE_ID=store-9\n"
                   "AGEGATE_TILL_ID='till-2'\n")
    r = _cli("check", "--env-file", env)
    assert r.returncode == EX_CONFIG
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "AGEGATE_CHALLENGE_AGE: Input should be a valid number" in lines[0] and "30 # the chain's policy" in lines[0]
    assert f"{env}:2: 'export AGEGATE_STORE_ID' is not a variable name" in lines[0]
    # The same value as a real environment variable fails the same way.
    r = _cli("check", AGEGATE_CHALLENGE_AGE="30 # the chain's policy")
    assert r.returncode == EX_CONFIG and "AGEGATE_CHALLENGE_AGE: Input should be a valid number" in r.stderr
    # Quotes are systemd's too: 'till-2' is till-2.
    env.write_text("AGEGATE_TILL_ID='till-2'\nAGEGATE_STORE_ID=\"store 9\"\n")
    r = _cli("config", "--json", "--env-file", env)
    assert r.returncode == EX_CONFIG and "AGEGATE_STORE_ID" in r.stderr and "'store 9'" in r.stderr
    env.write_text("AGEGATE_TILL_ID='till-2'\n")
    assert json.loads(_cli("config", "--json", "--env-file", env).stdout)["AGEGATE_TILL_ID"]["value"] == "till-2"
