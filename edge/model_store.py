"""Installed model bundles on the till: checked, kept, swapped, rolled back.

Layout under ``{AGEGATE_STATE_DIR}``::

    incoming/              drop a bundle here (a directory or a .tar.gz): the daemon picks it up
    models/bundles/<id>/   installed bundles, each an unpacked copy
    models/rejected/       <time>-<name>/reason.txt for each refusal (the delivery is not kept)
    models/state.json      {"active": …, "previous": …, "last_rejected": …}

A bundle is taken into service only after every check passes: sha256 of each file, the
Ed25519 signature when the till has a public key (without one: a warning that signatures
are off), a manifest this software understands, a model whose input matches it, and the
self-test — the golden faces packed at export must come back with their recorded ages.
Then ``state.json`` is replaced atomically (previous := active, active := new). A bundle
failing any check is removed from ``incoming/``, its reason recorded in ``rejected/``, and the
running model stays.

Nothing delivered is trusted before its signature is checked. An entry in ``incoming/``
must be a regular file (a .tar.gz) or a directory, never a link, FIFO or device. A .tar.gz is
read as a stream once, with caps on entries (MAX_MEMBERS), on unpacked size
(MAX_ARCHIVE_BYTES) and on time (INSTALL_BUDGET_S), holding only ``manifest.json`` and
``signature.ed25519`` in memory; the signature over the manifest's bytes is checked, the
manifest is parsed (finite numbers, bounded nesting), and only then are the files the
manifest names written to the staging directory, each capped and later hash-checked.
Anything else in the bundle is never unpacked. Absolute paths, ``..`` and links anywhere
in an archive or bundle directory reject it. ``cancel`` (the daemon's stop event) stops an
install at its next step and leaves the entry in ``incoming/`` for the next start.

Both the daemon (which scans ``incoming/`` and follows ``state.json`` in its ``models``
thread, off the main loop) and the CLI (``agegate-edge model install|status|rollback``) use
this class; an flock on ``models/.lock`` keeps them from interleaving.
"""

from __future__ import annotations

import fcntl
import json
import logging
import math
import os
import shutil
import stat
import tarfile
import tempfile
import threading
import time
import zlib
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import IO, Any, Iterator

from ..files import write_atomically
from .age_model import AgeModel, self_test
from .bundle import MANIFEST_FILE, SIGNATURE_FILE, BundleError, Manifest, QualityFloors, load_bundle, quality_problems
from .pydantic_errors import first_error

log = logging.getLogger(__name__)

MAX_ARCHIVE_BYTES = 512 * 1024 * 1024  # unpacked size of an incoming .tar.gz
MAX_MEMBERS = 64  # entries in an archive: a bundle has four files and a folder
MAX_MANIFEST_BYTES = 1024 * 1024
MAX_SIGNATURE_BYTES = 4096  # an Ed25519 signature is 64 bytes
INSTALL_BUDGET_S = 300.0  # reading, checking and unpacking one delivery
SETTLE_S = 2.0  # an incoming entry must be unchanged this long: scp writes files in place
MAX_FINGERPRINT_FILES = 1000  # a delivered directory with more is not a bundle


class InstallCancelled(Exception):
    """The daemon is stopping: the install was abandoned, the delivery stays in incoming/."""


