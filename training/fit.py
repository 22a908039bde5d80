"""`agegate-train fit`: train an age model on a data folder, resumably.

The story of a run:

1. Settle the settings: a new run writes ``config.json``; ``--resume`` reads it back.
2. Pick the strategy for this machine (CPU, GPUs or a cluster) and fix the seeds.
3. Read the data folders (sources), each with its own split, and cut every face the way
   the till will (cached, so each photo is searched once across runs and commands).
4. Learn the age normalisation from the training split (new runs only; a pretrained
   face-age model answers years itself).
5. Build and compile the model, or restore the latest checkpoint with its optimizer; with
   ``anchor_weight``, tie its weights to dlib's published ones it started from (L2-SP).
6. Fit, with faces drawn so that age bands are balanced (and, if asked, genders or ethnic
   groups evened within each band), saving a checkpoint after every
   epoch, the best model (by validation MAE, or ``--best-by minors``), a row of ``history.csv``
   and, after the session's first epoch, the machine it trains on (``sessions.jsonl``); stop early if
   asked to, and say how to continue. ``--resume --epochs N`` extends a finished run.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from agegate.files import replacing

from . import pipeline
from .data import groups_of, read_sources, records_of, split_counts
from .distribute import choose_strategy, describe_machine
from .faces import FaceSet, default_cache_dir, prepare_faces
from .model import anchor_to_start, build_model, compile_model
from .run import PRETRAINED, VAL_MAE, VAL_MINORS_FLAGGED, FitConfig, RunDir, best_epoch, kept_epoch, read_history, serving_spec, write_json

log = logging.getLogger(__name__)


@dataclass
class FitResult:
    run: RunDir
    model: keras.Model | None  # None when there was nothing left to train
    epochs_done: int  # epochs completed in total, this and earlier sessions
    epochs: int  # epochs the run is meant to have
    best_epoch: int | None  # the epoch kept as the run's model (by config.best_by)
    best_val_mae: float | None  # that epoch's validation MAE

    @property
    def complete(self) -> bool:
        return self.epochs_done >= self.epochs


class RunError(Exception):
    """A run that cannot start or continue; the message says why and what to do."""


def fit(
    config: FitConfig | None, run_dir: str | Path, resume: bool = False, max_epochs_this_run: int | None = None,
    verbose: int | None = None, epochs: int | None = None, cache_dir: Path | None = None,
) -> FitResult:
    """Train a new run, or continue one (``resume``; ``epochs`` then extends it to that many)."""
    run = RunDir(run_dir)
    cache_dir = cache_dir or default_cache_dir()

    # 1. Settings.
    if resume:
        config = run.load_config()
        saved = run.saved_epochs()
        initial_epoch = saved[-1] if saved else 0
        if epochs is not None and epochs != config.epochs:
            if epochs < initial_epoch:
                raise RunError(f"--epochs {epochs}: the run already has {initial_epoch} epochs")
            # The optimizer comes back with its schedule, which has decayed to its floor: the added
            # epochs polish at that lowest learning rate rather than train afresh.
            log.info("extending %s from %d to %d epochs, at the schedule's final learning rate", run.path, config.epochs, epochs)
            config.epochs = epochs
            run.save_config(config)
        log.info("resuming %s from epoch %d of %d", run.path, initial_epoch, config.epochs)
    else:
        if config is None:
            raise RunError("a new run needs its settings")
        if run.config_file.exists() or run.saved_epochs():
            raise RunError(f"{run.path} already holds a run: continue it with --resume, or choose another --out")
        config.check()
        config.learning_rate = config.lr  # record the default that applies
        initial_epoch = 0
        if config.epochs == 0:
            return _as_published(config, run)
    if initial_epoch >= config.epochs:
        log.info("%s already finished its %d epochs; nothing to do", run.path, config.epochs)
        return FitResult(run, None, initial_epoch, config.epochs, *kept_epoch(run, config))

    # 2. Strategy and seeds.
    strategy, plan = choose_strategy(config.mixed_precision)
    keras.utils.set_random_seed(config.seed)
    out = run if plan.chief else RunDir(tempfile.mkdtemp(prefix="agegate-worker-"))

    # 3. Data and face crops.
    sources = read_sources(config.data, seed=config.seed)
    records = records_of(sources, config.limit, config.seed)
    if not resume:
        config.data = [str(s.folder) for s in sources]
        config.data_description = "; ".join(f"{s.name}: {s.description}" for s in sources)
        config.data_licence = "; ".join(f"{s.name}: {s.licence or 'not stated in its README'}" for s in sources)
        config.data_source = ", ".join(sorted({s.source for s in sources}))
    train_records = [r for r in records if r.split == "train"]
    if not train_records or not any(r.split == "val" for r in records):
        raise RunError(f"{', '.join(config.data)}: need faces in both the train and val splits, have {split_counts(records)}")
    kinds = tuple(kind for kind, on in (("gender", config.balance_gender), ("ethnicity", config.balance_ethnicity)) if on)
    balance_groups = balance_groups_of(sources, train_records, kinds) if kinds else None  # refused before any face is cut

    # 4. Age normalisation, from the training labels (set once per run). The pretrained
    # face-age network answers years already: its output is used as it is.
    if config.target_offset is None:
        if config.backbone == PRETRAINED:
            config.target_offset, config.target_scale = 0.0, 1.0
        else:
            ages = np.array([r.age for r in train_records])
            config.target_offset = round(float(ages.mean()), 3)
            config.target_scale = round(max(float(ages.std()), 1.0), 3)
    if plan.chief:
        run.path.mkdir(parents=True, exist_ok=True)
        run.save_config(config)

    spec = serving_spec(config)
    faces = {
        split: prepare_faces([r for r in records if r.split == split], spec, config.detector_spec, cache_dir, name=split)
        for split in ("train", "val")
    }
    if plan.chief:
        _write_data_report(run, sources, records, faces)
    train, val = faces["train"], faces["val"]

    def target(fs: FaceSet) -> np.ndarray:
        return (fs.ages - config.target_offset) / config.target_scale

    # 5. Model: fresh, or the latest checkpoint with its optimizer state.
    epoch_size = config.epoch_size or len(train)
    steps = pipeline.steps(epoch_size, config.batch_size)
    with strategy.scope():
        if initial_epoch:
            model = keras.models.load_model(run.checkpoint(initial_epoch))
            log.info("restored %s (optimizer at step %d)", run.checkpoint(initial_epoch).name, int(keras.ops.convert_to_numpy(model.optimizer.iterations)))
        else:
            model = build_model(config, weights=config.weights)
            compile_model(model, config, steps)
            start = "dlib's CC0 face-age weights" if config.backbone == PRETRAINED else f"ImageNet weights from {config.weights}" if config.weights else "trained from scratch"
            log.info("built %s: %s parameters, input %dx%d, %s", model.name, f"{model.count_params():,}", config.image_size, config.image_size, start)
        if config.anchor_weight:  # not saved with a checkpoint: attached again on every (re)start
            anchored = anchor_to_start(model, build_model(config), config.anchor_weight)  # dlib's net as published
            log.info("%d weights anchored to the pretrained ones they started from (L2-SP, %g x squared distance)", anchored, config.anchor_weight)

    # 6. Fit.
    _trim_history(run.history, initial_epoch)
    callbacks = [
        EpochCheckpoint(out, keep=config.keep_checkpoints),
        SessionLog(out, initial_epoch, describe_machine(plan)),
        BestModel(out.model, config, read_history(run.history)),
        History(str(out.history), append=True),
        keras.callbacks.TerminateOnNaN(),
    ]
    if max_epochs_this_run:
        callbacks.append(StopAfter(max_epochs_this_run))
    if initial_epoch < config.epochs:
        groups = [balance_groups[(str(s), f)] for s, f in zip(train.sources, train.files)] if balance_groups is not None else None
        weights = pipeline.band_balance_weights(train.ages, config.balance, groups) if config.balance or groups is not None else None
        if groups is not None:  # a small group's faces are each drawn many times: say how many
            log.info("evening %s: the most drawn face is drawn %.1f times as often as by age band alone",
                     " and ".join(kinds), float(np.max(weights / pipeline.band_balance_weights(train.ages, config.balance))))
        log.info("fitting epochs %d-%d: %d faces drawn from %d train faces (age bands balanced with power %g%s) in %d batches of %d, %d val faces",
                 initial_epoch + 1, config.epochs, epoch_size, len(train), config.balance,
                 f", {' and '.join(kinds)} evened in each" if groups is not None else "", steps, config.batch_size, len(val))
        model.fit(
            pipeline.training_batches(train.images, target(train), config.batch_size, config.seed, initial_epoch, config.epochs, weights, epoch_size),
            validation_data=pipeline.evaluation_batches(val.images, target(val), config.batch_size),
            initial_epoch=initial_epoch,
            epochs=config.epochs,
            steps_per_epoch=steps,
            callbacks=callbacks,
            shuffle=False,  # the pipeline shuffles, seeded per epoch
            verbose=verbose if verbose is not None else (1 if sys.stdout.isatty() else 2),
        )
    done = (run.saved_epochs() or [initial_epoch])[-1]
    result = FitResult(run, model, done, config.epochs, *kept_epoch(run, config))
    if result.complete:
        log.info("run complete: %d epochs; kept epoch %s (val MAE %.2f years, chosen by %s); model in %s",
                 done, result.best_epoch, float("nan") if result.best_val_mae is None else result.best_val_mae, config.best_by, run.model)
    else:
        log.info("stopped after epoch %d of %d; continue with: agegate-train fit --resume --out %s", done, config.epochs, run.path)
    return result


def _as_published(config: FitConfig, run: RunDir) -> FitResult:
    """A run of no epochs: the pretrained face-age network exactly as published (its CC0 weights).

    Nothing is learnt from the data folders; they are recorded only as the faces that
    ``eval`` and ``agegate-export`` measure it on. This is how a bundle free of any
    non-commercial training data is made.
    """
    sources = read_sources(config.data, seed=config.seed)
    config.data = [str(s.folder) for s in sources]
    config.data_description = "none: the published CC0 weights, not trained further (data folders used only to measure it)"
    config.data_licence = ""
    config.target_offset, config.target_scale = 0.0, 1.0
    run.path.mkdir(parents=True, exist_ok=True)
    run.save_config(config)
    model = build_model(config)
    _save_atomically(model, run.model)
    log.info("%s: dlib's CC0 age network as published, saved as %s (no epochs: nothing learnt from the data)", run.path, run.model)
    return FitResult(run, model, 0, 0, None, None)


# --- Callbacks -------------------------------------------------------------------------


class EpochCheckpoint(keras.callbacks.Callback):
    """Save model and optimizer after every epoch as ``checkpoints/epoch-NNN.keras``, keeping the last few.

    The file is written under a temporary name and renamed, so an interruption never
    leaves a half-written checkpoint for ``--resume`` to trip over.
    """

    def __init__(self, run: RunDir, keep: int):
        super().__init__()
        self.run, self.keep = run, keep

    def on_epoch_end(self, epoch, logs=None):
        path = self.run.checkpoint(epoch + 1)
        path.parent.mkdir(parents=True, exist_ok=True)
        _save_atomically(self.model, path)
        for old in self.run.saved_epochs()[: -self.keep]:
            self.run.checkpoint(old).unlink(missing_ok=True)


class SessionLog(keras.callbacks.Callback):
    """Append this session to ``sessions.jsonl`` once it has checkpointed its first epoch: the
    machine that trained it and the epoch it started from. The same settings and seed give another
    model on another kind of machine, so a run says where it was trained; a session that died
    before finishing an epoch trained nothing and is not logged."""

    def __init__(self, run: RunDir, from_epoch: int, machine: dict):
        super().__init__()
        self.run, self.entry = run, {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "from_epoch": from_epoch, **machine}

    def on_epoch_end(self, epoch, logs=None):
        if self.entry is not None:
            with self.run.sessions.open("a", encoding="utf-8") as sessions:
                sessions.write(json.dumps(self.entry) + "\n")
            self.entry = None


class BestModel(keras.callbacks.Callback):
    """Keep ``model.keras`` as the best epoch so far by the run's rule (:func:`best_epoch`), across resumes."""

    def __init__(self, path: Path, config: FitConfig, history: list[dict[str, float]]):
        super().__init__()
        self.path, self.config, self.history = path, config, list(history)

    def on_epoch_end(self, epoch, logs=None):
        row = {"epoch": float(epoch + 1), **{k: float(v) for k, v in (logs or {}).items() if np.ndim(v) == 0}}
        self.history.append(row)
        if row.get(VAL_MAE) is not None and best_epoch(self.history, self.config) is row:
            flagged = f", {100 * row[VAL_MINORS_FLAGGED]:.1f} % of under-18s flagged" if VAL_MINORS_FLAGGED in row else ""
            log.info("epoch %d: val MAE %.2f years%s: the best so far by %s; saved %s", epoch + 1, row[VAL_MAE], flagged, self.config.best_by, self.path.name)
            _save_atomically(self.model, self.path)


