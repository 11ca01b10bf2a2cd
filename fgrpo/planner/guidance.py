"""Forward passes of a model evaluation under the recipe's guidance, for the planner's FLOPs.

A sampler step with classifier-free guidance runs the conditional and unconditional passes in one
batch (two rows per video); a step at guidance scale 1 runs the conditional pass alone (one row:
fgrpo.trainer.rollout.text_input). With two experts each expert's steps take its own scale
(rollout.cfg_scale, rollout.cfg_scale_2: fgrpo.models.wan.experts.step_guidance_scales), so a
recipe may mix both kinds of step. The phases measure one forward at `measured_scale` (two rows
when any step guides: the larger peak); FLOPs are linear in the rows, so a step costs the measured
forward's FLOPs x its passes / the measured passes.
"""

from __future__ import annotations

from fractions import Fraction

from fgrpo.recipe.config import Recipe


def passes_at(scale: float) -> int:
    """Transformer passes of a step at guidance `scale`: 2 with CFG, 1 at scale 1 (conditional only)."""
    return 1 if scale == 1.0 else 2


def step_passes(recipe: Recipe, steps: int) -> list[int]:
    """Passes of each step of the recipe's sigma grid of `steps` steps (its flow_shift), each step at
    its expert's guidance scale (the preset's boundary_ratio; one transformer: rollout.cfg_scale)."""
    from fgrpo.algorithm import wan_sigmas
    from fgrpo.models.wan.experts import step_guidance_scales
    from fgrpo.models.wan.presets import PRESETS

    preset = PRESETS.get(recipe.model.preset)
    boundary = preset.boundary_ratio if preset is not None else None
    ro = recipe.rollout
    scales = step_guidance_scales(wan_sigmas(steps, ro.flow_shift), boundary, ro.cfg_scale, ro.cfg_scale_2)
    return [passes_at(s) for s in scales]


def measured_scale(recipe: Recipe) -> float:
    """The guidance scale the planner's phases run their forwards at: a guiding one (two passes)
    when any step guides, so each phase's peak is its largest."""
    ro = recipe.rollout
    return next((s for s in (ro.cfg_scale, ro.cfg_scale_2) if s is not None and s != 1.0), ro.cfg_scale)


def transition_passes(recipe: Recipe) -> Fraction:
    """Passes per trained transition, averaged over the SDE step's draw (timesteps.window and weights;
    full-trajectory: every step once): the training pass guides each transition at its step's scale
    (fgrpo.trainer.rollout.rowwise_velocity)."""
    passes = step_passes(recipe, recipe.rollout.steps)
    if recipe.algorithm.mode == "full-trajectory":
        return Fraction(sum(passes), len(passes))
    start, stop = recipe.timesteps.window
    weights = [Fraction(w) for w in recipe.timesteps.weights] or [Fraction(1)] * (stop - start)
    return sum((w * passes[start + j] for j, w in enumerate(weights)), Fraction(0)) / sum(weights)
