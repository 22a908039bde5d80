"""The model card's figures (`python -m agegate.training.card`): bundles measured through the
till's own `agegate-edge estimate --json`, and `--update`, which measures one bundle again and
keeps every other entry as it was measured."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from agegate.edge.config import CC0_BUNDLE_DIR, DEFAULT_BUNDLE_DIR
from conftest import require_all_age_faces, require_utkface

pytestmark = pytest.mark.slow


def _card(out, *args):
    data = [str(require_utkface()), str(require_all_age_faces())]
    return subprocess.run([sys.executable, "-m", "agegate.training.card", "--data", *data, "--out", str(out), *args],
                          capture_output=True, text=True, timeout=600)


def test_the_card_measures_bundles_and_an_update_keeps_what_it_was_not_asked_to_measure(tmp_path):
    first = _card(tmp_path, "--limit", "6", "--bundle", f"default={DEFAULT_BUNDLE_DIR}", "--bundle", f"cc0={DEFAULT_BUNDLE_DIR}")
    assert first.returncode == 0, first.stderr[-3000:]
    card = json.loads((tmp_path / "card.json").read_text())
    assert list(card["bundles"]) == ["default", "cc0"] and card["sources"] == ["utkface-part1", "all-age-faces"]
    part1 = card["bundles"]["default"]["sources"]["utkface-part1"]
    assert part1["photos"] == 6 and part1["photos"] - part1["detector_misses"] == part1["n"] and 0 < part1["mae"] < 30
    assert "| default | utkface-part1 | 6 |" in (tmp_path / "figures.md").read_text()

    # cc0 measured again, now with the CC0 bundle: the default's entry is kept, untouched.
    second = _card(tmp_path, "--limit", "6", "--update", "--bundle", f"cc0={CC0_BUNDLE_DIR}")
    assert second.returncode == 0, second.stderr[-3000:]
    updated = json.loads((tmp_path / "card.json").read_text())
    assert updated["bundles"]["default"] == card["bundles"]["default"]
    assert updated["bundles"]["cc0"]["name"] == "agegate-age-cc0" and card["bundles"]["cc0"]["name"] == "agegate-age"
    assert list(updated["bundles"]) == ["default", "cc0"]

    # An update measured otherwise would mix figures that do not compare: refused, the card untouched.
    refused = _card(tmp_path, "--limit", "5", "--update", "--bundle", f"cc0={CC0_BUNDLE_DIR}")
    assert refused.returncode != 0 and "measured with other limit" in refused.stderr
    assert json.loads((tmp_path / "card.json").read_text()) == updated


def test_leave_one_source_out_runs_of_one_recipe_are_averaged_over_their_seeds():
    from agegate.training.card import recipe_of, render_tables, seed_means
    from agegate.training.run import FitConfig

    def row(run, config, held_out, mae, under18, teens, over30):
        return {"run": run, "backbone": config.backbone, "trained_on": ["a", "b"], "held_out": [held_out], "n": 100, "mirror_average": False,
                "answer_shift": 0.0, "seed": config.seed, "recipe": recipe_of(config), "mae": mae, "bias": -1.0,
                "challenge": {"under18_flagged": under18, "teen_flagged": teens, "over30_flagged": over30}}

    recipe = dict(backbone="dlibresnet10", image_size=64, overestimate_penalty=1.0)
    # The same recipe trained on other data (held out elsewhere) and with another seed is the same recipe; another penalty is not.
    assert recipe_of(FitConfig(data=["a", "b"], seed=1, **recipe)) == recipe_of(FitConfig(data=["c"], seed=2, **recipe))
    assert recipe_of(FitConfig(data=["a"], **recipe)) != recipe_of(FitConfig(data=["a"], **{**recipe, "overestimate_penalty": 2.0}))
    # a setting added later is a new recipe when used, and leaves the recipes measured before it as they were
    assert recipe_of(FitConfig(data=["a"], **recipe)) != recipe_of(FitConfig(data=["a"], **{**recipe, "anchor_weight": 1.0}))
    assert "anchor_weight" not in recipe_of(FitConfig(data=["a"], **recipe))
    assert "balance_gender" not in recipe_of(FitConfig(data=["a"], **recipe))  # added later: older runs keep their recipe
    assert recipe_of(FitConfig(data=["a"], **recipe)) != recipe_of(FitConfig(data=["a"], **{**recipe, "balance_gender": True}))
    assert "balance_ethnicity" not in recipe_of(FitConfig(data=["a"], **recipe))
    assert recipe_of(FitConfig(data=["a"], **recipe)) != recipe_of(FitConfig(data=["a"], **{**recipe, "balance_ethnicity": True}))
    rows = [
        row("aaf-s2", FitConfig(data=["a"], seed=2, **recipe), "aaf", 10.0, 0.98, 0.94, 0.40),
        row("aaf-s1", FitConfig(data=["a"], seed=1, **recipe), "aaf", 9.0, 0.96, 0.90, 0.30),
        row("extra-s1", FitConfig(data=["a"], seed=1, **recipe), "extra", 7.0, 0.90, 0.93, 0.13),  # one seed: no mean
        row("aaf-other", FitConfig(data=["a"], seed=2, **{**recipe, "overestimate_penalty": 2.0}), "aaf", 8.0, 0.90, 0.80, 0.20),
    ]
    means = seed_means(rows)
    assert len(means) == 1
    (m,) = means
    assert m["runs"] == ["aaf-s1", "aaf-s2"] and m["seeds"] == ["1", "2"]  # in the order of their seeds and m["held_out"] == ["aaf"]
    assert m["mae"] == pytest.approx(9.5) and m["challenge"]["under18_flagged"] == pytest.approx(0.97)
    assert m["challenge"]["teen_flagged"] == pytest.approx(0.92) and m["challenge"]["over30_flagged"] == pytest.approx(0.35)
    page = render_tables({"challenge_age": 25.0, "bundles": {}, "loso": rows})
    assert "| aaf-s1, aaf-s2 | 1, 2 | aaf | 100 | 9.50 | -1.00 | 97.0 % | 92.0 % | 35.0 % |" in page
    assert "## Per source" not in page  # no bundles measured: no empty table
    # Ensembles: keyed by every member's seed, so two pairs that share their first run's seed are two draws, not one.
    pairs = [{**row("a1+b1", FitConfig(data=["a"], seed=1, **recipe), "aaf", 9.0, 0.96, 0.90, 0.30), "member_seeds": [1]},
             {**row("a1+b2", FitConfig(data=["a"], seed=1, **recipe), "aaf", 8.0, 0.98, 0.94, 0.20), "member_seeds": [2]}]
    (m,) = seed_means(pairs)
    assert m["seeds"] == ["1+1", "1+2"] and m["mae"] == pytest.approx(8.5)


def test_the_ship_rule_allows_a_point_of_minors_and_no_worse_estimate():
    from agegate.training.card import loso_entry, render_rule_table, rule_verdict

    def fig(mae, under18, teens, over30=0.2):
        return {"mae": mae, "challenge": {"under18_flagged": under18, "teen_flagged": teens, "over30_flagged": over30}}

    baseline = fig(7.0, 0.970, 0.930)
    assert rule_verdict(baseline, fig(6.9, 0.962, 0.925, over30=0.5)) == "passes"  # within a point; adults flagged do not enter
    assert rule_verdict(baseline, fig(6.9, 0.970, 0.915)) == "fails"  # 1.5 points of teenagers
    assert rule_verdict(baseline, fig(6.9, 0.955, 0.930)) == "fails"  # 1.5 points of under-18s
    assert rule_verdict(baseline, fig(7.01, 0.990, 0.990)) == "fails"  # more minors flagged, but a worse estimate
    table = render_rule_table("Held out", [("aaf", {"N": baseline, "O": fig(6.9, 0.970, 0.915)})])
    assert "| aaf | N | 7.00 | 97.0 % | 93.0 % | 20.0 % |  |" in table and table.rstrip().endswith("| fails |")
    card = {"loso": [{"run": "a+b", **baseline}]}
    assert loso_entry(card, ["a", "b"]) is card["loso"][0]
    with pytest.raises(KeyError, match="a\\+c"):
        loso_entry(card, ["a", "c"])


def test_a_candidate_at_the_baselines_minors_is_the_first_threshold_that_flags_as_many():
    from agegate.training.card import at_baseline_minors

    def point(threshold, under18, teens, over30):
        return {"threshold": threshold, "under18_flagged": under18, "teen_flagged": teens, "over30_flagged": over30}

    baseline = {"challenge": {"under18_flagged": 0.96, "teen_flagged": 0.92}}
    curve = [point(24, 0.95, 0.93, 0.20), point(25, 0.96, 0.91, 0.25), point(26, 0.97, 0.92, 0.30), point(27, 0.99, 0.97, 0.40)]
    assert at_baseline_minors(baseline, {"threshold_curve": curve})["threshold"] == 26  # both kinds of minors at least as many
    assert at_baseline_minors(baseline, {"threshold_curve": curve[:2]}) is None  # never as many
    assert at_baseline_minors({"challenge": {"under18_flagged": None, "teen_flagged": None}}, {"threshold_curve": curve}) is None


def test_a_held_out_row_says_which_kinds_of_machine_trained_its_runs(tmp_path):
    """The same recipe and seed train another model on another kind of CPU: the card carries each
    run's kinds from its sessions.jsonl, and says where epochs were trained before it was kept."""
    from agegate.training.card import machines_of, render_tables
    from agegate.training.run import RunDir

    def session(cpu, flags, from_epoch=0, gpus=(), tensorflow="2.21.0"):
        return json.dumps({"started": "2026-11-29T18:00:00+0000", "from_epoch": from_epoch, "cpu": cpu, "vector_instructions": flags,
                           "cores": 2, "gpus": list(gpus), "strategy": "the default strategy on the CPU, float32", "tensorflow": tensorflow})

    resumed_elsewhere, same_kind, older, resumed_older = (RunDir(tmp_path / name) for name in ("a", "b", "c", "d"))
    for run in (resumed_elsewhere, same_kind, older, resumed_older):
        run.path.mkdir()
    resumed_elsewhere.sessions.write_text(session("Xeon", ["avx2", "avx512f"]) + "\n" + session("EPYC", ["avx2"], 3, ["H200"]) + "\n")
    same_kind.sessions.write_text(session("Xeon", ["avx2", "avx512f"]) + "\n")
    resumed_older.sessions.write_text(session("Xeon", ["avx2", "avx512f"], 2, tensorflow="2.20.0") + "\n")  # begun before the log
    xeon = "Xeon [avx2 avx512f] x2, TensorFlow 2.21.0"
    assert machines_of([same_kind]) == {"b": [xeon]}
    assert machines_of([resumed_elsewhere, same_kind]) == {"a": ["EPYC [avx2] x2, H200, TensorFlow 2.21.0", xeon], "b": [xeon]}
    assert machines_of([older, resumed_older]) == {"c": ["not recorded"], "d": ["Xeon [avx2 avx512f] x2, TensorFlow 2.20.0", "not recorded"]}

    row = {"run": "b+c", "backbone": "dlibresnet10", "trained_on": ["x"], "held_out": ["y"], "n": 10, "answer_shift": 0.0, "mae": 5.0, "bias": 0.0,
           "challenge": {"under18_flagged": 1.0, "teen_flagged": 1.0, "over30_flagged": 0.1}, "machines": machines_of([same_kind, older])}
    page = render_tables({"challenge_age": 25.0, "bundles": {}, "loso": [row, {**row, "run": "b"}]})
    assert f"- {xeon}: b\n" in page and "- not recorded: c\n" in page  # each run named once, with its own kind


