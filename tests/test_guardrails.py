"""Guardrail metrics of the held-out videos (fgrpo.trainer.guardrails): known values on synthetic
videos, their place in eval records, the trackers' tags and the report's "Guardrails" section."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from fgrpo.report import guardrails as report_guardrails
from fgrpo.run_folder import RunFolder
from fgrpo.tracking.base import scalars
from fgrpo.trainer import guardrails as g
from tests.conftest import run_fgrpo
from tests.helpers.recipes import small_recipe

F, H, W = 6, 16, 16


def flat(rgb=(0.5, 0.5, 0.5), frames: int = F) -> torch.Tensor:
    """One video [1, F, 3, H, W] of a single colour."""
    return torch.tensor(rgb).view(1, 1, 3, 1, 1).expand(1, frames, 3, H, W).clone()


def moving_square(frames: int = F, side: int = 4) -> torch.Tensor:
    """A white square moving one pixel right per frame on black: the frame's mean never changes."""
    v = torch.zeros(1, frames, 3, H, W)
    for t in range(frames):
        v[0, t, :, 6 : 6 + side, 2 + t : 2 + t + side] = 1.0
    return v


def alternating(frames: int = F) -> torch.Tensor:
    """Frames alternating black and white."""
    return torch.stack([flat((float(t % 2),) * 3)[0, 0] for t in range(frames)]).unsqueeze(0)


def test_a_static_video_has_no_motion_nor_flicker():
    v = flat((0.2, 0.7, 0.4))
    assert g.motion_energy(v).item() == 0.0 and g.temporal_flicker(v).item() == 0.0


def test_flicker_is_high_for_alternating_frames_and_low_for_a_moving_square():
    assert g.temporal_flicker(alternating()).item() == pytest.approx(1.0)
    assert g.motion_energy(alternating()).item() == pytest.approx(1.0)
    square = moving_square()
    assert g.temporal_flicker(square).item() == pytest.approx(0.0, abs=1e-6)
    assert g.motion_energy(square).item() > 0  # it moves
    # a smooth fade changes brightness, yet does not flicker
    fade = torch.cat([flat((t / F,) * 3, 1) for t in range(F)], dim=1)
    assert g.temporal_flicker(fade).item() == pytest.approx(0.0, abs=1e-6)
    assert g.temporal_flicker(flat(frames=2)).item() == 0.0  # too few frames for a second difference


