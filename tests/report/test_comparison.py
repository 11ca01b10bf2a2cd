"""Paired comparison of configurations (fgrpo.report.comparison): the two-way bootstrap recovers a
known shift, pairing narrows the interval, the baseline is chosen as documented, and the report
and `fgrpo report --metric` show the right numbers for 2 configurations x 3 seeds."""

from __future__ import annotations

import dataclasses
import random
import re
import statistics
from pathlib import Path

import pytest

from fgrpo.cli.report import cmd_report
from fgrpo.recipe.io import load_recipe_file
from fgrpo.report import build
from fgrpo.report.comparison import comparison_rows, paired_bootstrap, pick_baseline, unpaired_bootstrap
from fgrpo.report.data import RunData, Series
from fgrpo.run_folder import RunFolder
from fgrpo.tracking import JsonlTracker
from tests.conftest import REPO


def grid(seeds: int, prompts: int, f) -> list[list[float]]:
    return [[f(i, j) for j in range(prompts)] for i in range(seeds)]


def test_a_constant_shift_is_recovered():
    rng = random.Random(1)
    base = grid(3, 8, lambda i, j: rng.gauss(0, 1))
    arm = [[x + 0.5 + rng.gauss(0, 0.05) for x in row] for row in base]
    diff, lo, hi = paired_bootstrap(base, arm, resamples=2000)
    assert diff == pytest.approx(0.5, abs=0.05)
    assert 0 < lo < 0.5 < hi and lo < diff < hi
    assert paired_bootstrap(base, arm, resamples=2000) == (diff, lo, hi)  # seeded
    assert paired_bootstrap(base, arm, resamples=2000, seed=1) != (diff, lo, hi)


def test_identical_arms_contain_zero():
    rng = random.Random(2)
    base = grid(3, 8, lambda i, j: rng.gauss(0, 1))
    assert paired_bootstrap(base, [row[:] for row in base], resamples=500) == (0.0, 0.0, 0.0)
    arm = [[x + rng.gauss(0, 0.1) for x in row] for row in base]  # the same, up to noise
    diff, lo, hi = paired_bootstrap(base, arm, resamples=2000)
    assert lo < 0 < hi and abs(diff) < 0.05


def test_pairing_narrows_the_interval_when_prompts_differ_a_lot():
    rng = random.Random(3)
    prompt = [rng.gauss(0, 1) for _ in range(8)]  # large per-prompt effects, shared by both arms
    base = grid(3, 8, lambda i, j: prompt[j] + rng.gauss(0, 0.05))
    arm = [[x + 0.1 + rng.gauss(0, 0.05) for x in row] for row in base]
    _, plo, phi = paired_bootstrap(base, arm, resamples=2000)
    _, ulo, uhi = unpaired_bootstrap(base, arm, resamples=2000)
    assert (phi - plo) < (uhi - ulo) / 5
    assert plo > 0 and ulo < 0 < uhi  # paired: the shift is found; unpaired: lost in the prompts


def test_shapes_must_match():
    with pytest.raises(ValueError, match="3 x 2"):
        paired_bootstrap(grid(3, 2, lambda i, j: 0.0), grid(3, 3, lambda i, j: 0.0))
    with pytest.raises(ValueError, match="at least one"):
        paired_bootstrap([], [])


def test_baseline_selection():
    s = [Series(x) for x in ("algorithm.mode=fast", "algorithm.mode=flash", "algorithm.mode=full-trajectory")]
    assert pick_baseline(s) == 1  # mode=flash
    assert pick_baseline(s, "mode=full") == 2 and pick_baseline(s, "algorithm.mode=fast") == 0
    with pytest.raises(ValueError, match="matches 3 configurations"):
        pick_baseline(s, "algorithm")
    with pytest.raises(ValueError, match="matches no configurations"):
        pick_baseline(s, "mode=slow")
    two_flash = [Series("algorithm.mode=flash, optim.lr=1"), Series("algorithm.mode=flash, optim.lr=2")]
    assert pick_baseline(two_flash) == 0 and pick_baseline([Series("optim.lr=2"), Series("optim.lr=1")]) == 0


def run_data(seed: int, values: list[float] | None, n: int = 1, flops: float = 1e9) -> RunData:
    ev = {"kind": "eval", "step": 2, "eval_reward": statistics.fmean(values) if values else 0.25}
    if values is not None:
        ev |= {
            "eval_rewards": values,
            "eval_component_values": {"gold": [2 * v for v in values]},
            "eval/gold": 2 * statistics.fmean(values),
        }
    return RunData(
        Path(f"run{seed}"),
        {"prompts.seed": seed, "eval.videos_per_prompt": n},
        [{"kind": "train", "step": 2, "compute/flops": flops}],
        [{"kind": "eval", "step": 0}, ev],
        {},
    )


