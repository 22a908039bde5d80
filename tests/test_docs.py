"""The documentation has no unfilled template and no dead relative link.

Fast (reads text files only). Covers README.md and every Markdown page under docs/: a
template token left in (``RUN-MACHINE``-style placeholders, TODO, TBD, "not measured yet")
or a link to a file of the repository that does not exist fails, naming page and line."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

import pytest

from conftest import ROOT

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
PLACEHOLDERS = re.compile(r"\bRUN-[A-Z][A-Z0-9-]*\b|\bTODO\b|\bTBD\b|\bFIXME\b|\bXXX\b|not (?:yet )?measured yet|"
                          r"to be (?:measured|filled)|\bplaceholder\b", re.IGNORECASE)
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)|^\s*\[[^\]]+\]:\s*(\S+)", re.MULTILINE)
FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)


def _prose(text: str) -> str:
    """The page without its fenced code blocks (blanked line for line, so line numbers hold)."""
    return FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), text)


def _line(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_unfilled_template(page: Path):
    text = _prose(page.read_text())
    found = [f"line {_line(text, m.start())}: {m.group(0)!r}" for m in PLACEHOLDERS.finditer(text)]
    assert not found, f"{page.relative_to(ROOT)} still has placeholders: {'; '.join(found)}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_exist(page: Path):
    text = _prose(page.read_text())
    dead = []
    for m in LINK.finditer(text):
        target = m.group(1) or m.group(2)
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE) or target.startswith("#"):
            continue  # a URL (http:, mailto:, ...) or an anchor on the same page
        path = unquote(target.split("#", 1)[0].split("?", 1)[0])
        resolved = (ROOT / path.lstrip("/")) if path.startswith("/") else (page.parent / path)
        if not resolved.exists():
            dead.append(f"line {_line(text, m.start())}: {target}")
    assert not dead, f"{page.relative_to(ROOT)} links to files that do not exist: {'; '.join(dead)}"


def test_the_checks_catch_what_they_should(tmp_path: Path):
    """The patterns themselves: a template token and a dead link are found, fenced code is not read."""
    text = "Figures: RUN-TABLES.\n[x](missing.md) [ok](#a) [web](https://example.org)\n```\nTODO in code\n```\n"
    prose = _prose(text)
    assert [m.group(0) for m in PLACEHOLDERS.finditer(prose)] == ["RUN-TABLES"]
    assert [m.group(1) for m in LINK.finditer(prose)] == ["missing.md", "#a", "https://example.org"]
    assert PLACEHOLDERS.search("the figures are not measured yet") and not PLACEHOLDERS.search("measured")


def test_performance_figures_come_from_the_committed_run():
    """docs/performance.md's tables are those of the run committed beside it: bench.md is that
    JSON rendered, and every table row under the page's "Figures" heading is one of its rows."""
    import json

    from benchmarks.report import render

    folder = ROOT / "docs" / "performance"
    result = json.loads((folder / "bench.json").read_text())
    rendered = render(result)
    assert (folder / "bench.md").read_text().strip() == rendered.strip()
    page = (ROOT / "docs" / "performance.md").read_text()
    figures = page.split("\n## Figures", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in figures.splitlines() if line.startswith("|") and not line.startswith("|---")]
    assert rows, "no tables under ## Figures"
    missing = [row for row in rows if row not in rendered.splitlines()]
    assert not missing, f"rows on the page that the committed run does not have: {missing[:3]}"
