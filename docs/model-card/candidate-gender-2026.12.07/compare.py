"""Candidate W (declared in 529ffa3 as G; renamed, an earlier candidate was G): the default's recipe with faces drawn so that each age band
holds as many women as men (``fit --balance-gender``), against the recipe, held out, each the mean
of three runs (seeds 1234, 2, 3) as a bundle of them answers.

Every run here trained on one machine, in one session (card.json's "machines"). Reads this
folder's card.json (held out on All-Age-Faces) and, where measured, part1/card.json and
extra/card.json; prints the rule's tables (agegate.training.card.rule_verdict), each candidate at
the recipe's minors, the figures per gender, and draws each held-out source's trade-off
(tradeoff-SOURCE.png).

    python docs/model-card/candidate-gender-2026.12.07/compare.py > docs/model-card/candidate-gender-2026.12.07/comparison.md
"""

import json
from pathlib import Path

from agegate.training.card import at_baseline_minors, loso_entry, plot_heldout_tradeoff, render_rule_table

HERE = Path(__file__).parent
CARD = {"loso": [row for card in ("card.json", "part1/card.json", "extra/card.json") if (HERE / card).exists()
                 for row in json.loads((HERE / card).read_text())["loso"]]}
SOURCES = {"utkface-part1": "part1", "all-age-faces": "aaf", "utkface-extra": "extra"}
MODELS = {"recipe": "r", "W (--balance-gender)": "g"}  # name: the runs' prefix
SEEDS = (1234, 2, 3)
MEASURED = {row["run"] for row in CARD["loso"]}


def runs(short: str, prefix: str, seeds=SEEDS) -> list[str]:
    return [f"loso-{short}-{prefix}{seed}" for seed in seeds]


def pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.1f} %"


means, singles, matched, genders, missing = [], [], [], [], []
for source, short in SOURCES.items():
    if not all("+".join(runs(short, p)) in MEASURED for p in MODELS.values()):
        missing.append(source)
        continue
    entries = {name: loso_entry(CARD, runs(short, p)) for name, p in MODELS.items()}
    means.append((source, entries))
    for seed in SEEDS:
        singles.append((f"{source} (seed {seed})", {name: loso_entry(CARD, runs(short, p, [seed])) for name, p in MODELS.items()}))
    plot_heldout_tradeoff(CARD, {f"{name} (mean of 3 runs)": runs(short, p) for name, p in MODELS.items()},
                          HERE / f"tradeoff-{short}.png", f"Held out: {source}; threshold moved 14–40 (dot: 25)")
    for seeds in [(seed,) for seed in SEEDS] + [SEEDS]:
        recipe, g = (loso_entry(CARD, runs(short, p, seeds)) for p in MODELS.values())
        m = at_baseline_minors(recipe, g)
        matched.append(f"| {source}, {'+'.join(map(str, seeds))} | {'n/a' if m is None else format(m['threshold'], 'g')} | "
                       f"{pct(m and m['under18_flagged'])} | {pct(m and m['teen_flagged'])} | {pct(m and m['over30_flagged'])} | "
                       f"{pct(recipe['challenge']['over30_flagged'])} |")
    for name, entry in entries.items():
        by = entry["groups"]["gender"]
        w, m = by["female"], by["male"]
        genders.append(f"| {source} | {name} | {w['mae']:.2f} / {m['mae']:.2f} | {w['bias']:+.2f} / {m['bias']:+.2f} | "
                       f"{pct(w['challenge']['under18_flagged'])} / {pct(m['challenge']['under18_flagged'])} | "
                       f"{pct(w['challenge']['over30_flagged'])} of {w['challenge']['over30_n']} / "
                       f"{pct(m['challenge']['over30_flagged'])} of {m['challenge']['over30_n']} |")

print("# W against the recipe, held out (the rule: under-18s and 13–17s flagged no more than a point below, MAE no worse)\n")
print(render_rule_table("The mean of the three seeds' runs (as a bundle of them answers)", means))
print(render_rule_table("Each seed alone (for information)", singles))
print("## At the recipe's minors: W's adults 30+ asked at the threshold that flags as many 13–17s and under-18s (same seeds)\n")
print("| source, seeds | threshold | under-18s flagged | 13–17 flagged | 30+ flagged | recipe at 25: 30+ flagged |\n|---|---|---|---|---|---|")
print("\n".join(matched) + "\n")
print("## By gender (the mean of three runs), women / men\n")
print("| source | model | MAE | bias | under-18s flagged | 30+ flagged |\n|---|---|---|---|---|---|")
print("\n".join(genders) + "\n")
machines = sorted({kind for row in CARD["loso"] for kinds in row.get("machines", {}).values() for kind in kinds})
print(f"Trained on: {'; '.join(machines)}.")
if missing:
    print(f"\nNot measured held out: {', '.join(missing)}.")