def test_runs_pair_by_seed_and_series_without_videos_get_no_interval():
    base = Series("mode=flash", [run_data(s, [0.1 * s, 0.2, 0.3, 0.4]) for s in (1, 2, 3)])
    arm = Series("mode=fast", [run_data(s, [0.1 * s + 0.2, 0.5, 0.6, 0.7], flops=3e9) for s in (0, 1, 2)])
    bare = Series("mode=full", [run_data(0, None)])
    for metric, scale in (("eval_reward", 1), ("gold", 2), ("eval/gold", 2)):
        rows = comparison_rows([arm, bare, base], metric, resamples=200)
        assert [r["label"] for r in rows] == ["mode=flash", "mode=fast", "mode=full"]  # the baseline first
        fast, full = rows[1], rows[2]
        assert fast["pairs"] == 2  # seeds 1 and 2
        assert fast["diff"] == pytest.approx(0.275 * scale)  # cells: 0.2, 0.3, 0.3, 0.3 (times scale)
        assert 0.2 * scale - 1e-9 <= fast["lo"] < fast["diff"] < fast["hi"] <= 0.3 * scale + 1e-9
        assert fast["flops"] == 3e9 and fast["seeds"] == 3
        assert fast["mean"] == pytest.approx(scale * statistics.fmean((0.1 * s + 2.0) / 4 for s in (0, 1, 2)))
        assert fast["std"] == pytest.approx(scale * statistics.stdev([(0.1 * s + 2.0) / 4 for s in (0, 1, 2)]))
        assert full["diff"] is None and full["note"] == "no per-video values"
        assert full["seeds"] == (1 if metric == "eval_reward" else 0)  # its recorded mean, no gold
        assert full["std"] is None
    with pytest.raises(ValueError, match="recorded: eval_reward, gold"):
        comparison_rows([arm, base], "silver")


def test_videos_per_prompt_groups_cells():
    base = Series("a", [run_data(s, [0.0, 0.0, 0.0, 0.0], n=2) for s in (0, 1)])
    arm = Series("b", [run_data(s, [1.0, -1.0, 0.5, 0.5], n=2) for s in (0, 1)])
    row = comparison_rows([base, arm], resamples=300)[1]
    # cells (prompt means): [0, 0.5] per seed: the bootstrap sees 2 prompts, not 4 videos
    assert (row["diff"], row["lo"], row["hi"]) == pytest.approx((0.25, 0.0, 0.5))


MODES, SEEDS, PROMPTS, N, STEPS = ("flash", "fast"), (0, 1, 2), 4, 2, 3


