"""Daemon settings: environment variables prefixed ``AGEGATE_``, an optional env file, and
(under systemd) a secrets directory. Every setting, with its default, is documented in
``config.example.env``; tests/test_config.py checks the two stay in step.

A bad value, or an ``AGEGATE_*`` name that is no setting (a typo would otherwise be silently
ignored), stops start-up with one line naming every such setting (exit code 78, EX_CONFIG). An
empty value means the setting's default, as config.example.env says.
"""

from __future__ import annotations

import difflib
import os
import re
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, DotEnvSettingsSource, PydanticBaseSettingsSource, SettingsConfigDict
from pydantic_settings.sources.utils import parse_env_vars

from ..ages import CHALLENGE_AGE, LEGAL_AGE
from .envfile import parse_env_file

from .bundle import QualityFloors
from .detectors import Zone

EX_CONFIG = 78
ENV_PREFIX = "AGEGATE_"
# Where the daemon looks for its default bundle when AGEGATE_MODEL_DIR is not set.
DEFAULT_BUNDLE_DIR = Path(__file__).with_name("default_bundle")
# Shipped beside the default: dlib's CC0 age net as published, trained on no data of ours, so a
# retailer may deploy it commercially (AGEGATE_MODEL_DIR=<this folder>); docs/model-card.md compares the two.
CC0_BUNDLE_DIR = Path(__file__).with_name("cc0_bundle")
# The HTTP server may listen here without AGEGATE_HTTP_TOKEN; anywhere else needs one.
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
# AGEGATE_* variables that are not daemon settings but are read by other parts of the project, so
# the daemon must not reject them when they are in its environment (a developer's shell, the tests).
NOT_SETTINGS = {
    "AGEGATE_SHARED_DIR",  # where tests/conftest.py and benchmarks/__main__.py find the shared data sets
    "AGEGATE_CACHE_DIR",  # training/faces.py's cache of detections and crops (set by tests/conftest.py)
}


class ConfigError(Exception):
    """One line naming the bad setting and why."""


