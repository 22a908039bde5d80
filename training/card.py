"""The model card's figures: bundles measured through the till's own ``agegate-edge estimate --json``.

Every figure in docs/model-card.md comes from one run of this module, whose JSON is committed
beside the page (``docs/model-card/card.json``) with its plots::

    python -m agegate.training.card --data DATA [DATA ...] --out docs/model-card \\
        --bundle default=edge/default_bundle --bundle cc0=edge/cc0_bundle --bundle before=OLD_BUNDLE \\
        --loso RUN_HELD_OUT_SOURCE_1 ... [--limit N]

For each bundle and each source's *test* split, the photos are handed, as files, to
``agegate-edge estimate --json`` with ``AGEGATE_MODEL_DIR`` set to the bundle and the detector
its manifest was trained with: the daemon's own code finds the face (YuNet, or Haar for old
bundles), cuts it and estimates the age. A photo in which no face is found is a *detector
miss*: at a till it is a ``no_face`` answer, never a silent sale, and it is counted apart.
From those ages: MAE, bias, the share of under-18s, of 13-17s and of people 30+ flagged at
the challenge age and at the bundle's calibrated threshold, per age band, per gender and
ethnicity where the source labels them (``meta.csv`` or UTKFace file names).

``--update`` starts from the card.json already in ``--out`` and measures again only the bundles
and runs named, keeping every other entry as it was measured (each bundle's entry names its
version), so replacing one bundle does not need the others' runs again.

``--loso`` adds the leave-one-source-out table: each run was trained on every source but one
(``agegate-train fit``) and is evaluated here on the test split of the source it never saw,
with the same recipe (``agegate-train eval``'s code, the Keras model on the till's crops).
Runs of the same recipe that differ only in ``--seed`` are also averaged per held-out source:
one leave-one-source-out run is one draw, and its minors flagged move by several points from
seed to seed.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from . import metrics
from .data import groups_of, read_sources

log = logging.getLogger(__name__)

BATCH = 500  # photos per `estimate` process: keeps each command line short


def estimate_with_the_till(bundle: Path, photos: list[Path]) -> list[float | None]:
    """Each photo's age from ``agegate-edge estimate --json`` (the largest face), None where none is found."""
    manifest = json.loads((bundle / "manifest.json").read_text(encoding="utf-8"))
    detector = manifest.get("training", {}).get("detector", "haar").split(":")[0]
    ages: dict[str, float | None] = {}
    with tempfile.TemporaryDirectory(prefix="agegate-card-") as state:
        env = {**os.environ, "AGEGATE_MODEL_DIR": str(bundle), "AGEGATE_DETECTOR": detector, "AGEGATE_STATE_DIR": state}
        for start in range(0, len(photos), BATCH):
            chunk = [str(p) for p in photos[start : start + BATCH]]
            out = subprocess.run([sys.executable, "-m", "agegate.edge.cli", "estimate", "--json", *chunk],
                                 env=env, capture_output=True, text=True, timeout=3600)
            if out.returncode not in (0, 1):
                raise RuntimeError(f"agegate-edge estimate failed ({out.returncode}): {out.stderr[-2000:]}")
            for line in out.stdout.splitlines():
                if line.startswith("{"):
                    record = json.loads(line)
                    faces = record.get("faces") or []
                    ages[record["path"]] = faces[0]["age"] if faces else None
            log.info("%s: %d/%d photos estimated", bundle.name, min(start + BATCH, len(photos)), len(photos))
    return [ages.get(str(p)) for p in photos]


def figures(true: np.ndarray, pred: np.ndarray, challenge_age: float, calibrated: float | None) -> dict[str, Any]:
    summary = metrics.summarise(true, pred, challenge_age)
    if calibrated is not None:
        summary["at_calibrated"] = metrics.flagged_share(true, pred, calibrated)
    return summary


