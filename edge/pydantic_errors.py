"""One sentence for a refusal by pydantic: ``"where: why"`` from the first error it found.

Used wherever input from outside is validated and refused with a reason: a POS message over
HTTP (api.py) or MQTT (mqtt.py), a bundle's manifest (bundle.py, model_store.py). A person reads
it in a log or a 422, so one problem, named by its place in the input, is clearer than
pydantic's whole report. (config.py reports every problem at once instead, each named as the
AGEGATE_ setting an operator writes, which is a different job.)
"""

from __future__ import annotations

from typing import Any


def first_error(exc: BaseException, whole: str = "body") -> str:
    """``"loc.path: message"`` for the first error of a pydantic ``ValidationError`` (or FastAPI's
    ``RequestValidationError``); ``whole`` names the input when the error is about all of it
    (an empty location). Any other exception (a plain ValueError) is its own text."""
    errors = getattr(exc, "errors", None)
    if not callable(errors):
        return str(exc)
    found: list[dict[str, Any]] = list(errors())
    if not found:
        return f"{whole}: invalid"
    where = ".".join(str(p) for p in found[0]["loc"]) or whole
    return f"{where}: {found[0]['msg']}"