class SystemdEnvFileSource(DotEnvSettingsSource):
    """pydantic-settings' env-file source, reading the file as systemd's EnvironmentFile= does
    (envfile.py) instead of with python-dotenv's shell-like rules."""

    def _read_env_file(self, file_path: Path):
        values, _problems = parse_env_file(file_path)  # load_settings reports the problems
        return parse_env_vars(values, self.case_sensitive, self.env_ignore_empty, self.env_parse_none_str)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True,
                                      # `AGEGATE_MODEL_DIR=` uncommented from config.example.env means the default
                                      env_ignore_empty=True)

    # Where this till is
    store_id: str = Field(default="store-1", pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    till_id: str = Field(default="till-1", pattern=r"^[A-Za-z0-9_.-]{1,64}$")

    # Camera and faces
    camera: str = "0"
    camera_loop: bool = True
    camera_stall_timeout_s: float = Field(default=5.0, gt=0)
    detector: Literal["yunet", "haar"] = "yunet"
    detector_model: Path | None = None
    min_face_px: int = Field(default=40, ge=8)
    # Frames analysed per second at most (the camera decodes only those); 0: every frame it delivers.
    detect_fps: float = Field(default=10.0, ge=0, le=240)
    # OpenCV's worker threads (detection, decoding helpers); 0: OpenCV's own choice, every core.
    opencv_threads: int = Field(default=1, ge=0, le=64)
    customer_zone: str = "0.15,0.0,0.85,1.0"

    # Age model
    model_dir: Path | None = None
    model_threads: int = Field(default=1, ge=1, le=16)
    # Age estimates per second at most (the tracker follows faces in between); 0: every analysed frame.
    estimate_fps: float = Field(default=5.0, ge=0, le=240)
    model_public_key: Path | None = None

    # Smoothing
    smoothing_window_s: float = Field(default=3.0, gt=0)
    smoothing_samples: int = Field(default=15, ge=1, le=1000)
    face_stale_s: float = Field(default=1.5, gt=0)
    face_min_frames: int = Field(default=3, ge=1, le=100)

    # Decision
    challenge_age: float = Field(default=CHALLENGE_AGE, ge=1, le=100)
    legal_age: float = Field(default=LEGAL_AGE, ge=1, le=100)
    face_wait_s: float = Field(default=1.5, ge=0, le=30)
    max_spread: float = Field(default=8.0, gt=0)
    # challenge_age: flag estimates under the challenge age. calibrated: under the model's
    # calibrated threshold (its manifest's, flagging 99 % of under-18s on its validation faces)
    # when that is higher; never lower than the challenge age.
    decision_threshold: Literal["challenge_age", "calibrated"] = "challenge_age"

    # Quality floors a delivered model's recorded validation figures must clear to be installed
    model_min_under18_flagged: float = Field(default=0.95, ge=0, le=1)
    model_max_mae: float = Field(default=8.0, gt=0)
    model_min_spread: float = Field(default=1.0, ge=0)

    # Till POS API
    http_host: str = "127.0.0.1"
    http_port: int = Field(default=8787, ge=1, le=65535)
    http_max_body: int = Field(default=16384, ge=256)
    # Checked on every request but /healthz when set; required when http_host is not local.
    http_token: SecretStr | None = None
    # Open HTTP connections at most (a new one closes the oldest idle one), and how long a client
    # has to deliver a whole request before its connection is closed: idle or slow clients must
    # not use up the descriptors the till needs. Also capped by the descriptor limit (RLIMIT_NOFILE).
    http_max_connections: int = Field(default=100, ge=4, le=10_000)
    http_request_timeout_s: float = Field(default=10.0, gt=0, le=300)

    # MQTT
    mqtt_host: str = "127.0.0.1"
    mqtt_port: int = Field(default=1883, ge=1, le=65535)
    mqtt_topic_prefix: str = Field(default="agegate", pattern=r"^[^#+\s]+$")
    mqtt_username: str | None = None
    mqtt_password: SecretStr | None = None
    mqtt_tls: bool = False
    mqtt_ca_file: Path | None = None
    mqtt_cert_file: Path | None = None
    mqtt_key_file: Path | None = None
    mqtt_client_id: str | None = None
    mqtt_keepalive_s: int = Field(default=30, ge=5, le=3600)
    stats_interval_s: float = Field(default=30.0, gt=0)

    # Local state: the outbox of events not yet acknowledged by the broker, the decision history
    state_dir: Path = Path("/var/lib/agegate")
    outbox_max_events: int = Field(default=10_000, ge=10, le=10_000_000)
    history_days: int = Field(default=30, ge=1, le=3650)  # the console's decision history keeps this long

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # auto: journald's form (priority prefixes, no timestamp) when stderr is systemd's journal stream, else text.
    log_format: Literal["auto", "text", "journal", "json"] = "auto"

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings: PydanticBaseSettingsSource,
                                   env_settings: PydanticBaseSettingsSource, dotenv_settings: PydanticBaseSettingsSource,
                                   file_secret_settings: PydanticBaseSettingsSource):
        env_file = dotenv_settings.env_file  # type: ignore[attr-defined]  (load_settings' _env_file)
        return init_settings, env_settings, SystemdEnvFileSource(settings_cls, env_file=env_file), file_secret_settings

    @property
    def uses_calibrated_threshold(self) -> bool:
        """Decisions (and the quality floors) at the model's calibrated threshold, not the challenge age."""
        return self.decision_threshold == "calibrated"

    @property
    def quality_floors(self) -> QualityFloors:
        return QualityFloors(min_under18_flagged=self.model_min_under18_flagged, max_mae=self.model_max_mae,
                             min_prediction_spread=self.model_min_spread)

    @field_validator("customer_zone")
    @classmethod
    def _zone(cls, v: str) -> str:
        Zone.parse(v)  # raises ValueError with the reason
        return v

    # The unit's LoadCredential= needs both files to exist: an empty one means no secret. (The
    # secrets directory is read without env_ignore_empty, which covers the environment only.)
    @field_validator("http_token", "mqtt_password")
    @classmethod
    def _unset_if_empty(cls, v: SecretStr | None) -> SecretStr | None:
        return v if v is not None and v.get_secret_value() else None

    @field_validator("detector_model", "mqtt_ca_file", "mqtt_cert_file", "mqtt_key_file", "model_public_key")
    @classmethod
    def _readable_file(cls, v: Path | None) -> Path | None:
        if v is not None and not (v.is_file() and os.access(v, os.R_OK)):
            raise ValueError(f"{v} is not a readable file")
        return v

    @field_validator("model_dir")
    @classmethod
    def _directory(cls, v: Path | None) -> Path | None:
        if v is not None and not v.is_dir():
            raise ValueError(f"{v} is not a directory")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> "Settings":
        if self.legal_age > self.challenge_age:
            raise ValueError(
                f"AGEGATE_LEGAL_AGE ({self.legal_age:g}) must not exceed AGEGATE_CHALLENGE_AGE ({self.challenge_age:g})"
            )
        if (self.mqtt_cert_file is None) != (self.mqtt_key_file is None):
            raise ValueError("AGEGATE_MQTT_CERT_FILE and AGEGATE_MQTT_KEY_FILE go together")
        if self.mqtt_password is not None and self.mqtt_username is None:
            raise ValueError("AGEGATE_MQTT_PASSWORD is set but AGEGATE_MQTT_USERNAME is not")
        if self.http_token is None and self.http_host not in LOCAL_HOSTS:
            raise ValueError(f"AGEGATE_HTTP_TOKEN is required when AGEGATE_HTTP_HOST ({self.http_host}) is not "
                             "127.0.0.1, localhost or ::1")
        if self.http_token is not None and not re.fullmatch(r"[A-Za-z0-9._~-]{16,}", self.http_token.get_secret_value()):
            raise ValueError("AGEGATE_HTTP_TOKEN must be at least 16 characters of A-Z a-z 0-9 . _ ~ - "
                             "(e.g. from `openssl rand -hex 32`)")
        return self

    @property
    def zone(self) -> Zone:
        return Zone.parse(self.customer_zone)

    @property
    def bundle_dir(self) -> Path:
        return self.model_dir or DEFAULT_BUNDLE_DIR

    @property
    def topic_base(self) -> str:
        return f"{self.mqtt_topic_prefix}/{self.store_id}/{self.till_id}"


