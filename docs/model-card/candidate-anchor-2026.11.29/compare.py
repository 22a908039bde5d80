"""Candidate R (the default's recipe with --anchor-weight 1, L2-SP) against the recipe, held out,
as declared in 04e8279.

Both recipes' runs were trained on the same machine with the same seeds (a machine of another
kind than the one that trained the shipped runs draws other runs from the same seed: the
committed card's figures are not this comparison's baseline). Reads this folder's card.json
and prints the rule's table (agegate.training.card.rule_verdict) for each held-out source and
set of seeds measured, the mean of the seeds' runs as a bundle of them would answer, and each
seed alone for information. The test half was not measured (no full runs were trained).

    python docs/model-card/candidate-anchor-2026.11.29/compare.py > docs/model-card/candidate-anchor-2026.11.29/comparison.md
"""

import json
from pathlib import Path

from agegate.training.card import loso_entry, render_rule_table

HERE = Path(__file__).parent
CARD = json.loads((HERE / "card.json").read_text())
SOURCES = {"utkface-part1": "part1", "all-age-faces": "aaf", "utkface-extra": "extra"}
MEASURED = {row["run"] for row in CARD["loso"]}


def runs(short: str, recipe: str, seeds) -> list[str]:
    return [f"loso-{short}-{recipe}s{seed}" for seed in seeds]


def seeds_measured(short: str) -> list[int]:
    """The seeds whose runs of both recipes are in the card, in training order."""
    return [s for s in (1234, 2, 3) if {f"loso-{short}-s{s}", f"loso-{short}-a1-s{s}"} <= MEASURED]


means, singles = [], []
for source, short in SOURCES.items():
    seeds = seeds_measured(short)
    if not seeds:
        continue
    label = "+".join(map(str, seeds))
    if len(seeds) > 1:
        means.append((f"{source} (seeds {label})", {"recipe": loso_entry(CARD, runs(short, "", seeds)),
                                                     "R": loso_entry(CARD, runs(short, "a1-", seeds))}))
    for seed in seeds:
        singles.append((f"{source} (seed {seed})", {"recipe": loso_entry(CARD, runs(short, "", [seed])),
                                                     "R": loso_entry(CARD, runs(short, "a1-", [seed]))}))
missing = [source for source, short in SOURCES.items() if not seeds_measured(short)]
print("# R against the recipe, held out (the rule: under-18s and 13–17s flagged no more than a point below, MAE no worse)\n")
if means:
    print(render_rule_table("The mean of the seeds' runs (as a bundle of them answers)", means))
print(render_rule_table("Each seed alone (for information)", singles))
if missing:
    print(f"Not measured: {', '.join(missing)} held out (R failed on All-Age-Faces first; see the model card).")