class History(keras.callbacks.CSVLogger):
    """``history.csv`` with 1-based epochs (as the checkpoints are named), learning rate and seconds."""

    def on_epoch_begin(self, epoch, logs=None):
        self._started = time.monotonic()

    def on_epoch_end(self, epoch, logs=None):
        logs = dict(logs or {})
        logs["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        logs["seconds"] = round(time.monotonic() - getattr(self, "_started", time.monotonic()), 1)
        super().on_epoch_end(epoch + 1, logs)


class StopAfter(keras.callbacks.Callback):
    """End this session after ``n`` epochs (checkpointed); ``--resume`` continues the run."""

    def __init__(self, n: int):
        super().__init__()
        self.n, self.seen = n, 0

    def on_epoch_end(self, epoch, logs=None):
        self.seen += 1
        if self.seen >= self.n:
            self.model.stop_training = True


def _save_atomically(model: keras.Model, path: Path) -> None:
    with replacing(path, mode=0o644) as tmp:  # keeps the .keras suffix Keras insists on
        model.save(tmp)


# --- history.csv -----------------------------------------------------------------------


def _trim_history(path: Path, last_epoch: int) -> None:
    """Drop rows after the checkpoint a run resumes from (an epoch logged but not saved)."""
    if not path.exists():
        return
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        fields, rows = reader.fieldnames, [r for r in reader if int(float(r["epoch"])) <= last_epoch]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def balance_groups_of(sources, records, kinds: tuple[str, ...]) -> dict[tuple[str, str], str | None]:
    """{(source, file): group} for the draw that evens groups within each age band: each record's
    ``kinds`` ("gender", "ethnicity") as its source says them (``meta.csv`` or UTKFace's file
    names), joined ("female/Asian"), None where any is not said. A kind that no record says is
    refused: the setting would silently do nothing."""
    labels: dict[str, dict[tuple[str, str], str | None]] = {kind: {} for kind in kinds}
    for source in sources:
        files = [r.file for r in records if r.source == source.name]
        said = groups_of(source.folder, files)
        for kind in kinds:
            labels[kind].update(zip(((source.name, f) for f in files), said[kind]))
    column = {"gender": "gender", "ethnicity": "race"}
    for kind in kinds:
        if not any(g is not None for g in labels[kind].values()):
            raise RunError(f"--balance-{kind}: no train face's {kind} is known ({', '.join(s.name for s in sources)}: "
                           f"no {column[kind]} column in meta.csv, no UTKFace file names)")
    keys = labels[kinds[0]].keys()
    groups = {k: None if any(labels[kind][k] is None for kind in kinds) else "/".join(labels[kind][k] for kind in kinds) for k in keys}
    known = [g for g in groups.values() if g is not None]
    if not known:
        raise RunError(f"--balance-{' --balance-'.join(kinds)}: no train face has all of {', '.join(kinds)} known together")
    log.info("balancing %s within each age band: %d of %d train photos say it (%s)", " and ".join(kinds), len(known), len(groups),
             ", ".join(f"{g} {known.count(g)}" for g in sorted(set(known))))
    return groups


def _write_data_report(run: RunDir, sources, records, faces: dict[str, FaceSet]) -> None:
    write_json(
        run.data_report,
        {
            "sources": {
                s.name: {
                    "data": str(s.folder),
                    "labels": s.source,
                    "splits_from": "splits.csv" if s.has_splits else "seeded split stratified by age band (and person, when given)",
                    "licence": s.licence,
                    "faces_per_split_and_band": split_counts([r for r in records if r.source == s.name]),
                    "skipped_entries": [dataclasses.asdict(p) for p in s.problems],
                }
                for s in sources
            },
            "crops": {
                split: {
                    "faces": len(fs),
                    "fallback_share": fs.fallback_share,
                    "fallback_share_by_source": {name: float(fs.fallback[mask].mean()) for name, mask in fs.by_source().items()},
                    "skipped": [dataclasses.asdict(p) for p in fs.problems],
                }
                for split, fs in faces.items()
            },
        },
    )