def load_settings(env_file: str | os.PathLike[str] | None = None, secrets_dir: str | None = None) -> Settings:
    """Settings from the environment (and ``env_file``), or ConfigError naming every bad one.

    ``secrets_dir`` defaults to systemd's ``$CREDENTIALS_DIRECTORY`` (``LoadCredential=``),
    where a file named ``AGEGATE_MQTT_PASSWORD`` holds that secret.
    """
    if env_file is not None and not Path(env_file).is_file():
        raise ConfigError(f"--env-file: {env_file} does not exist")
    secrets_dir = secrets_dir or os.environ.get("CREDENTIALS_DIRECTORY")
    try:  # lines systemd would not read as meant
        problems = parse_env_file(env_file)[1] if env_file is not None else []
    except OSError as exc:
        raise ConfigError(f"--env-file: {env_file}: {exc.strerror or exc}") from None
    problems += [f"{name}{where}: no such setting{_did_you_mean(name)}" for name, where in _unknown_names(env_file)]
    try:
        settings = Settings(_env_file=env_file, _secrets_dir=secrets_dir)  # type: ignore[call-arg]
    except ValidationError as exc:
        problems += _problems(exc)
    if problems:
        raise ConfigError("; ".join(problems))
    return settings


def setting_names() -> list[str]:
    return [ENV_PREFIX + name.upper() for name in Settings.model_fields]


def _env_file_values(env_file: str | os.PathLike[str] | None) -> dict[str, str]:
    return parse_env_file(env_file)[0] if env_file is not None else {}


def _unknown_names(env_file: str | os.PathLike[str] | None) -> list[tuple[str, str]]:
    """``AGEGATE_*`` names in the environment and the env file that are neither settings nor NOT_SETTINGS."""
    known = set(setting_names()) | NOT_SETTINGS
    found = [(k, " (environment)") for k in os.environ] + [(k, f" (in {env_file})") for k in _env_file_values(env_file)]
    # Settings match names case-insensitively, as pydantic-settings does.
    return [(name, where) for name, where in found
            if name.upper().startswith(ENV_PREFIX) and name.upper() not in known]


def _did_you_mean(name: str) -> str:
    close = difflib.get_close_matches(name.upper(), setting_names(), n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


def _problems(exc: ValidationError) -> list[str]:
    return [_describe_error(err) for err in exc.errors()]


def _describe_error(err) -> str:
    loc = [str(p) for p in err["loc"]]
    msg = err["msg"].removeprefix("Value error, ")
    if not loc:  # a cross-field check: its message names the settings itself
        return f"invalid configuration: {msg}"
    name = ENV_PREFIX + loc[0].upper()
    value = err.get("input")
    shown = "" if value is None or ("password" in name.lower() or "token" in name.lower()) else f" (got {str(value)[:80]!r})"
    return f"{name}: {msg}{shown}"


def setting_sources(env_file: str | os.PathLike[str] | None = None, secrets_dir: str | None = None) -> dict[str, str]:
    """Where each setting's value comes from, in the order pydantic-settings looks: the environment,
    the env file, the credentials directory, else the default. Empty values count as unset."""
    secrets_dir = secrets_dir or os.environ.get("CREDENTIALS_DIRECTORY")
    environ = {k.upper(): v for k, v in os.environ.items()}
    in_file = {k.upper(): v for k, v in _env_file_values(env_file).items()}
    sources = {}
    for name in setting_names():
        if environ.get(name):
            sources[name] = "environment"
        elif in_file.get(name):
            sources[name] = f"env file {env_file}"
        elif secrets_dir and (Path(secrets_dir) / name).is_file():
            sources[name] = f"credential {Path(secrets_dir) / name}"
        else:
            sources[name] = "default"
    return sources
