"""Candidate I (docs/model-card.md, "Two runs of the recipe, averaged"): two runs' kept weights
averaged into one net, written as a run directory that `agegate-train eval`, `agegate-export
convert` and `python -m agegate.training.card --loso` read like any other.

    python docs/model-card/candidate-seeds-2026.11.29/soup.py RUN_A RUN_B OUT

Both runs must be averageable as an ensemble is (the same crop, data, backbone, starting weights
and detector: `ensemble_members`) and answer in the same units. OUT takes RUN_A's config, history
and data report; only model.keras differs. A measurement script, not a product command: the soup
failed its rule held out and was not taken further.
"""

import shutil
import sys
from pathlib import Path

import keras
import numpy as np

from agegate.training.model import ensemble_members
from agegate.training.run import RunDir

a, b, out = RunDir(sys.argv[1]), RunDir(sys.argv[2]), Path(sys.argv[3])
ensemble_members(a, [b])
ca, cb = a.load_config(), b.load_config()
if (ca.target_offset, ca.target_scale) != (cb.target_offset, cb.target_scale):
    raise SystemExit("the runs answer in other units: their weights cannot be averaged")
out.mkdir(parents=True, exist_ok=True)
for name in ("config.json", "history.csv", "data-report.json"):
    shutil.copy(a.path / name, out / name)
model_a = keras.models.load_model(a.model, compile=False)
model_b = keras.models.load_model(b.model, compile=False)
weights_a, weights_b = model_a.get_weights(), model_b.get_weights()
model_a.set_weights([(x + y) / 2 for x, y in zip(weights_a, weights_b)])  # batch-norm statistics averaged too
model_a.save(out / "model.keras")
moved = np.mean([np.abs(x - y).mean() / (np.abs(x).mean() + 1e-12) for x, y in zip(weights_a, weights_b) if x.size > 1])
print(f"soup of {a.path} and {b.path} -> {out}; the runs' weights differ by {moved:.3f} of their size on average")
