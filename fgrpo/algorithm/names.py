"""The option names a recipe may pick for the algorithm, without torch: the CLI checks a recipe
against them before it launches anything (fgrpo.recipe.validate)."""

NOISE_SCHEDULES: tuple[str, ...] = ("wan", "flow-grpo", "dance-grpo")
"""rollout.noise_schedule: the SDE step's noise level s_t (fgrpo.algorithm.schedule.noise_scale)."""