def group_figures(groups: dict[str, np.ndarray], true: np.ndarray, pred: np.ndarray, challenge_age: float,
                  calibrated: float | None = None) -> dict[str, dict[str, Any]]:
    """{kind: {group: figures}} for each kind of group (gender, ethnicity) the faces are labelled
    with (``groups``: per face, None where unknown); kinds no face is labelled with are left out."""
    out = {}
    for kind, labels in groups.items():
        labels = np.asarray(labels, dtype=object)
        named = sorted({g for g in labels if g is not None})
        if named:
            out[kind] = {g: figures(true[labels == g], pred[labels == g], challenge_age, calibrated) for g in named}
    return out


def measure_bundle(bundle: Path, sources, challenge_age: float, limit: int | None, seed: int = 1234) -> dict[str, Any]:
    from .data import limit_per_split

    manifest = json.loads((bundle / "manifest.json").read_text(encoding="utf-8"))
    calibrated = ((manifest.get("validation") or {}).get("calibrated") or {}).get("threshold")
    result: dict[str, Any] = {"bundle": str(bundle), "name": manifest["name"], "version": manifest["version"],
                              "variant": manifest["variant"], "calibrated_threshold": calibrated,
                              "detector": manifest.get("training", {}).get("detector", "haar"), "sources": {}}
    curves = {}
    for source in sources:
        records = [r for r in limit_per_split(source.records, limit, seed) if r.split == "test"]
        ages = estimate_with_the_till(bundle, [r.path for r in records])
        found = np.array([a is not None for a in ages])
        true = np.array([r.age for r in records], dtype=float)[found]
        pred = np.array([a for a in ages if a is not None], dtype=float)
        by = figures(true, pred, challenge_age, calibrated)
        by["photos"], by["detector_misses"] = len(records), int((~found).sum())
        groups = {kind: np.array(labels, dtype=object)[found] for kind, labels in groups_of(source.folder, [r.file for r in records]).items()}
        by["groups"] = group_figures(groups, true, pred, challenge_age, calibrated)
        result["sources"][source.name] = by
        curves[source.name] = metrics.threshold_curve(true, pred)
        log.info("%s on %s: %s; %d of %d photos without a face found", bundle.name, source.name, metrics.headline(by), by["detector_misses"], len(records))
    result["threshold_curves"] = curves
    return result


def loso_row(run: Path, all_sources: list[str], challenge_age: float, limit: int | None, mirror_average: bool = False,
             flag_under18: float | None = None, ensemble_with: list[Path] = ()) -> dict[str, Any]:
    """A run trained on all sources but one, measured on the test split of the one it never saw
    (``mirror_average``, ``flag_under18``, ``ensemble_with``: as a bundle exported with
    ``--mirror-average``, ``--flag-under18`` and ``--ensemble-with`` answers, the shift chosen on the
    validation faces of the sources it was trained on)."""
    from .evaluate import split_faces
    from .model import load_inference_model, predict_ages, shift_answers
    from .run import RunDir, serving_spec

    r = RunDir(run)
    config = r.load_config()
    trained_on = {Path(d).name for d in config.data}
    held_out = [d for d in all_sources if Path(d).name not in trained_on]
    faces = split_faces(config, held_out, "test", limit)
    members = [RunDir(m) for m in ensemble_with]
    model = load_inference_model(r, mirror_average=mirror_average, ensemble_with=members)
    spec = serving_spec(config)
    shift = 0.0
    if flag_under18 is not None:
        shift, spec = shift_answers(model, split_faces(config, None, "val", limit), spec, flag_under18, challenge_age)
    predicted = predict_ages(model, faces.images, spec)
    summary = metrics.summarise_sources(faces.ages, predicted, faces.sources, challenge_age)
    summary["threshold_curve"] = metrics.threshold_curve(faces.ages, predicted)  # moving the threshold: a model's whole trade-off
    summary["groups"] = group_figures(groups_of_faces(held_out, faces), faces.ages, predicted, challenge_age)
    recipe = recipe_of(config, mirror_average, flag_under18)
    member_configs = [m.load_config() for m in members]
    if members:  # an ensemble's recipe is its members' recipes
        recipe = json.dumps([json.loads(recipe), *(json.loads(recipe_of(c)) for c in member_configs)], sort_keys=True)
    return {"run": "+".join([r.name, *(m.name for m in members)]), "backbone": config.backbone, "trained_on": sorted(trained_on),
            "machines": machines_of([r, *members]),
            "mirror_average": mirror_average, "answer_shift": shift, "seed": config.seed, "recipe": recipe,
            "member_seeds": [c.seed for c in member_configs],
            "held_out": [Path(d).name for d in held_out], "epochs": config.epochs, "epoch_size": config.epoch_size, **summary}


