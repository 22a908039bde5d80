"""Installed model bundles on the till: checked, kept, swapped, rolled back.

Layout under ``{AGEGATE_STATE_DIR}``::

    incoming/              drop a bundle here (a directory or a .tar.gz): the daemon picks it up
    models/bundles/<id>/   installed bundles, each an unpacked copy
    models/rejected/       what failed, with reason.txt beside it
    models/state.json      {"active": …, "previous": …, "last_rejected": …}

A bundle is taken into service only after every check passes: sha256 of each file, the
Ed25519 signature when the till has a public key (without one: a warning that signatures
are off), a manifest this software understands, a model whose input matches it, and the
self-test — the golden faces packed at export must come back with their recorded ages.
Then ``state.json`` is replaced atomically (previous := active, active := new). A bundle
failing any check is moved to ``rejected/`` with its reason and the running model stays.

Both the daemon (which scans ``incoming/`` and follows ``state.json``) and the CLI
(``agegate-edge model install|status|rollback``) use this class; an flock on
``models/.lock`` keeps them from interleaving.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import tarfile
import tempfile
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from .age_model import AgeModel
from .bundle import Bundle, BundleError, QualityFloors, load_bundle, quality_problems

log = logging.getLogger(__name__)

MAX_ARCHIVE_BYTES = 512 * 1024 * 1024  # unpacked size of an incoming .tar.gz
SETTLE_S = 2.0  # an incoming entry must be unchanged this long: scp writes files in place


class ModelStore:
    def __init__(self, state_dir: Path, public_key: Any | None = None, num_threads: int = 1, floors: QualityFloors | None = QualityFloors()):
        self.state_dir = Path(state_dir)
        self.incoming = self.state_dir / "incoming"
        self.root = self.state_dir / "models"
        self.bundles = self.root / "bundles"
        self.rejected = self.root / "rejected"
        self.state_file = self.root / "state.json"
        self.public_key = public_key
        self.num_threads = num_threads
        self.floors = floors  # None: quality floors reported, not enforced
        self._seen: dict[str, tuple[float, int, float]] = {}  # incoming name -> (mtime, size, first seen)
        for d in (self.incoming, self.bundles, self.rejected):
            d.mkdir(parents=True, exist_ok=True)

    # --- checks ---------------------------------------------------------------------------------

    def check(self, path: Path, require_self_test: bool = True) -> AgeModel:
        """Every check a bundle must pass before service; returns the loaded model or raises BundleError.

        ``require_self_test=False`` is for AGEGATE_MODEL_DIR, set by hand: golden faces are
        then run only when the bundle has them, and the quality floors are logged, not enforced.
        """
        bundle = load_bundle(path)  # manifest schema, file hashes
        if self.public_key is not None:
            from .signing import verify_signature

            verify_signature(bundle, self.public_key)  # the validation figures below are signed with the manifest
        else:
            log.warning("no AGEGATE_MODEL_PUBLIC_KEY: bundle signatures are not checked (sha256 only)")
        problems = quality_problems(bundle.manifest, self.floors or QualityFloors())
        if problems and require_self_test and self.floors is not None:
            raise BundleError(f"{bundle.manifest.name} {bundle.manifest.version}: below the quality floors: {'; '.join(problems)}")
        for problem in problems if not require_self_test else ():
            log.warning("model %s is below the quality floors (not enforced for AGEGATE_MODEL_DIR): %s", path, problem)
        model = AgeModel(bundle, num_threads=self.num_threads)  # input shape vs manifest, model loads
        if require_self_test or model.manifest.self_test is not None:
            self_test(model)
        return model

    # --- install, rollback, status ------------------------------------------------------------------

    def install(self, source: Path) -> dict[str, Any]:
        """Check ``source`` (directory or .tar.gz) and make it the active model; raise BundleError if refused."""
        source = Path(source)
        with self._locked(), tempfile.TemporaryDirectory(dir=self.root, prefix=".staging-") as tmp:
            staged = Path(tmp) / "bundle"
            try:
                _unpack(source, staged)
                self.check(staged)
            except BundleError as exc:
                self._reject(source, str(exc))
                raise
            bundle = load_bundle(staged)
            m = bundle.manifest
            target = self.bundles / f"{m.sha256[:16]}-{_safe(m.name)}-{_safe(m.version)}"
            if not target.exists():
                os.replace(staged, target)
            record = {"name": m.name, "version": m.version, "sha256": m.sha256, "variant": m.variant,
                      "path": str(target), "installed_at": _now()}
            state = self._read_state()
            if state.get("active", {}).get("path") != str(target):
                state["previous"], state["active"] = state.get("active"), record
            self._write_state(state)
            log.info("model %s %s (sha256 %s…) installed and active", m.name, m.version, m.sha256[:12])
            return record

    def rollback(self) -> dict[str, Any]:
        """Swap active and previous; raise BundleError when there is no previous model."""
        with self._locked():
            state = self._read_state()
            if not state.get("previous"):
                raise BundleError("no previous model to roll back to")
            state["active"], state["previous"] = state["previous"], state.get("active")
            self._write_state(state)
            log.warning("rolled back to model %s %s", state["active"]["name"], state["active"]["version"])
            return state["active"]

    def status(self) -> dict[str, Any]:
        return self._read_state()

    def active_dir(self) -> Path | None:
        active = self._read_state().get("active")
        return Path(active["path"]) if active else None

    # --- the incoming folder ------------------------------------------------------------------------

    def scan_incoming(self, now: float | None = None) -> list[tuple[str, str]]:
        """Install or reject each settled entry of ``incoming/``; returns (name, outcome) pairs."""
        now = time.monotonic() if now is None else now
        outcomes = []
        names = set()
        for entry in sorted(self.incoming.iterdir()):
            if entry.name.startswith("."):  # rsync's temporary files, our own staging
                continue
            names.add(entry.name)
            mark = _fingerprint(entry)
            seen = self._seen.get(entry.name)
            if seen is None or seen[:2] != mark:
                self._seen[entry.name] = (*mark, now)
                continue
            if now - seen[2] < SETTLE_S or time.time() - mark[0] < SETTLE_S:
                continue
            try:
                record = self.install(entry)
                outcomes.append((entry.name, f"installed {record['name']} {record['version']}"))
            except BundleError as exc:
                outcomes.append((entry.name, f"rejected: {exc}"))
            finally:
                _remove(entry)
                self._seen.pop(entry.name, None)
        for gone in set(self._seen) - names:
            del self._seen[gone]
        return outcomes

    # --- bookkeeping --------------------------------------------------------------------------------

    def _reject(self, source: Path, reason: str) -> None:
        name = f"{time.strftime('%Y%m%dT%H%M%S')}-{_safe(source.name)}"
        (self.rejected / name).mkdir(parents=True, exist_ok=True)
        (self.rejected / name / "reason.txt").write_text(reason + "\n")
        state = self._read_state()
        state["last_rejected"] = {"source": source.name, "reason": reason, "at": _now()}
        self._write_state(state)
        log.error("model bundle %s rejected: %s", source.name, reason)

    def _read_state(self) -> dict[str, Any]:
        try:
            return json.loads(self.state_file.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.error("%s unreadable (%s); treating as empty", self.state_file, exc)
            return {}

    def _write_state(self, state: dict[str, Any]) -> None:
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2) + "\n")
        os.replace(tmp, self.state_file)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with open(self.root / ".lock", "w") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)


def self_test(model: AgeModel) -> None:
    """Run the bundle's golden faces; raise BundleError if any age differs by more than its tolerance."""
    spec, golden = model.manifest.self_test, model.bundle.golden
    if spec is None or golden is None:
        raise BundleError(f"{model.bundle.path}: no self-test faces in the bundle (export packs them)")
    faces, expected = golden
    try:
        got = model.predict_prepared(faces)
    except Exception as exc:
        raise BundleError(f"{model.bundle.path}: self-test failed to run: {exc}") from None
    worst = float(np.max(np.abs(got - expected)))
    if worst > spec.tolerance:
        raise BundleError(
            f"{model.bundle.path}: self-test failed: an age differs by {worst:.2f} years "
            f"from the one recorded at export (tolerance {spec.tolerance:g})"
        )


