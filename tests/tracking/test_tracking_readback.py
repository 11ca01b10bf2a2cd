"""Tracking read back with the trackers' own readers, no mocks: a tiny run logs to metrics.jsonl,
TensorBoard and W&B (offline), loses its last checkpoint (a crash after the step was logged) and
is launched again. Every step appears once in each tracker, the W&B run is the same one, samples
are captioned videos, and the cumulative compute continues across the resume."""

from __future__ import annotations

import io
import shutil

import pytest
from PIL import GifImagePlugin, Image

from fgrpo.run_folder import RunFolder
from tests.conftest import run_fgrpo
from tests.helpers.runs import BASE_ARGS, REPO, train_metrics
from tests.helpers.tracking import tensorboard_events, wandb_history, wandb_offline_runs, wandb_run_info

P, G, N, CFG_PASSES = 2, 4, 8, 2  # BASE_ARGS: 2 prompts x 4 videos; tiny: 8 steps, CFG 2.0 (two halves)


def launch(model, runs, steps):
    res = run_fgrpo(
        "launch",
        str(REPO / "recipes" / "tiny.py"),
        "--model.path",
        str(model),
        "--logging.runs-dir",
        str(runs),
        "--logging.run-name",
        "tracked",
        "--optim.max-steps",
        str(steps),
        *BASE_ARGS,
        "--logging.trackers",
        "jsonl",
        "tensorboard",
        "wandb",
        cwd=runs.parent,
        timeout=500,
        env={"WANDB_MODE": "offline"},
    )
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    return res


@pytest.fixture(scope="module")
def tracked_run(tiny_model_dir, tmp_path_factory):
    runs = tmp_path_factory.mktemp("tracking") / "runs"
    launch(tiny_model_dir, runs, 2)  # checkpoints 1 and 2; evaluations before (0) and final (2)
    run = runs / "tracked"
    first = {"tracking": RunFolder(run).read_tracking(), "train": train_metrics(run)}
    shutil.rmtree(run / "checkpoints" / "step-2")  # as if it crashed after logging step 2, before saving it
    second = launch(tiny_model_dir, runs, 3)  # resumes at 1: step 2 again, then 3, final evaluation at 3
    return run, first, second


def test_cumulative_compute_continues_across_resume(tracked_run):
    run, first, second = tracked_run
    assert "moved to metrics.rewound.jsonl" in second.stdout
    train = train_metrics(run)
    assert [m["step"] for m in train] == [1, 2, 3]
    per_step_forwards = P * G * N * CFG_PASSES + 2 * P * G * CFG_PASSES  # rollout + recomputed log-prob + training
    flops = train[0]["compute/flops"]
    assert flops > 0 and train[0]["compute/flops_rollout"] > 0 and train[0]["compute/flops_train"] > 0
    for i, m in enumerate(train, 1):
        assert m["compute/optimizer_steps"] == i and m["compute/videos"] == i * P * G
        assert m["compute/forward_passes"] == i * per_step_forwards
        assert m["compute/flops"] == i * flops == m["compute/flops_rollout"] + m["compute/flops_train"]
        assert m["compute/device_s"] == pytest.approx(m["compute/wall_s"])  # one process
        assert len(m["peak_memory_per_rank"]) == 1 and m["peak_memory_per_rank"][0] > 0
    # The redone step 2 continues from step 1's totals (the second launch measured its own first step).
    assert train[0] == first["train"][0]
    assert train[1]["compute/flops"] == first["train"][1]["compute/flops"]
    walls = [m["compute/wall_s"] for m in train]
    assert walls == sorted(walls) and walls[1] > walls[0]
    evals = RunFolder(run).read_metrics("eval")
    assert [(e["tag"], e["step"]) for e in evals] == [("before", 0), ("final", 3)]
    assert evals[-1]["compute/flops"] == train[-1]["compute/flops"] and evals[-1]["time_eval"] > 0


