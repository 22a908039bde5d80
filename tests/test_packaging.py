"""The till's install stays small: the `edge` extra must not pull TensorFlow, nor need the test harness."""

from __future__ import annotations

import ast
import functools
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@functools.cache
def resolve(extra: str) -> frozenset[str]:
    """Names pip would install for agegate[extra] into an empty environment (resolved, not installed)."""
    r = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet", "--report", "-",
         f"{ROOT}[{extra}]"],
        capture_output=True, text=True, timeout=600,
    )
    if r.returncode != 0:
        pytest.fail(f"pip could not resolve agegate[{extra}]: {r.stderr[-2000:]}")
    report = json.loads(r.stdout)
    return frozenset(item["metadata"]["name"].lower().replace("_", "-") for item in report["install"])


def test_edge_install_has_no_tensorflow():
    names = resolve("edge")
    assert {"ai-edge-litert", "opencv-python-headless", "paho-mqtt", "fastapi"} <= names
    heavy = {n for n in names if n.startswith(("tensorflow", "keras", "tf-keras", "torch", "jax"))}
    assert not heavy, f"the edge extra pulls {sorted(heavy)}"


# What agegate.testing (testing/) uses beyond the till's own packages: the tests', benchmarks' and
# `make demo`'s, from the dev extra.
HARNESS_ONLY = {"scikit-image", "amqtt", "playwright", "psycopg", "pytest", "httpx"}


def _agegate_imports(path: Path) -> set[str]:
    """The agegate.* modules that a source file imports, at its top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("agegate"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("agegate"))
    return found


def test_the_till_needs_no_test_harness():
    """agegate.testing (brokers, daemon processes, videos, browsers for the tests, the benchmarks and the
    demo) stays out of the till: no module of agegate.edge but the developer's demo imports it, and
    what it needs beyond the till's packages is not part of the edge extra."""
    till_modules = [p for p in (ROOT / "edge").rglob("*.py") if p != ROOT / "edge" / "demo.py"]
    assert len(till_modules) > 20
    importers = sorted(str(p.relative_to(ROOT)) for p in till_modules
                       if any(m == "agegate.testing" or m.startswith("agegate.testing.") for m in _agegate_imports(p)))
    assert importers == [], f"the till's modules import the test harness: {importers}"
    assert "agegate.testing.daemon" in _agegate_imports(ROOT / "edge" / "demo.py")  # the check above sees imports
    names = resolve("edge")
    assert not names & HARNESS_ONLY, f"the edge extra pulls the harness's {sorted(names & HARNESS_ONLY)}"
    assert HARNESS_ONLY <= resolve("dev"), "the dev extra installs what the harness needs"


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
