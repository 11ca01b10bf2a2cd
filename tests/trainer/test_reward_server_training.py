"""Training with rewards scored by a reward server: the same rewards as in-process (up to the uint8
quantisation of frames), scoring overlapped with the next rollouts, and finding/awaiting the server."""

from __future__ import annotations

import dataclasses
import json
import threading

import pytest
import torch

from fgrpo.recipe.config import RewardSpec
from fgrpo.rewards import register_reward
from fgrpo.rewards.server import RewardServer
from fgrpo.rewards.server_lifecycle import wait_for_server
from fgrpo.run_folder import RunFolder
from fgrpo.trainer import flash_grpo as flash_mod
from fgrpo.trainer.reward_scoring import RemoteRewards
from fgrpo.trainer.signals import EXIT_REQUEUE, StopFlag
from fgrpo.trainer.trainer import Trainer
from tests.conftest import REPO, run_fgrpo
from tests.helpers import present
from tests.helpers.recipes import small_recipe

R = dataclasses.replace


def served_recipe(tiny_model_dir, **server):
    r = small_recipe(tiny_model_dir, max_steps=1)
    r = R(r, rollout=R(r.rollout, micro_batch=2))  # 8 videos: 4 micro-batches, 4 requests per step
    return R(r, reward_server=R(r.reward_server, **server))


def test_step_through_server_equals_in_process(tiny_model_dir, tmp_path):
    local = Trainer(served_recipe(tiny_model_dir), tmp_path / "local")
    prompts = local.sampler.next(local.recipe.rollout.prompts_per_step)
    want = local.run_step(prompts, lambda: None).metrics
    with RewardServer(local.recipe.rewards) as srv:
        remote = Trainer(served_recipe(tiny_model_dir, url=srv.url), tmp_path / "remote")
        remote.connect_rewards()
        assert isinstance(remote.rewards, RemoteRewards)
        got = remote.run_step(prompts, lambda: None).metrics
        assert srv.scored == (4, 8)  # one request per micro-batch
    # brightness of uint8-quantised frames: at most half a grey level (0.002) from float frames
    assert got["reward_mean"] == pytest.approx(want["reward_mean"], abs=2e-3)
    assert got["reward_std"] == pytest.approx(want["reward_std"], abs=2e-3)
    assert got["time_reward_wait"] >= 0


