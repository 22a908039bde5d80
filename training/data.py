"""Labelled face photos: reading a data folder, checking it, and splitting it.

A data folder is either

* a ``labels.csv`` with ``file_name,real_age`` (the layout of the APPA-REAL-derived retail
  data sets) next to the images or an ``images/`` folder holding them, optionally with a
  person column (``person_id``, ``person``, ``subject_id``, ``subject`` or ``identity``), or
* a folder of UTKFace photos whose names carry the age: ``AGE_GENDER_RACE_DATE.jpg``.

A ``splits.csv`` (``file_name,split`` with train/val/test) is honoured when present, so
figures stay comparable across runs. Without one, the split is seeded and stratified by
age band, and keeps every person's photos on one side when a person column exists.

Nothing here crashes on bad data: a missing file, an age that is not a number or is out of
range, or a file listed twice is recorded as a :class:`Problem`, reported, and skipped.
Unreadable images are found when they are decoded (see :mod:`agegate.training.faces`).
"""

from __future__ import annotations

import csv
import logging
import math
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from agegate.ages import MAX_AGE

from .metrics import BAND_NAMES, band_of

log = logging.getLogger(__name__)

LABELS_FILE = "labels.csv"
SPLITS_FILE = "splits.csv"
SPLITS = ("train", "val", "test")
SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val", "dev": "val", "test": "test", "testing": "test"}
DEFAULT_FRACTIONS = {"train": 0.7, "val": 0.1, "test": 0.2}
PERSON_COLUMNS = ("person_id", "person", "subject_id", "subject", "identity")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
UTKFACE_NAME = re.compile(r"^(\d{1,3})_(\d+)_(\d+)_(\d+)")
UTKFACE_GENDER = {"0": "male", "1": "female"}
UTKFACE_RACE = {"0": "White", "1": "Black", "2": "Asian", "3": "Indian", "4": "Others"}
AAF_GENDER = {"M": "male", "F": "female"}


@dataclass(frozen=True)
class Record:
    """One labelled photo."""

    file: str  # as named in labels.csv (or the file name, for UTKFace)
    path: Path
    age: float
    group: str | None = None  # the person, when the data says
    split: str | None = None
    source: str = ""  # the data folder's name: figures are reported per source


@dataclass(frozen=True)
class Problem:
    """Something wrong with one entry of the data, skipped."""

    file: str
    problem: str

    def __str__(self) -> str:
        return f"{self.file}: {self.problem}"


@dataclass
class LabelledData:
    """A data folder read and checked: its usable records and what was skipped."""

    folder: Path
    records: list[Record]
    problems: list[Problem] = field(default_factory=list)
    source: str = LABELS_FILE  # "labels.csv" or "utkface-names"
    description: str = ""
    licence: str = ""
    has_splits: bool = False

    @property
    def name(self) -> str:
        return self.folder.name

    def split(self, name: str) -> list[Record]:
        return [r for r in self.records if r.split == name]


class DataError(Exception):
    """A data folder that cannot be used at all (as opposed to single bad entries)."""


# --- Reading --------------------------------------------------------------------------


def read_data(folder: str | Path, seed: int = 1234) -> LabelledData:
    """Read, check and split a data folder; bad entries become problems, not exceptions."""
    folder = Path(folder).resolve()
    if not folder.is_dir():
        raise DataError(f"{folder}: not a directory")
    if (folder / LABELS_FILE).exists():
        data = _read_labels_csv(folder)
    else:
        data = _read_utkface_names(folder)
    if not data.records:
        raise DataError(f"{folder}: no usable labelled images ({len(data.problems)} problems, e.g. {data.problems[:1]})")
    data.description, data.licence = read_readme(folder)
    data.records, data.has_splits = _apply_splits(folder, data.records, data.problems, seed)
    data.records = [replace(r, source=folder.name) for r in data.records]
    report_problems(data.problems, f"{folder}")
    return data


def read_sources(folders: str | Path | list[str] | list[Path], seed: int = 1234) -> list[LabelledData]:
    """Several data folders, each read and split on its own (its own ``splits.csv``).

    A source is named by its folder; two folders with the same name would mix their figures,
    so that is refused.
    """
    folders = [folders] if isinstance(folders, (str, Path)) else list(folders)
    if not folders:
        raise DataError("no data folder given")
    sources = [read_data(f, seed=seed) for f in folders]
    names = Counter(s.name for s in sources)
    clash = [n for n, c in names.items() if c > 1]
    if clash:
        raise DataError(f"data folders must have different names (figures are reported per folder): {', '.join(clash)} given twice")
    return sources


def records_of(sources: list[LabelledData], limit: int | None = None, seed: int = 1234) -> list[Record]:
    """Every source's records, each source limited on its own (``limit`` per split and source)."""
    return [r for s in sources for r in limit_per_split(s.records, limit, seed)]


