"""What the daemon says and hears: the POS messages it accepts and every MQTT payload it publishes.

Each payload is a versioned pydantic model; ``python -m agegate.edge.events docs/schemas``
writes their JSON Schemas, which docs/mqtt.md describes for backend developers. A change
that breaks a consumer bumps SCHEMA_VERSION, and so does one that gives the summaries new
meaning (docs/mqtt.md says what each version changed). Payloads carry numbers only, never pictures.

This module imports pydantic and nothing heavier: the backend (agegate.backend) validates
what it receives with these very models, and must not pull in the till's OpenCV.
"""

from __future__ import annotations

import json
import sys
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from .. import ages
from ..ages import BAND_NAMES
from .model_figures import Validation

# 2 (agegate 0.3): summaries count items per POS category and may carry the cashier's operator_id;
# alerts may carry operator_id. Additions only: a version-1 consumer that ignores unknown fields
# keeps working. Version-1 payloads (older tills) still validate: their new fields take defaults.
SCHEMA_VERSION = 2
SCHEMA_VERSIONS = (1, 2)

# The payload's age bands: agegate.ages's table, plus "unknown" for a customer never estimated.
AGE_BAND_NAMES: tuple[str, ...] = (*BAND_NAMES, "unknown")  # in age order, unknown last
AgeBand = Literal[AGE_BAND_NAMES]  # type: ignore[valid-type]  # built from AGE_BANDS: one definition


def age_band(age: float | None) -> AgeBand:
    return "unknown" if age is None else ages.age_band(age)  # type: ignore[return-value]


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


# --- What the POS sends ------------------------------------------------------------------


class PosMessage(BaseModel):
    """One message from the till's POS software (HTTP body of POST /v1/pos, or MQTT .../pos)."""

    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)

    type: Literal["transaction_start", "item", "id_checked", "transaction_end"]
    transaction_id: str = Field(min_length=1, max_length=64, pattern=r"^[\x21-\x7e]+$")
    category: str | None = Field(default=None, max_length=64)
    # Strict: JSON true or false only, as the schema says. Lax pydantic took 0, 1, "no", "yes"
    # and guessed; a POS that sends something else must hear so, not have its sale guessed at.
    restricted: bool = Field(default=False, strict=True)
    # The cashier's till login (added in 0.3), on transaction_start: an opaque pseudonym the POS
    # chooses, never a name. The till passes it on unchanged in the sale's alerts and summary.
    operator_id: str | None = Field(default=None, min_length=1, max_length=64, pattern=r"^[\x21-\x7e]+$")


Decision = Literal["clear", "age_check_required", "no_face", "camera_unavailable", "cannot_assess"]


class Estimate(BaseModel):
    """The customer's smoothed age: median of recent per-frame estimates and half their IQR."""

    age: float
    spread: float
    samples: int


class Thresholds(BaseModel):
    challenge_age: float
    legal_age: float
    # The estimate under which the till asks for ID: the challenge age, or the model's calibrated
    # threshold when the till is set to use it (AGEGATE_DECISION_THRESHOLD=calibrated). Added in
    # agegate 0.2; older events leave it out, meaning the challenge age.
    estimate_threshold: float | None = None
    calibrated: bool = False

    @property
    def flag_below(self) -> float:
        return self.estimate_threshold if self.estimate_threshold is not None else self.challenge_age


class ModelRef(BaseModel):
    name: str
    version: str
    sha256: str


class PosAnswer(BaseModel):
    """The daemon's answer to a POS message; for a restricted item it carries the decision."""

    transaction_id: str
    accepted: bool = True
    decision: Decision | None = Field(
        default=None, description="Set for restricted items: what the till should do"
    )
    check_id: bool = Field(default=False, description="True when the cashier must check ID now")
    likely_minor: bool = False
    message: str = ""
    estimate: Estimate | None = None
    thresholds: Thresholds
    alert_event_id: uuid.UUID | None = Field(default=None, description="event_id of the alert published for this decision")
    model: ModelRef | None = None
    unknown_transaction: bool = Field(
        default=False,
        description="True when an id_checked or transaction_end named a transaction that is not open (never started, "
                    "already ended, or ended by a timeout or restart): nothing was recorded or published (added in 0.2)")
    durable: bool = Field(
        default=True,
        description="False when the alert for this decision could not be stored on the till's disk (state disk "
                    "full or unusable): it is held in memory until the broker has it, and a restart before that loses it")


# --- What the daemon publishes ------------------------------------------------------------


class Event(BaseModel):
    """Fields every published payload carries."""

    model_config = ConfigDict(extra="forbid")

    schema_version: Literal[SCHEMA_VERSIONS] = Field(  # type: ignore[valid-type]
        default=SCHEMA_VERSION, description="2 since agegate 0.3; 1 from older tills (docs/mqtt.md: what changed)")
    event_id: uuid.UUID = Field(default_factory=uuid.uuid4, description="Unique per event; use it to de-duplicate")
    timestamp: datetime = Field(default_factory=utcnow, description="UTC, ISO 8601")
    store_id: str
    till_id: str
    model: ModelRef | None = Field(description="The model that made the estimate (null if none is loaded)")

    def to_json(self) -> bytes:
        return self.model_dump_json().encode("utf-8")


