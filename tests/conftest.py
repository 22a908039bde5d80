"""The tests' fixtures: a Mosquitto broker on a free loopback port, small real .tflite bundles,
video files with a real face, the shared data when it exists. The parts themselves are the
harness that the benchmarks and `make demo` share (agegate.testing, in testing/)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from agegate.edge.detectors import YUNET_MODEL as YUNET_SHIPPED
from agegate.testing.brokers import Mosquitto
from agegate.testing.brokers import mosquitto_binary as find_mosquitto

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("AGEGATE_SHARED_DIR", ROOT.parent / "shared"))
UTKFACE = SHARED / "data" / "utkface-part1"
ALL_AGE_FACES = SHARED / "data" / "all-age-faces"
YUNET_MODEL = YUNET_SHIPPED  # shipped inside the package (edge/detectors/models/), so never missing


# Markers that follow from a test's fixtures (pyproject.toml registers them), so that a new test gets
# them without remembering: a broker means real servers on loopback, `browser` the headless Chromium.
# Tests that start servers without these fixtures carry `network` themselves.
MARKER_OF_FIXTURE = {"broker": "network", "persistent_broker": "network", "module_broker": "network",
                     "mosquitto_binary": "network", "browser": "browser"}


def pytest_collection_modifyitems(items) -> None:
    for item in items:
        for fixture in sorted(MARKER_OF_FIXTURE.keys() & set(item.fixturenames)):
            item.add_marker(MARKER_OF_FIXTURE[fixture])


@pytest.fixture(scope="session")
def mosquitto_binary() -> str:
    found = find_mosquitto()
    if not found:
        raise RuntimeError("mosquitto is missing; `make test` installs it (apt-get install mosquitto)")
    return found


@pytest.fixture
def broker(tmp_path_factory, mosquitto_binary) -> Mosquitto:
    b = Mosquitto(tmp_path_factory.mktemp("broker")).start()
    yield b
    b.stop()


@pytest.fixture
def persistent_broker(tmp_path_factory, mosquitto_binary) -> Mosquitto:
    """A broker that keeps sessions and queued messages across its restarts, as a store broker should."""
    b = Mosquitto(tmp_path_factory.mktemp("broker"), persistent=True).start()
    yield b
    b.stop()


@pytest.fixture(scope="session")
def constant_bundles(tmp_path_factory) -> dict[int, Path]:
    """Real .tflite bundles that always answer one age: 16 (a minor), 21 (challenge) and 40."""
    from bundle_factory import make_constant_bundle

    root = tmp_path_factory.mktemp("bundles")
    return {age: make_constant_bundle(root / f"age{age}", age) for age in (16, 21, 40)}


@pytest.fixture(scope="session")
def astronaut_bgr():
    """The public-domain astronaut photo scikit-image ships (Eileen Collins), as BGR."""
    from agegate.testing.videos import astronaut_bgr

    return astronaut_bgr()


@pytest.fixture(scope="session")
def face_video(tmp_path_factory, astronaut_bgr) -> Path:
    from agegate.testing.videos import write_face_video

    return write_face_video(tmp_path_factory.mktemp("video") / "face.avi", astronaut_bgr)


@pytest.fixture(scope="session")
def empty_video(tmp_path_factory) -> Path:
    from agegate.testing.videos import write_empty_video

    return write_empty_video(tmp_path_factory.mktemp("video") / "empty.avi")


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    """Two real Ed25519 key pairs: the chain's ("private", "public" key, "public_path") and another's ("other")."""
    from agegate.edge.signing import generate_keypair, load_private_key, load_public_key

    d = tmp_path_factory.mktemp("keys")
    generate_keypair(d / "signing.pem", d / "signing.pub")
    generate_keypair(d / "other.pem", d / "other.pub")
    return {"private": load_private_key(d / "signing.pem"), "public_path": d / "signing.pub",
            "public": load_public_key(d / "signing.pub"), "other": load_private_key(d / "other.pem")}


def mount_tmpfs(path: Path, size: str) -> None:
    """A tiny tmpfs of ``size`` ("4m") on ``path`` (made if missing): a disk to fill or make read-only.
    Needs root (tests marked `root`): skips, saying so, without it. The test unmounts it."""
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs (needs root): {r.stderr.strip()}")


def fill_disk(path: Path) -> None:
    """Write zeros into ``path/filler`` until the file system is full (a real tmpfs in the tests)."""
    with open(path / "filler", "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass


def require_all_age_faces() -> Path:
    if not (ALL_AGE_FACES / "labels.csv").exists():
        pytest.skip(f"shared All-Age-Faces data not found at {ALL_AGE_FACES} (set AGEGATE_SHARED_DIR); it is not shipped with the project")
    return ALL_AGE_FACES


@pytest.fixture(autouse=True, scope="session")
def _own_crop_cache(tmp_path_factory):
    """Detections and crops go to a cache of this test session's own, not the user's ~/.cache/agegate."""
    previous = os.environ.get("AGEGATE_CACHE_DIR")
    os.environ["AGEGATE_CACHE_DIR"] = str(tmp_path_factory.mktemp("agegate-cache"))
    yield
    if previous is None:
        os.environ.pop("AGEGATE_CACHE_DIR", None)
    else:
        os.environ["AGEGATE_CACHE_DIR"] = previous


def require_utkface() -> Path:
    if not (UTKFACE / "labels.csv").exists():
        pytest.skip(f"shared UTKFace data not found at {UTKFACE} (set AGEGATE_SHARED_DIR); it is not shipped with the project")
    return UTKFACE



@pytest.fixture(scope="session")
def screenshot_dir(tmp_path_factory) -> Path:
    """Where the page tests save the docs' screenshots: $AGEGATE_SCREENSHOT_DIR when `make screenshots`
    runs them (it then copies them into docs/), else a temporary folder, so that a test run leaves the
    tree as it found it."""
    wanted = os.environ.get("AGEGATE_SCREENSHOT_DIR")
    if not wanted:
        return tmp_path_factory.mktemp("screenshots")
    Path(wanted).mkdir(parents=True, exist_ok=True)
    return Path(wanted)


@pytest.fixture(scope="module")
def browser():
    """Debian's Chromium, headless, through Playwright (agegate.testing.browser)."""
    from agegate.testing.browser import chromium

    with chromium() as b:
        yield b
