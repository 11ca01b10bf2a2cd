"""Significance at equal compute (fgrpo.report.significance, fgrpo.report.equal_compute): the budget
picks each run's latest evaluation at or below it whatever its FLOPs per step, a clear effect is
distinguishable and identical arms are not (with a seeds estimate that does settle a small effect),
and `fgrpo report SWEEP` shows it in the terminal, as JSON and in the HTML, on run folders written
the way the trainer writes them, shaped like the miniature comparison (full-trajectory ~3.1x flash
per step)."""

from __future__ import annotations

import dataclasses
import json
import math
import random
import statistics
from pathlib import Path

import pytest

from fgrpo.cli import main as fgrpo_main
from fgrpo.cli.report import ReportArgs, cmd_report
from fgrpo.fileio import atomic_write_json
from fgrpo.recipe.io import load_recipe_file
from fgrpo.report import build_report
from fgrpo.report.data import RunData, Series
from fgrpo.report.equal_compute import significance_at_budget
from fgrpo.report.significance import (
    DEFAULT_TOLERANCE,
    DISTINGUISHABLE,
    NOT_DISTINGUISHABLE,
    Z_SETTLE,
    at_budget,
    both_needed,
    common_budget,
    needed,
    reached_flops,
    settle_counts,
    variance_components,
)
from fgrpo.run_folder import SWEEP_INDEX, RunFolder
from fgrpo.tracking import JsonlTracker
from tests.conftest import REPO
from tests.helpers import present

PROMPTS, VIDEOS = 6, 2  # held-out prompts, videos per prompt


def eval_record(step: int, flops: float, values: list[float], tag: str = "") -> dict:
    """An evaluation record as the trainer writes it: per-video totals and gold, the run's FLOPs."""
    gold = [round(v, 6) for v in values]
    return {
        "kind": "eval",
        "step": step,
        "tag": tag or f"step-{step}",
        "eval_reward": statistics.fmean(values),
        "eval_rewards": values,
        "eval/miniature_gold": statistics.fmean(gold),
        "eval_component_values": {"miniature_gold": gold},
        "compute/flops": flops,
    }