def groups_of_faces(folders: list[str], faces) -> dict[str, np.ndarray]:
    """{kind: per face its group or None} of a FaceSet cut from ``folders`` (see data.groups_of)."""
    by_name = {Path(d).resolve().name: Path(d) for d in folders}  # as Record.source names them
    out: dict[str, np.ndarray] = {}
    for name, mask in faces.by_source().items():
        at = np.flatnonzero(mask)
        for kind, labels in groups_of(by_name[name], [faces.files[i] for i in at]).items():
            out.setdefault(kind, np.full(len(faces), None, dtype=object))[at] = labels
    return out


def machines_of(runs) -> dict[str, list[str]]:
    """Each run's kinds of machine (its ``sessions.jsonl``), by run name: the same recipe and seed
    train another model on another kind. A kind is the CPU, its vector instructions, cores, GPUs
    and TensorFlow version; epochs trained before the log was kept are "not recorded"."""
    machines = {}
    for run in runs:
        lines = run.sessions.read_text(encoding="utf-8").splitlines() if run.sessions.exists() else []
        sessions = [json.loads(line) for line in lines if line.strip()]
        kinds = {f"{s['cpu']} [{' '.join(s['vector_instructions'])}] x{s['cores']}" + (f", {', '.join(s['gpus'])}" if s["gpus"] else "")
                 + f", TensorFlow {s['tensorflow']}" for s in sessions}
        if not sessions or sessions[0]["from_epoch"] > 0:  # a run begun before sessions.jsonl, resumed since
            kinds.add("not recorded")
        machines[run.name] = sorted(kinds)
    return machines


NOT_RECIPE = ("data", "seed", "keep_checkpoints", "target_offset", "target_scale", "data_description", "data_licence", "data_source")
# Settings added after runs in the card were measured: left out at their default, so that a run
# re-measured today keeps the recipe string of the runs measured before the setting existed.
LATER_SETTINGS = {"anchor_weight": 0.0, "rank_penalty": 0.0, "balance_gender": False, "balance_ethnicity": False}


def recipe_of(config, mirror_average: bool = False, flag_under18: float | None = None) -> str:
    """Every setting of a run that shapes its model, except the seed and the data (which differ
    between the runs of one recipe held out on different sources), as one sorted JSON string."""
    settings = {k: v for k, v in config.to_json().items() if k not in NOT_RECIPE and LATER_SETTINGS.get(k, object()) != v}
    return json.dumps({**settings, "mirror_average": mirror_average, "flag_under18": flag_under18}, sort_keys=True)