def test_brightness_saturation_and_contrast():
    white, red, grey = flat((1.0, 1.0, 1.0)), flat((1.0, 0.0, 0.0)), flat((0.5, 0.5, 0.5))
    assert g.brightness(white).item() == pytest.approx(1.0)
    assert g.brightness(red).item() == pytest.approx(0.299)
    assert g.saturation(red).item() == pytest.approx(1.0)  # a saturated colour
    assert g.saturation(grey).item() == 0.0 and g.saturation(flat((0.0, 0.0, 0.0))).item() == 0.0
    assert g.saturation(flat((1.0, 0.5, 0.5))).item() == pytest.approx(0.5)
    assert g.contrast(grey).item() == pytest.approx(0.0, abs=1e-7)
    half = torch.zeros(1, 1, 3, H, W)
    half[..., : W // 2] = 1.0
    assert g.contrast(half).item() == pytest.approx(0.5)


def test_colour_entropy_and_edge_density():
    one = flat((0.3, 0.6, 0.9))
    assert g.colour_entropy(one).item() == pytest.approx(0.0, abs=1e-7)  # one colour
    assert g.edge_density(one).item() == 0.0  # a flat image
    half = torch.zeros(1, 1, 3, H, W)
    half[..., : W // 2] = 1.0
    assert g.colour_entropy(half).item() == pytest.approx(1 / 9)  # two colours equally: 1 bit of 9
    # the one column next to the border is an edge: 1 of W - 1 columns, on H - 1 rows
    assert g.edge_density(half).item() == pytest.approx(1 / (W - 1))
    # every one of the 512 bins equally often: the maximum
    levels = torch.arange(8).float().add(0.5).div(8)
    r, gg, b = torch.meshgrid(levels, levels, levels, indexing="ij")
    every = torch.stack([r, gg, b]).reshape(3, 1, 512).unsqueeze(0).unsqueeze(0)  # [1, 1, 3, 1, 512]
    assert g.colour_entropy(every).item() == pytest.approx(1.0)


def test_diversity_within_each_prompts_videos():
    a, b = flat((0.0, 0.0, 0.0)), flat((1.0, 1.0, 1.0))
    assert g.diversity(torch.cat([a, a, b, b]), 2) == 0.0  # identical videos per prompt
    assert g.diversity(torch.cat([a, b]), 1) == 0.0  # one video per prompt
    assert g.diversity(torch.cat([a, b, a, a]), 2) == pytest.approx(0.5)  # prompt 1: 1, prompt 2: 0
    with pytest.raises(ValueError, match="eval.videos_per_prompt"):
        g.diversity(torch.cat([a, b, a]), 2)


def test_record_table_and_drift():
    videos = torch.cat([alternating(), moving_square(), flat((1.0, 0.0, 0.0)), flat()])
    table = g.per_video_table(videos)
    assert table.shape == (4, len(g.PER_VIDEO))
    assert table[:, list(g.PER_VIDEO).index("flicker")].tolist() == pytest.approx([1.0, 0.0, 0.0, 0.0], abs=1e-6)
    thumbs = (videos * 255).round().to(torch.uint8)
    rec = g.guard_record(table, thumbs, 2)
    assert set(rec) == {f"guard/{n}" for n in g.NAMES}
    assert rec["guard/flicker"] == pytest.approx(0.25) and rec["guard/diversity"] > 0
    before = {**rec, "guard/brightness": rec["guard/brightness"] - 0.1}
    moved = g.drift(rec, before)
    assert set(moved) == {f"guard/{n}_drift" for n in g.DRIFTED}
    assert moved["guard/brightness_drift"] == pytest.approx(0.1) and moved["guard/contrast_drift"] == 0.0
    assert g.drift(rec, None) == {} and g.drift(rec, {"eval_reward": 0.0}) == {}  # a run from before guardrails
    evals = [{"tag": "step-000002", "step": 2}, {"tag": "before", "step": 0, "guard/brightness": 0.3}]
    assert g.before_of(evals) == evals[1] and g.before_of(evals[:1]) is None
    # trackers log them like the other eval metrics
    tags = scalars({"kind": "eval", "step": 3, **rec, **moved})
    assert tags["eval/guard/motion"] == rec["guard/motion"] and "eval/guard/brightness_drift" in tags


def test_the_report_reads_the_trainers_prefix():
    assert report_guardrails.PREFIX == g.PREFIX


def test_training_records_guardrails_and_the_report_shows_them(tiny_model_dir, tmp_path):
    from fgrpo.trainer.trainer import Trainer

    recipe = small_recipe(tiny_model_dir, max_steps=1)
    recipe = dataclasses.replace(recipe, eval=dataclasses.replace(recipe.eval, videos_per_prompt=2))
    run = tmp_path / "run"
    assert Trainer(recipe, run).run() == 0
    evals = RunFolder(run).read_metrics("eval")
    assert [e["tag"] for e in evals] == ["before", "final"]
    for e in evals:
        for name in g.NAMES:
            assert math.isfinite(e[f"guard/{name}"]) and 0 <= e[f"guard/{name}"] <= 1, (e["tag"], name)
        assert e["guard/diversity"] > 0  # two seeds per prompt: different videos
    before, final = evals
    for name in g.DRIFTED:
        assert before[f"guard/{name}_drift"] == 0.0
        assert final[f"guard/{name}_drift"] == pytest.approx(final[f"guard/{name}"] - before[f"guard/{name}"])
    RunFolder(run).write_recipe(recipe)  # as `fgrpo launch` does; the report reads it
    res = run_fgrpo("report", str(run), cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    page = RunFolder(run).report_file.read_text()
    assert "<h2>Guardrails (held-out video statistics)</h2>" in page and '"id": "guardrails"' in page
    assert "colour_entropy" in page and "brightness" in page


def test_report_section_for_several_runs_and_for_runs_without_guardrails(tmp_path):
    from fgrpo.report.data import RunData

    def run(name, motion):
        evals = [{"kind": "eval", "step": 0, "tag": "before", "eval_reward": 0.0}]
        if motion is not None:
            evals.append({"kind": "eval", "step": 4, "tag": "final", "guard/motion": motion, "guard/motion_drift": 0.0})
        return RunData(tmp_path / name, {}, [], evals, {}, label=name)

    a, b, old = run("a", 0.25), run("b", 0.5), run("old", None)
    several = report_guardrails.guardrail_table([a, b, old])
    assert several is not None and "0.2500" in several and "0.5000" in several
    assert "motion_drift" not in several  # drifts are in the records, the table shows the values
    assert report_guardrails.guardrail_table([old]) is None  # a run from before guardrails: no section
    charts = [{"id": "train-reward"}, {"id": "heldout-reward"}, {"id": "grad-norm"}]
    assert [c["id"] for c in report_guardrails.with_guardrail_chart(charts, [a])] == [
        "train-reward",
        "heldout-reward",
        "guardrails",
        "grad-norm",
    ]
    assert report_guardrails.with_guardrail_chart(charts, [old]) == charts
    assert report_guardrails.with_guardrail_chart(charts, [a, b]) == charts