AlertType = Literal["age_check_required", "no_face", "unverified_sale", "camera_unavailable", "cannot_assess"]


class Alert(Event):
    """Published on ``{prefix}/{store}/{till}/alerts`` at QoS 1 (not retained)."""

    type: AlertType
    transaction_id: str
    category: str | None = None
    operator_id: str | None = Field(default=None, description="The cashier's opaque till login, when the POS sent one "
                                    "on transaction_start (added in schema version 2)")
    likely_minor: bool = False
    estimate: Estimate | None
    thresholds: Thresholds
    reason: str = Field(description="A sentence for people reading the alert")


class TransactionSummary(Event):
    """One per transaction on ``{prefix}/{store}/{till}/transactions``: anonymous, an age band, never an age."""

    type: Literal["transaction_summary"] = "transaction_summary"
    transaction_id: str
    started_at: datetime
    ended_at: datetime
    ended_by: Literal["pos", "timeout", "evicted", "shutdown", "restart"] = Field(
        default="pos", description="pos: transaction_end; timeout: no POS message for an hour; evicted: more than 64 open; "
                                  "shutdown: the daemon stopped cleanly mid-sale; restart: the daemon was killed mid-sale "
                                  "and ended the sale at its next start (added in 0.2)")
    age_band: AgeBand
    items: int
    restricted_items: int
    items_by_category: dict[str, int] = Field(
        default_factory=dict, description="Items per POS category (added in schema version 2); items the POS sent "
                                          "without a category count in `items` only")
    restricted_items_by_category: dict[str, int] = Field(
        default_factory=dict, description="Restricted items per POS category (added in schema version 2)")
    operator_id: str | None = Field(default=None, description="The cashier's opaque till login, when the POS sent one "
                                    "on transaction_start (added in schema version 2)")
    decision: Decision | None = Field(description="The decision for the first restricted item (null without one)")
    id_checked: bool
    outcome: Literal["no_restricted_items", "clear", "id_checked", "unverified_sale", "not_assessed", "interrupted"] = Field(
        description="interrupted (added in 0.2): a shutdown ended the sale after age_check_required and before an ID "
                    "check was recorded; no unverified_sale is raised for it")
    thresholds: Thresholds


CameraStateName = Literal["starting", "streaming", "reconnecting", "stopped"]


class Status(Event):
    """Retained on ``{prefix}/{store}/{till}/status``. ``offline`` is the broker-published last will."""

    type: Literal["status"] = "status"
    state: Literal["online", "offline", "stopped"]
    camera_state: CameraStateName | None = None
    version: str = Field(description="agegate software version")
    last_model_rejection: str | None = Field(
        default=None, description="Why the last delivered model bundle was refused (null: none since start)")
    thresholds: Thresholds | None = Field(default=None, description="What the till decides with now (added in 0.2)")
    model_validation: Validation | None = Field(
        default=None, description="The model's figures on its validation faces, from its signed manifest: flag rates at the "
                                  "challenge age and at its calibrated threshold (added in 0.2; null for models exported before)")


class Stats(Event):
    """Every AGEGATE_STATS_INTERVAL_S on ``{prefix}/{store}/{till}/stats`` (QoS 0): averages over the interval."""

    type: Literal["stats"] = "stats"
    interval_s: float
    uptime_s: float
    camera_state: CameraStateName
    camera_fps: float
    camera_reconnects: int
    processed_fps: float
    detect_ms: float | None
    infer_ms: float | None
    faces_estimated: int
    decisions: dict[str, int] = Field(description="Decisions made in the interval, by decision")
    pos_rejected: int = Field(description="POS messages rejected in the interval (bad JSON, wrong fields, too large)")
    alerts_published: int
    publish_failures: int
    outbox_ok: bool = Field(description="False when the state directory cannot hold the outbox (events go out live only)")
    outbox_pending: int = Field(description="Events stored and not yet acknowledged by the broker")
    outbox_dropped_alerts: int = Field(description="Alerts dropped because the outbox was full, since start")
    outbox_dropped_summaries: int = Field(description="Summaries dropped because the outbox was full, since start")
    outbox_durable: bool = Field(default=True, description="False when new events cannot be stored on disk now "
                                 "(no outbox, or the state disk is full): they are held in memory only")
    outbox_pending_in_memory: int = Field(default=0, description="Events with no durable copy not yet acknowledged "
                                          "by the broker (lost if the daemon stops before)")
    outbox_quarantined: bool = Field(default=False, description="True when a damaged outbox was moved aside at "
                                     "start-up (outbox.sqlite3.corrupt-*) and a fresh one started with what could be read")


PUBLISHED = {"alert": Alert, "transaction_summary": TransactionSummary, "status": Status, "stats": Stats}


def write_schemas(out_dir: Path) -> list[Path]:
    """Write one JSON Schema file per published payload and one for the POS message."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, model in [*PUBLISHED.items(), ("pos_message", PosMessage), ("pos_answer", PosAnswer)]:
        schema = model.model_json_schema()
        schema["$id"] = f"https://agegate.example/schemas/v{SCHEMA_VERSION}/{name}.json"
        path = out_dir / f"{name}.schema.json"
        path.write_text(json.dumps(schema, indent=2, sort_keys=True) + "\n")
        written.append(path)
    return written


if __name__ == "__main__":
    for p in write_schemas(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/schemas")):
        print(p)
