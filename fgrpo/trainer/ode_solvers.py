"""The deterministic parts of a rollout with diffusers' multistep solvers (`rollout.ode_solver`).

A segment is a run of deterministic steps between two nodes of fgrpo.algorithm.ode_grid (the
prefix sigma_start -> sigma_k before an SDE step, the suffix sigma_{k+1} -> sigma_end after it).
Each segment gets a fresh diffusers scheduler in flow-prediction mode (as WanPipeline builds
UniPC: `use_flow_sigmas`, the model's velocity as `flow_prediction`); its step math is diffusers'.
Only the sigmas are fgrpo's: `set_timesteps` resets the solver's state, then the segment's node
sigmas are stored where `set_timesteps` stores its own (`scheduler.sigmas`, `scheduler.timesteps`),
because neither class can be told a schedule that ends off zero (UniPC appends 0 or repeats its
last sigma; DPM-Solver's `set_timesteps` takes no sigmas at all). So a segment ends exactly on
sigma_k (float32, the sampler's own value) and the SDE step starts there.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fgrpo.algorithm.ode_grid import ODE_SOLVERS


@dataclass(frozen=True)
class OdeConfig:
    """`rollout.ode_solver` and `rollout.ode_steps`; the default is the recipe's Euler on every step."""

    solver: str = "euler"
    steps: int | None = None

    @classmethod
    def from_rollout(cls, rollout) -> "OdeConfig":
        return cls(rollout.ode_solver, rollout.ode_steps)


EULER_EVERY_STEP = OdeConfig()  # the sampler's default: the recipe's Euler step on every grid step


def make_scheduler(solver: str, ends_at_zero: bool):
    """A diffusers multistep scheduler for the flow ODE (Wan's UniPC settings; DPM-Solver++ 2M)."""
    from diffusers import DPMSolverMultistepScheduler, UniPCMultistepScheduler

    # final_sigmas_type only decides whether the last step is first order (as WanPipeline's is, into 0)
    final = "zero" if ends_at_zero else "sigma_min"
    if solver == "unipc":
        return UniPCMultistepScheduler(
            solver_order=2,
            solver_type="bh2",
            predict_x0=True,
            prediction_type="flow_prediction",
            use_flow_sigmas=True,
            flow_shift=1.0,
            final_sigmas_type=final,
        )
    if solver == "dpmpp_2m":
        return DPMSolverMultistepScheduler(
            solver_order=2,
            algorithm_type="dpmsolver++",
            solver_type="midpoint",
            prediction_type="flow_prediction",
            use_flow_sigmas=True,
            flow_shift=1.0,
            final_sigmas_type=final,
        )
    raise ValueError(f"rollout.ode_solver: one of {ODE_SOLVERS} (euler needs no scheduler), got {solver!r}")


class SegmentSolver:
    """One segment's diffusers scheduler, stepping the rows that share the segment's nodes."""

    def __init__(self, solver: str, node_sigmas: torch.Tensor):
        sig = node_sigmas.detach().float().cpu()
        if sig.numel() < 2 or not bool((sig[1:] < sig[:-1]).all()):
            raise ValueError(f"a segment needs at least two decreasing sigmas, got {sig.tolist()}")
        self.scheduler = make_scheduler(solver, ends_at_zero=float(sig[-1]) == 0.0)
        self.scheduler.set_timesteps(num_inference_steps=sig.numel() - 1)  # resets the solver's history
        self.scheduler.sigmas = sig.clone()
        self.scheduler.timesteps = sig[:-1] * 1000.0
        self.scheduler.set_begin_index(0)  # steps are counted, never looked up by timestep
        self.steps_left = sig.numel() - 1

    def step(self, v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """x at the segment's next node from x and the velocity v at its current node."""
        s = self.scheduler
        index = 0 if s.step_index is None else s.step_index
        out = s.step(v, s.timesteps[index], x, return_dict=False)[0]
        self.steps_left -= 1
        return out.float()
