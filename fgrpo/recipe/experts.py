"""Checks of `lora.experts` against a two-expert preset (Wan2.2 A14B) and the recipe's own sigma grid.

Each SDE transition i -> i + 1 is produced, and trained, by the expert of sigma_i
(fgrpo.models.wan.experts.step_experts). A transition of a frozen expert would cost a forward that
trains nothing and dilute the loss, and on several ranks it would put one expert's collectives on
some ranks only, so timesteps.window must lie within the trained experts' steps; a trained expert
that no window step reaches would hold optimizer state for nothing, so the window must reach each.
"""

from __future__ import annotations

from .config import Recipe


def _drawn_steps(recipe: Recipe) -> list[int]:
    """The step indices the SDE step can be drawn from (the window's, less those of weight 0)."""
    start, end = recipe.timesteps.window
    weights = recipe.timesteps.weights
    return [k for i, k in enumerate(range(start, end)) if not weights or weights[i] > 0]


def expert_problems(recipe: Recipe) -> list[str]:
    """Why `lora.experts` cannot train the recipe's model as set, [] when it can."""
    from fgrpo.models.wan import PRESETS

    setting, ro = recipe.lora.experts, recipe.rollout
    if setting not in ("high", "low", "both"):
        return [f"lora.experts: one of high, low, both, got {setting!r}"]
    preset = PRESETS.get(recipe.model.preset)
    if preset is None or preset.experts == 1:
        if setting == "both":
            return []
        return [f"lora.experts: {setting!r} picks one of two experts, but {recipe.model.preset} has one transformer"]
    if recipe.algorithm.mode == "full-trajectory":
        if setting == "both":
            return []
        return [
            f"lora.experts: algorithm.mode=full-trajectory takes an SDE step at every step, both experts' steps; "
            f"{setting!r} would freeze one of them: use both"
        ]
    start, end = recipe.timesteps.window
    if not (0 <= start < end <= ro.steps) or (
        recipe.timesteps.weights and len(recipe.timesteps.weights) != end - start
    ):
        return []  # the window itself is reported
    # here, past the one-transformer returns: they import torch
    from fgrpo.algorithm import wan_sigmas
    from fgrpo.models.wan.experts import EXPERT_NAMES, step_experts, trained_experts

    experts = step_experts(wan_sigmas(ro.steps, ro.flow_shift), preset.boundary_ratio)
    trained, drawn = trained_experts(setting), _drawn_steps(recipe)
    ranges = {e: [k for k, x in enumerate(experts) if x == e] for e in (0, 1)}
    where = ", ".join(
        f"{EXPERT_NAMES[e]}-noise expert {_span(ranges[e])}" for e in (0, 1) if ranges[e]
    )  # e.g. "high-noise expert steps 0-2, low-noise expert steps 3-7"
    grid = (
        f"(on the rollout grid of {ro.steps} steps, flow_shift {ro.flow_shift}, "
        f"boundary_ratio {preset.boundary_ratio}: {where})"
    )
    frozen = [k for k in drawn if experts[k] not in trained]
    if frozen:
        return [
            f"timesteps.window: {recipe.timesteps.window} draws steps {frozen} of the expert lora.experts={setting} "
            f"freezes; their transitions would train nothing {grid}: keep the window within the trained experts' "
            "steps, or train both"
        ]
    unused = [EXPERT_NAMES[e] for e in trained if not any(experts[k] == e for k in drawn)]
    if unused:
        return [
            f"lora.experts: {setting} trains the {' and '.join(unused)}-noise expert, but timesteps.window "
            f"{recipe.timesteps.window} draws none of its steps {grid}: train only the expert the window reaches"
        ]
    return []


def _span(steps: list[int]) -> str:
    return f"step {steps[0]}" if len(steps) == 1 else f"steps {steps[0]}-{steps[-1]}"