class ModelStore:
    def __init__(self, state_dir: Path, public_key: Any | None = None, num_threads: int = 1, floors: QualityFloors | None = QualityFloors(),
                 calibrated: bool = False):
        self.state_dir = Path(state_dir)
        self.incoming = self.state_dir / "incoming"
        self.root = self.state_dir / "models"
        self.bundles = self.root / "bundles"
        self.rejected = self.root / "rejected"
        self.state_file = self.state_file_in(self.state_dir)
        self.public_key = public_key
        self.num_threads = num_threads
        self.floors = floors  # None: quality floors reported, not enforced
        self.calibrated = calibrated  # the till decides at models' calibrated thresholds: judge them there
        self._seen: dict[str, tuple[float, int, float]] = {}  # incoming name -> (mtime, size, first seen)
        # Entries rejected but not removable from incoming/, by fingerprint: not retried until changed.
        self._refused: dict[str, tuple[float, int]] = {}
        self._unsaved_rejection: dict[str, str] | None = None  # when state.json could not be written
        for d in (self.incoming, self.bundles, self.rejected):
            d.mkdir(parents=True, exist_ok=True)

    @staticmethod
    def state_file_in(state_dir: Path) -> Path:
        """Where a store under ``state_dir`` records its active model: absent until the first install."""
        return Path(state_dir) / "models" / "state.json"

    # --- checks ---------------------------------------------------------------------------------

    def check(self, path: Path, require_self_test: bool = True) -> AgeModel:
        """Every check a bundle must pass before service; returns the loaded model or raises BundleError.

        ``require_self_test=False`` is for AGEGATE_MODEL_DIR, set by hand: golden faces are
        then run only when the bundle has them, and the quality floors are logged, not enforced.
        """
        manifest_bytes = _read_capped(Path(path) / MANIFEST_FILE, MAX_MANIFEST_BYTES)
        if self.public_key is not None:  # before the manifest is parsed: nothing unsigned is trusted
            _verify_manifest_signature(Path(path), manifest_bytes, self.public_key)
        parse_manifest(manifest_bytes, Path(path) / MANIFEST_FILE)  # finite numbers, bounded nesting
        bundle = load_bundle(path)  # manifest schema, file hashes
        if self.public_key is not None:
            from .signing import verify_signature

            verify_signature(bundle, self.public_key)  # the validation figures below are signed with the manifest
        else:
            log.warning("no AGEGATE_MODEL_PUBLIC_KEY: bundle signatures are not checked (sha256 only)")
        problems = quality_problems(bundle.manifest, self.floors or QualityFloors(), calibrated=self.calibrated)
        if problems and not require_self_test:  # AGEGATE_MODEL_DIR, set by hand: said, not enforced
            for problem in problems:
                log.warning("model %s is below the quality floors (not enforced for AGEGATE_MODEL_DIR): %s", path, problem)
        elif problems and self.floors is not None:
            raise BundleError(f"{bundle.manifest.name} {bundle.manifest.version}: below the quality floors: {'; '.join(problems)}")
        model = AgeModel(bundle, num_threads=self.num_threads)  # input shape vs manifest, model loads
        if require_self_test or model.manifest.self_test is not None:
            self_test(model)
        return model

    # --- install, rollback, status ------------------------------------------------------------------

    def install(self, source: Path, cancel: threading.Event | None = None) -> dict[str, Any]:
        """Check ``source`` (directory or .tar.gz) and make it the active model; raise BundleError if
        refused, InstallCancelled when ``cancel`` was set before it finished."""
        source = Path(source)
        try:
            with self._locked(), tempfile.TemporaryDirectory(dir=self.root, prefix=".staging-") as tmp:
                return self._install_locked(source, Path(tmp) / "bundle", cancel)
        except OSError as exc:  # a full or read-only state disk: a refusal, never a crash
            reason = f"{source.name}: cannot install: {exc.strerror or exc}"
            self._reject(source, reason)
            raise BundleError(reason) from None

    def _install_locked(self, source: Path, staged: Path, cancel: threading.Event | None) -> dict[str, Any]:
        try:
            _stage(source, staged, self.public_key, _Budget(cancel))
            self.check(staged)
        except BundleError as exc:
            # Checks name the files they read, which are the staged copies; the user knows the bundle by
            # the path they gave, and the staging folder is gone by the time anyone reads the reason.
            reason = str(exc).replace(str(staged), str(source))
            self._reject(source, reason)
            raise BundleError(reason) from None
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

    def rollback(self) -> dict[str, Any] | None:
        """Swap active and previous; returns the new active record, or None when that is the bundle the
        till was set up with (AGEGATE_MODEL_DIR or the shipped one): after the first install, the way back
        to it. Raises BundleError when nothing was ever installed."""
        with self._locked():
            state = self._read_state()
            if not state.get("previous") and not state.get("active"):
                raise BundleError("no previous model to roll back to (none installed: the till uses the bundle "
                                  "it was set up with)")
            state["active"], state["previous"] = state.get("previous"), state.get("active")
            self._write_state(state)
            active = state["active"]
            log.info("rolled back to model %s", f"{active['name']} {active['version']}" if active
                     else "the bundle the till was set up with")
            return active

    def status(self) -> dict[str, Any]:
        state = self._read_state()
        if self._unsaved_rejection is not None:
            state["last_rejected"] = self._unsaved_rejection
        return state

    def active_dir(self) -> Path | None:
        active = self._read_state().get("active")
        return Path(active["path"]) if active else None

    # --- the incoming folder ------------------------------------------------------------------------

    def scan_incoming(self, now: float | None = None, cancel: threading.Event | None = None) -> list[tuple[str, str]]:
        """Install or reject each settled entry of ``incoming/``; returns (name, outcome) pairs.

        A slow install ends early when ``cancel`` is set; its entry stays for the next scan.
        """
        now = time.monotonic() if now is None else now
        outcomes = []
        names = set()
        for entry in sorted(self.incoming.iterdir()):
            if entry.name.startswith("."):  # rsync's temporary files, our own staging
                continue
            if cancel is not None and cancel.is_set():
                break
            names.add(entry.name)
            try:
                mark = _fingerprint(entry)
            except OSError:  # gone meanwhile
                continue
            if self._refused.get(entry.name) == mark:  # rejected before and could not be removed
                continue
            seen = self._seen.get(entry.name)
            if seen is None or seen[:2] != mark:
                self._seen[entry.name] = (*mark, now)
                continue
            if now - seen[2] < SETTLE_S or time.time() - mark[0] < SETTLE_S:
                continue
            try:
                record = self.install(entry, cancel)
                outcomes.append((entry.name, f"installed {record['name']} {record['version']}"))
            except InstallCancelled:
                log.warning("install of %s interrupted by shutdown; it stays in %s", entry.name, self.incoming)
                break
            except BundleError as exc:
                outcomes.append((entry.name, f"rejected: {exc}"))
            except Exception as exc:  # whatever a delivery holds, it must not stop the scan
                log.exception("incoming %s: unexpected failure", entry.name)
                reason = f"{entry.name}: cannot be checked: {type(exc).__name__}: {exc}"[:500]
                self._reject(entry, reason)
                outcomes.append((entry.name, f"rejected: {reason}"))
            self._seen.pop(entry.name, None)
            if not _remove(entry):
                self._refused[entry.name] = mark
        for gone in set(self._seen) - names:
            del self._seen[gone]
        for gone in set(self._refused) - names:
            del self._refused[gone]
        return outcomes

    # --- bookkeeping --------------------------------------------------------------------------------

    def _reject(self, source: Path, reason: str) -> None:
        """Record a refusal; on a full or read-only disk it is logged and kept in memory instead."""
        log.error("model bundle %s rejected: %s", source.name, reason)
        record = {"source": source.name, "reason": reason, "at": _now()}
        name = f"{time.strftime('%Y%m%dT%H%M%S')}-{_safe(source.name)}"
        try:
            (self.rejected / name).mkdir(parents=True, exist_ok=True)
            (self.rejected / name / "reason.txt").write_text(reason + "\n")
            state = self._read_state()
            state["last_rejected"] = record
            self._write_state(state)
            self._unsaved_rejection = None
        except OSError as exc:
            self._unsaved_rejection = record
            log.error("cannot record the rejection of %s in %s: %s", source.name, self.root, exc.strerror or exc)

    def _read_state(self) -> dict[str, Any]:
        try:
            return json.loads(self.state_file.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.error("%s unreadable (%s); treating as empty", self.state_file, exc)
            return {}

    def _write_state(self, state: dict[str, Any]) -> None:
        write_atomically(self.state_file, json.dumps(state, indent=2) + "\n")  # on a full disk: OSError, old file kept

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with open(self.root / ".lock", "w") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)


