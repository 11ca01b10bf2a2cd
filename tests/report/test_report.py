"""`fgrpo report`: one self-contained HTML file, rendered in headless Chromium with no network:
the charts drew, the sample videos decoded, the screenshot is not blank. A trained run's report
(refreshed by the trainer, logging.report) and a sweep's (3 modes x 2 seeds: leaderboard, seed
means with a band)."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest
import torch

from fgrpo.recipe.io import load_recipe_file
from fgrpo.run_folder import RunFolder
from fgrpo.tracking import JsonlTracker
from fgrpo.trainer.samples import write_samples
from tests.conftest import REPO, run_fgrpo
from tests.helpers.browser import assert_not_blank, assert_rendered, rendered_dom, screenshot
from tests.helpers.runs import tiny_launch_args


def figures(html: str) -> list[dict]:
    found = re.search(r"const FIGURES = (\[.*?\]);\n", html, re.S)
    assert found, "no FIGURES in the report"
    return json.loads(found.group(1).replace("<\\/", "</"))


def test_report_of_a_trained_run(tiny_model_dir, tmp_path, chromium):
    runs = tmp_path / "runs"
    res = run_fgrpo(
        *tiny_launch_args(tiny_model_dir, runs, 2, "--logging.report", name="reported"), cwd=tmp_path, timeout=500
    )
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    run = runs / "reported"
    page = RunFolder(run).report_file
    assert f"report: {page}" in res.stdout  # the end of the run says where it is
    status = run_fgrpo("status", str(run), cwd=tmp_path)
    assert f"report: {page}" in status.stdout
    html = page.read_text()
    ours = re.sub(r"<script>/\* plotly\.js.*?</script>", "", html, count=1, flags=re.S)  # the library's own links aside
    assert len(ours) < len(html) - 4_000_000 and not re.search(r"""(src|href)=["']?(https?:)?//""", ours)  # offline
    names = [f["id"] for f in figures(html)]
    assert {
        "train-reward",
        "heldout-reward",
        "grad-norm",
        "clip-frac",
        "ratio-dev",
        "adv-std",
        "timesteps",
        "phases",
        "memory",
    } <= set(names)
    assert "a orange lantern" in html or "prompt-00" in html or "<video" in html
    dom = rendered_dom(chromium, page, tmp_path)
    attrs = assert_rendered(dom)
    assert int(attrs["data-videos-loaded"]) == 2 + 2 * 2  # before and final grids, each prompt's pair
    assert "reward before -&gt; now" in dom and "eval_reward" in dom  # captions; the legend of a chart
    assert_not_blank(screenshot(chromium, page, tmp_path / "report.png"))


MODES = ("flash", "full-trajectory", "fast")
FINAL = {
    ("flash", 0): -0.20,
    ("flash", 1): -0.24,
    ("full-trajectory", 0): -0.26,
    ("full-trajectory", 1): -0.30,
    ("fast", 0): -0.25,
    ("fast", 1): -0.27,
}
STEPS, PROMPTS = 4, ["a red kite", "a blue car at night"]


def make_sweep(root):
    """Six run folders as a sweep leaves them, written by fgrpo's own writers (recipe, metrics, samples)."""
    base = load_recipe_file(REPO / "recipes" / "tiny.py")
    runs = []
    for (mode, seed), final in FINAL.items():
        recipe = dataclasses.replace(
            base,
            algorithm=dataclasses.replace(base.algorithm, mode=mode),
            prompts=dataclasses.replace(base.prompts, seed=seed),
        )
        folder = RunFolder(root / f"tiny__mode={mode}_seed={seed}")
        folder.write_recipe(recipe)
        log = JsonlTracker(folder.metrics_file)
        per_step = 4e9 if mode == "full-trajectory" else 1e9
        before = -0.33
        log.log({"kind": "eval", "step": 0, "tag": "before", "eval_reward": before, "time_eval": 1.0})
        for s in range(1, STEPS + 1):
            log.log(
                {
                    "kind": "train",
                    "step": s,
                    "reward_mean": before + (final - before) * s / STEPS + 0.01 * seed,
                    "grad_norm": 0.01 * s,
                    "clip_frac": 0.0,
                    "ratio_dev": 1e-4,
                    "adv_std": 0.5,
                    "timestep_indices": [1 + (s + seed) % 4, 2],
                    "time_rollout": 0.5,
                    "time_reward": 0.1,
                    "time_train": 2.0 if mode == "full-trajectory" else 0.3,
                    "peak_memory_per_rank": [6e8],
                    "memory_kind": "cpu_max_rss",
                    "compute/flops": per_step * s,
                    "compute/wall_s": 3.0 * s,
                }
            )
        log.log(
            {
                "kind": "eval",
                "step": STEPS,
                "tag": "final",
                "eval_reward": final,
                "time_eval": 1.0,
                "compute/flops": per_step * STEPS,
                "compute/wall_s": 3.0 * STEPS,
            }
        )
        gen = torch.Generator().manual_seed(seed)
        for tag, reward in (("before", before), ("final", final)):
            thumbs = torch.randint(0, 256, (2, 5, 3, 16, 16), generator=gen, dtype=torch.uint8)
            write_samples(folder.samples, tag, thumbs, PROMPTS, torch.tensor([reward, reward]), 1)
        folder.write_status("completed")
        runs.append(str(folder.path))
    sweep = root / "tiny-sweep-test"
    sweep.mkdir()
    (sweep / "sweep.json").write_text(json.dumps({"argv": [], "runs": runs}))
    return sweep