def test_tensorboard_has_every_step_once(tracked_run):
    run, _, _ = tracked_run
    train, evals = train_metrics(run), RunFolder(run).read_metrics("eval")
    acc = tensorboard_events(RunFolder(run).tensorboard)
    tags = acc.Tags()
    reward = acc.Scalars("train/reward_mean")
    assert [e.step for e in reward] == [1, 2, 3]  # step 2 of the first launch is purged, not duplicated
    assert [e.value for e in reward] == pytest.approx([m["reward_mean"] for m in train])
    assert [e.step for e in acc.Scalars("eval/reward")] == [0, 3]
    assert [e.value for e in acc.Scalars("eval/reward")] == pytest.approx([e["eval_reward"] for e in evals])
    assert [e.value for e in acc.Scalars("train/compute/flops")] == pytest.approx([m["compute/flops"] for m in train])
    for tag in (
        "train/grad_norm",
        "train/clip_frac",
        "train/ratio_dev",
        "train/adv_std",
        "train/reward/brightness",
        "eval/brightness",
        "train/compute/wall_s",
        "train/peak_memory_per_rank/rank-0",
    ):
        assert tag in tags["scalars"], tag
    assert "train/timestep_indices" in tags["histograms"]
    # held-out samples: the captioned grid and one video per prompt, animated, at each evaluation
    assert {"samples/grid", "samples/prompt-00", "samples/prompt-01"} <= set(tags["images"])
    grid = acc.Images("samples/grid")
    assert [g.step for g in grid] == [0, 3]
    with Image.open(io.BytesIO(grid[-1].encoded_image_string)) as im:
        assert im.format == "GIF" and isinstance(im, GifImagePlugin.GifImageFile)
        assert im.n_frames == 5 and im.size == (grid[-1].width, grid[-1].height)
    captions = acc.Tensors("samples/captions/text_summary")
    text = captions[-1].tensor_proto.string_val[0].decode()
    prompts = (RunFolder(run).sample_folder.read_index("final") or {})["prompts"]
    assert all(p in text for p in prompts) and "->" in text  # prompt and reward before -> after


def test_wandb_offline_run_continues_without_duplicate_steps(tracked_run):
    run, first, _ = tracked_run
    offline = wandb_offline_runs(run)
    assert len(offline) == 2  # one per launch
    ids = {wandb_run_info(d)["id"] for d in offline}
    assert ids == {first["tracking"]["wandb"]["id"]} == {RunFolder(run).read_tracking()["wandb"]["id"]}
    info = wandb_run_info(offline[-1])
    assert info["name"] == "tracked" and info["project"] == "fgrpo"
    config = info["config"]  # the resolved recipe
    assert config["algorithm"]["mode"] == "flash" and config["rollout"]["group_size"] == G
    assert config["logging"]["trackers"] == ["jsonl", "tensorboard", "wandb"] and config["optim"]["max_steps"] == 3
    rows = [row for d in offline for row in wandb_history(d)]
    train_steps = [s for s, v in rows if "train/reward_mean" in v]
    assert train_steps == [1, 2, 3]  # the redone step 2 is not logged twice
    assert [s for s, v in rows if "eval/reward" in v] == [0, 2, 3]  # before, final of launch 1, final of launch 2
    by_step = {s: v for s, v in rows if "train/reward_mean" in v}
    for m in train_metrics(run):
        assert by_step[m["step"]]["train/reward_mean"] == pytest.approx(m["reward_mean"])
        assert by_step[m["step"]]["train/compute/flops"] == m["compute/flops"]
    final = next(v for s, v in rows if s == 3 and "samples/grid" in v)
    grid = final["samples/grid"]
    assert grid["_type"] == "video-file" and grid["path"].endswith(".mp4")
    prompts = (RunFolder(run).sample_folder.read_index("final") or {})["prompts"]
    assert prompts[0] in final["samples/prompt-00"]["caption"] and "reward" in final["samples/prompt-00"]["caption"]
    assert (offline[-1] / "files" / grid["path"]).stat().st_size > 0
    step3 = next(v for s, v in rows if s == 3 and "train/reward_mean" in v)
    assert step3["train/timestep_indices"]["_type"] == "histogram"