def test_scoring_overlaps_the_next_rollouts(tiny_model_dir, tmp_path, monkeypatch):
    """The server's reward for micro-batch 1 blocks until the rollout of the last micro-batch has
    started: a client that waited for each score before rolling out the next would never get there."""
    last_rollout_started, scored_while_rolling_out = threading.Event(), []

    @register_reward("test_blocks_until_last_rollout")
    def blocking(frames, prompts):
        scored_while_rolling_out.append(last_rollout_started.wait(timeout=30))
        return frames.mean(dim=(1, 2, 3, 4))

    calls = []
    real_sample = flash_mod.sample

    def spy(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            last_rollout_started.set()
        return real_sample(*args, **kwargs)

    monkeypatch.setattr(flash_mod, "sample", spy)
    spec = RewardSpec(name="test_blocks_until_last_rollout")
    with RewardServer([spec]) as srv:
        r = served_recipe(tiny_model_dir, url=srv.url)
        t = Trainer(R(r, rewards=(spec,)), tmp_path)
        t.connect_rewards()
        t.run_step(t.sampler.next(2), lambda: None)
    assert len(calls) == 4 and scored_while_rolling_out and all(scored_while_rolling_out)


def test_wait_for_server_follows_the_address_file(tmp_path):
    folder = RunFolder(tmp_path)
    folder.write_server_address("http://127.0.0.1:9")  # a stale address: nothing listens there
    polls = []

    def find():
        polls.append(1)
        if len(polls) == 3:  # the requeued server announces itself
            folder.write_server_address(srv.url)
        return folder.read_server_address()

    with RewardServer([RewardSpec(name="brightness")]) as srv:
        assert wait_for_server(find, timeout_s=30, poll_s=0.01) == srv.url
    assert len(polls) == 3
    with pytest.raises(ConnectionError, match="did not come up within 0 s"):
        wait_for_server(lambda: None, timeout_s=0.05, poll_s=0.01)


def test_server_with_other_rewards_is_refused(tiny_model_dir, tmp_path):
    with RewardServer([RewardSpec(name="contrast")]) as srv:
        t = Trainer(served_recipe(tiny_model_dir, url=srv.url), tmp_path)
        with pytest.raises(ValueError, match=r"serves rewards \['contrast'\].*recipe's rewards are \['brightness'\]"):
            t.connect_rewards()


def test_stop_while_waiting_for_a_launched_server(tiny_model_dir, tmp_path):
    stop = StopFlag(signals=())
    t = Trainer(served_recipe(tiny_model_dir, launch=True, startup_timeout_s=60), tmp_path, stop)
    stop.signum = 15  # a preemption while the reward model loads: no server ever answers
    assert t.run() == EXIT_REQUEUE
    assert not (tmp_path / "checkpoints").exists()


def test_launch_with_reward_server_end_to_end(tiny_model_dir, tmp_path):
    """`fgrpo launch --reward-server.launch` on the local backend: every reward of the run comes
    from the server process the launcher started, which stops with the run."""
    res = run_fgrpo(
        "launch",
        str(REPO / "recipes" / "tiny.py"),
        "--model.path",
        str(tiny_model_dir),
        "--logging.runs-dir",
        str(tmp_path / "runs"),
        "--logging.run-name",
        "served",
        "--optim.max-steps",
        "2",
        "--eval.interval",
        "100",
        "--reward-server.launch",
        "--rollout.micro-batch",
        "16",
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    run = tmp_path / "runs" / "served"
    assert "rewards scored by the reward server at http://127.0.0.1:" in res.stdout
    train = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if '"train"' in x]
    assert [m["step"] for m in train] == [1, 2]
    log = (run / "logs" / "reward-server.log").read_text()
    recipe = json.loads((run / "recipe.json").read_text())
    per_step = recipe["rollout"]["prompts_per_step"] * recipe["rollout"]["group_size"]
    per_eval = recipe["prompts"]["heldout"] * recipe["eval"]["videos_per_prompt"]
    # 2 steps in micro-batches of 16, plus held-out evaluation before and after (one batch each).
    videos, batches = 2 * per_step + 2 * per_eval, 2 * (per_step // 16) + 2
    assert f"reward server stopped after scoring {videos} videos in {batches} batches" in log, log
    assert present(RunFolder(run).read_server_address(), "server address").startswith("http://127.0.0.1:")
    assert torch.isfinite(torch.tensor([m["reward_mean"] for m in train])).all()


def test_a_restarted_server_is_found_again(tiny_model_dir, tmp_path):
    """The launched server goes away mid-run (preempted, requeued) and comes back on another port:
    the next step waits for its new address and goes on."""
    run = tmp_path / "run"
    run.mkdir()
    r = served_recipe(tiny_model_dir, launch=True, startup_timeout_s=60, retries=0)
    servers = [RewardServer(r.rewards)]
    RunFolder(run).write_server_address(servers[0].start())
    t = Trainer(r, run)
    t.connect_rewards()
    t.run_step(t.sampler.next(2), lambda: None)
    servers[0].stop()
    second = RewardServer(r.rewards)
    timer = threading.Timer(1.0, lambda: RunFolder(run).write_server_address(second.start()))
    timer.start()
    try:
        metrics = t.run_step(t.sampler.next(2), lambda: None).metrics
    finally:
        timer.join()
        second.stop()
    assert servers[0].scored == (4, 8) and second.scored == (4, 8)
    assert isinstance(t.rewards, RemoteRewards) and t.rewards.client.url == second.url
    assert torch.isfinite(torch.tensor(metrics["reward_mean"]))


def test_in_process_rewards_score_each_micro_batch_before_the_next_rollout(tiny_model_dir, tmp_path, monkeypatch):
    """Frames of a micro-batch are scored (and can be freed) before the next one is rolled out."""
    rollouts_begun, seen = [], []

    @register_reward("test_records_rollouts_begun")
    def record(frames, prompts):
        seen.append((len(rollouts_begun), len(prompts)))
        return frames.mean(dim=(1, 2, 3, 4))

    real_sample = flash_mod.sample
    monkeypatch.setattr(flash_mod, "sample", lambda *a, **k: rollouts_begun.append(1) or real_sample(*a, **k))
    spec = RewardSpec(name="test_records_rollouts_begun")
    r = served_recipe(tiny_model_dir)
    t = Trainer(R(r, rewards=(spec,)), tmp_path)
    metrics = t.run_step(t.sampler.next(2), lambda: None).metrics
    assert seen == [(1, 2), (2, 2), (3, 2), (4, 2)]
    assert metrics["time_reward_wait"] > 0 and metrics["time_reward"] >= metrics["time_reward_wait"]


def test_paper_reward_through_a_launched_server(tiny_model_dir, tmp_path):
    """The paper's setting in miniature: HPSv3 per frame, mean of the top 30 % of frames, scored by
    the reward server the local backend starts (tiny Qwen2-VL reward model saved locally)."""
    from tests.helpers.tiny_qwen2vl import save_tiny_hpsv3

    base, ckpt = save_tiny_hpsv3(tmp_path / "hpsv3")[:2]
    res = run_fgrpo(
        "launch",
        str(REPO / "recipes" / "tiny.py"),
        "--model.path",
        str(tiny_model_dir),
        "--logging.runs-dir",
        str(tmp_path / "runs"),
        "--logging.run-name",
        "hps",
        "--optim.max-steps",
        "1",
        "--eval.interval",
        "100",
        "--prompts.heldout",
        "2",
        "--rewards.0.name",
        "hpsv3",
        "--rewards.0.args",
        "model_path",
        base,
        "checkpoint",
        ckpt,
        "min_pixels",
        "3136",
        "max_pixels",
        "3136",
        "--rewards.0.frame-aggregation",
        "topk:0.3",
        "--reward-server.launch",
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    run = tmp_path / "runs" / "hps"
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    train = [m for m in records if m["kind"] == "train"]
    assert len(train) == 1 and train[0]["reward_std"] > 0 and "reward/hpsv3" in train[0]
    evals = [m for m in records if m["kind"] == "eval"]
    assert [len(e["eval_rewards"]) for e in evals] == [2 * 4, 2 * 4]  # 2 held-out prompts x 4 videos each
    assert "serving hpsv3" in (run / "logs" / "reward-server.log").read_text()
