"""Held out on All-Age-Faces, the recipe's and R's three-run means: where does each stand on the
trade-off between teenagers flagged and adults asked for ID as the threshold moves?

Reads the predictions that `agegate-train eval` wrote for each mean (committed beside this
script), prints the figures at the challenge age and at the threshold where each flags as many
13-17-year-olds as the other does at 25, and draws tradeoff.png.

    agegate-train eval runs/loso-aaf-s1234 --ensemble-with runs/loso-aaf-s2 runs/loso-aaf-s3 --data $D/all-age-faces --split test
    cp runs/loso-aaf-s1234/predictions.csv docs/model-card/candidate-anchor-2026.11.29/predictions-aaf-heldout-recipe.csv
    (the same with runs/loso-aaf-a1-* for predictions-aaf-heldout-r.csv), then
    python docs/model-card/candidate-anchor-2026.11.29/tradeoff.py > docs/model-card/candidate-anchor-2026.11.29/tradeoff.md
"""

import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from agegate.ages import CHALLENGE_AGE
from agegate.training.metrics import FALSE_ALARM_AGE, MINOR_AGE

HERE = Path(__file__).parent
MODELS = {"recipe": "predictions-aaf-heldout-recipe.csv", "R": "predictions-aaf-heldout-r.csv"}  # each the mean of three runs
LABELS = {"recipe": "the recipe (mean of 3 runs)", "R": "R, --anchor-weight 1 (mean of 3 runs)"}


def read(name: str) -> tuple[np.ndarray, np.ndarray]:
    with open(HERE / name, newline="") as f:
        rows = list(csv.DictReader(f))
    return np.array([float(r["real_age"]) for r in rows]), np.array([float(r["predicted_age"]) for r in rows])


def shares(true, pred, threshold):
    flagged = pred < threshold
    teen = (true >= 13) & (true < MINOR_AGE)
    return {"under18": flagged[true < MINOR_AGE].mean(), "teen": flagged[teen].mean(), "over30": flagged[true >= FALSE_ALARM_AGE].mean()}


def threshold_for_teens(true, pred, share: float) -> float:
    """The lowest threshold (0.1-year steps) at which at least ``share`` of 13-17s are flagged."""
    for t in np.arange(15.0, 40.0, 0.1):
        if shares(true, pred, t)["teen"] >= share - 1e-9:
            return round(float(t), 1)
    return float("nan")


data = {name: read(path) for name, path in MODELS.items()}
at25 = {name: shares(*tp, CHALLENGE_AGE) for name, tp in data.items()}
print("| model | threshold | under-18s flagged | 13–17 flagged | 30+ flagged |\n|---|---|---|---|---|")
for name, (true, pred) in data.items():
    print(f"| {name} | {CHALLENGE_AGE:g} | {100 * at25[name]['under18']:.1f} % | {100 * at25[name]['teen']:.1f} % | {100 * at25[name]['over30']:.1f} % |")
for name, (true, pred) in data.items():
    for other in data:
        if other == name:
            continue
        t = threshold_for_teens(true, pred, at25[other]["teen"])
        s = shares(true, pred, t)
        print(f"| {name}, as many teenagers as {other} at 25 | {t:.1f} | {100 * s['under18']:.1f} % | {100 * s['teen']:.1f} % | {100 * s['over30']:.1f} % |")

print("\n(From predictions.csv, whose answers are rounded to 0.001 years: one of R's 30+ faces is 25.000 there and just under 25 "
      "in the card, so R's 30+ flagged at 25 reads 33.5 % here and 33.6 % (534 of 1,589) in card.json.)")

fig, ax = plt.subplots(figsize=(6.4, 4.8))
for name, (true, pred) in data.items():
    curve = [shares(true, pred, t) for t in np.arange(18.0, 34.0, 0.25)]
    ax.plot([100 * c["over30"] for c in curve], [100 * c["teen"] for c in curve], label=LABELS[name])
    ax.plot(100 * at25[name]["over30"], 100 * at25[name]["teen"], "o", color=ax.lines[-1].get_color())
ax.set_xlabel("people 30+ flagged (%)")
ax.set_ylabel("13–17-year-olds flagged (%)")
ax.set_title("Held out on All-Age-Faces: threshold moved 18–34 (dot: 25)")
ax.grid(alpha=0.3)
ax.legend(loc="lower right")
fig.tight_layout()
fig.savefig(HERE / "tradeoff.png", dpi=100)
