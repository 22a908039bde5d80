"""Candidates W (declared in 529ffa3 as G; renamed, an earlier candidate was G: faces drawn so that
each age band holds as many women as men, ``fit --balance-gender``) and E (declared in 482f601:
UTKFace's ethnic groups drawn equally within each age band, ``fit --balance-ethnicity``) against
the default's recipe, held out, each the mean of three runs (seeds 1234, 2, 3) as a bundle of them
answers.

Every run here trained on one machine, in one session (card.json's "machines"); on it the
recipe's runs repeat the committed card's held-out figures exactly. Reads this folder's card.json
(held out on All-Age-Faces), part1/card.json and extra/card.json; prints the rule's tables
(agegate.training.card.rule_verdict), each candidate at the recipe's minors, the figures per
gender and per ethnic group, and draws each held-out source's trade-off (tradeoff-SOURCE.png).

    python docs/model-card/candidates-groups-2026.12.07/compare.py > docs/model-card/candidates-groups-2026.12.07/comparison.md
"""

import json
from pathlib import Path

from agegate.training.card import at_baseline_minors, loso_entry, plot_heldout_tradeoff, render_rule_table

HERE = Path(__file__).parent
CARD = {"loso": [row for card in ("card.json", "part1/card.json", "extra/card.json") if (HERE / card).exists()
                 for row in json.loads((HERE / card).read_text())["loso"]]}
SOURCES = {"utkface-part1": "part1", "all-age-faces": "aaf", "utkface-extra": "extra"}
MODELS = {"recipe": "r", "W (--balance-gender)": "g", "E (--balance-ethnicity)": "e"}  # name: the runs' prefix
SEEDS = (1234, 2, 3)
MEASURED = {row["run"] for row in CARD["loso"]}
GROUPS = {"gender": ("female", "male"), "ethnicity": ("White", "Black", "Asian", "Indian")}


def runs(short: str, prefix: str, seeds=SEEDS) -> list[str]:
    return [f"loso-{short}-{prefix}{seed}" for seed in seeds]


def pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.1f} %"


means, singles, matched, by_group, missing = [], [], [], {kind: [] for kind in GROUPS}, []
for source, short in SOURCES.items():
    models = {name: p for name, p in MODELS.items() if "+".join(runs(short, p)) in MEASURED}
    if len(models) < 2 or "recipe" not in models:
        missing.append(source)
        continue
    entries = {name: loso_entry(CARD, runs(short, p)) for name, p in models.items()}
    means.append((source, entries))
    for seed in SEEDS:
        singles.append((f"{source} (seed {seed})", {name: loso_entry(CARD, runs(short, p, [seed])) for name, p in models.items()}))
    plot_heldout_tradeoff(CARD, {f"{name} (mean of 3 runs)": runs(short, p) for name, p in models.items()},
                          HERE / f"tradeoff-{short}.png", f"Held out: {source}; threshold moved 14–40 (dot: 25)")
    for name, p in list(models.items())[1:]:
        for seeds in [(seed,) for seed in SEEDS] + [SEEDS]:
            recipe, candidate = loso_entry(CARD, runs(short, "r", seeds)), loso_entry(CARD, runs(short, p, seeds))
            m = at_baseline_minors(recipe, candidate)
            matched.append(f"| {source}, {'+'.join(map(str, seeds))} | {name} | {'n/a' if m is None else format(m['threshold'], 'g')} | "
                           f"{pct(m and m['under18_flagged'])} | {pct(m and m['teen_flagged'])} | {pct(m and m['over30_flagged'])} | "
                           f"{pct(recipe['challenge']['over30_flagged'])} |")
    for kind, groups in GROUPS.items():
        for name, entry in entries.items():
            figures = entry["groups"].get(kind)
            if not figures:
                continue
            cells = [f"{figures[g]['mae']:.2f}, {figures[g]['bias']:+.2f}, {pct(figures[g]['challenge']['under18_flagged'])}, "
                     f"{pct(figures[g]['challenge']['over30_flagged'])} of {figures[g]['challenge']['over30_n']}" for g in groups]
            by_group[kind].append(f"| {source} | {name} | " + " | ".join(cells) + " |")

print("# W and E against the recipe, held out (the rule: under-18s and 13–17s flagged no more than a point below, MAE no worse)\n")
print(render_rule_table("The mean of the three seeds' runs (as a bundle of them answers)", means))
print(render_rule_table("Each seed alone (for information)", singles))
print("## At the recipe's minors: each candidate's adults 30+ asked at the threshold that flags as many 13–17s and under-18s (same seeds)\n")
print("| source, seeds | model | threshold | under-18s flagged | 13–17 flagged | 30+ flagged | recipe at 25: 30+ flagged |\n|---|---|---|---|---|---|---|")
print("\n".join(matched) + "\n")
for kind, groups in GROUPS.items():
    print(f"## By {kind} (the mean of three runs): MAE, bias, under-18s flagged, 30+ flagged\n")
    print("| source | model | " + " | ".join(groups) + " |\n|---|---|" + "---|" * len(groups))
    print("\n".join(by_group[kind]) + "\n")
machines = sorted({kind for row in CARD["loso"] for kinds in row.get("machines", {}).values() for kind in kinds})
print(f"Trained on: {'; '.join(machines)}.")
if missing:
    print(f"\nNot measured held out: {', '.join(missing)}.")
