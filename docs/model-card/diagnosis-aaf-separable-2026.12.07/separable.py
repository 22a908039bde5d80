"""Can this net tell All-Age-Faces' minors from its adults 30+ at all? The aims ask, on each
source's test split, for >= 97 % of under-18s and >= 90 % of 13-17s flagged with <= 12 % of
people 30+ flagged. Whatever a model's level, the share of adults 30+ it flags at the lowest
threshold that reaches both minors' aims says how well it orders these faces: if no model
trained on All-Age-Faces gets that under 12 %, no shift of its answers meets the aims there.

Runs (the Keras model on the till's crops, as `agegate-train eval` cuts them) are measured on
the source's train split (faces they learnt from) and its test split; a bundle (``bundle:PATH``)
through the till's own `agegate-edge estimate --json` on the test split's photos.

    python docs/model-card/diagnosis-aaf-separable-2026.12.07/separable.py ALL_AGE_FACES \\
        LABEL=RUN|LABEL=bundle:PATH ... > docs/model-card/diagnosis-aaf-separable-2026.12.07/separable.md

also draws separable.png beside this script: each model's under-18s flagged against its adults
30+ flagged as the threshold moves, train split dashed, test solid, the aims' corner shaded.
"""

import sys
from pathlib import Path

import numpy as np

from agegate.ages import CHALLENGE_AGE
from agegate.training.card import estimate_with_the_till
from agegate.training.data import read_sources, records_of
from agegate.training.evaluate import split_faces
from agegate.training.metrics import flagged_share, mae
from agegate.training.model import load_inference_model, predict_ages
from agegate.training.run import RunDir, serving_spec

UNDER18_AIM, TEEN_AIM, OVER30_AIM = 0.97, 0.90, 0.12  # issue 11's aims on each test split
STEP = 0.1  # years between the thresholds tried


def at_minors_aims(true: np.ndarray, pred: np.ndarray) -> dict:
    """The lowest threshold (in steps of 0.1 year) that flags the aims' share of under-18s and of 13-17s."""
    for threshold in np.arange(0.0, 100.0 + STEP, STEP):
        f = flagged_share(true, pred, round(float(threshold), 1))
        if f["under18_flagged"] >= UNDER18_AIM and f["teen_flagged"] >= TEEN_AIM:
            return f
    raise ValueError("no threshold flags the minors' aims")


def row(label: str, split: str, true: np.ndarray, pred: np.ndarray) -> str:
    at25 = flagged_share(true, pred, CHALLENGE_AGE)
    aims = at_minors_aims(true, pred)
    verdict = "yes" if aims["over30_flagged"] <= OVER30_AIM else "no"
    return (f"| {label} | {split} | {mae(true, pred):.2f} | {100 * at25['under18_flagged']:.1f} / {100 * at25['teen_flagged']:.1f} / "
            f"{100 * at25['over30_flagged']:.1f} % | {aims['threshold']:.1f} | {100 * aims['under18_flagged']:.1f} / "
            f"{100 * aims['teen_flagged']:.1f} % | **{100 * aims['over30_flagged']:.1f} %** | {verdict} |")


def plot(curves: list[tuple[str, str, np.ndarray, np.ndarray]], path: Path) -> None:
    from agegate.training.plots import _save, plt

    fig, ax = plt.subplots(figsize=(7.5, 5))
    colours = {}
    for label, split, true, pred in curves:
        points = [flagged_share(true, pred, t) for t in np.arange(10.0, 60.0 + STEP, STEP)]
        colour = colours.setdefault(label, f"C{len(colours)}")
        ax.plot([100 * p["over30_flagged"] for p in points], [100 * p["under18_flagged"] for p in points],
                "--" if split == "train" else "-", color=colour, label=f"{label}: {split}")
    ax.fill_between([0, 100 * OVER30_AIM], 100 * UNDER18_AIM, 100, color="green", alpha=0.15, label="the aims (under-18s ≥ 97 %, 30+ ≤ 12 %)")
    ax.set_xlim(0, 60)
    ax.set_ylim(80, 100)
    ax.set_xlabel("people 30+ flagged (%)")
    ax.set_ylabel("under-18s flagged (%)")
    ax.set_title("All-Age-Faces: minors against adults as the threshold moves")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    _save(fig, path)


def main(data: str, models: list[str]) -> None:
    curves = []
    print("# All-Age-Faces: can the net order its minors below its adults? (the aims at one threshold)\n")
    print(f"*At 25*: under-18s / 13–17s / 30+ flagged at the challenge age. *At the minors' aims*: the lowest threshold "
          f"(0.1-year steps) flagging ≥ {100 * UNDER18_AIM:.0f} % of under-18s and ≥ {100 * TEEN_AIM:.0f} % of 13–17s, "
          f"and the share of people 30+ it flags there; *both aims*: that share ≤ {100 * OVER30_AIM:.0f} %.\n")
    print("| model | split | MAE | at 25 | threshold | under-18s / 13–17s flagged there | 30+ flagged there | both aims |")
    print("|---|---|---|---|---|---|---|---|")
    for label, spec in (m.split("=", 1) for m in models):
        if spec.startswith("bundle:"):
            records = [r for r in records_of(read_sources([data])) if r.split == "test"]
            pred = estimate_with_the_till(Path(spec[len("bundle:"):]), [r.path for r in records])
            found = np.array([p is not None for p in pred])
            true = np.array([r.age for r in records], dtype=float)[found]
            estimated = np.array([p for p in pred if p is not None], dtype=float)
            print(row(label, "test (estimate)", true, estimated))
            curves.append((label, "test", true, estimated))
            continue
        run = RunDir(spec)
        config = run.load_config()
        model = load_inference_model(run)
        for split in ("train", "test"):
            faces = split_faces(config, [data], split)
            pred = predict_ages(model, faces.images, serving_spec(config))
            print(row(label, split, faces.ages, pred))
            curves.append((label, split, faces.ages, pred))
    plot(curves, Path(__file__).with_name("separable.png"))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
