"""H against candidates M (H with the mirror average) and N (three runs), as declared in 4880bea.

Reads the main card as committed with N (docs/model-card/card.json: H is the bundle "previous"
and the LOSO pairs 1234+2, N the bundle "default" and the LOSO triples 1234+2+3) and M's card
(mirror/card.json), and prints the rule's tables (agegate.training.card.rule_verdict): held
out and on each test split through `estimate`.

    python docs/model-card/candidate-three-2026.11.29/compare.py > docs/model-card/candidate-three-2026.11.29/comparison.md
"""

import json
from pathlib import Path

from agegate.training.card import loso_entry, render_rule_table

HERE = Path(__file__).parent
MAIN = json.loads((HERE.parent / "card.json").read_text())
MIRROR = json.loads((HERE / "mirror" / "card.json").read_text())
SOURCES = {"utkface-part1": "part1", "all-age-faces": "aaf", "utkface-extra": "extra"}

held_out = []
for source, short in SOURCES.items():
    pair = [f"loso-{short}-s1234", f"loso-{short}-s2"]
    held_out.append((source, {"H": loso_entry(MAIN, pair), "M": loso_entry(MIRROR, pair), "N": loso_entry(MAIN, pair + [f"loso-{short}-s3"])}))
test = [(source, {"H": MAIN["bundles"]["previous"]["sources"][source], "M": MIRROR["bundles"]["mirror"]["sources"][source],
                  "N": MAIN["bundles"]["default"]["sources"][source]}) for source in SOURCES]
print("# H against M and N (the rule: under-18s and 13–17s flagged no more than a point below H's, MAE no worse)\n")
print(render_rule_table("Held out (leave one source out; M's pair with the mirror average, N the triple 1234+2+3)", held_out))
print(render_rule_table("Each source's test split, through `agegate-edge estimate --json`", test))
mean = {name: sum(figs[name]["mae"] for _, figs in held_out) / len(held_out) for name in ("H", "M", "N")}
print("Mean held-out MAE over the three sources: " + ", ".join(f"{n} {v:.3f}" for n, v in mean.items()))
