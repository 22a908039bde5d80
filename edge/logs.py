"""Log output for the daemon and the CLI: plain text on a terminal, journald's form under systemd,
or one JSON object a line (AGEGATE_LOG_FORMAT); and quiet native libraries for one-shot commands.

Under systemd the journal stamps each line itself and reads a ``<N>`` prefix as the line's syslog
priority (SyslogLevelPrefix=, on by default), so ``journalctl -p warning`` finds our warnings; a
second timestamp would only clutter ``journalctl``. systemd sets ``JOURNAL_STREAM`` to the
device and inode of the stream it connected to stderr (systemd.exec(5)); we use the journal's
form only when stderr is still that stream, not when the output was redirected elsewhere.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import tempfile
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Iterator, Literal

LogFormat = Literal["auto", "text", "journal", "json"]

# syslog priorities (sd-daemon(3)'s SD_ERR … SD_DEBUG)
PRIORITY = {logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6, logging.DEBUG: 7}
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# Lines native libraries print on stderr by themselves, meaning nothing to a user of check or estimate.
NATIVE_NOISE = (
    re.compile(r"^INFO: Created TensorFlow Lite XNNPACK delegate for CPU\.$"),  # LiteRT, on every model load
)


def under_journald(stream=None) -> bool:
    """Whether ``stream`` (stderr) is the journal stream systemd set up (JOURNAL_STREAM=dev:inode)."""
    value = os.environ.get("JOURNAL_STREAM", "")
    try:
        dev, ino = (int(x) for x in value.split(":"))
        st = os.fstat((stream or sys.stderr).fileno())
    except (ValueError, OSError, AttributeError):
        return False
    return (st.st_dev, st.st_ino) == (dev, ino)


class JournalFormatter(logging.Formatter):
    """``<priority>logger: message``; a traceback's lines each carry the priority too."""

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{PRIORITY.get(record.levelno, 6 if record.levelno < logging.WARNING else 3)}>"
        text = f"{record.name}: {record.getMessage()}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return "\n".join(prefix + line for line in text.splitlines())


class JsonFormatter(logging.Formatter):
    """One JSON object a line: ts (UTC, ISO 8601), level, priority, logger, message, exc (a traceback)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "priority": PRIORITY.get(record.levelno, 6),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def setup_logging(level: str, fmt: LogFormat = "auto") -> str:
    """Configure the root logger on stderr; returns the format chosen ("auto" resolved)."""
    if fmt == "auto":
        fmt = "journal" if under_journald() else "text"
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter({"journal": JournalFormatter(), "json": JsonFormatter()}.get(fmt) or logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    return fmt


def quiet_opencv() -> None:
    """OpenCV's own ``[ WARN:…]`` lines (a camera index it cannot open, …) bypass our log format and
    repeat what our messages say in their words; errors still come through."""
    import cv2

    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)


@contextmanager
def native_stderr_filtered(noise=NATIVE_NOISE) -> Iterator[None]:
    """Run the body with file descriptor 2 captured, then pass on every line that is not ``noise``.

    Native libraries write to the descriptor, not to sys.stderr, so only this catches them. Only for
    short, single-threaded steps (loading a model): other threads' stderr is delayed meanwhile.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            for line in captured.read().decode("utf-8", "replace").splitlines():
                if not any(p.match(line) for p in noise):
                    print(line, file=sys.stderr)