def test_sweep_report_ranks_runs_and_averages_seeds(tmp_path, chromium):
    sweep = make_sweep(tmp_path / "runs")
    res = run_fgrpo("report", str(sweep), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    page = sweep / "report.html"
    assert res.stdout.splitlines()[-1] == f"report: {page}"
    board = [line.split() for line in res.stdout.split("\n\n")[0].splitlines()]  # then the paired comparison
    assert "paired comparison (latest evaluation): eval_reward" in res.stdout
    assert [(int(r[0]), float(r[1]), r[2]) for r in board] == [
        (1, -0.20, "tiny__mode=flash_seed=0"),
        (2, -0.24, "tiny__mode=flash_seed=1"),
        (3, -0.25, "tiny__mode=fast_seed=0"),
        (4, -0.26, "tiny__mode=full-trajectory_seed=0"),
        (5, -0.27, "tiny__mode=fast_seed=1"),
        (6, -0.30, "tiny__mode=full-trajectory_seed=1"),
    ]
    html = page.read_text()
    for label, mean in (
        ("algorithm.mode=flash", -0.22),
        ("algorithm.mode=fast", -0.26),
        ("algorithm.mode=full-trajectory", -0.28),
    ):
        row = rf"<td class=\"l\">{re.escape(label)}</td><td class=\"\">2</td><td class=\"\">{mean:+.4f}</td>"
        assert re.search(row, html), label
    figs = {f["id"]: f for f in figures(html)}
    for axis in ("step", "compute", "wall-time"):  # held-out reward against step, FLOPs and wall time
        traces = figs[f"eval_reward-{axis}"]["data"]
        assert sum(t.get("fill") == "tonexty" for t in traces) == 3  # one band per mode
        means = [t for t in traces if t.get("name", "").endswith("(mean of 2 seeds)")]
        assert len(means) == 3
    flash = next(t for t in figs["eval_reward-compute"]["data"] if t.get("name", "").startswith("algorithm.mode=flash"))
    assert flash["x"] == [4e9] and flash["y"] == pytest.approx([-0.22])  # the final evaluation, at its FLOPs
    full = next(
        t for t in figs["reward_mean-compute"]["data"] if t.get("name", "").startswith("algorithm.mode=full-trajectory")
    )
    assert full["x"] == [4e9 * s for s in range(1, STEPS + 1)]
    dom = rendered_dom(chromium, page, tmp_path)
    attrs = assert_rendered(dom)
    assert int(attrs["data-videos-loaded"]) == 6 * 2  # each run's before and final grids
    assert_not_blank(screenshot(chromium, page, tmp_path / "sweep.png"))


def test_several_runs_need_an_output_and_bad_targets_are_named(tmp_path):
    sweep = make_sweep(tmp_path / "runs")
    runs = json.loads((sweep / "sweep.json").read_text())["runs"][:2]
    res = run_fgrpo("report", *runs, cwd=tmp_path)
    assert res.returncode == 2 and "--out" in res.stderr
    res = run_fgrpo("report", *runs, "--out", str(tmp_path / "two.html"), cwd=tmp_path)
    assert res.returncode == 0 and (tmp_path / "two.html").is_file(), res.stderr
    res = run_fgrpo("report", str(tmp_path / "nothing"), cwd=tmp_path)
    assert res.returncode == 2 and "nothing is not a run folder" in res.stderr


def test_report_with_non_finite_metrics(tmp_path):
    """A diverged step's NaN/inf (json writes them as NaN and Infinity) must not stop the report of
    the run or of a folder of runs: they become gaps in the curves."""
    base = load_recipe_file(REPO / "recipes" / "tiny.py")
    for seed in (0, 1):
        folder = RunFolder(tmp_path / "runs" / f"tiny__seed={seed}")
        folder.write_recipe(dataclasses.replace(base, prompts=dataclasses.replace(base.prompts, seed=seed)))
        records = [{"kind": "eval", "step": 0, "tag": "before", "eval_reward": -0.3, "eval_rewards": [-0.3, -0.3]}]
        records += [
            {
                "kind": "train",
                "step": s,
                "reward_mean": 0.1 * s,
                "loss": float("inf") if s == 2 else 0.1,
                "grad_norm": float("nan") if s == 2 else 1.0,
                "compute/flops": 1e9 * s,
            }
            for s in range(1, 4)
        ]
        records.append(
            {
                "kind": "eval",
                "step": 3,
                "tag": "final",
                "eval_reward": float("nan"),
                "eval_rewards": [float("nan"), -0.2],
            }
        )
        # As a trainer of an older version (or a hand edit) leaves them: NaN and Infinity literals.
        folder.metrics_file.write_text("".join(json.dumps(r) + "\n" for r in records))
    one = run_fgrpo("report", str(tmp_path / "runs" / "tiny__seed=0"))
    assert one.returncode == 0, one.stderr[-2000:]
    for fig in figures((tmp_path / "runs" / "tiny__seed=0" / "report.html").read_text()):
        for trace in fig["data"]:
            assert all(v is None or isinstance(v, (int, float, str)) for v in trace.get("y", [])), fig["id"]
    folder = run_fgrpo("report", str(tmp_path / "runs"), "--out", str(tmp_path / "all.html"))
    assert folder.returncode == 0, folder.stderr[-2000:]