def seed_means(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The leave-one-source-out rows of one recipe and held-out source averaged over their seeds,
    for every recipe and source measured with more than one seed (each seed counts once)."""
    groups: dict[tuple[str, tuple[str, ...]], dict[tuple[int, ...], dict[str, Any]]] = {}
    for r in rows:
        if "recipe" in r:  # an ensemble's seeds are its members' seeds
            groups.setdefault((r["recipe"], tuple(r["held_out"])), {})[(r["seed"], *r.get("member_seeds", []))] = r
    means = []
    for (_, held_out), by_seed in groups.items():
        if len(by_seed) < 2:
            continue
        runs = [by_seed[seed] for seed in sorted(by_seed)]

        def mean(get):
            values = [get(r) for r in runs]
            return None if any(v is None for v in values) else float(np.mean(values))

        means.append({"runs": [r["run"] for r in runs], "seeds": ["+".join(map(str, s)) for s in sorted(by_seed)], "held_out": list(held_out), "n": runs[0]["n"],
                      "mae": mean(lambda r: r["mae"]), "bias": mean(lambda r: r["bias"]),
                      "challenge": {k: mean(lambda r, k=k: r["challenge"][k]) for k in ("under18_flagged", "teen_flagged", "over30_flagged")}})
    return means


def plot_tradeoff(result: dict[str, Any], path: Path, challenge_age: float) -> None:
    from .plots import _save, plt

    names = list(result["bundles"])
    fig, axes = plt.subplots(1, len(names), figsize=(5.5 * len(names), 4.2), squeeze=False)
    for ax, name in zip(axes[0], names):
        b = result["bundles"][name]
        for source, curve in b["threshold_curves"].items():
            t = [c["threshold"] for c in curve]
            line, = ax.plot(t, [100 * (c["under18_flagged"] or 0) for c in curve], "-", label=f"{source}: under-18s flagged")
            ax.plot(t, [100 * (c["over30_flagged"] or 0) for c in curve], "--", color=line.get_color(), label=f"{source}: 30+ flagged")
        ax.axvline(challenge_age, color="grey", lw=1)
        if b.get("calibrated_threshold"):
            ax.axvline(b["calibrated_threshold"], color="black", lw=1, ls=":")
            ax.text(b["calibrated_threshold"], 3, f" calibrated {b['calibrated_threshold']:g}", fontsize=8)
        ax.set_title(f"{name}: {b['name']} {b['version']}")
        ax.set_xlabel("flag when the estimate is under (years)")
        ax.set_ylabel("% flagged (test photos)")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7, loc="center right")
    _save(fig, path)


def plot_heldout_tradeoff(card: dict[str, Any], models: dict[str, list[str]], path: Path, title: str) -> None:
    """Each model's held-out trade-off as its threshold moves: 13-17s flagged against 30+ flagged,
    from the card's ``--loso`` rows of its runs (averaged as a bundle of them answers), a dot at the
    challenge age. A candidate that only moves along the baseline's curve flags teenagers and
    adults together; one whose curve lies above and to the left tells them apart better."""
    from .plots import _save, plt

    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    for label, runs in models.items():
        row = loso_entry(card, runs)
        if "threshold_curve" not in row:
            raise KeyError(f"--loso {row['run']} was measured before held-out rows kept their threshold curve: measure it again")
        curve = [c for c in row["threshold_curve"] if c["over30_flagged"] is not None and c["teen_flagged"] is not None]
        if not curve:
            raise ValueError(f"--loso {row['run']}: its held-out faces hold no 13-17s or no one 30+, so it has no trade-off to draw")
        line, = ax.plot([100 * c["over30_flagged"] for c in curve], [100 * c["teen_flagged"] for c in curve], ".-", label=label)
        ax.plot(100 * row["challenge"]["over30_flagged"], 100 * row["challenge"]["teen_flagged"], "o", ms=9, color=line.get_color())
    ax.set_xlabel("people 30+ flagged (%)")
    ax.set_ylabel("13–17-year-olds flagged (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    _save(fig, path)


# The rule a candidate model is shipped by (docs/model-card.md, "What was tried"): against the
# model it would replace, on every source, held out and on each test split, no fewer minors
# flagged than a point below, and an estimate no worse. Teenagers served without a prompt are
# the error a till pays for; a point is about one face of the smallest test splits.
RULE_MINORS_MARGIN = 0.01  # share of under-18s (and of 13-17s) a candidate may flag below the baseline


def rule_verdict(baseline: dict[str, Any], candidate: dict[str, Any]) -> str:
    """"passes" or "fails": ``candidate``'s figures (a card's per-source or LOSO entry) against ``baseline``'s."""
    b, c = baseline["challenge"], candidate["challenge"]
    fewer_minors = any(c[k] < b[k] - RULE_MINORS_MARGIN for k in ("under18_flagged", "teen_flagged"))
    return "fails" if fewer_minors or candidate["mae"] > baseline["mae"] else "passes"


