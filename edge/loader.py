"""The one place that loads what the till runs: the model store, the age model, the detector.

The daemon, ``agegate-edge check`` and ``agegate-edge estimate`` all load through here, so
the command line answers with the model the daemon runs: the store's installed, active
bundle first, then AGEGATE_MODEL_DIR, then the bundle shipped with agegate.

Nothing here imports the daemon's server parts (FastAPI, uvicorn, the console).
"""

from __future__ import annotations

import logging

from .age_model import AgeModel
from .bundle import BundleError
from .config import Settings
from .detectors import Detector, DetectorError, create_detector
from .model_store import ModelStore

log = logging.getLogger(__name__)


class StartupError(Exception):
    """A fault that stops start-up; the message names the setting or part at fault."""


class StateDirUnusable(StartupError):
    """The state directory cannot hold installed models: the daemon runs on without model delivery."""


def load_public_key(settings: Settings):
    """The key that signs model bundles (AGEGATE_MODEL_PUBLIC_KEY), or None when signatures are off."""
    if settings.model_public_key is None:
        return None
    from .signing import load_public_key as load

    try:
        return load(settings.model_public_key)
    except ValueError as exc:
        raise StartupError(f"AGEGATE_MODEL_PUBLIC_KEY: {exc}") from None


def open_model_store(settings: Settings, *, create: bool = True) -> ModelStore | None:
    """The till's model store under AGEGATE_STATE_DIR; StartupError names the setting at fault.

    ``create=False`` is for commands that only look (``check``, ``estimate``): where no model
    was ever installed there is no store to open, and None says so without creating folders."""
    if not create and not ModelStore.state_file_in(settings.state_dir).is_file():
        return None
    key = load_public_key(settings)
    try:
        return ModelStore(settings.state_dir, key, num_threads=settings.model_threads,
                          floors=settings.quality_floors, calibrated=settings.uses_calibrated_threshold)
    except OSError as exc:
        raise StateDirUnusable(f"AGEGATE_STATE_DIR: cannot keep installed models in {settings.state_dir}: "
                           f"{exc.strerror or exc}") from None


def load_model(settings: Settings, store: ModelStore | None) -> AgeModel:
    """The model the till runs: the store's active bundle, else AGEGATE_MODEL_DIR, else the
    bundle shipped with agegate (trusted like the code itself).

    ``store`` is None only where the state directory cannot be used (the caller said so):
    then there is no installed model to prefer."""
    active = store.active_dir() if store else None
    if active is not None:
        try:
            return store.check(active)
        except BundleError as exc:
            log.error("installed model %s cannot be used (%s); falling back to %s", active, exc, settings.bundle_dir)
    try:
        if settings.model_dir is not None and store is not None:
            return store.check(settings.model_dir, require_self_test=False)
        return AgeModel.from_dir(settings.bundle_dir, num_threads=settings.model_threads)
    except BundleError as exc:
        where = "AGEGATE_MODEL_DIR" if settings.model_dir else "default model bundle"
        raise StartupError(f"{where}: {exc}") from None


def load_detector(settings: Settings) -> Detector:
    try:
        return create_detector(settings.detector, settings.detector_model, min_face_px=settings.min_face_px)
    except DetectorError as exc:
        raise StartupError(f"AGEGATE_DETECTOR: {exc}") from None
