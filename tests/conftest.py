"""Real parts for the tests: a Mosquitto broker on a free loopback port, small real
.tflite bundles, video files with a real face, and the shared data when it exists."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from agegate.edge.detectors import YUNET_MODEL as YUNET_SHIPPED

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("AGEGATE_SHARED_DIR", ROOT.parent / "shared"))
UTKFACE = SHARED / "data" / "utkface-part1"
ALL_AGE_FACES = SHARED / "data" / "all-age-faces"
YUNET_MODEL = YUNET_SHIPPED  # shipped inside the package (edge/detectors/models/), so never missing


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Broker:
    """A real Mosquitto process listening on 127.0.0.1:port; stop() and start() it to test faults."""

    def __init__(self, workdir: Path, port: int | None = None, persistent: bool = False):
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self.workdir = workdir
        self.proc: subprocess.Popen | None = None
        self.conf = workdir / "mosquitto.conf"
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\n"
            + (f"persistence true\npersistence_location {workdir}/\n" if persistent else "persistence false\n")
            + f"log_dest file {workdir / 'mosquitto.log'}\nmax_inflight_messages 100\n" + self.run_as
        )

    # Started as root, mosquitto switches to its own user, which cannot read pytest's private tmp dirs.
    run_as = "user root\n" if os.geteuid() == 0 else ""

    def start(self) -> None:
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.proc = subprocess.Popen([binary, "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection((self.host, self.port), timeout=0.2).close()
                return
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"mosquitto exited with {self.proc.returncode}; see {self.workdir}/mosquitto.log")
                time.sleep(0.05)
        raise RuntimeError("mosquitto did not start listening within 10 s")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        self.proc = None


@pytest.fixture(scope="session")
def mosquitto_binary() -> str:
    found = shutil.which("mosquitto") or (os.path.exists("/usr/sbin/mosquitto") and "/usr/sbin/mosquitto")
    if not found:
        raise RuntimeError("mosquitto is missing; `make test` installs it (apt-get install mosquitto)")
    return found


@pytest.fixture
def broker(tmp_path_factory, mosquitto_binary) -> Broker:
    b = Broker(tmp_path_factory.mktemp("broker"))
    b.start()
    yield b
    b.stop()


@pytest.fixture
def persistent_broker(tmp_path_factory, mosquitto_binary) -> Broker:
    """A broker that keeps sessions and queued messages across its restarts, as a store broker should."""
    b = Broker(tmp_path_factory.mktemp("broker"), persistent=True)
    b.start()
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
    import cv2
    from skimage import data

    return cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)


@pytest.fixture(scope="session")
def face_video(tmp_path_factory, astronaut_bgr) -> Path:
    from video_factory import write_face_video

    return write_face_video(tmp_path_factory.mktemp("video") / "face.avi", astronaut_bgr)


@pytest.fixture(scope="session")
def empty_video(tmp_path_factory) -> Path:
    from video_factory import write_empty_video

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

