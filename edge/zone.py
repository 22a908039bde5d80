"""The customer zone in force: AGEGATE_CUSTOMER_ZONE, or the one an installer saved from the console.

The saved zone is ``{state_dir}/zone.json`` (``{"customer_zone": "x0,y0,x1,y1", "saved_at": …}``),
written atomically; the env file stays the source of the default. At start-up a saved zone
wins; one that cannot be read or is invalid is logged and the default used instead.

The vision loop reads :attr:`ZoneStore.current` on every frame, so a zone saved or reset takes
effect at the next frame; nothing else hands the zone to the loop.

Threading: the console (HTTP workers) saves and resets, the vision thread reads
:attr:`current` (one attribute, replaced whole); one lock orders the writes.
"""

from __future__ import annotations

import json
import logging
import threading
from datetime import datetime, timezone
from pathlib import Path

from ..files import write_atomically
from .detectors import Zone

log = logging.getLogger(__name__)

FILE_NAME = "zone.json"


def zone_text(zone: Zone) -> str:
    """``"x0,y0,x1,y1"`` as AGEGATE_CUSTOMER_ZONE writes it."""
    return ",".join(f"{v:g}" for v in (zone.x0, zone.y0, zone.x1, zone.y1))


def zone_dict(zone: Zone) -> dict[str, float]:
    return {"x0": zone.x0, "y0": zone.y0, "x1": zone.x1, "y1": zone.y1}


class ZoneStore:
    def __init__(self, state_dir: Path, default: Zone):
        self.path = Path(state_dir) / FILE_NAME
        self.default = default
        self._lock = threading.Lock()
        self.current, self.saved = self._load()

    def _load(self) -> tuple[Zone, bool]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return self.default, False
        except OSError as exc:
            log.error("customer zone: cannot read %s (%s); using AGEGATE_CUSTOMER_ZONE", self.path, exc.strerror or exc)
            return self.default, False
        try:
            zone = Zone.parse(json.loads(text)["customer_zone"])
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            log.error("customer zone: %s is not usable (%s); using AGEGATE_CUSTOMER_ZONE", self.path, exc)
            return self.default, False
        log.info("customer zone %s (saved from the console in %s)", zone_text(zone), self.path)
        return zone, True

    def save(self, zone: Zone) -> None:
        """Write the zone to zone.json (OSError when the state directory is unusable), then use it."""
        body = json.dumps({"customer_zone": zone_text(zone),
                           "saved_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}) + "\n"
        with self._lock:
            write_atomically(self.path, body)
            self.current, self.saved = zone, True
        log.info("customer zone set to %s from the console", zone_text(zone))

    def reset(self) -> None:
        """Forget the saved zone: back to AGEGATE_CUSTOMER_ZONE."""
        with self._lock:
            self.path.unlink(missing_ok=True)
            self.current, self.saved = self.default, False
        log.info("customer zone reset to AGEGATE_CUSTOMER_ZONE %s", zone_text(self.default))