def _unpack(source: Path, dest: Path) -> None:
    """Copy a bundle directory, or safely unpack a .tar.gz holding one, into ``dest``."""
    if source.is_dir():
        shutil.copytree(source, dest, symlinks=False)
        return
    if not tarfile.is_tarfile(source):
        raise BundleError(f"{source.name}: neither a bundle directory nor a .tar.gz archive")
    try:
        with tarfile.open(source, "r:*") as tar:
            members = tar.getmembers()
            if sum(m.size for m in members) > MAX_ARCHIVE_BYTES:
                raise BundleError(f"{source.name}: unpacks to more than {MAX_ARCHIVE_BYTES >> 20} MiB")
            if any(not (m.isfile() or m.isdir()) for m in members):
                raise BundleError(f"{source.name}: holds links or devices; only files are allowed")
            tar.extractall(dest, filter="data")  # refuses absolute paths and '..'
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise BundleError(f"{source.name}: broken archive: {exc}") from None
    entries = [p for p in dest.iterdir()]
    if len(entries) == 1 and entries[0].is_dir():  # bundle/ wrapped in one top folder
        inner = entries[0]
        for p in inner.iterdir():
            os.replace(p, dest / p.name)
        inner.rmdir()


def _fingerprint(entry: Path) -> tuple[float, int]:
    if entry.is_dir():
        files = [p for p in entry.rglob("*") if p.is_file()]
        return max([entry.stat().st_mtime, *(p.stat().st_mtime for p in files)]), sum(p.stat().st_size for p in files)
    st = entry.stat()
    return st.st_mtime, st.st_size


def _remove(entry: Path) -> None:
    if entry.is_dir():
        shutil.rmtree(entry, ignore_errors=True)
    else:
        entry.unlink(missing_ok=True)


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in text)[:60]


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
