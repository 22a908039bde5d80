"""The till's install stays small: the `edge` extra must not pull TensorFlow."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def resolve(extra: str) -> set[str]:
    """Names pip would install for agegate[extra] into an empty environment (resolved, not installed)."""
    r = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet", "--report", "-",
         f"{ROOT}[{extra}]"],
        capture_output=True, text=True, timeout=600,
    )
    if r.returncode != 0:
        pytest.fail(f"pip could not resolve agegate[{extra}]: {r.stderr[-2000:]}")
    report = json.loads(r.stdout)
    return {item["metadata"]["name"].lower().replace("_", "-") for item in report["install"]}


def test_edge_install_has_no_tensorflow():
    names = resolve("edge")
    assert {"ai-edge-litert", "opencv-python-headless", "paho-mqtt", "fastapi"} <= names
    heavy = {n for n in names if n.startswith(("tensorflow", "keras", "tf-keras", "torch", "jax"))}
    assert not heavy, f"the edge extra pulls {sorted(heavy)}"


def _imported_by(module: str, watched: tuple[str, ...]) -> list[str]:
    import subprocess
    import sys

    script = f"import sys, {module}\nprint(sorted(m for m in {watched!r} if m in sys.modules))"
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return eval(r.stdout.strip().splitlines()[-1])  # a list literal of module names printed above


def test_loading_and_verifying_models_stay_apart_from_the_tills_server_and_installer():
    """One loader for the till, the CLI and export: it pulls neither the daemon's server parts,
    nor does export's verify pull the till's installer (the model store)."""
    server = ("fastapi", "uvicorn", "agegate.edge.daemon", "agegate.edge.console", "agegate.edge.api")
    assert _imported_by("agegate.edge.loader", server) == []
    assert _imported_by("agegate.export.verify", server + ("agegate.edge.model_store",)) == []


def test_a_runs_history_reads_without_keras():
    assert _imported_by("agegate.training.run", ("keras", "tensorflow")) == []
