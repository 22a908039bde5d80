"""H against candidates M (H with the mirror average) and N (three runs), as declared in 4880bea.

Reads the main card as committed with N (docs/model-card/card.json: H is the bundle "previous" and the LOSO pairs
1234+2, N the bundle "default" and the LOSO triples 1234+2+3) and M's card (mirror/card.json),
and prints the rule's tables: held out and on each test split through `estimate`.

    python docs/model-card/candidate-three-2026.11.29/compare.py > docs/model-card/candidate-three-2026.11.29/comparison.md
"""

import json
from pathlib import Path

HERE = Path(__file__).parent
MAIN = json.loads((HERE.parent / "card.json").read_text())
MIRROR = json.loads((HERE / "mirror" / "card.json").read_text())
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
    failed = False
    for source, figs in rows:
        h = figs["H"]
        for name, fig in figs.items():
            verdict = ""
            if name != "H":
                worse = [k for k in ("under18_flagged", "teen_flagged") if fig["challenge"][k] < h["challenge"][k] - 0.01]
                verdict = "fails" if worse or fig["mae"] > h["mae"] else "passes"
                failed |= verdict == "fails"
            print(f"| {source} | {name} | " + " | ".join(cells(fig)) + f" | {verdict} |")
    return failed


held_out = []
for source, short in SOURCES.items():
    pair = [f"loso-{short}-s1234", f"loso-{short}-s2"]
    held_out.append((source, {"H": loso(MAIN, pair), "M": loso(MIRROR, pair), "N": loso(MAIN, pair + [f"loso-{short}-s3"])}))
test = [(source, {"H": MAIN["bundles"]["previous"]["sources"][source], "M": MIRROR["bundles"]["mirror"]["sources"][source],
                  "N": MAIN["bundles"]["default"]["sources"][source]}) for source in SOURCES]
print("# H against M and N (the rule: under-18s and 13–17s flagged no more than a point below H's, MAE no worse)")
f1 = table("## Held out (leave one source out; M's pair with the mirror average, N the triple 1234+2+3)", held_out)
f2 = table("## Each source's test split, through `agegate-edge estimate --json`", test)
mean = {name: sum(figs[name]["mae"] for _, figs in held_out) / len(held_out) for name in ("H", "M", "N")}
print("\nMean held-out MAE over the three sources: " + ", ".join(f"{n} {v:.3f}" for n, v in mean.items()))
