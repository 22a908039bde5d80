"""N (the shipped three runs) against candidates O (four runs) and Q (N plus one run of D's
recipe, two draws: D's seed 1234 and seed 2), as declared in b5c7760.

Reads the main card as committed with N (docs/model-card/card.json: N is the bundle "default"
and the LOSO triples 1234+2+3) and this folder's card.json (O's bundle "four-runs", the LOSO
quadruples), and prints the rule's tables (agegate.training.card.rule_verdict). Q's full runs
were not trained: both draws had to pass held out, and the first did not.

    python docs/model-card/candidate-four-2026.11.29/compare.py > docs/model-card/candidate-four-2026.11.29/comparison.md
"""

import json
from pathlib import Path

from agegate.training.card import loso_entry, render_rule_table

HERE = Path(__file__).parent
MAIN = json.loads((HERE.parent / "card.json").read_text())
FOUR = json.loads((HERE / "card.json").read_text())
SOURCES = {"utkface-part1": "part1", "all-age-faces": "aaf", "utkface-extra": "extra"}

held_out = []
for source, short in SOURCES.items():
    three = [f"loso-{short}-s{s}" for s in (1234, 2, 3)]
    held_out.append((source, {"N": loso_entry(MAIN, three), "O": loso_entry(FOUR, three + [f"loso-{short}-s4"]),
                              "Q (D seed 1234)": loso_entry(FOUR, three + [f"loso-{short}-d1234"]),
                              "Q (D seed 2)": loso_entry(FOUR, three + [f"loso-{short}-d2"])}))
test = [(source, {"N": MAIN["bundles"]["default"]["sources"][source], "O": FOUR["bundles"]["four-runs"]["sources"][source]})
        for source in SOURCES]
print("# N against O and Q (the rule: under-18s and 13–17s flagged no more than a point below N's, MAE no worse)\n")
print(render_rule_table("Held out (leave one source out)", held_out))
print(render_rule_table("Each source's test split, through `agegate-edge estimate --json`", test))