class _Budget:
    """An install's allowance: a deadline, and the daemon's stop event."""

    def __init__(self, cancel: threading.Event | None, seconds: float = INSTALL_BUDGET_S):
        self.cancel, self.deadline = cancel, time.monotonic() + seconds

    def check(self, what: str) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise InstallCancelled(what)
        if time.monotonic() > self.deadline:
            raise BundleError(f"{what}: took longer than {INSTALL_BUDGET_S:g} s to read; refused")


def _read_capped(path: Path, limit: int) -> bytes:
    """A regular file's bytes (a link, FIFO or device is refused), at most ``limit``."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        raise BundleError(f"{path}: missing") from None
    except OSError as exc:
        raise BundleError(f"{path}: unreadable (links are not allowed in a bundle): {exc.strerror or exc}") from None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise BundleError(f"{path}: not a regular file")
        data = f.read(limit + 1)
    if len(data) > limit:
        raise BundleError(f"{path}: larger than {limit} bytes")
    return data


def _verify_manifest_signature(path: Path, manifest_bytes: bytes, public_key: Any) -> None:
    """Check ``signature.ed25519`` over the manifest's bytes, before anything else about it is read."""
    from cryptography.exceptions import InvalidSignature

    try:
        signature = _read_capped(path / SIGNATURE_FILE, MAX_SIGNATURE_BYTES)
    except BundleError as exc:
        if not (path / SIGNATURE_FILE).exists():
            raise BundleError(f"{path}: unsigned ({SIGNATURE_FILE} missing) and this till requires signatures") from None
        raise exc
    try:
        public_key.verify(signature, manifest_bytes)
    except InvalidSignature:
        raise BundleError(f"{path}: signature does not match this till's public key") from None


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text} is out of range")
    return value


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number a manifest may hold")


