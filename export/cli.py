"""`agegate-export`: turn a training run into measured model bundles, and check bundles.

    agegate-export convert RUN --out DIR [--variant all] [--tolerance 0.3] [--sign-key KEY]
    agegate-export verify BUNDLE [--public-key PUB] [--data DATA]
    agegate-export keygen --private KEY --public PUB
    agegate-export sign BUNDLE --key KEY

``convert`` writes ``DIR/<variant>/`` (model.tflite, manifest.json, golden.npz and, with
a key, signature.ed25519) for each accepted variant and ``DIR/export-report.md``/``.json``
comparing them with the Keras model. See docs/training.md and docs/model-delivery.md.

Exit status: 0 all good; 1 a variant was refused, a bundle failed verification, or the run
or data cannot be used (the message says why); 2 bad command line.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Sequence

from agegate import __version__
from agegate.edge.bundle import VARIANTS

from .options import DEFAULTS as D


def _floor_options(p: argparse.ArgumentParser) -> None:
    """The quality floors, as a till applies them (its AGEGATE_MODEL_* settings), with the same defaults."""
    from agegate.edge.bundle import QualityFloors

    floors = QualityFloors()
    p.add_argument("--min-under18-flagged", type=float, default=floors.min_under18_flagged, metavar="SHARE",
                   help=f"quality floor: the least share of under-18s flagged on the validation faces (default {floors.min_under18_flagged:g})")
    p.add_argument("--max-mae", type=float, default=floors.max_mae, metavar="YEARS", help=f"quality floor: the largest validation MAE (default {floors.max_mae:g})")
    p.add_argument("--min-spread", type=float, default=floors.min_prediction_spread, metavar="YEARS",
                   help=f"quality floor: the least spread of the estimates; a constant model has none (default {floors.min_prediction_spread:g})")
    p.add_argument("--decision-threshold", choices=("challenge_age", "calibrated"), default="challenge_age",
                   help="judge the under-18 floor at the challenge age (default) or at the model's calibrated threshold, "
                        "for tills set to AGEGATE_DECISION_THRESHOLD=calibrated")


def _floors(args: argparse.Namespace):
    from agegate.edge.bundle import QualityFloors

    return QualityFloors(min_under18_flagged=args.min_under18_flagged, max_mae=args.max_mae, min_prediction_spread=args.min_spread)


def _calibrated(args: argparse.Namespace) -> bool:
    return args.decision_threshold == "calibrated"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="agegate-export", description="Export agegate age models as bundles for the till.")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("convert", help="convert a run's best model to TFLite bundles, measured like the till runs them")
    c.add_argument("run", metavar="RUN", help="training run directory (agegate-train fit --out)")
    c.add_argument("--out", required=True, metavar="DIR", help="writes DIR/<variant>/ bundles and DIR/export-report.md")
    c.add_argument("--variant", action="append", choices=(*VARIANTS, "all"), help="float32, float16, dynamic, int8 or all (default); repeatable")
    c.add_argument("--data", nargs="+", help="data folder(s) for the test, validation and calibration faces (default: the run's)")
    c.add_argument("--tolerance", type=float, default=D.tolerance, metavar="YEARS", help=f"refuse a variant whose MAE is worse than the Keras model's by more (default {D.tolerance:g})")
    c.add_argument("--name", help="bundle name (default agegate-age-<backbone>)")
    c.add_argument("--version", help="bundle version (default: the run directory's name)")
    c.add_argument("--limit", type=int, metavar="N", help="only N faces per split (smoke runs)")
    c.add_argument("--calibration-size", type=int, default=D.calibration_size, metavar="N", help=f"training faces to calibrate int8 on (default {D.calibration_size})")
    c.add_argument("--threads", type=int, default=D.threads, help=f"interpreter threads when timing, as the till uses (default {D.threads})")
    c.add_argument("--challenge-age", type=float, default=D.challenge_age, help=f"flag customers estimated under this age (default {D.challenge_age:g})")
    c.add_argument("--mirror-average", action="store_true",
                   help="the bundle answers the mean of its estimates for the face and its mirror image (more accurate, twice the inference)")
    c.add_argument("--ensemble-with", nargs="+", default=[], metavar="RUN2",
                   help="average RUN's model with these runs' (the same crop, input and data): one .tflite answering their mean, for the sum of their costs")
    c.add_argument("--flag-under18", type=float, metavar="SHARE",
                   help="move the bundle's answers down (output.offset) until SHARE of the validation under-18s are estimated under the challenge age, e.g. 0.97")
    c.add_argument("--overwrite", action="store_true", help="replace bundles already in DIR")
    c.add_argument("--golden-faces", type=int, default=D.golden_faces, metavar="N", help=f"test faces packed for the till's self-test (default {D.golden_faces})")
    c.add_argument("--golden-image", action="append", default=[], metavar="PHOTO",
                   help="take the self-test faces from this photo (and its mirror image) instead of test faces; "
                        "repeatable. For bundles shipped where the data's licence forbids copying its faces")
    c.add_argument("--golden-tolerance", type=float, default=D.golden_tolerance, metavar="YEARS", help=f"self-test tolerance written to the manifest (default {D.golden_tolerance:g})")
    c.add_argument("--sign-key", metavar="KEY", help="Ed25519 private key (PEM): sign every bundle written")
    _floor_options(c)

    v = sub.add_parser("verify", help="re-check a bundle as a till would: hashes, signature, model, self-test")
    v.add_argument("bundle", metavar="BUNDLE")
    v.add_argument("--public-key", metavar="PUB", help="also check signature.ed25519 against this Ed25519 public key (PEM)")
    _floor_options(v)
    v.add_argument("--data", nargs="+", help="also re-measure the test figures on these data folders (one or more of the sources it was measured on) and compare with the manifest")

    k = sub.add_parser("keygen", help="create an Ed25519 key pair for signing bundles")
    k.add_argument("--private", required=True, metavar="KEY", help="private key to write (mode 0600; never overwritten)")
    k.add_argument("--public", required=True, metavar="PUB", help="public key to write (goes on every till)")

    s = sub.add_parser("sign", help="sign a bundle (after checking it loads)")
    s.add_argument("bundle", metavar="BUNDLE")
    s.add_argument("--key", required=True, metavar="KEY", help="Ed25519 private key (PEM)")
    _floor_options(s)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S", stream=sys.stderr)
    return {"convert": _convert, "verify": _verify, "keygen": _keygen, "sign": _sign}[args.command](args)


def _convert(args: argparse.Namespace) -> int:
    from agegate.edge.bundle import BundleError
    from agegate.training.data import DataError

    from .options import ExportError, ExportOptions

    variants = list(VARIANTS) if not args.variant or "all" in args.variant else list(dict.fromkeys(args.variant))
    try:
        options = ExportOptions(
            variants=variants, data=args.data, tolerance=args.tolerance, name=args.name, version=args.version,
            limit=args.limit, calibration_size=args.calibration_size, threads=args.threads,
            challenge_age=args.challenge_age, overwrite=args.overwrite, golden_faces=args.golden_faces,
            golden_tolerance=args.golden_tolerance, golden_images=args.golden_image, sign_key=args.sign_key,
            floors=_floors(args), calibrated=_calibrated(args), mirror_average=args.mirror_average, flag_under18=args.flag_under18,
            ensemble_with=args.ensemble_with,
        )
        from .exporter import export_run  # TensorFlow: only once the options are known to be good

        report = export_run(args.run, args.out, options)
    except (ExportError, DataError, BundleError, ValueError, FileNotFoundError) as exc:
        print(f"agegate-export convert: error: {exc}", file=sys.stderr)
        return 1
    for r in report.results:
        state = f"written to {r.path}" if r.accepted else "REFUSED, not written"
        print(f"{r.variant}: {r.reason(report.keras.mae, report.tolerance)}; {state}")
    print(f"report: {os.path.join(args.out, 'export-report.md')}")
    if report.refused:
        for r in report.refused:
            print(f"agegate-export convert: refused {r.variant}: {r.reason(report.keras.mae, report.tolerance)}", file=sys.stderr)
        return 1
    return 0


def _verify(args: argparse.Namespace) -> int:
    from .verify import VerifyError, verify

    try:
        for line in verify(args.bundle, args.data, args.public_key, _floors(args), _calibrated(args)):
            print(f"ok: {line}")
    except (VerifyError, ValueError) as exc:
        print(f"agegate-export verify: FAILED: {exc}", file=sys.stderr)
        return 1
    print(f"{args.bundle}: verified")
    return 0


def _keygen(args: argparse.Namespace) -> int:
    from pathlib import Path

    from agegate.edge.signing import generate_keypair

    try:
        generate_keypair(Path(args.private), Path(args.public))
    except (FileExistsError, OSError) as exc:
        print(f"agegate-export keygen: error: {exc}", file=sys.stderr)
        return 1
    print(f"private key {args.private} (keep it off the tills), public key {args.public} (copy to every till)")
    return 0


def _sign(args: argparse.Namespace) -> int:
    from pathlib import Path

    from agegate.edge.bundle import load_bundle
    from agegate.edge.signing import load_private_key, sign_bundle

    from .verify import VerifyError, verify

    try:
        verify(args.bundle, floors=_floors(args), calibrated=_calibrated(args))  # never sign a bundle a till would refuse
        key = load_private_key(Path(args.key))
    except (VerifyError, OSError, ValueError) as exc:
        print(f"agegate-export sign: error: {exc}", file=sys.stderr)
        return 1
    target = sign_bundle(Path(args.bundle), key)
    m = load_bundle(args.bundle).manifest
    print(f"signed {m.name} {m.version} ({m.variant}): {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
