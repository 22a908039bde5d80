"""Which crop framing suits a pretrained face-age net: its zero-shot error at each crop margin.

The dlib age net (training/pretrained.py) was trained on dlib's own face chips (five
landmarks aligned to a template, 0.2 padding); the till cuts a square around the detector's
box grown by the bundle's ``crop.margin``, or aligns the face to YuNet's five landmarks
(``crop.align`` "landmarks"). A net is sensitive to framing (a face chip zoomed in to 0.7
adds years of error), so the framing that best matches its chips is measured, not guessed:
every validation face of every source is cut at each margin, shift and alignment by the one
crop path (:func:`agegate.edge.bundle.prepare_face`, with the till's detector) and estimated
by the net as it is, untrained on our data.

    python -m agegate.training.framing DATA [DATA ...] --out DIR [--margins -0.1,-0.05,...] [--shifts 0,0.05,...]
                                       [--aligns box,landmarks]

Writes ``DIR/framing.json`` (MAE and bias per framing, per source and pooled; and where
YuNet's landmarks sit on average in the crop of the bundle's template framing, from which
:data:`agegate.edge.bundle.FIVE_POINT_TEMPLATE` was taken) and ``DIR/framing.png``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from . import metrics
from .data import read_sources, records_of
from .faces import DetectorSpec, default_cache_dir, prepare_faces, scan_cached
from .run import PRETRAINED, FitConfig, serving_spec, write_json

log = logging.getLogger(__name__)

MARGINS = (-0.15, -0.1, -0.05, 0.0, 0.05, 0.1, 0.2)
SHIFTS = (0.0, 0.04, 0.08, 0.12)


def measure(data: list[str], margins=MARGINS, shifts=SHIFTS, split: str = "val", limit: int | None = None,
            detector: DetectorSpec = DetectorSpec(), aligns=("box",)) -> dict:
    from .model import predict_ages
    from .pretrained import pretrained_model

    model = pretrained_model()
    records = [r for r in records_of(read_sources(data), limit) if r.split == split]
    rows = []
    for align in aligns:
        for shift in shifts:
            for margin in margins:
                config = FitConfig(data=data, backbone=PRETRAINED, image_size=64, margin=margin, shift_y=shift, align=align,
                                   target_offset=0.0, target_scale=1.0)
                spec = serving_spec(config)
                faces = prepare_faces(records, spec, detector, default_cache_dir(), name=split)
                predicted = predict_ages(model, faces.images, spec)
                summary = metrics.summarise_sources(faces.ages, predicted, faces.sources)
                rows.append({"align": align, "margin": margin, "shift_y": shift, "mae": summary["mae"], "bias": summary["bias"],
                             "sources": {n: {"mae": s["mae"], "bias": s["bias"]} for n, s in summary["sources"].items()}})
                log.info("%s margin %+.2f shift %+.2f: MAE %.2f, bias %+.2f; %s", align, margin, shift, summary["mae"], summary["bias"],
                         ", ".join(f"{n} {s['mae']:.2f}" for n, s in summary["sources"].items()))
    best = min(rows, key=lambda r: r["mae"])
    return {"split": split, "faces": len(records), "limit": limit, "detector": detector.key(), "framings": rows,
            "best": {"align": best["align"], "margin": best["margin"], "shift_y": best["shift_y"], "mae": best["mae"]},
            "template": landmark_template(records, detector)}


def landmark_template(records, detector: DetectorSpec = DetectorSpec()) -> dict:
    """Where the detector's five landmarks sit on average in the crop of TEMPLATE_FRAMING's box framing
    (fractions of its side), as measured, and made mirror-symmetric (FIVE_POINT_TEMPLATE's form)."""
    import numpy as np

    from agegate.edge.bundle import TEMPLATE_FRAMING, CropSpec, crop_box

    margin, shift = TEMPLATE_FRAMING
    points = []
    for scan in scan_cached(records, detector, default_cache_dir()):
        if scan.box is not None and scan.landmarks is not None:
            x, y, side, _ = crop_box(scan.box, CropSpec(margin=margin, shift_y=shift))
            points.append((np.asarray(scan.landmarks) - [x, y]) / side)
    if not points:
        return {"faces": 0}
    mean = np.mean(points, axis=0)
    mirrored = mean[[1, 0, 2, 4, 3]] * [-1, 1] + [1, 0]  # the mirror image's points, in the same order
    symmetric = (mean + mirrored) / 2
    return {"faces": len(points), "margin": margin, "shift_y": shift,
            "measured": np.round(mean, 4).tolist(), "symmetric": np.round(symmetric, 4).tolist()}


def plot(result: dict, path: Path) -> None:
    from .plots import _save, plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for align in dict.fromkeys(r.get("align", "box") for r in result["framings"]):
        for shift in sorted({r["shift_y"] for r in result["framings"]}):
            rows = [r for r in result["framings"] if r["shift_y"] == shift and r.get("align", "box") == align]
            how = "aligned to the landmarks, framed as" if align == "landmarks" else "box"
            ax.plot([r["margin"] for r in rows], [r["mae"] for r in rows], "s--" if align == "landmarks" else "o-",
                    label=f"{how} crop moved down {shift:g} of the box")
    ax.set_xlabel("crop margin (fraction of the detector box's side, each edge)")
    ax.set_ylabel("zero-shot MAE, all sources (years)")
    ax.set_title(f"dlib age net as published: {result['faces']} {result['split']} faces, {result['detector']} boxes")
    ax.grid(alpha=0.3)
    ax.legend()
    _save(fig, path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m agegate.training.framing", description=__doc__.split("\n\n")[0])
    p.add_argument("data", nargs="+")
    p.add_argument("--out", required=True)
    p.add_argument("--margins", default=",".join(f"{m:g}" for m in MARGINS))
    p.add_argument("--shifts", default=",".join(f"{m:g}" for m in SHIFTS))
    p.add_argument("--aligns", default="box", help="box, landmarks or both (comma-separated; default box)")
    p.add_argument("--split", default="val")
    p.add_argument("--limit", type=int)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    result = measure(args.data, tuple(float(m) for m in args.margins.split(",")), tuple(float(m) for m in args.shifts.split(",")),
                     args.split, args.limit, aligns=tuple(a.strip() for a in args.aligns.split(",")))
    out = Path(args.out)
    write_json(out / "framing.json", result)
    plot(result, out / "framing.png")
    best = result["best"]
    print(f"best: {best['align']} margin {best['margin']:g}, shift {best['shift_y']:g} (MAE {best['mae']:.2f}); {out / 'framing.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