def parse_manifest(data: bytes, where: Path) -> Manifest:
    """The manifest from its bytes, or BundleError: JSON with finite numbers only (no NaN,
    Infinity or 1e999, which pass every comparison with a tolerance), nested at most as deep
    as the interpreter allows without running out of stack."""
    try:
        raw = json.loads(data.decode("utf-8"), parse_constant=_no_constant, parse_float=_finite)
    except RecursionError:
        raise BundleError(f"{where}: unreadable: nested too deeply") from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise BundleError(f"{where}: unreadable: {exc}") from None
    try:
        return Manifest.model_validate(raw)
    except RecursionError:
        raise BundleError(f"{where}: unreadable: nested too deeply") from None
    except ValueError as exc:  # pydantic's ValidationError
        raise BundleError(f"{where}: {first_error(exc, 'manifest')}") from None


def _named_files(manifest: Manifest) -> list[str]:
    """The files a bundle consists of, besides the manifest and its signature."""
    return [manifest.model_file] + ([manifest.self_test.file] if manifest.self_test else [])


def _stage(source: Path, dest: Path, public_key: Any, budget: _Budget) -> None:
    """Put into ``dest`` only what the manifest names, from a bundle directory or a .tar.gz.

    The signature (when the till has a key) is checked over the manifest's bytes before the
    manifest is parsed or any other file is written; other files are hash-checked by
    load_bundle afterwards. Links, FIFOs and devices, absolute paths and ``..`` are refused.
    """
    try:
        st = os.lstat(source)
    except OSError as exc:
        raise BundleError(f"{source.name}: cannot be read: {exc.strerror or exc}") from None
    if stat.S_ISLNK(st.st_mode):
        raise BundleError(f"{source.name}: a symbolic link; deliver the bundle itself, not a link")
    if stat.S_ISDIR(st.st_mode):
        _stage_directory(source, dest, public_key, budget)
    elif stat.S_ISREG(st.st_mode):
        _stage_archive(source, dest, public_key, budget)
    else:
        raise BundleError(f"{source.name}: neither a bundle directory nor a .tar.gz archive "
                          "(a FIFO, socket or device)")


def _checked_manifest(source: Path, dest: Path, manifest_bytes: bytes, signature: bytes | None,
                      public_key: Any) -> Manifest:
    """Write the manifest and signature to ``dest``, check the signature, parse the manifest."""
    dest.mkdir(parents=True)
    (dest / MANIFEST_FILE).write_bytes(manifest_bytes)
    if signature is not None:
        (dest / SIGNATURE_FILE).write_bytes(signature)
    if public_key is not None:
        _verify_manifest_signature(dest, manifest_bytes, public_key)
    return parse_manifest(manifest_bytes, source / MANIFEST_FILE)