def loso_entry(card: dict[str, Any], runs: list[str]) -> dict[str, Any]:
    """The card's leave-one-source-out entry of ``runs`` averaged (one run, or RUN+RUN2+...)."""
    name = "+".join(runs)
    for row in card["loso"]:
        if row["run"] == name:
            return row
    raise KeyError(f"no --loso {name} in this card")


def at_baseline_minors(baseline: dict[str, Any], candidate: dict[str, Any]) -> dict[str, Any] | None:
    """The candidate's point on its threshold curve (whole years) nearest above the baseline's at the
    challenge age: the lowest threshold at which it flags at least as many 13-17s and under-18s.
    Its 30+ flagged there against the baseline's says whether it tells minors from adults better,
    whatever its level; None if no threshold does."""
    b = baseline["challenge"]
    if b["teen_flagged"] is None or b["under18_flagged"] is None:  # no minors to match
        return None
    return next((c for c in candidate["threshold_curve"]
                 if c["teen_flagged"] >= b["teen_flagged"] - 1e-9 and c["under18_flagged"] >= b["under18_flagged"] - 1e-9), None)


def render_rule_table(title: str, rows: list[tuple[str, dict[str, dict[str, Any]]]]) -> str:
    """A markdown table of the rule: per source, the baseline (the first of each dict) and each
    candidate's figures with its verdict."""
    lines = [f"## {title}", "", "| source | model | MAE | under-18s flagged | 13–17 flagged | 30+ flagged | rule |",
             "|---|---|---|---|---|---|---|"]
    for source, models in rows:
        baseline = next(iter(models.values()))
        for name, fig in models.items():
            c = fig["challenge"]
            verdict = "" if fig is baseline else rule_verdict(baseline, fig)
            lines.append(f"| {source} | {name} | {fig['mae']:.2f} | {_pct(c['under18_flagged'])} | {_pct(c['teen_flagged'])} | "
                         f"{_pct(c['over30_flagged'])} | {verdict} |")
    return "\n".join(lines) + "\n"


def _pct(v) -> str:
    return "–" if v is None else f"{100 * v:.1f} %"


def _yrs(v) -> str:
    return "–" if v is None else f"{v:.2f}"