def scores(rng: random.Random, level: float, seed_shift: float) -> list[float]:
    """Per held-out video: a prompt's difficulty (the same in every run), the run's level, noise."""
    return [(-0.2 + 0.1 * (v // VIDEOS)) + level + seed_shift + rng.gauss(0, 0.01) for v in range(PROMPTS * VIDEOS)]


def run_data(label: str, seed: int, evals: list[dict]) -> RunData:
    recipe = {"prompts.seed": seed, "eval.videos_per_prompt": VIDEOS, "arm": label}
    return RunData(Path(f"{label}-{seed}"), recipe, [], evals, {})


def arm(label: str, seeds: int, per_step: float, steps: int, level, seed_sd: float, rng_seed: int) -> Series:
    """A configuration: `seeds` runs evaluated at step 0 and every step, FLOPs per_step x step;
    level(step) the arm's true score there, plus a per-seed shift of sd seed_sd."""
    out = Series(label)
    for s in range(seeds):
        rng = random.Random(rng_seed * 1000 + s)
        shift = rng.gauss(0, seed_sd)
        evals = [eval_record(t, per_step * t, scores(rng, level(t), shift if t else 0.0)) for t in range(steps + 1)]
        out.runs.append(run_data(label, s, evals))
    return out


# -- matched budget ------------------------------------------------------------------------------


def test_the_budget_picks_the_latest_evaluation_at_or_below_it():
    cheap = [{"step": t, "compute/flops": 1e9 * t, "eval_rewards": [0.1 * t]} for t in range(0, 7, 2)]
    dear = [{"step": t, "compute/flops": 2.5e9 * t, "eval_rewards": [0.2 * t]} for t in range(0, 4)]
    assert reached_flops(cheap, "eval_reward") == 6e9 and reached_flops(dear, "eval_reward") == 7.5e9
    budget = common_budget([reached_flops(cheap, "eval_reward"), reached_flops(dear, "eval_reward"), None])
    assert budget is not None and budget == 6e9  # the largest every run reached; a run without FLOPs does not count
    assert present(at_budget(cheap, budget, "eval_reward"), "evaluation")["step"] == 6
    assert present(at_budget(dear, budget, "eval_reward"), "evaluation")["step"] == 2  # 5e9: step 3 (7.5e9) is over
    assert present(at_budget(dear, 7.2e9, "eval_reward"), "evaluation")["step"] == 3  # within 5 % above the budget
    assert present(at_budget(dear, 7.2e9, "eval_reward", tolerance=0.0), "evaluation")["step"] == 2
    assert at_budget(dear[1:], 1e9, "eval_reward") is None  # every evaluation above it
    # evaluations without FLOPs or without the metric never count; on a tie the later record wins
    mixed = [{"step": 9, "eval_rewards": [1.0]}, {"step": 4, "compute/flops": 4e9}, *cheap[:2]]
    assert present(at_budget(mixed, 1e10, "eval_reward"), "evaluation")["step"] == 2
    tie = [{"step": 2, "tag": "step-2", "compute/flops": 2e9, "eval_rewards": [0.0]}, {**cheap[1], "tag": "final"}]
    assert present(at_budget(tie, 3e9, "eval_reward"), "evaluation")["tag"] == "final"
    with pytest.raises(ValueError, match="tolerance"):
        at_budget(cheap, budget, "eval_reward", tolerance=-0.1)


def test_configurations_are_read_at_the_common_budget_not_their_last_evaluation():
    # flash: 1 GFLOP a step, 9 steps; full: 3 GFLOP a step, 5 steps (15 GFLOP): the budget is 9 GFLOP,
    # where full has done 3 steps. Both improve by 0.01 a GFLOP spent: equal at equal compute.
    flash = arm("flash", 3, 1e9, 9, lambda t: 0.01 * t, 0.0, 1)
    full = arm("full", 3, 3e9, 5, lambda t: 0.03 * t, 0.0, 2)
    result = present(significance_at_budget([flash, full], "miniature_gold", resamples=500), "significance")
    assert result["budget_flops"] == 9e9 and result["budget_from"] == "the largest budget every run reached"
    base, other = result["rows"]
    assert (base["label"], base["steps"], base["flops"]) == ("flash", [9], 9e9)
    assert (other["label"], other["steps"], other["flops"]) == ("full", [3], 9e9)
    assert abs(other["diff"]) < 0.01 and other["verdict"] == NOT_DISTINGUISHABLE
    at_last = full.runs[0].evals[-1]["eval_reward"] - flash.runs[0].evals[-1]["eval_reward"]
    assert at_last > 0.05  # what the latest evaluations would have claimed
    explicit = present(
        significance_at_budget([flash, full], "miniature_gold", budget_flops=6e9, resamples=200), "significance"
    )
    assert [r["steps"] for r in explicit["rows"]] == [[6], [2]] and explicit["budget_from"] == "--budget-flops"
    for r in full.runs:  # no "before" evaluation: at 2 GFLOP full has none at or below the budget
        r.evals = r.evals[1:]
    low = present(
        significance_at_budget([flash, full], "miniature_gold", budget_flops=2e9, resamples=200), "significance"
    )["rows"][1]
    assert (low["seeds"], low["above_budget"], low["diff"]) == (0, ["full-0", "full-1", "full-2"], None)
    assert low["note"] == "no evaluation at or below the budget"
    for r in flash.runs:
        r.evals = r.evals[1:]
    with pytest.raises(ValueError, match=r"--budget-flops 5e\+08: no run .*the earliest is at 1e\+09"):
        significance_at_budget([flash, full], "miniature_gold", budget_flops=5e8)


# -- verdicts and the estimate --------------------------------------------------------------------


def test_a_clear_effect_is_distinguishable():
    base = arm("flash", 3, 1e9, 2, lambda t: 0.0, 0.02, 3)
    better = arm("fast", 3, 1e9, 2, lambda t: 0.1 * t, 0.02, 4)  # +0.2 at the budget: 10 seed sds
    row = present(significance_at_budget([base, better], resamples=1000), "significance")["rows"][1]
    assert row["verdict"] == DISTINGUISHABLE and 0 < row["lo"] < row["diff"] < row["hi"]
    assert row["diff"] == pytest.approx(0.2, abs=0.06)
    assert (row["pairs"], row["prompts"]) == (3, PROMPTS)
    assert row["seeds_needed"] is None and row["prompts_needed"] is None  # nothing to settle


def test_identical_arms_are_not_distinguishable_and_get_an_estimate():
    base = arm("flash", 3, 1e9, 2, lambda t: 0.0, 0.02, 5)
    same = arm("copy", 3, 1e9, 2, lambda t: 0.0, 0.02, 6)
    row = present(significance_at_budget([base, same], resamples=1000), "significance")["rows"][1]
    assert row["verdict"] == NOT_DISTINGUISHABLE and row["lo"] < 0 < row["hi"]
    assert row["seeds_needed"] is not None and row["seeds_needed"] > 3


def test_the_seeds_estimate_settles_a_small_effect():
    """A true effect of 0.02 under seed noise of sd 0.02: 3 seeds do not show it; drawing as many
    seeds as the estimate says, from the same process, does."""
    effect = lambda t: 0.01 * t  # noqa: E731
    few = present(
        significance_at_budget(
            [arm("flash", 3, 1e9, 2, lambda t: 0.0, 0.02, 7), arm("arm", 3, 1e9, 2, effect, 0.02, 8)], resamples=1000
        ),
        "significance",
    )["rows"][1]
    assert few["verdict"] == NOT_DISTINGUISHABLE
    n = few["seeds_needed"]
    assert n is not None and 3 < n < 200
    many = present(
        significance_at_budget(
            [arm("flash", n, 1e9, 2, lambda t: 0.0, 0.02, 7), arm("arm", n, 1e9, 2, effect, 0.02, 8)], resamples=1000
        ),
        "significance",
    )["rows"][1]
    assert many["verdict"] == DISTINGUISHABLE and many["lo"] > 0


def test_the_estimate_follows_its_formula():
    # seeds move the difference, prompts do not: seed variance = variance of the row means, no other
    rows = [0.05, -0.01, 0.02, 0.0]
    d = [[r] * 5 for r in rows]
    m, v_s = statistics.fmean(rows), statistics.variance(rows)
    assert variance_components(d) == pytest.approx((v_s, 0.0, 0.0))
    assert settle_counts(d)["seeds"] == max(5, math.ceil(Z_SETTLE**2 * v_s / m**2))
    assert settle_counts(d)["prompts"] is None  # the noise of 4 seeds alone hides it
    # the components of d = m + a_i + b_j + e_ij are recovered (a, b, e orthogonal by construction)
    a, b = [0.03, -0.03, 0.01, -0.01], [0.02, -0.02, 0.0, 0.04, -0.04]
    e = [[0.01 * (1 if (i + j) % 2 else -1) * (1 if j < 4 else 0) for j in range(5)] for i in range(4)]
    e = [[x - statistics.fmean(row) for x in row] for row in e]  # rows sum to 0
    e = [[x - statistics.fmean(e[k][j] for k in range(4)) for j, x in enumerate(row)] for row in e]  # columns too
    d = [[0.01 + a[i] + b[j] + e[i][j] for j in range(5)] for i in range(4)]
    ms_e = sum(x * x for row in e for x in row) / (3 * 4)
    v_a = max(0.0, (5 * statistics.variance(a) - ms_e) / 5)
    v_b = max(0.0, (4 * statistics.variance(b) - ms_e) / 4)
    assert variance_components(d) == pytest.approx((v_a, v_b, ms_e))
    # seeds: n = (s_a^2 + s_e^2/P) / (m^2/z^2 - s_b^2/P)
    assert needed(m, 0.5, 0.0, 4) == max(5, math.ceil(0.5 * Z_SETTLE**2 / m**2))
    assert needed(m, 0.5, 0.5 * m**2 / Z_SETTLE**2, 4) == max(5, math.ceil(0.5 / (0.5 * m**2 / Z_SETTLE**2)))
    assert needed(m, 0.5, 1.01 * m**2 / Z_SETTLE**2, 4) is None  # the fixed part alone hides it
    assert needed(0.0, 0.5, 0.0, 4) is None  # no difference to find
    assert needed(2e-17, 0.5, 0.0, 4) is None  # equal scores, summed in another order: still none
    assert settle_counts([[0.1, 0.3, 0.2]])["seeds"] is None  # one seed: seed noise unmeasured
    # neither alone: both grow by k = z^2 Var(m) / m^2
    k = Z_SETTLE**2 * 0.001 / m**2
    assert both_needed(m, 0.001, 4, 5) == (math.ceil(4 * k), math.ceil(5 * k))
    assert both_needed(0.0, 0.001, 4, 5) is None
    assert both_needed(-3e-17, 0.001, 4, 5) is None


# -- the report, end to end, on run folders shaped like the miniature comparison -----------------------

GFLOP = {"flash": 97.7e9, "full-trajectory": 303.0e9, "fast": 97.7e9}  # per step, measured (docs/miniature.md)
STEPS = {"flash": 30, "full-trajectory": 10, "fast": 30}  # the budget is flash's 30 steps
GAIN = {"flash": 0.0, "full-trajectory": 0.08, "fast": 0.0}  # held-out gold gained over the budget
SEEDS = 4


def write_arm(runs: Path, mode: str) -> list[Path]:
    """One arm's seeds as run folders: recipe (recipes/miniature.py with the arm's overrides),
    metrics.jsonl through the trainer's JSONL writer (train records every step, evaluations
    before training and at the end, each with the cumulative compute/flops), status."""
    base = load_recipe_file(REPO / "recipes" / "miniature.py")
    out = []
    for seed in range(SEEDS):
        recipe = dataclasses.replace(
            base,
            algorithm=dataclasses.replace(base.algorithm, mode=mode),
            optim=dataclasses.replace(base.optim, max_steps=STEPS[mode]),
            eval=dataclasses.replace(base.eval, interval=STEPS[mode], videos_per_prompt=VIDEOS),
            prompts=dataclasses.replace(base.prompts, seed=seed, heldout=PROMPTS),
        )
        folder = RunFolder(runs / f"miniature__mode={mode}_seed={seed}")
        folder.write_recipe(recipe)
        log = JsonlTracker(folder.metrics_file)
        rng = random.Random(f"{mode}-{seed}")
        before = scores(random.Random(99), 0.5, 0.0)  # the same model and noise in every run
        log.log(eval_record(0, 0, before, "before"))
        for t in range(1, STEPS[mode] + 1):
            log.log({"kind": "train", "step": t, "reward_mean": 0.5, "compute/flops": GFLOP[mode] * t})
        shift = rng.gauss(0, 0.01)
        log.log(eval_record(STEPS[mode], GFLOP[mode] * STEPS[mode], scores(rng, 0.5 + GAIN[mode], shift), "final"))
        folder.write_status("completed")
        out.append(folder.path)
    return out


@pytest.fixture
def sweep(tmp_path) -> Path:
    runs = tmp_path / "runs"
    paths = [p for mode in GFLOP for p in write_arm(runs, mode)]
    folder = tmp_path / "sweeps" / "comparison"
    folder.mkdir(parents=True)
    atomic_write_json(folder / SWEEP_INDEX, {"argv": [], "runs": [str(p) for p in paths]})
    return folder


def test_report_of_a_sweep_compares_at_equal_compute(sweep, capsys):
    assert cmd_report([str(sweep), "--metric", "miniature_gold", "--json"]) == 0
    found = json.loads(capsys.readouterr().out)
    assert found["report"] == str(sweep / "report.html")
    sig = found["significance"]
    assert sig["metric"] == "miniature_gold" and sig["budget_flops"] == pytest.approx(97.7e9 * 30)
    rows = {r["label"].split(",")[0]: r for r in sig["rows"]}
    flash, full, fast = (rows[f"algorithm.mode={m}"] for m in ("flash", "full-trajectory", "fast"))
    assert flash["baseline"] and sig["rows"][0]["label"] == flash["label"]  # the baseline first
    # full-trajectory's 10 steps (3.03 TFLOP) are 3.4 % over flash's 30 (2.93): within the tolerance
    assert full["steps"] == [10] and full["flops"] == pytest.approx(3.03e12) and full["seeds"] == SEEDS
    assert full["verdict"] == DISTINGUISHABLE and full["lo"] > 0 and full["diff"] == pytest.approx(0.08, abs=0.02)
    assert fast["verdict"] == NOT_DISTINGUISHABLE and fast["lo"] < 0 < fast["hi"]
    assert (fast["seeds_needed"] or 0) > SEEDS or min(fast["both_needed"]) > SEEDS  # an estimate either way
    assert (fast["pairs"], fast["prompts"]) == (SEEDS, PROMPTS)
    html = (sweep / "report.html").read_text()
    assert "<h2>Significance at equal compute: miniature_gold</h2>" in html
    assert "step 10, 3.03 TFLOP" in html and DISTINGUISHABLE in html and NOT_DISTINGUISHABLE in html

    # the terminal: the rich table, after the paired comparison
    assert cmd_report([str(sweep), "--metric", "miniature_gold"]) == 0
    out = capsys.readouterr().out
    assert "significance at equal compute: miniature_gold at 2.93 TFLOP" in out
    line = next(x for x in out.splitlines() if "mode=full-trajectory" in x and "TFLOP" in x and "step 10" in x)
    assert DISTINGUISHABLE in line and f"{SEEDS} × {PROMPTS}" in line

    # without the tolerance, full-trajectory has reached only its "before" evaluation at this budget
    strict = present(
        build_report([sweep], "miniature_gold", budget_flops=None, tolerance=0.0).significance, "significance"
    )
    full = next(r for r in strict["rows"] if "full-trajectory" in r["label"])
    assert full["steps"] == [0] and full["flops"] == 0 and full["verdict"] == NOT_DISTINGUISHABLE


def test_budget_flops_is_checked_before_anything_is_written(sweep, capsys):
    assert ReportArgs.budget_tolerance == DEFAULT_TOLERANCE  # --help's default is the statistics'
    assert fgrpo_main(["report", str(sweep), "--budget-flops", "-1"]) == 2
    assert "--budget-flops must be a positive" in capsys.readouterr().err
    assert fgrpo_main(["report", str(sweep), "--budget-flops", "1e12"]) == 0  # every run's "before" evaluation
    assert fgrpo_main(["report", str(sweep), "--budget-tolerance", "-0.5"]) == 2
    assert "--budget-tolerance must be >= 0" in capsys.readouterr().err
    (sweep / "report.html").unlink()
    one = sorted(p for p in (sweep.parent.parent / "runs").iterdir() if "mode=flash" in p.name)
    out = sweep / "one.html"
    assert fgrpo_main(["report", *map(str, one), "--out", str(out), "--budget-flops", "1e12"]) == 2
    assert "one configuration" in capsys.readouterr().err and not out.exists()


def test_records_without_flops_give_no_section(tmp_path):
    bare = [dict(e) for e in arm("a", 2, 1e9, 1, lambda t: 0.0, 0.0, 9).runs[0].evals]
    for e in bare:
        del e["compute/flops"]
    a = Series("a", [run_data("a", 0, bare)])
    b = Series("b", [run_data("b", 0, [dict(e) for e in bare])])
    assert significance_at_budget([a, b]) is None
    with pytest.raises(ValueError, match="no evaluation record .* carries compute/flops"):
        significance_at_budget([a, b], budget_flops=1e9)
