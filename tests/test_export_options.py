"""`agegate-export convert`'s options: defaults defined once (ExportOptions), bad ones refused
before TensorFlow is loaded."""

from __future__ import annotations

import subprocess
import sys

from agegate.export.cli import _parser
from agegate.export.options import DEFAULTS, ExportOptions


def test_the_command_lines_defaults_are_the_options_defaults():
    args = _parser().parse_args(["convert", "RUN", "--out", "DIR"])
    for option in ("tolerance", "calibration_size", "threads", "challenge_age", "golden_faces", "golden_tolerance"):
        assert getattr(args, option) == getattr(DEFAULTS, option), option
    floors = DEFAULTS.floors
    assert (args.min_under18_flagged, args.max_mae, args.min_spread) == (
        floors.min_under18_flagged, floors.max_mae, floors.min_prediction_spread)


def test_bad_options_are_refused_with_their_reason_before_tensorflow_loads(tmp_path):
    script = ("import sys\nfrom agegate.export.cli import main\n"
              f"rc = main(['convert', {str(tmp_path)!r}, '--out', {str(tmp_path / 'out')!r}, '--golden-faces', '0'])\n"
              "print(rc, 'tensorflow' in sys.modules)\n")
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert r.stdout.split() == ["1", "False"], r.stdout + r.stderr
    assert "--golden-faces 0: must be 1-256" in r.stderr
    assert not (tmp_path / "out").exists()


def test_unknown_variants_are_named():
    import pytest

    from agegate.export.options import ExportError

    with pytest.raises(ExportError, match="unknown variant.*float64.*choose from float32, float16, dynamic, int8"):
        ExportOptions(variants=("float64",))
