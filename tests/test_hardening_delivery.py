"""Hostile deliveries to the model store, on real files: FIFOs, links, crafted tar archives,
manifests nested 100k deep or holding NaN, models answering NaN, a full state disk (tmpfs),
and an install interrupted by shutdown. None may hang, crash or install; each gets a reason."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import tarfile
import threading
import time
from pathlib import Path

import pytest

from agegate.edge.bundle import MANIFEST_FILE, MODEL_FILE, SIGNATURE_FILE, BundleError
from agegate.edge.model_store import SETTLE_S, InstallCancelled, ModelStore
from agegate.edge.signing import sign_bundle
from bundle_factory import make_constant_bundle
from conftest import fill_disk, mount_tmpfs
from agegate.testing.daemon import DaemonProcess
from agegate.testing.net import wait_until


@pytest.fixture(scope="module")
def good(tmp_path_factory, keys) -> Path:
    b = make_constant_bundle(tmp_path_factory.mktemp("good") / "good", 40, name="agegate-age", version="1", golden=True)
    sign_bundle(b, keys["private"])
    return b


def _copy(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest)
    return dest


def _tar(dest: Path, entries: list[tuple[str, bytes | None]], extra: list[tarfile.TarInfo] = ()) -> Path:
    """A .tar.gz from (name, bytes) pairs (None: a directory), plus crafted members."""
    with tarfile.open(dest, "w:gz") as tar:
        for name, data in entries:
            info = tarfile.TarInfo(name)
            if data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        for info in extra:
            tar.addfile(info)
    return dest


def _files(bundle: Path, prefix: str = "") -> list[tuple[str, bytes]]:
    return [(prefix + p.name, p.read_bytes()) for p in sorted(bundle.iterdir())]


def _aged(entry: Path) -> Path:
    """Make an incoming entry look settled (older than SETTLE_S), without following links."""
    past = time.time() - 10 * SETTLE_S
    os.utime(entry, (past, past), follow_symlinks=False)
    return entry


def _scan_settled(store: ModelStore) -> list[tuple[str, str]]:
    """Two scans SETTLE_S apart (as the daemon does), in a thread: a hang fails the test, not the suite."""
    result: list = []

    def run():
        store.scan_incoming(now=1000.0)
        result.extend(store.scan_incoming(now=1000.0 + 2 * SETTLE_S))

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(60)
    assert not t.is_alive(), "scanning incoming/ hung"
    return result


def test_non_finite_manifests_and_models_are_refused(tmp_path, keys, good):
    store = ModelStore(tmp_path / "state", keys["public"])
    nan_manifest = _copy(good, tmp_path / "nan-manifest")
    raw = json.loads((nan_manifest / MANIFEST_FILE).read_text())
    raw["output"]["scale"] = float("nan")  # json writes NaN; every age becomes NaN, every check passes
    (nan_manifest / MANIFEST_FILE).write_text(json.dumps(raw))
    sign_bundle(nan_manifest, keys["private"])
    with pytest.raises(BundleError, match="NaN is not a number"):
        store.install(nan_manifest)

    nan_model = make_constant_bundle(tmp_path / "nan-model", float("nan"), name="agegate-age", version="n",
                                     golden=True, golden_age=16)
    sign_bundle(nan_model, keys["private"])
    with pytest.raises(BundleError, match="non-finite age"):
        store.install(nan_model)
    assert store.active_dir() is None


def test_a_manifest_nested_100k_deep_is_refused_with_or_without_a_key(tmp_path, keys):
    deep = tmp_path / "deep"
    deep.mkdir()
    (deep / MANIFEST_FILE).write_text("[" * 100_000)
    (deep / SIGNATURE_FILE).write_bytes(b"\0" * 64)
    with pytest.raises(BundleError, match="signature does not match"):  # checked before it is parsed
        ModelStore(tmp_path / "signed", keys["public"]).install(deep)
    with pytest.raises(BundleError, match="nested too deeply"):
        ModelStore(tmp_path / "unsigned").install(deep)


def test_fifos_and_links_in_incoming_are_rejected_once_and_removed(tmp_path, keys, good):
    store = ModelStore(tmp_path / "state", keys["public"])
    os.mkfifo(store.incoming / "bundle.tar.gz")  # a reader that opens it waits for a writer for ever
    outside = _copy(good, tmp_path / "outside")
    (store.incoming / "linked").symlink_to(outside, target_is_directory=True)
    for entry in store.incoming.iterdir():
        _aged(entry)
    outcomes = dict(_scan_settled(store))
    assert "FIFO" in outcomes["bundle.tar.gz"] and "symbolic link" in outcomes["linked"]
    assert list(store.incoming.iterdir()) == []  # removed: not reprocessed every few seconds
    assert (outside / MODEL_FILE).exists()  # the link went, never what it pointed to
    assert store.active_dir() is None
    assert _scan_settled(store) == []


@pytest.mark.root
def test_a_rejected_entry_that_cannot_be_removed_is_not_tried_again_until_it_changes(tmp_path, keys, good):
    store = ModelStore(tmp_path / "state", keys["public"])
    mount_tmpfs(store.incoming, "4m")
    try:
        unsigned = _copy(good, store.incoming / "unsigned")
        (unsigned / SIGNATURE_FILE).unlink()
        for p in (unsigned, *unsigned.iterdir()):
            _aged(p)
        subprocess.run(["mount", "-o", "remount,ro", str(store.incoming)], check=True)
        assert dict(_scan_settled(store))["unsigned"].startswith("rejected")
        assert unsigned.exists()  # a read-only incoming/: it stays
        assert _scan_settled(store) == []  # remembered: not checked (and logged) again every scan
        subprocess.run(["mount", "-o", "remount,rw", str(store.incoming)], check=True)
        (unsigned / "note.txt").write_text("changed")  # a new delivery under the same name
        _aged(unsigned / "note.txt")
        _aged(unsigned)
        assert dict(_scan_settled(store))["unsigned"].startswith("rejected")
        assert not unsigned.exists()
    finally:
        subprocess.run(["umount", str(store.incoming)], capture_output=True)


def test_crafted_archives_are_refused_with_their_reason(tmp_path, keys, good):
    store = ModelStore(tmp_path / "state", keys["public"])
    bundle = _files(good, "b/")
    many = _tar(tmp_path / "many.tar.gz", bundle + [(f"b/pad/{i}", b"") for i in range(5000)])
    absolute = _tar(tmp_path / "absolute.tar.gz", _files(good, "/"))
    link = tarfile.TarInfo("b/extra")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    linked = _tar(tmp_path / "linked.tar.gz", bundle, [link])
    for archive, reason in ((many, "more than 64 entries"), (absolute, "absolute path"), (linked, "links")):
        with pytest.raises(BundleError, match=reason):
            store.install(archive)
    assert store.active_dir() is None
    assert not list(store.root.glob(".staging-*"))


def test_links_inside_a_bundle_directory_are_refused(tmp_path, keys, good):
    store = ModelStore(tmp_path / "state", keys["public"])
    linked = _copy(good, tmp_path / "linked")
    real_model = tmp_path / "elsewhere.tflite"
    shutil.move(linked / MODEL_FILE, real_model)
    (linked / MODEL_FILE).symlink_to(real_model)
    with pytest.raises(BundleError, match="links are not allowed"):
        store.install(linked)


def test_only_the_files_the_manifest_names_are_installed(tmp_path, keys, good):
    store = ModelStore(tmp_path / "state", keys["public"])
    padded = _copy(good, tmp_path / "padded")
    (padded / "pad.bin").write_bytes(b"\0" * (1 << 20))  # unsigned, unnamed: must not be kept
    record = store.install(padded)
    assert sorted(p.name for p in Path(record["path"]).iterdir()) == sorted(p.name for p in good.iterdir())
    archive = _tar(tmp_path / "padded.tar.gz", _files(padded, "b/"))
    record = store.install(archive)
    assert "pad.bin" not in {p.name for p in Path(record["path"]).iterdir()}


@pytest.mark.root
def test_the_signature_is_checked_before_anything_is_unpacked(tmp_path, keys, good):
    state = tmp_path / "state"
    mount_tmpfs(state, "8m")
    try:
        store = ModelStore(state, keys["public"])
        forged = _copy(good, tmp_path / "forged")
        sign_bundle(forged, keys["other"])
        # 64 MiB of zeros (64 KiB compressed) beside a wrongly signed bundle, on an 8 MiB disk.
        archive = _tar(tmp_path / "forged.tar.gz", _files(forged, "b/") + [("b/pad.bin", b"\0" * (64 << 20))])
        with pytest.raises(BundleError, match="signature does not match"):
            store.install(archive)
        assert shutil.disk_usage(state).used < (1 << 20)
    finally:
        subprocess.run(["umount", str(state)], capture_output=True)


@pytest.mark.root
def test_a_full_state_disk_cannot_stop_a_rejection(tmp_path, keys, good):
    state = tmp_path / "state"
    mount_tmpfs(state, "4m")
    try:
        store = ModelStore(state, keys["public"])
        unsigned = store.incoming / "unsigned"
        _copy(good, unsigned)
        (unsigned / SIGNATURE_FILE).unlink()
        fill_disk(state)
        for p in (unsigned, *unsigned.iterdir()):
            _aged(p)
        outcomes = dict(_scan_settled(store))
        assert outcomes["unsigned"].startswith("rejected")
        assert store.status()["last_rejected"]["source"] == "unsigned"  # kept in memory: the disk is full
        assert not unsigned.exists()
    finally:
        subprocess.run(["umount", str(state)], capture_output=True)


def test_shutdown_interrupts_an_install_and_leaves_the_delivery(tmp_path, keys, good):
    store = ModelStore(tmp_path / "state", keys["public"])
    archive = _tar(tmp_path / "good.tar.gz", _files(good, "b/"))
    stopping = threading.Event()
    stopping.set()
    with pytest.raises(InstallCancelled):
        store.install(archive, cancel=stopping)
    assert archive.exists() and store.active_dir() is None and "last_rejected" not in store.status()


class _StopAfter(threading.Event):
    """The daemon's stop event, set by the install's own n-th look at it: a shutdown that lands
    mid-copy every run, where a timer would race the copy."""

    def __init__(self, looks: int):
        super().__init__()
        self.looks = looks

    def is_set(self) -> bool:
        self.looks -= 1
        if self.looks == 0:
            self.set()
        return super().is_set()


def test_shutdown_interrupts_an_install_mid_copy_and_leaves_nothing_half_done(tmp_path, keys, good):
    store = ModelStore(tmp_path / "state", keys["public"])
    big = _copy(good, tmp_path / "big")
    with open(big / MODEL_FILE, "r+b") as f:  # 64 MiB: copied in 64 steps (its hash is checked only after)
        f.truncate(64 << 20)
    # One look per file and per MiB copied: the 20th is inside the model's copy. An install that
    # did not look while copying would finish it and be refused for the hash instead.
    with pytest.raises(InstallCancelled):
        store.install(big, cancel=_StopAfter(looks=20))
    assert (big / MODEL_FILE).stat().st_size == 64 << 20 and store.active_dir() is None
    assert "last_rejected" not in store.status() and not list(store.root.glob(".staging-*"))


def test_hostile_incoming_entries_never_stop_the_running_daemon(tmp_path, broker, face_video, good, keys):
    d = DaemonProcess(tmp_path, broker=broker, camera=face_video, model_dir=good,
                      model_public_key=keys["public_path"])
    d.start()
    try:
        incoming = Path(d.env["AGEGATE_STATE_DIR"]) / "incoming"
        os.mkfifo(incoming / "fifo.tar.gz")
        deep = incoming / ".deep"
        deep.mkdir()
        (deep / MANIFEST_FILE).write_text("[" * 100_000)
        os.replace(deep, incoming / "deep")
        _tar(tmp_path / "many.tar.gz", [(f"b/{i}", b"") for i in range(20_000)])
        shutil.copy(tmp_path / "many.tar.gz", incoming / ".many.part")
        os.replace(incoming / ".many.part", incoming / "many.tar.gz")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and list(incoming.iterdir()):
            assert d.proc.poll() is None, d.log()[-3000:]
            time.sleep(0.5)
        assert list(incoming.iterdir()) == []
        log = d.log()
        assert "fifo.tar.gz rejected" in log and "deep rejected" in log and "many.tar.gz rejected" in log
        assert d.proc.poll() is None
        assert d.pos("item", "AFTER", restricted=True).json()["decision"] == "clear"

        # incoming/ itself unlistable (EMFILE ended the daemon this way): the step fails, is
        # logged, and the daemon and its model thread carry on.
        shutil.rmtree(incoming)
        incoming.write_text("not a folder")
        wait_until(lambda: "housekeeping step 'model store' failed (NotADirectoryError" in d.log(),
                   what="the failed scan to be logged")
        assert d.proc.poll() is None
        incoming.unlink()
        incoming.mkdir()
        _copy(good, incoming / ".later")
        os.replace(incoming / ".later", incoming / "later")
        wait_until(lambda: "incoming model later: installed" in d.log(), timeout=60, what="the later delivery")
        assert d.log().count("housekeeping step 'model store' failed") == 1  # once a minute, not every scan
        assert d.pos("item", "LATER", restricted=True).json()["decision"] == "clear"
    finally:
        d.stop()
