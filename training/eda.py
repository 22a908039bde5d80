"""`agegate-train eda`: look at a data folder before training on it.

Writes to ``--out``: ``report.md`` (the page to read), ``eda.json`` (the same figures for
machines) and four plots: the age histogram per split, faces per age band, a grid of
sample crops per band exactly as the model will see them, and the image sizes. Along the
way it finds what would hurt a run: bad labels, missing and unreadable files,
byte-identical duplicates (and those labelled with different ages), and photos where the
till's face detector finds no face (their crops use the typical box: the *fallback* share).
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from . import plots
from .data import SPLITS, limit_per_split, read_data, split_counts
from .faces import DetectorSpec, crop_faces, default_cache_dir, scan_cached, typical_box
from .metrics import BAND_NAMES, band_of
from .run import FitConfig, serving_spec, write_json

log = logging.getLogger(__name__)


def explore(
    data: str | Path,
    out: str | Path,
    image_size: int = 128,
    margin: float = 0.1,
    detector: DetectorSpec = DetectorSpec(),
    seed: int = 1234,
    limit: int | None = None,
    samples_per_band: int = 8,
    workers: int | None = None,
) -> dict[str, Any]:
    out = Path(out)
    labelled = read_data(data, seed=seed)
    records = limit_per_split(labelled.records, limit, seed)
    log.info("%s: %d labelled faces (%s), %d entries skipped", labelled.folder, len(records), labelled.source, len(labelled.problems))

    scans = scan_cached(records, detector, default_cache_dir(), workers)
    readable = [s for s in scans if s.error is None]
    unreadable = [s.record.file for s in scans if s.error is not None]
    duplicates = _duplicates(records)
    relative = typical_box(readable)

    # Sample crops per band, cut by the same code as training.
    spec = serving_spec(FitConfig(data=str(data), image_size=image_size, margin=margin, target_offset=0.0, target_scale=1.0))
    rng = np.random.default_rng(seed)
    by_band: dict[str, list] = defaultdict(list)
    for s in readable:
        by_band[band_of([s.record.age])[0]].append(s)
    picked = [by_band[b][i] for b in BAND_NAMES for i in rng.permutation(len(by_band[b]))[:samples_per_band]]
    crops = crop_faces(picked, spec, {labelled.name: relative}, workers, name="samples")
    samples: dict[str, list] = {b: [] for b in BAND_NAMES if by_band[b]}
    for image, age, fb in zip(crops.images, crops.ages, crops.fallback):
        samples[band_of([age])[0]].append((image, f"{age:g}", bool(fb)))

    counts = split_counts(records)
    detection = {
        split: {
            "faces": sum(1 for s in readable if s.record.split == split),
            "fallback_share": _share([s.box is None for s in readable if s.record.split == split]),
            "several_faces_share": _share([s.faces_found > 1 for s in readable if s.record.split == split]),
        }
        for split in SPLITS
    }
    sizes = Counter((s.width, s.height) for s in readable)
    report = {
        "data": str(labelled.folder),
        "description": labelled.description,
        "licence": labelled.licence,
        "source": labelled.source,
        "splits_from": "splits.csv" if labelled.has_splits else f"seeded stratified split (seed {seed})",
        "limit": limit,
        "faces": len(readable),
        "faces_per_split_and_band": counts,
        "age": _age_stats(np.array([s.record.age for s in readable])),
        "skipped_entries": [{"file": p.file, "problem": p.problem} for p in labelled.problems],
        "unreadable_images": unreadable,
        "duplicates": duplicates,
        "image_sizes": {f"{w}x{h}": n for (w, h), n in sizes.most_common()},
        "detector": detector.key(),
        "detection": detection,
        "fallback_share": _share([s.box is None for s in readable]),
        # Worth a look: a crop, a drawing, two faces side by side, a label on the wrong photo.
        "no_face_found": [s.record.file for s in readable if s.box is None],
        "typical_box": {"centre_x": relative[0], "centre_y": relative[1], "side": relative[2]},
        "crop": {"image_size": image_size, "margin": margin},
    }

    ages_by_split = {split: np.array([s.record.age for s in readable if s.record.split == split]) for split in SPLITS}
    plots.age_histogram(ages_by_split, out / "age_histogram.png")
    plots.band_counts(counts, out / "band_counts.png")
    plots.sample_grid(samples, out / "samples_by_band.png")
    plots.image_sizes([(s.width, s.height) for s in readable], out / "image_sizes.png")
    write_json(out / "eda.json", report)
    (out / "report.md").write_text(_markdown(report), encoding="utf-8")
    log.info("wrote %s", out / "report.md")
    return report


def _share(flags: list[bool]) -> float | None:
    return float(np.mean(flags)) if flags else None


def _age_stats(ages: np.ndarray) -> dict[str, float | None]:
    if not ages.size:
        return {"min": None, "median": None, "mean": None, "max": None}
    return {"min": float(ages.min()), "median": float(np.median(ages)), "mean": float(ages.mean()), "max": float(ages.max())}


def _duplicates(records) -> dict[str, Any]:
    """Byte-identical files, and those among them labelled with different ages."""
    by_hash: dict[str, list] = defaultdict(list)
    for r in records:
        try:
            by_hash[hashlib.sha1(r.path.read_bytes()).hexdigest()].append(r)
        except OSError:
            continue
    groups = [g for g in by_hash.values() if len(g) > 1]
    return {
        "groups": len(groups),
        "files": sum(len(g) for g in groups),
        "conflicting_ages": [[{"file": r.file, "age": r.age} for r in g] for g in groups if len({r.age for r in g}) > 1],
        "examples": [[r.file for r in g] for g in groups[:10]],
    }


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.1f} %"


def _markdown(r: dict[str, Any]) -> str:
    counts = r["faces_per_split_and_band"]
    lines = [
        f"# Data report: {r['description'] or r['data']}",
        "",
        f"- Folder: `{r['data']}` (labels from {r['source']}; splits from {r['splits_from']})",
        f"- Licence: **{r['licence'] or 'not stated in the folder README: check before shipping a model'}**",
        f"- Usable faces: {r['faces']}" + (f" (limited to {r['limit']} per split)" if r["limit"] else ""),
        f"- Ages: {r['age']['min']:g}-{r['age']['max']:g}, median {r['age']['median']:g}, mean {r['age']['mean']:.1f}" if r["faces"] else "- Ages: none",
        f"- Skipped entries (bad labels, missing files): {len(r['skipped_entries'])}",
        f"- Unreadable images: {len(r['unreadable_images'])}",
        f"- Byte-identical duplicates: {r['duplicates']['groups']} groups, {r['duplicates']['files']} files, "
        f"{len(r['duplicates']['conflicting_ages'])} groups with different ages",
        f"- Face detection ({r['detector']}, the till's detector): no face found in {_pct(r['fallback_share'])} of photos; "
        f"their crops use the typical box (centre {r['typical_box']['centre_x']:.2f},{r['typical_box']['centre_y']:.2f}, side {r['typical_box']['side']:.2f} of the photo)",
        f"- Crops: {r['crop']['image_size']} px, margin {r['crop']['margin']:g}",
        "",
        "## Faces per split and age band",
        "",
        "| split | " + " | ".join(BAND_NAMES) + " | total | no face found |",
        "|---" * (len(BAND_NAMES) + 3) + "|",
    ]
    for split in SPLITS:
        row = counts[split]
        lines.append(f"| {split} | " + " | ".join(str(row[b]) for b in BAND_NAMES) + f" | {sum(row.values())} | {_pct(r['detection'][split]['fallback_share'])} |")
    lines += ["", "## Image sizes", "", "| size | images |", "|---|---|"]
    lines += [f"| {size} | {n} |" for size, n in list(r["image_sizes"].items())[:10]]
    for title, items in (("Skipped entries", [f"{p['file']}: {p['problem']}" for p in r["skipped_entries"]]),
                         ("Unreadable images", r["unreadable_images"]),
                         ("Photos where no face was found (cropped with the typical box)", r["no_face_found"])):
        if items:
            lines += ["", f"## {title}", ""] + [f"- {i}" for i in items[:50]] + ([f"- ... and {len(items) - 50} more (eda.json)"] if len(items) > 50 else [])
    if r["duplicates"]["conflicting_ages"]:
        lines += ["", "## Duplicates with different ages", ""]
        lines += ["- " + ", ".join(f"{d['file']} ({d['age']:g})" for d in g) for g in r["duplicates"]["conflicting_ages"][:20]]
    lines += [
        "",
        "## Plots",
        "",
        "![Age distribution](age_histogram.png)",
        "![Faces per band](band_counts.png)",
        "![Sample crops per band](samples_by_band.png)",
        "![Image sizes](image_sizes.png)",
        "",
    ]
    return "\n".join(lines)