def video_scores(mode: str, seed: int) -> list[float]:
    """Held-out totals: a large per-prompt effect, a seed effect, and fast = flash + ~0.05."""
    prompt = (0.1, 0.5, -0.3, 0.9)
    out = []
    for v in range(PROMPTS * N):
        x = prompt[v // N] + 0.02 * seed + 0.01 * (v % N)
        out.append(round(x + (0.05 + 0.01 * ((seed * 7 + v * 3) % 5 - 2) if mode == "fast" else 0.0), 6))
    return out


def make_runs(root: Path) -> Path:
    """2 modes x 3 seeds, written by fgrpo's own writers: recipe, metrics.jsonl, status."""
    base = load_recipe_file(REPO / "recipes" / "tiny.py")
    base = dataclasses.replace(base, eval=dataclasses.replace(base.eval, videos_per_prompt=N))
    for mode in MODES:
        for seed in SEEDS:
            recipe = dataclasses.replace(
                base,
                algorithm=dataclasses.replace(base.algorithm, mode=mode),
                prompts=dataclasses.replace(base.prompts, seed=seed),
            )
            folder = RunFolder(root / f"tiny__mode={mode}_seed={seed}")
            folder.write_recipe(recipe)
            log = JsonlTracker(folder.metrics_file)
            per_step = 2e9 if mode == "fast" else 1e9
            for s in range(1, STEPS + 1):
                log.log({"kind": "train", "step": s, "reward_mean": 0.1 * s, "compute/flops": per_step * s})
            total = video_scores(mode, seed)
            gold = [round(1 - x, 6) for x in total]
            log.log(
                {
                    "kind": "eval",
                    "step": STEPS,
                    "tag": "final",
                    "eval_reward": statistics.fmean(total),
                    "eval_rewards": total,
                    "eval/miniature_gold": statistics.fmean(gold),
                    "eval_component_values": {"miniature_gold": gold, "miniature_faithfulness": total},
                }
            )
            folder.write_status("completed")
    return root


def expected(metric) -> dict:
    vals = {m: {s: [metric(x) for x in video_scores(m, s)] for s in SEEDS} for m in MODES}
    per_run = {m: [statistics.fmean(vals[m][s]) for s in SEEDS] for m in MODES}
    diff = statistics.fmean(a - b for s in SEEDS for a, b in zip(vals["fast"][s], vals["flash"][s]))
    return {
        "mean": {m: statistics.fmean(v) for m, v in per_run.items()},
        "std": {m: statistics.stdev(v) for m, v in per_run.items()},
        "diff": diff,
    }


def test_report_shows_the_paired_comparison(tmp_path):
    runs = make_runs(tmp_path / "runs")
    html, _, _, rows = build([runs])
    assert "<h2>Paired comparison (latest evaluation): eval_reward</h2>" in html
    want = expected(lambda x: x)
    cell = '<td class="">'
    for mode, diff, pairs, flops in (("flash", r"\(baseline\)", "-", "3.00"), ("fast", "([^<]*)", "3", "6.00")):
        found = re.search(
            rf'<td class="l">algorithm.mode={mode}</td>{cell}3</td>{cell}([-+.\d]+) ± ([.\d]+)</td>'
            rf"{cell}{diff}</td>{cell}{pairs}</td>{cell}{flops} GFLOP</td>",
            html,
        )
        assert found, html[html.find("Paired comparison") :][:3000]
        assert float(found.group(1)) == pytest.approx(want["mean"][mode], abs=1e-4)
        assert float(found.group(2)) == pytest.approx(want["std"][mode], abs=1e-4)
    interval = re.fullmatch(r"([-+.\d]+) \[([-+.\d]+), ([-+.\d]+)\]", found.group(3))
    assert interval, found.group(3)
    diff, lo, hi = map(float, interval.groups())
    assert diff == pytest.approx(want["diff"], abs=1e-4) and 0 < lo < diff < hi < 0.1
    assert rows[1]["diff"] == pytest.approx(want["diff"])


def test_one_configuration_has_no_comparison(tmp_path):
    runs = make_runs(tmp_path / "runs")
    html, _, _, rows = build([runs / f"tiny__mode=flash_seed={s}" for s in SEEDS])
    assert rows == [] and "Paired comparison" not in html


def test_cli_prints_the_comparison_of_a_component(tmp_path, capsys):
    runs = make_runs(tmp_path / "runs")
    assert cmd_report([str(runs), "--metric", "miniature_gold"]) == 0
    out = capsys.readouterr().out
    lines = out.split("\n\n")[1].splitlines()
    assert lines[0] == "paired comparison (latest evaluation): miniature_gold"
    assert lines[1].split()[:3] == ["configuration", "seeds", "mean"]
    want = expected(lambda x: round(1 - x, 6))
    flash, fast = lines[2].split(), lines[3].split()
    assert flash[:2] == ["algorithm.mode=flash", "3"] and flash[3] == "±" and flash[5] == "(baseline)"
    assert float(flash[2]) == pytest.approx(want["mean"]["flash"], abs=1e-4)
    assert fast[0] == "algorithm.mode=fast" and float(fast[5]) == pytest.approx(want["diff"], abs=1e-4)
    assert want["diff"] < 0
    assert fast[-3:] == ["3", "6.00", "GFLOP"]
    assert out.splitlines()[-1] == f"report: {runs / 'report.html'}"
    assert cmd_report([str(runs), "--metric", "eval/miniature_gold", "--baseline", "mode=fast"]) == 0
    lines = capsys.readouterr().out.split("\n\n")[1].splitlines()
    assert lines[2].split()[0] == "algorithm.mode=fast" and float(lines[3].split()[5]) == pytest.approx(
        -want["diff"], abs=1e-4
    )
    assert cmd_report([str(runs), "--quiet", "--metric", "miniature_gold"]) == 0
    assert "paired comparison" not in capsys.readouterr().out
    with pytest.raises(ValueError, match="miniature_faithfulness, miniature_gold"):
        cmd_report([str(runs), "--metric", "miniature_silver"])
