"""Are All-Age-Faces' adults estimated young because the net does not carry what it learnt to new
faces (a generalisation gap), or because it never fits them? Runs trained *with* All-Age-Faces
(held out on part 1: `fit all-age-faces utkface-extra`) are measured on All-Age-Faces' train
split, faces they learnt from, and on its test split, faces they did not: the mean estimate,
bias and share flagged at 25 per age band, side by side. Each run alone, the Keras model on the
till's crops (agegate.training.evaluate.split_faces, as `agegate-train eval` cuts them).

    python docs/model-card/diagnosis-aaf-adults-2026.12.07/fit-or-generalise.py ALL_AGE_FACES \\
        LABEL=RUN [LABEL=RUN ...] > docs/model-card/diagnosis-aaf-adults-2026.12.07/fit-or-generalise.md
"""

import sys

import numpy as np

from agegate.training.evaluate import split_faces
from agegate.training.metrics import flagged_share, mae
from agegate.training.model import load_inference_model, predict_ages
from agegate.training.run import RunDir, serving_spec

BANDS = ((0, 13), (13, 18), (18, 25), (25, 30), (30, 35), (35, 40), (40, 50), (50, 60), (60, 200))
CHALLENGE_AGE = 25.0


def band_rows(true: np.ndarray, pred: np.ndarray) -> list[str]:
    cells = []
    for lo, hi in BANDS:
        m = (true >= lo) & (true < hi)
        cells.append(f"{pred[m].mean():.1f} ({np.mean(pred[m] - true[m]):+.1f}, {100 * np.mean(pred[m] < CHALLENGE_AGE):.0f} %)")
    return cells


def main(data: str, runs: list[str]) -> None:
    names = [f"{lo}–{hi - 1}" if hi < 200 else f"{lo}+" for lo, hi in BANDS]
    print("# All-Age-Faces' adults: fitted or not? (each run trained with All-Age-Faces' train split)\n")
    print("Per age band: mean estimate (bias, share flagged at 25). `train`: faces the run learnt from; `test`: faces it never saw.\n")
    print("| run | split | MAE | under-18s / 13–17 / 30+ flagged | " + " | ".join(names) + " |")
    print("|---|---|---|---|" + "---|" * len(names))
    for label, path in (r.split("=", 1) for r in runs):
        run = RunDir(path)
        config = run.load_config()
        model = load_inference_model(run)
        for split in ("train", "test"):
            faces = split_faces(config, [data], split)
            pred = predict_ages(model, faces.images, serving_spec(config))
            f = flagged_share(faces.ages, pred, CHALLENGE_AGE)
            print(f"| {label} | {split} | {mae(faces.ages, pred):.2f} | {100 * f['under18_flagged']:.1f} / {100 * f['teen_flagged']:.1f} / "
                  f"{100 * f['over30_flagged']:.1f} % | " + " | ".join(band_rows(faces.ages, pred)) + " |")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
