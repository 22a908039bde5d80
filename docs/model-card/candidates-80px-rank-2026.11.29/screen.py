"""The screen beside the held-out test: each run of the recipe, S, T, S8 and T10 held out on All-Age-Faces,
measured on that source's validation split (which no run saw), from the predictions.csv that
`agegate-train eval RUN --data $D/all-age-faces --split val` writes into each run. Per run: MAE,
the shares flagged at 25, the 30+ flagged at the threshold that flags 95 % of the 13-17s, and the
chance that a 13-17-year-old is estimated under a 30+ person (AUC: the trade-off in one figure).

    for r in runs/loso-aaf-{,80-,r5-,80e8-,r10-}s{1234,2,3}; do agegate-train eval $r --data $D/all-age-faces --split val; cp $r/predictions.csv SCREEN/$(basename $r)-val.csv; done
    python docs/model-card/candidates-80px-rank-2026.11.29/screen.py SCREEN/*-val.csv > docs/model-card/candidates-80px-rank-2026.11.29/screen.txt
"""

import csv
import sys
from pathlib import Path

import numpy as np

from agegate.ages import CHALLENGE_AGE
from agegate.training import metrics
from agegate.training.metrics import FALSE_ALARM_AGE, MINOR_AGE, TEEN_AGE

print("run | faces | MAE | at 25: under-18s / 13-17 / 30+ flagged | threshold flagging 95 % of 13-17s: it, 30+ flagged | AUC 13-17 vs 30+")
for path in sys.argv[1:]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    true = np.array([float(r["real_age"]) for r in rows])
    pred = np.array([float(r["predicted_age"]) for r in rows])
    teens, adults = (true >= TEEN_AGE) & (true < MINOR_AGE), true >= FALSE_ALARM_AGE
    at25 = metrics.flagged_share(true, pred, CHALLENGE_AGE)
    threshold = np.quantile(pred[teens], 0.95)
    auc = float((pred[teens][:, None] < pred[adults][None, :]).mean())
    print(f"{Path(path).name.removesuffix('-val.csv')} | {len(rows)} | {metrics.mae(true, pred):.2f} | "
          f"{100 * at25['under18_flagged']:.1f} / {100 * at25['teen_flagged']:.1f} / {100 * at25['over30_flagged']:.1f} % | "
          f"{threshold:.1f}, {100 * (pred[adults] <= threshold).mean():.1f} % | {auc:.4f}")
