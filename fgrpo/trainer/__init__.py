"""The Flash-GRPO trainer: rollout, step, loop, checkpoints, evaluation."""
