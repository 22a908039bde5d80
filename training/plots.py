"""The PNG figures of `agegate-train eda` and `agegate-train eval` (matplotlib, Agg backend)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
import numpy as np  # noqa: E402

from .metrics import BAND_NAMES, FALSE_ALARM_AGE, MINOR_AGE  # noqa: E402


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def learning_curves(history: Sequence[dict[str, float]], path: Path) -> Path:
    return _save(learning_curves_figure(history), path)


def learning_curves_figure(history: Sequence[dict[str, float]]):
    fig, (ax_loss, ax_mae) = plt.subplots(1, 2, figsize=(10, 4))
    epochs = [int(r["epoch"]) for r in history]
    for key, ax in (("loss", ax_loss), ("age_mae", ax_mae)):
        for prefix, style in (("", "-o"), ("val_", "-s")):
            values = [r.get(prefix + key) for r in history]
            if any(v is not None for v in values):
                ax.plot(epochs, values, style, label=f"{'validation' if prefix else 'training'}", markersize=3)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole: no 2.5
        ax.set_ylabel({"loss": "loss minimised (Huber, penalties, anchor)", "age_mae": "MAE (years)"}[key])
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("Learning curves")
    return fig


def predicted_vs_true(true: np.ndarray, pred: np.ndarray, path: Path, title: str = "Predicted vs true age") -> Path:
    return _save(predicted_vs_true_figure(true, pred, title), path)


def predicted_vs_true_figure(true: np.ndarray, pred: np.ndarray, title: str = "Predicted vs true age"):
    fig, ax = plt.subplots(figsize=(5.5, 5.5))
    top = max(float(np.max(true, initial=0)), float(np.max(pred, initial=0)), 1.0) + 5
    ax.scatter(true, pred, s=6, alpha=0.35)
    ax.plot([0, top], [0, top], "k--", linewidth=1, label="perfect")
    ax.axvline(MINOR_AGE, color="tab:red", linewidth=0.8, alpha=0.6, label=f"true age {MINOR_AGE:g}: minors to its left")
    ax.set(xlim=(0, top), ylim=(0, top), xlabel="true age", ylabel="predicted age", title=title)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left")
    return fig


def error_by_band(by_band: dict[str, dict[str, Any]], path: Path, title: str = "MAE by age band") -> Path:
    fig, ax = plt.subplots(figsize=(7, 4))
    values = [by_band[b]["mae"] or 0.0 for b in BAND_NAMES]
    bars = ax.bar(BAND_NAMES, values, color="tab:blue")
    for bar, b in zip(bars, BAND_NAMES):
        ax.annotate(f"n={by_band[b]['n']}", (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom", fontsize=8)
    ax.set(xlabel="true age band", ylabel="MAE (years)", title=title)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def threshold_curve(curve: Sequence[dict[str, Any]], challenge_age: float, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    t = [c["threshold"] for c in curve]
    ax.plot(t, [c["under18_flagged"] for c in curve], "-o", markersize=3, color="tab:green", label=f"under-{MINOR_AGE:g}s flagged (want high)")
    ax.plot(t, [c["over30_flagged"] for c in curve], "-o", markersize=3, color="tab:red", label=f"{FALSE_ALARM_AGE:g}+ flagged (false alarms)")
    ax.axvline(challenge_age, color="k", linestyle="--", linewidth=1, label=f"challenge age {challenge_age:g}")
    ax.set(xlabel="flag when the estimate is under (years)", ylabel="share of customers", ylim=(-0.02, 1.02), title="Who is asked for ID, by threshold")
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def age_histogram(ages_by_split: dict[str, np.ndarray], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(8, 4))
    bins = np.arange(0, 122, 2)
    ax.hist([ages_by_split[s] for s in ages_by_split], bins=bins, stacked=True, label=list(ages_by_split))
    ax.set(xlabel="age (years)", ylabel="faces", title="Age distribution")
    ax.legend()
    ax.grid(alpha=0.3)
    return _save(fig, path)


def band_counts(counts: dict[str, dict[str, int]], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(8, 4))
    bottom = np.zeros(len(BAND_NAMES))
    for split, by_band in counts.items():
        values = np.array([by_band.get(b, 0) for b in BAND_NAMES])
        ax.bar(BAND_NAMES, values, bottom=bottom, label=split)
        bottom += values
    ax.set(xlabel="age band", ylabel="faces", title="Faces per age band")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def sample_grid(samples: dict[str, list[tuple[np.ndarray, str, bool]]], path: Path) -> Path:
    """Rows of RGB crops per band; each sample is (image, caption, fallback): fallback crops get a red frame."""
    cols = max((len(v) for v in samples.values()), default=1) or 1
    fig, axes = plt.subplots(len(samples), cols, figsize=(1.4 * cols, 1.55 * len(samples)), squeeze=False)
    for row, (band, items) in zip(axes, samples.items()):
        for i, ax in enumerate(row):
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_ylabel(band, fontsize=9)
            if i < len(items):
                image, caption, fallback = items[i]
                ax.imshow(image)
                ax.set_title(caption, fontsize=7)
                for spine in ax.spines.values():
                    spine.set_color("red" if fallback else "black")
                    spine.set_linewidth(2 if fallback else 0.5)
            else:
                ax.axis("off")
    fig.suptitle("Sample crops per age band, as the model sees them (red frame: no face detected, typical box used)", fontsize=9)
    return _save(fig, path)


SIZE_BARS = 15  # the most common sizes shown one by one; the rest as one bar


def size_bars(sizes: Sequence[tuple[int, int]], top: int = SIZE_BARS) -> list[tuple[str, int]]:
    """(label, images) per bar: the ``top`` most common WxH sizes, then "other" for the rest."""
    counts = Counter(f"{w}x{h}" for w, h in sizes).most_common()
    bars = counts[:top]
    rest = sum(n for _, n in counts[top:])
    return bars + ([(f"{len(counts) - top} other sizes", rest)] if rest else [])


def image_sizes(sizes: Sequence[tuple[int, int]], path: Path) -> Path:
    """A bar per common size: a scatter of width against height shows one dot for a data set whose
    photos all have one size, however many there are."""
    bars = size_bars(sizes)
    fig, ax = plt.subplots(figsize=(7, 0.6 + 0.35 * max(len(bars), 2)))
    if bars:
        labels, counts = zip(*bars)
        ax.barh(labels[::-1], counts[::-1], color="tab:blue")
        for y, n in enumerate(counts[::-1]):
            ax.annotate(f" {n}", (n, y), va="center", fontsize=8)
    ax.set(xlabel="images", title=f"Image sizes ({len(sizes)} images, {len(set(sizes))} distinct)")
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, path)