def read_meta(folder: str | Path) -> dict[str, dict[str, str]]:
    """``meta.csv`` of a data folder ({file_name: {column: value}}), for figures per group; {} without one."""
    path = Path(folder) / "meta.csv"
    if not path.is_file():
        return {}
    with open(path, newline="", encoding="utf-8-sig") as f:
        return {row["file_name"]: row for row in csv.DictReader(f) if row.get("file_name")}


def groups_of(folder: Path, files: list[str]) -> dict[str, list[str | None]]:
    """{"gender": [...], "ethnicity": [...]} per file, None where the source does not say."""
    meta = read_meta(folder)
    gender, ethnicity = [], []
    for f in files:
        row = meta.get(f)
        if row is None and parse_utkface_name(f) is not None:  # UTKFace names: AGE_GENDER_RACE_DATE
            parts = Path(f).name.split("_")
            row = {"gender": parts[1] if len(parts) > 1 else "", "race": parts[2] if len(parts) > 2 else ""}
        row = row or {}
        g = row.get("gender", "")
        gender.append(UTKFACE_GENDER.get(g) or AAF_GENDER.get(g))
        ethnicity.append(UTKFACE_RACE.get(row.get("race", "")))
    return {"gender": gender, "ethnicity": ethnicity}


def _read_labels_csv(folder: Path) -> LabelledData:
    problems: list[Problem] = []
    records: list[Record] = []
    seen: set[str] = set()
    with open(folder / LABELS_FILE, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        columns = reader.fieldnames or []
        missing = {"file_name", "real_age"} - set(columns)
        if missing:
            raise DataError(f"{folder / LABELS_FILE}: missing column(s) {', '.join(sorted(missing))}; expected file_name,real_age")
        person = next((c for c in PERSON_COLUMNS if c in columns), None)
        for line, row in enumerate(reader, start=2):
            name = (row.get("file_name") or "").strip()
            if not name:
                problems.append(Problem(f"{LABELS_FILE}:{line}", "empty file_name"))
                continue
            if name in seen:
                problems.append(Problem(name, f"listed twice in {LABELS_FILE} (line {line} skipped)"))
                continue
            seen.add(name)
            age, why = parse_age(row.get("real_age"))
            if why:
                problems.append(Problem(name, why))
                continue
            path = _find_image(folder, name)
            if path is None:
                problems.append(Problem(name, "file not found"))
                continue
            group = ((row.get(person) or "").strip() or None) if person else None
            records.append(Record(name, path, age, group))
    return LabelledData(folder, records, problems, source=LABELS_FILE)


def _read_utkface_names(folder: Path) -> LabelledData:
    problems: list[Problem] = []
    records: list[Record] = []
    image_dir = folder / "images" if (folder / "images").is_dir() else folder
    for path in sorted(image_dir.iterdir()):
        if not path.is_file() or not path.name.lower().endswith(IMAGE_SUFFIXES):
            continue
        age = parse_utkface_name(path.name)
        if age is None:
            problems.append(Problem(path.name, "no age in the file name (expected AGE_GENDER_RACE_DATE.jpg)"))
            continue
        records.append(Record(path.name, path, age))
    return LabelledData(folder, records, problems, source="utkface-names")


def parse_utkface_name(name: str) -> float | None:
    """The age in a UTKFace file name ``AGE_GENDER_RACE_DATE.jpg[.chip.jpg]``, or None."""
    m = UTKFACE_NAME.match(Path(name).name)
    if not m:
        return None
    age = float(m.group(1))
    return age if 0 <= age <= MAX_AGE else None


def parse_age(text: str | None) -> tuple[float, str | None]:
    """(age, None) for a usable age label, else (nan, why not)."""
    try:
        age = float((text or "").strip())
    except ValueError:
        return math.nan, f"age {text!r} is not a number"
    if not math.isfinite(age) or not 0 <= age <= MAX_AGE:
        return math.nan, f"age {text!r} is outside 0-{MAX_AGE:g}"
    return age, None


def _find_image(folder: Path, name: str) -> Path | None:
    for candidate in (folder / "images" / name, folder / name):
        if candidate.is_file():
            return candidate
    return None


def read_readme(folder: Path) -> tuple[str, str]:
    """(description, licence) from the data folder's README, '' where it says nothing."""
    readme = next((folder / n for n in ("README.md", "README.txt", "README") if (folder / n).is_file()), None)
    if readme is None:
        return "", ""
    lines = [ln.strip() for ln in readme.read_text(encoding="utf-8", errors="replace").splitlines()]
    description = next((ln.lstrip("#").strip() for ln in lines if ln), "")
    licence = ""
    for ln in lines:
        if re.search(r"licen[cs]e", ln, re.IGNORECASE):
            bold = re.findall(r"\*\*(.+?)\*\*", ln)
            text = next((b for b in bold if re.search(r"licen[cs]e", b, re.IGNORECASE)), ln)
            licence = re.sub(r"^[-*#\s]*(licen[cs]e)\s*[:\-]\s*", "", text.strip(" -*#"), flags=re.IGNORECASE).strip()
            break
    return description, licence


def report_problems(problems: list[Problem], where: str, show: int = 10) -> None:
    """Log skipped entries: the first few by name, then a count by kind."""
    if not problems:
        return
    log.warning("%s: %d entries skipped", where, len(problems))
    for p in problems[:show]:
        log.warning("  skipped %s", p)
    if len(problems) > show:
        kinds = Counter(re.sub(r"'.*?'|\d+", "#", p.problem) for p in problems)
        log.warning("  ... %d more; by kind: %s", len(problems) - show, dict(kinds))


# --- Splitting ------------------------------------------------------------------------


def _apply_splits(folder: Path, records: list[Record], problems: list[Problem], seed: int) -> tuple[list[Record], bool]:
    splits_path = folder / SPLITS_FILE
    if not splits_path.exists():
        return stratified_split(records, DEFAULT_FRACTIONS, seed), False
    given: dict[str, str] = {}
    with open(splits_path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        if not {"file_name", "split"} <= set(reader.fieldnames or []):
            raise DataError(f"{splits_path}: expected columns file_name,split")
        for row in reader:
            given[(row["file_name"] or "").strip()] = (row["split"] or "").strip().lower()
    kept: list[Record] = []
    for r in records:
        split = SPLIT_ALIASES.get(given.get(r.file, ""))
        if split is None:
            why = "not in splits.csv" if r.file not in given else f"unknown split {given[r.file]!r}"
            problems.append(Problem(r.file, why))
            continue
        kept.append(replace(r, split=split))
    if not any(r.split == "val" for r in kept):
        # Carve a validation set out of train, the same way a missing splits.csv would.
        train = [r for r in kept if r.split == "train"]
        share = DEFAULT_FRACTIONS["val"] / (DEFAULT_FRACTIONS["train"] + DEFAULT_FRACTIONS["val"])
        carved = {r.file: r.split for r in stratified_split(train, {"train": 1 - share, "val": share}, seed)}
        kept = [replace(r, split=carved.get(r.file, r.split)) for r in kept]
        log.info("%s has no val rows: %d train faces moved to val", splits_path, sum(v == "val" for v in carved.values()))
    _check_groups_apart(kept, str(splits_path))
    return kept, True


def stratified_split(records: list[Record], fractions: dict[str, float], seed: int) -> list[Record]:
    """Assign splits in the given proportions, stratified by age band and seeded.

    The unit of assignment is a person when records carry one (so no person is on two
    sides), else a photo. A person's band is the band of their median age. Within each
    band, people are shuffled and each goes to the split furthest below its share.
    """
    groups: dict[str, list[Record]] = defaultdict(list)
    for r in records:
        groups[r.group if r.group is not None else f"file:{r.file}"].append(r)
    by_band: dict[str, list[str]] = defaultdict(list)
    for key in sorted(groups):
        by_band[band_of([float(np.median([r.age for r in groups[key]]))])[0]].append(key)
    rng = np.random.default_rng(seed)
    names = list(fractions)
    assigned: dict[str, str] = {}
    for band in BAND_NAMES:
        keys = by_band.get(band, [])
        rng.shuffle(keys)
        total = sum(len(groups[k]) for k in keys)
        counts = dict.fromkeys(names, 0)
        for k in keys:
            split = max(names, key=lambda s: fractions[s] * total - counts[s])
            assigned[k] = split
            counts[split] += len(groups[k])
    return [replace(r, split=assigned[r.group if r.group is not None else f"file:{r.file}"]) for r in records]


def _check_groups_apart(records: list[Record], where: str) -> None:
    sides: dict[str, set[str]] = defaultdict(set)
    for r in records:
        if r.group is not None:
            sides[r.group].add(r.split or "")
    mixed = [g for g, s in sides.items() if len(s) > 1]
    if mixed:
        log.warning("%s puts %d people in more than one split (e.g. %s): test figures may flatter the model", where, len(mixed), mixed[:3])


def limit_per_split(records: list[Record], n: int | None, seed: int) -> list[Record]:
    """At most ``n`` records of each split, taken in turn from each age band (for smoke runs)."""
    if n is None:
        return records
    rng = np.random.default_rng(seed)
    kept: list[Record] = []
    for split in SPLITS:
        pool = [r for r in records if r.split == split]
        order = rng.permutation(len(pool))
        bands: dict[str, list[Record]] = defaultdict(list)
        for i in order:
            bands[band_of([pool[i].age])[0]].append(pool[i])
        queues = [bands[b] for b in BAND_NAMES if bands[b]]
        taken: list[Record] = []
        while len(taken) < n and any(queues):
            for q in queues:
                if q and len(taken) < n:
                    taken.append(q.pop(0))
        kept.extend(taken)
    return kept


def split_counts(records: list[Record]) -> dict[str, dict[str, int]]:
    """{split: {band: count}} for reports."""
    out: dict[str, dict[str, int]] = {}
    for split in SPLITS:
        bands = Counter(band_of([r.age for r in records if r.split == split]))
        out[split] = {b: int(bands.get(b, 0)) for b in BAND_NAMES}
    return out
