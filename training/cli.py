"""`agegate-train`: explore a data folder, train an age model, evaluate it.

    agegate-train eda  DATA [DATA ...] --out DIR
    agegate-train fit  DATA [DATA ...] --out RUN [--backbone resnet50] [--epochs 30] ...
    agegate-train fit  --out RUN --resume [--epochs N]
    agegate-train eval RUN [--data DATA ...]

Several data folders are several *sources*: each keeps its own split, and every figure is
reported per source and pooled. Detections and crops are cached in ``$AGEGATE_CACHE_DIR``
(default ``~/.cache/agegate``), shared by every command.

Exit status: 0 done, 1 the data, run or settings cannot be used (the message says why),
2 bad command line.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Sequence

from agegate import __version__
from agegate.ages import CHALLENGE_AGE

FIT_OPTIONS = (
    "backbone", "weights", "image_size", "margin", "shift_y", "align", "detector", "detector_model", "epochs", "batch_size",
    "learning_rate", "seed", "limit", "dropout", "huber_delta", "mixed_precision", "keep_checkpoints",
    "balance", "balance_gender", "balance_ethnicity", "epoch_size", "overestimate_penalty", "overestimate_below", "wrong_side_penalty", "rank_penalty", "label_sigma", "label_weight",
    "label_penalised", "anchor_weight", "best_by", "best_min_flagged",
)  # fmt: skip


def _parser() -> argparse.ArgumentParser:
    from .run import ALIGNS, BACKBONES, BEST_BY, FitConfig

    d = FitConfig(data=[])
    p = argparse.ArgumentParser(prog="agegate-train", description="Train and evaluate the age model of agegate.")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    eda = sub.add_parser("eda", help="explore a data folder: plots and a report page")
    eda.add_argument("data", nargs="+", help="folder(s) with labels.csv (file_name,real_age) or UTKFace-named images")
    eda.add_argument("--out", required=True, help="folder for report.md, eda.json and the plots")
    eda.add_argument("--image-size", type=int, default=d.image_size, help=f"crop size in pixels for the sample grid (default {d.image_size})")
    eda.add_argument("--margin", type=float, default=d.margin, help=f"crop margin (default {d.margin})")
    eda.add_argument("--detector", default=d.detector, help=f"face detector: yunet or haar (default {d.detector})")
    eda.add_argument("--detector-model", help="another YuNet .onnx file than the shipped one")
    eda.add_argument("--limit", type=int, help="only this many faces per split")
    eda.add_argument("--seed", type=int, default=d.seed)
    eda.add_argument("--samples-per-band", type=int, default=8)

    fit = sub.add_parser("fit", help="train a model into a run directory (resumable)")
    fit.add_argument("data", nargs="*", help="data folder(s), one per source (with --resume: taken from the run)")
    fit.add_argument("--out", required=True, metavar="RUN", help="run directory")
    fit.add_argument("--resume", action="store_true", help="continue RUN from its latest checkpoint, with its own settings (--epochs N extends it)")
    fit.add_argument("--max-epochs-this-run", type=int, metavar="N", help="stop after N epochs (checkpointed); --resume continues")
    fit.add_argument("--backbone", choices=BACKBONES, help=f"(default {d.backbone}; dlibresnet10: dlib's CC0 face-age net, fine-tuned; trained at 64 px, takes multiples of 16)")
    fit.add_argument("--weights", metavar="PATH", help="local ImageNet weights for the backbone (no top); default: train from scratch")
    fit.add_argument("--image-size", type=int, help=f"model input in pixels, square (default {d.image_size}; 64 with dlibresnet10)")
    fit.add_argument("--margin", type=float, help=f"crop margin around the detector box, a fraction of its side (default {d.margin})")
    fit.add_argument("--shift-y", type=float, metavar="F", help=f"move the crop down by F of the box side (default {d.shift_y}; dlibresnet10: see docs/training.md)")
    fit.add_argument("--align", choices=ALIGNS, help=f"landmarks: turn and scale each face so the detector's five landmarks fall on a template framed as --margin/--shift-y frame the box (YuNet; faces without landmarks are cut by the box) (default {d.align})")
    fit.add_argument("--detector", help=f"face detector that cuts the training crops, as at the till (default {d.detector})")
    fit.add_argument("--detector-model", metavar="PATH", help="another YuNet .onnx file than the shipped one")
    fit.add_argument("--epochs", type=int, help=f"(default {d.epochs})")
    fit.add_argument("--batch-size", type=int, help=f"global batch size (default {d.batch_size})")
    fit.add_argument("--learning-rate", type=float, help="peak learning rate (default 1e-3 from scratch, 1e-4 with --weights)")
    fit.add_argument("--seed", type=int, help=f"(default {d.seed})")
    fit.add_argument("--limit", type=int, metavar="N", help="only N faces per split (smoke runs)")
    fit.add_argument("--dropout", type=float, help=f"(default {d.dropout})")
    fit.add_argument("--huber-delta", type=float, metavar="YEARS", help=f"Huber loss delta in years (default {d.huber_delta})")
    fit.add_argument("--mixed-precision", choices=("auto", "on", "off"), help="auto: on when GPUs are present (default)")
    fit.add_argument("--overestimate-penalty", type=float, metavar="K",
                     help=f"an over-estimate of someone under --overestimate-below counts 1+K times in the loss (default {d.overestimate_penalty})")
    fit.add_argument("--overestimate-below", type=float, metavar="AGE",
                     help="the age under which --overestimate-penalty applies (default: the challenge age, 25; 18: the minors only)")
    fit.add_argument("--wrong-side-penalty", type=float, metavar="K",
                     help=f"an under-18 estimated over 23, or someone 30+ under 27, counts 1+K times in the loss (default {d.wrong_side_penalty})")
    fit.add_argument("--rank-penalty", type=float, metavar="K",
                     help="each pair in a batch of an under-18 and someone 30+ whose estimates are under 12 years apart "
                          f"adds K x the shortfall, averaged over the pairs (default {d.rank_penalty}: off)")
    fit.add_argument("--label-sigma", type=float, metavar="YEARS",
                     help="also fit the net's age classes to a normal distribution this many years wide around the true age "
                          "(label-distribution learning; dlibresnet10 only; default 0: off)")
    fit.add_argument("--label-weight", type=float, metavar="K", help=f"that term's weight against the age's loss (default {d.label_weight})")
    fit.add_argument("--anchor-weight", type=float, metavar="K",
                     help=f"dlibresnet10: add K x the squared distance of the weights from dlib's published ones to the loss (L2-SP; default {d.anchor_weight}: none)")
    fit.add_argument("--label-penalised", action="store_const", const=True,
                     help="the over-estimate and wrong-side penalties weigh the label-distribution term too, not only the age's Huber loss")
    fit.add_argument("--best-by", choices=BEST_BY,
                     help="the epoch kept as the run's model: mae, the lowest validation MAE; minors, the lowest among the epochs "
                          f"that flag --best-min-flagged of the validation under-18s at the challenge age (default {d.best_by})")
    fit.add_argument("--best-min-flagged", type=float, metavar="SHARE", help=f"with --best-by minors (default {d.best_min_flagged})")
    fit.add_argument("--balance", type=float, metavar="P", help=f"draw faces with weight 1/(faces in their age band)^P: 0 as they come, 1 equal bands (default {d.balance})")
    fit.add_argument("--balance-gender", action="store_const", const=True,
                     help="within each age band, draw as many women as men (where the data says: meta.csv's gender or UTKFace's file names)")
    fit.add_argument("--balance-ethnicity", action="store_const", const=True,
                     help="within each age band, draw each ethnic group equally (where the data says: UTKFace's labels, in its file names or a race column of meta.csv); "
                          "with --balance-gender, each combination")
    fit.add_argument("--epoch-size", type=int, metavar="N", help="faces drawn per epoch (default: the training set's size)")
    fit.add_argument("--keep-checkpoints", type=int, metavar="N", help=f"epoch checkpoints to keep (default {d.keep_checkpoints})")
    fit.add_argument("--verbose", type=int, choices=(0, 1, 2), help="Keras output: 1 progress bar, 2 one line per epoch (default: 1 on a terminal, else 2)")

    ev = sub.add_parser("eval", help="measure a run's best model on the test split")
    ev.add_argument("run", metavar="RUN")
    ev.add_argument("--data", nargs="+", help="data folder(s) (default: the ones the run trained on)")
    ev.add_argument("--split", default="test", choices=("train", "val", "test"))
    ev.add_argument("--mirror-average", action="store_true", help="answer as a bundle exported with --mirror-average: the mean for the face and its mirror image")
    ev.add_argument("--ensemble-with", nargs="+", default=[], metavar="RUN2", help="answer as a bundle exported with --ensemble-with RUN2...: the mean of the runs' models")
    ev.add_argument("--limit", type=int, metavar="N", help="only N faces of the split")
    ev.add_argument("--challenge-age", type=float, default=CHALLENGE_AGE, help=f"flag customers estimated under this age (default {CHALLENGE_AGE:g})")
    ev.add_argument("--batch-size", type=int, default=64)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _quiet_tensorflow()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S", stream=sys.stderr)
    from .data import DataError
    from .fit import RunError

    try:
        return {"eda": _eda, "fit": _fit, "eval": _eval}[args.command](args)
    except (DataError, RunError, ValueError, FileNotFoundError) as exc:
        print(f"agegate-train {args.command}: error: {exc}", file=sys.stderr)
        return 1


def _eda(args: argparse.Namespace) -> int:
    from .eda import explore
    from .faces import DetectorSpec

    detector = DetectorSpec(args.detector, args.detector_model)
    several = len(args.data) > 1
    for folder in args.data:  # one report per source; several go to OUT/<source name>/
        out = os.path.join(args.out, os.path.basename(os.path.normpath(folder))) if several else args.out
        report = explore(folder, out, args.image_size, args.margin, detector, args.seed, args.limit, args.samples_per_band)
        print(f"{folder}: {report['faces']} faces; report: {os.path.join(out, 'report.md')}")
    return 0


def _fit(args: argparse.Namespace) -> int:
    from .fit import RunError, fit
    from .run import FitConfig, RunDir

    given = {k: getattr(args, k) for k in FIT_OPTIONS if getattr(args, k) is not None}
    if args.resume:
        config = RunDir(args.out).load_config()
        epochs = given.pop("epochs", None)  # the one setting a resume may change: it extends the run
        given_data = [os.path.realpath(d) for d in args.data]
        clashes = [f"--{k.replace('_', '-')} {v} (the run has {getattr(config, k)})" for k, v in given.items() if getattr(config, k) != v]
        if given_data and given_data != [os.path.realpath(d) for d in config.data]:
            clashes.append(f"data {' '.join(args.data)} (the run has {' '.join(config.data)})")
        if clashes:
            raise RunError("--resume continues a run with its own settings; drop " + ", ".join(clashes))
        result = fit(None, args.out, resume=True, max_epochs_this_run=args.max_epochs_this_run, verbose=args.verbose, epochs=epochs)
    else:
        if not args.data:
            raise RunError("fit needs a DATA folder (or --resume to continue RUN)")
        result = fit(FitConfig(data=args.data, **given), args.out, max_epochs_this_run=args.max_epochs_this_run, verbose=args.verbose)
    state = "complete" if result.complete else "stopped early (continue with --resume)"
    kept = f"val MAE {result.best_val_mae:.2f} years" if result.best_val_mae is not None else "no validation MAE"
    by = RunDir(args.out).load_config().best_by
    print(f"{args.out}: {result.epochs_done}/{result.epochs} epochs, {state}; kept epoch {result.best_epoch} ({kept}, chosen by {by})")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from .evaluate import evaluate
    from .metrics import headline

    result = evaluate(args.run, args.data, args.split, args.limit, args.challenge_age, args.batch_size, args.mirror_average, args.ensemble_with)
    print(headline(result))
    return 0


def _quiet_tensorflow() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


if __name__ == "__main__":
    sys.exit(main())