def test_a_held_out_row_measures_a_real_run_on_the_source_it_never_saw(tmp_path):
    """`card --loso RUN`: a run fitted on part 1 alone is measured on All-Age-Faces' test photos;
    its row carries the threshold's whole trade-off (at the challenge age, the headline figures),
    the machine it trained on, figures per gender, and draws as a trade-off plot."""
    from agegate.training.card import loso_row, plot_heldout_tradeoff
    from agegate.training.fit import fit
    from agegate.training.run import FitConfig

    part1, aaf = str(require_utkface()), str(require_all_age_faces())
    fit(FitConfig(data=[part1], backbone="dlibresnet10", image_size=64, limit=16, epochs=1, batch_size=8), tmp_path / "run", verbose=0)
    row = loso_row(tmp_path / "run", [part1, aaf], 25.0, limit=30)
    assert row["held_out"] == ["all-age-faces"] and row["trained_on"] == ["utkface-part1"] and row["n"] > 20
    at_25 = next(c for c in row["threshold_curve"] if c["threshold"] == 25.0)
    assert {k: at_25[k] for k in ("under18_flagged", "teen_flagged", "over30_flagged")} == \
        {k: row["challenge"][k] for k in ("under18_flagged", "teen_flagged", "over30_flagged")}
    over30 = [c["over30_flagged"] for c in row["threshold_curve"]]
    assert over30 == sorted(over30) and over30[0] < over30[-1]  # a higher threshold flags more adults, never fewer
    assert list(row["machines"]) == ["run"] and len(row["machines"]["run"]) == 1 and "not recorded" not in row["machines"]["run"]
    women, men = row["groups"]["gender"]["female"], row["groups"]["gender"]["male"]  # meta.csv's genders, held out too
    assert women["n"] + men["n"] == row["n"] and women["n"] > 0 and men["n"] > 0 and "ethnicity" not in row["groups"]
    plot_heldout_tradeoff({"loso": [row]}, {"tiny": ["run"]}, tmp_path / "tradeoff.png", "held out")
    assert (tmp_path / "tradeoff.png").stat().st_size > 10_000