def _stage_directory(source: Path, dest: Path, public_key: Any, budget: _Budget) -> None:
    manifest_bytes = _read_capped(source / MANIFEST_FILE, MAX_MANIFEST_BYTES)
    signature = (_read_capped(source / SIGNATURE_FILE, MAX_SIGNATURE_BYTES)
                 if os.path.lexists(source / SIGNATURE_FILE) else None)
    manifest = _checked_manifest(source, dest, manifest_bytes, signature, public_key)
    total = 0
    for name in _named_files(manifest):
        budget.check(source.name)
        try:
            fd = os.open(source / name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except FileNotFoundError:
            raise BundleError(f"{source / name}: missing") from None
        except OSError as exc:
            raise BundleError(f"{source / name}: unreadable (links are not allowed in a bundle): "
                              f"{exc.strerror or exc}") from None
        with os.fdopen(fd, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise BundleError(f"{source / name}: not a regular file")
            total += size
            if total > MAX_ARCHIVE_BYTES:
                raise BundleError(f"{source.name}: larger than {MAX_ARCHIVE_BYTES >> 20} MiB")
            _copy(f, dest / name, size, budget, source.name)


def _stage_archive(source: Path, dest: Path, public_key: Any, budget: _Budget) -> None:
    try:
        tar = tarfile.open(source, "r:*")
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise BundleError(f"{source.name}: neither a bundle directory nor a .tar.gz archive ({exc})") from None
    try:
        with tar:
            files = _list_members(tar, source, budget)
            manifests = [n for n in files if PurePosixPath(n).name == MANIFEST_FILE and n.count("/") <= 1]
            if len(manifests) != 1:
                raise BundleError(f"{source.name}: holds {len(manifests)} {MANIFEST_FILE} files at its top "
                                  "(or in one top folder); a bundle has one")
            root = manifests[0][: -len(MANIFEST_FILE)]

            def read(name: str, limit: int) -> bytes:
                member = files[root + name]
                if member.size > limit:
                    raise BundleError(f"{source.name}: {name} is larger than {limit} bytes")
                f = tar.extractfile(member)
                return f.read(limit + 1) if f else b""

            signature = read(SIGNATURE_FILE, MAX_SIGNATURE_BYTES) if root + SIGNATURE_FILE in files else None
            manifest = _checked_manifest(source, dest, read(MANIFEST_FILE, MAX_MANIFEST_BYTES), signature, public_key)
            for name in _named_files(manifest):
                member = files.get(root + name)
                if member is None:
                    raise BundleError(f"{source.name}: {name}: missing")
                f = tar.extractfile(member)
                if f is None:
                    raise BundleError(f"{source.name}: {name}: not a regular file")
                _copy(f, dest / name, member.size, budget, source.name)
    except (tarfile.TarError, EOFError, OSError, ValueError, zlib.error) as exc:
        raise BundleError(f"{source.name}: broken archive: {exc}") from None


def _list_members(tar: tarfile.TarFile, source: Path, budget: _Budget) -> dict[str, tarfile.TarInfo]:
    """One pass over the archive's headers with caps on entries and size; files by normalised name."""
    files: dict[str, tarfile.TarInfo] = {}
    total = 0
    for count, member in enumerate(tar, 1):
        budget.check(source.name)
        if count > MAX_MEMBERS:
            raise BundleError(f"{source.name}: holds more than {MAX_MEMBERS} entries; a bundle has a handful")
        if not (member.isfile() or member.isdir()):
            raise BundleError(f"{source.name}: holds links or devices ({member.name}); only files are allowed")
        path = PurePosixPath(member.name)
        if path.is_absolute() or member.name.startswith(("/", "\\")):
            raise BundleError(f"{source.name}: holds an absolute path ({member.name})")
        if ".." in path.parts:
            raise BundleError(f"{source.name}: holds a path out of the bundle ({member.name})")
        total += member.size
        if total > MAX_ARCHIVE_BYTES:
            raise BundleError(f"{source.name}: unpacks to more than {MAX_ARCHIVE_BYTES >> 20} MiB")
        if member.isfile():
            files["/".join(p for p in path.parts if p != ".")] = member
    return files


def _copy(src: IO[bytes], target: Path, size: int, budget: _Budget, what: str) -> None:
    """Copy at most ``size`` bytes in chunks, minding the budget."""
    left = size
    with open(target, "xb") as out:
        while left > 0:
            budget.check(what)
            chunk = src.read(min(left, 1 << 20))
            if not chunk:
                break
            out.write(chunk)
            left -= len(chunk)
        if src.read(1):
            raise BundleError(f"{what}: {target.name} grew while it was read")


def _fingerprint(entry: Path) -> tuple[float, int]:
    """(newest mtime, total size) of an entry, links not followed, at most MAX_FINGERPRINT_FILES looked at."""
    st = os.lstat(entry)
    if not stat.S_ISDIR(st.st_mode):
        return st.st_mtime, st.st_size
    newest, total, seen = st.st_mtime, 0, 0
    for root, dirs, files in os.walk(entry):  # does not follow links to directories
        for name in dirs + files:
            seen += 1
            if seen > MAX_FINGERPRINT_FILES:
                return newest, total
            try:
                s = os.lstat(os.path.join(root, name))
            except OSError:
                continue
            newest = max(newest, s.st_mtime)
            total += s.st_size if stat.S_ISREG(s.st_mode) else 0
    return newest, total


def _remove(entry: Path) -> bool:
    """Take a handled entry out of incoming/ (a link itself, never what it points to); False if it stays."""
    try:
        if stat.S_ISDIR(os.lstat(entry).st_mode):
            shutil.rmtree(entry)
        else:
            entry.unlink()
        return True
    except FileNotFoundError:
        return True
    except OSError as exc:
        log.error("cannot remove %s from incoming/: %s; it will not be tried again until it changes",
                  entry, exc.strerror or exc)
        return False


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in text)[:60]


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
