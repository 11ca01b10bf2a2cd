"""benchmarks/reward_throughput.py's training part drives the trainer's own step (the benchmark is
not run by the suite, so a change to the step's signature would otherwise go unnoticed)."""

from benchmarks.reward_throughput import train_steps
from tests.helpers.recipes import small_recipe


def test_train_steps_returns_the_timed_phases(tiny_model_dir, tmp_path):
    times = train_steps(small_recipe(tiny_model_dir), tmp_path / "run", steps=1)
    assert set(times) == {"time_rollout", "time_reward", "time_reward_wait", "time_train"}
    assert all(v >= 0 for v in times.values())