def render_tables(result: dict[str, Any]) -> str:
    """Every table of the model card, from card.json: the page's figures, regenerated with it."""
    c = result["challenge_age"]
    lines = ["# Model card figures (generated by `python -m agegate.training.card`; see [card.json](card.json))"]
    if result["bundles"]:  # a card of leave-one-source-out runs alone has no per-source table to show
        lines += ["", f"Test split of each source; ages from `agegate-edge estimate --json` with each bundle. *Flagged*: estimated under {c:g}"
                  " (or under the bundle's calibrated threshold, where shown). A *miss* is a photo in which the detector found no face: "
                  "at a till, a `no_face` answer.", "",
                  "## Per source", "", "| bundle | source | photos | misses | MAE | bias | MAE 15–35 | under-18s flagged | 13–17 flagged | 30+ flagged | at calibrated threshold: under-18s / 30+ |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, b in result["bundles"].items():
        for source, f in b["sources"].items():
            ch, cal = f["challenge"], f.get("at_calibrated")
            calib = f"{_pct(cal['under18_flagged'])} / {_pct(cal['over30_flagged'])} (under {cal['threshold']:g})" if cal else "–"
            lines.append(f"| {name} | {source} | {f['photos']} | {f['detector_misses']} | {_yrs(f['mae'])} | {f['bias']:+.2f} | {_yrs(f['mae_15_35'])} | "
                         f"{_pct(ch['under18_flagged'])} ({ch['under18_n']}) | {_pct(ch['teen_flagged'])} ({ch['teen_n']}) | {_pct(ch['over30_flagged'])} ({ch['over30_n']}) | {calib} |")
    if result["loso"]:
        lines += ["", "## Leave one source out", "", "Each run trained on the other sources only, measured on the test split of the source it never saw "
                  "(the Keras model on the till's crops; *mirror*: the mean for the face and its mirror image; *shift*: years added to every "
                  "answer, chosen on the validation faces of the sources it was trained on, as `agegate-export --flag-under18` does).", "",
                  "| run | backbone | trained on | held out | faces | mirror | shift | MAE | bias | under-18s flagged | 13–17 flagged | 30+ flagged |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in result["loso"]:
            ch = r["challenge"]
            mirror = "yes" if r.get("mirror_average") else "no"
            lines.append(f"| {r['run']} | {r['backbone']} | {', '.join(r['trained_on'])} | {', '.join(r['held_out'])} | {r['n']} | {mirror} | "
                         f"{r.get('answer_shift', 0.0):+.1f} | {_yrs(r['mae'])} | {r['bias']:+.2f} | "
                         f"{_pct(ch['under18_flagged'])} | {_pct(ch['teen_flagged'])} | {_pct(ch['over30_flagged'])} |")
        kinds: dict[str, list[str]] = {}
        for r in result["loso"]:
            for run, its_kinds in r.get("machines", {}).items():  # rows measured before machines were kept have none
                for kind in its_kinds:
                    if run not in kinds.setdefault(kind, []):
                        kinds[kind].append(run)
        if kinds:
            lines += ["", "Where the runs trained (each run's `sessions.jsonl`; the same recipe and seed train another model on another kind of machine):", ""]
            lines += [f"- {kind}: {', '.join(runs)}" for kind, runs in sorted(kinds.items())]
        means = seed_means(result["loso"])
        if means:
            lines += ["", "### The same recipe over several seeds", "", "The rows above of one recipe and held-out source that differ only in "
                      "`--seed`, averaged (each seed once).", "",
                      "| runs | seeds | held out | faces | MAE | bias | under-18s flagged | 13–17 flagged | 30+ flagged |", "|---|---|---|---|---|---|---|---|---|"]
            for m in means:
                ch = m["challenge"]
                lines.append(f"| {', '.join(m['runs'])} | {', '.join(map(str, m['seeds']))} | {', '.join(m['held_out'])} | {m['n']} | {_yrs(m['mae'])} | "
                             f"{m['bias']:+.2f} | {_pct(ch['under18_flagged'])} | {_pct(ch['teen_flagged'])} | {_pct(ch['over30_flagged'])} |")
    for name, b in result["bundles"].items():
        lines += ["", f"## {name}: by age band", "", "| source | " + " | ".join(metrics.BAND_NAMES) + " |", "|---|" + "---|" * len(metrics.BAND_NAMES)]
        for source, f in b["sources"].items():
            lines.append(f"| {source} | " + " | ".join(f"{_yrs(f['mae_by_band'][band]['mae'])} ({f['mae_by_band'][band]['n']})" for band in metrics.BAND_NAMES) + " |")
        lines += ["", f"## {name}: by group", "", "| source | group | faces | MAE | bias | under-18s flagged | 13–17 flagged | 30+ flagged |", "|---|---|---|---|---|---|---|---|"]
        for source, f in b["sources"].items():
            for kind, groups in f["groups"].items():
                for g, gf in groups.items():
                    ch = gf["challenge"]
                    lines.append(f"| {source} | {kind}: {g} | {gf['n']} | {_yrs(gf['mae'])} | {(gf['bias'] or 0):+.2f} | {_pct(ch['under18_flagged'])} | "
                                 f"{_pct(ch['teen_flagged'])} | {_pct(ch['over30_flagged'])} ({ch['over30_n']}) |")
    return "\n".join(lines) + "\n"


def kept_card(path: Path, fresh: dict[str, Any]) -> dict[str, Any]:
    """The card.json at ``path``, to be updated in place: it must measure what ``fresh`` would
    (the same sources, challenge age and limit), or its figures and the new ones would not compare."""
    if not path.exists():
        raise SystemExit(f"--update: {path} does not exist (run without --update first)")
    kept = json.loads(path.read_text(encoding="utf-8"))
    differs = [k for k in ("challenge_age", "limit", "sources") if kept.get(k) != fresh[k]]
    if differs:
        raise SystemExit(f"--update: {path} was measured with other {', '.join(differs)} "
                         f"({', '.join(f'{k}={kept.get(k)!r}' for k in differs)}); measure every bundle again without --update")
    return kept


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m agegate.training.card", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", nargs="+", required=True, help="the data folders (sources)")
    p.add_argument("--bundle", action="append", default=[], metavar="NAME=DIR", help="a bundle to measure (repeatable)")
    p.add_argument("--loso", nargs="*", default=[], metavar="RUN", help="leave-one-source-out runs (RUN+RUN2[+RUN3...]: the mean of the runs' models, as --ensemble-with exports it)")
    p.add_argument("--loso-mirror-average", action="store_true", help="measure the --loso runs as bundles exported with --mirror-average")
    p.add_argument("--loso-flag-under18", type=float, metavar="SHARE", help="measure the --loso runs as bundles exported with --flag-under18 SHARE")
    p.add_argument("--out", required=True)
    p.add_argument("--limit", type=int, help="at most N test photos per source (smoke runs)")
    p.add_argument("--challenge-age", type=float, default=metrics.CHALLENGE_AGE)
    p.add_argument("--update", action="store_true", help="keep OUT/card.json's other bundles and runs; measure only those named")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    sources = read_sources(args.data)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"challenge_age": args.challenge_age, "limit": args.limit, "sources": [s.name for s in sources],
                              "bundles": {}, "loso": []}
    if args.update:
        result = kept_card(out / "card.json", result)
    for spec in args.bundle:
        name, _, folder = spec.partition("=")
        result["bundles"][name] = measure_bundle(Path(folder), sources, args.challenge_age, args.limit)
    ensembles = [arg.split("+") for arg in args.loso]  # RUN+RUN2: the mean of the runs' models, as --ensemble-with exports it
    if ensembles:
        from .model import ensemble_members
        from .run import RunDir
    for run, *members in ensembles:  # every run checked before anything is measured
        try:
            ensemble_members(RunDir(run), [RunDir(m) for m in members])  # reads each config; checks the members against the run
            if not RunDir(run).model.exists():
                raise ValueError(f"{RunDir(run).model} is missing")
        except (ValueError, FileNotFoundError) as exc:
            raise SystemExit(f"--loso {'+'.join([run, *members])}: {exc}") from None
    for run, *members in ensembles:
        row = loso_row(Path(run), [str(s.folder) for s in sources], args.challenge_age, args.limit, args.loso_mirror_average,
                       args.loso_flag_under18, [Path(m) for m in members])
        same = [i for i, kept in enumerate(result["loso"]) if kept["run"] == row["run"]]
        if same:
            result["loso"][same[0]] = row
        else:
            result["loso"].append(row)
        log.info("LOSO %s on %s: %s", row["run"], row["held_out"], metrics.headline(row))
    (out / "card.json").write_text(json.dumps(result, indent=1, default=float) + "\n", encoding="utf-8")
    (out / "figures.md").write_text(render_tables(result), encoding="utf-8")
    if result["bundles"]:
        plot_tradeoff(result, out / "threshold_tradeoff.png", args.challenge_age)
    print(f"wrote {out / 'card.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
