"""N (the shipped three runs) against candidates O (four runs) and Q (N plus one run of D's
recipe, two draws: D's seed 1234 and seed 2), as declared in b5c7760.

Reads the main card as committed with N (docs/model-card/card.json: N is the bundle "default"
and the LOSO triples 1234+2+3) and this folder's card.json (O's bundle "four-runs", the LOSO
quadruples), and prints the rule's tables. Q's full runs were not trained: both draws had to
pass held out, and the first did not.

    python docs/model-card/candidate-four-2026.11.29/compare.py > docs/model-card/candidate-four-2026.11.29/comparison.md
"""

import json
from pathlib import Path

HERE = Path(__file__).parent
MAIN = json.loads((HERE.parent / "card.json").read_text())
FOUR = json.loads((HERE / "card.json").read_text())
SOURCES = {"utkface-part1": "part1", "all-age-faces": "aaf", "utkface-extra": "extra"}


def loso(card, runs):
    return next(r for r in card["loso"] if r["run"] == "+".join(runs))


def cells(fig):
    c = fig["challenge"]
    return [f"{fig['mae']:.2f}", *(f"{100 * c[k]:.1f} %" for k in ("under18_flagged", "teen_flagged", "over30_flagged"))]


def table(title, rows):
    print(f"\n{title}\n")
    print("| source | candidate | MAE | under-18s flagged | 13–17 flagged | 30+ flagged | rule |")
    print("|---|---|---|---|---|---|---|")
    for source, figs in rows:
        n = figs["N"]
        for name, fig in figs.items():
            verdict = ""
            if name != "N":
                worse = [k for k in ("under18_flagged", "teen_flagged") if fig["challenge"][k] < n["challenge"][k] - 0.01]
                verdict = "fails" if worse or fig["mae"] > n["mae"] else "passes"
            print(f"| {source} | {name} | " + " | ".join(cells(fig)) + f" | {verdict} |")


held_out = []
for source, short in SOURCES.items():
    three = [f"loso-{short}-s{s}" for s in (1234, 2, 3)]
    held_out.append((source, {"N": loso(MAIN, three), "O": loso(FOUR, three + [f"loso-{short}-s4"]),
                              "Q (D seed 1234)": loso(FOUR, three + [f"loso-{short}-d1234"]),
                              "Q (D seed 2)": loso(FOUR, three + [f"loso-{short}-d2"])}))
test = [(source, {"N": MAIN["bundles"]["default"]["sources"][source], "O": FOUR["bundles"]["four-runs"]["sources"][source]})
        for source in SOURCES]
print("# N against O and Q (the rule: under-18s and 13–17s flagged no more than a point below N's, MAE no worse)")
table("## Held out (leave one source out)", held_out)
table("## Each source's test split, through `agegate-edge estimate --json`", test)
