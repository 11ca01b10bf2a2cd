"""Rollout options side by side on the miniature model: evaluations, FLOPs, seconds and gold quality.

    python benchmarks/rollout_options.py [--seeds 2] [--ode-steps 7 5 3] [--caches first_block mag taylorseer]
        [--bootstrap 2000]

recipes/miniature.py's rollout (10 steps on the shift-3 grid, the recipe's CFG (1 now; the tables in
docs/design.md were measured at 4), flow-grpo noise a = 0.7, one
SDE step per prompt drawn from the window [0, 5), the trainer's own `rollout.sample`) on the
miniature model (its cached build), for the 24 held-out prompts x `--seeds` seeds. Every option
starts from the same initial noise, takes the same SDE step with the same SDE noise; only the
deterministic prefix and suffix differ (rollout.ode_solver, rollout.ode_steps, or rollout.cache on
the full Euler grid: `mag` with ratios calibrated on the first micro-batch by
fgrpo.trainer.rollout_cache.calibrate_mag_ratios). Per option:
model evaluations per video (CFG's halves counted once), FLOPs per video (torch's FLOP counter,
fgrpo.trainer.compute.measure_step), rollout seconds (one untimed warm-up, then the median of
--repeats timed runs, without the counter), and held-out gold faithfulness of the final samples
(fgrpo.miniature.scoring: the share of attributes right), with the paired difference to Euler on
the full grid and a 95 % bootstrap interval over prompts (a prompt's seeds resampled together).
A benchmark, not a test: about a minute per option on 2 cores.
"""

from __future__ import annotations

import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import tyro

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fgrpo.algorithm import sample_step_indices, wan_sigmas  # noqa: E402
from fgrpo.miniature.pretrain import MAX_TEXT_TOKENS, miniature_model_path  # noqa: E402
from fgrpo.miniature.scoring import gold_scores, mean_score  # noqa: E402
from fgrpo.miniature.world import prompt_sets  # noqa: E402
from fgrpo.models.wan.loading import load_wan  # noqa: E402
from fgrpo.recipe.io import load_recipe_file  # noqa: E402
from fgrpo.trainer.compute import measure_step  # noqa: E402
from fgrpo.trainer.ode_solvers import OdeConfig  # noqa: E402
from fgrpo.trainer.rollout import NoiseConfig, sample, video_generators  # noqa: E402
from fgrpo.trainer.rollout_cache import CacheConfig, calibrate_mag_ratios, rollout_cache  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Args:
    seeds: int = 2
    """Videos per held-out prompt (seed 0..seeds-1 of its initial and SDE noise)."""
    ode_steps: list[int] = field(default_factory=lambda: [7, 5, 3])
    """Sub-grid sizes tried for unipc and dpmpp_2m (and euler)."""
    caches: list[str] = field(default_factory=list)
    """rollout.cache kinds tried on the full Euler grid (first_block, mag, taylorseer)."""
    bootstrap: int = 2000
    repeats: int = 1
    """Timed runs per option (the median is shown)."""


def options(a: Args, steps: int) -> list[tuple[str, OdeConfig, str]]:
    """(label, solver and sub-grid, rollout.cache) of each option, Euler on the grid first."""
    out = [("euler grid", OdeConfig("euler", None), "none")]
    for n in a.ode_steps:
        if n < steps:
            out += [(f"{s} {n}", OdeConfig(s, n), "none") for s in ("euler", "unipc", "dpmpp_2m")]
    return out + [(f"cache {kind}", OdeConfig("euler", None), kind) for kind in a.caches]


def bootstrap_interval(diff: torch.Tensor, draws: int, seed: int = 0) -> tuple[float, float]:
    """95 % interval of the mean of diff [prompts, seeds], resampling prompts (their seeds together)."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, diff.shape[0], (draws, diff.shape[0]), generator=g)
    means = diff[idx].mean(dim=(1, 2))
    return float(means.quantile(0.025)), float(means.quantile(0.975))


def main() -> None:
    a = tyro.cli(Args)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    r = load_recipe_file(REPO / "recipes" / "miniature.py")
    ro = r.rollout
    c = load_wan(miniature_model_path(), dtype="float32", max_text_tokens=MAX_TEXT_TOKENS)
    transformer = c.transformer
    if transformer is None:
        raise RuntimeError("load_wan returned no transformer: the benchmark needs one to roll out")
    transformer.eval()  # measure_step counts a training-mode forward as the training pass's
    prompts = [s.prompt for s in prompt_sets().heldout]
    P, S = len(prompts), a.seeds
    video_prompts = [p for p in prompts for _ in range(S)]
    n = len(video_prompts)
    context, neg = c.encode_prompts(video_prompts), c.encode_prompts([""] * n)
    sigmas = wan_sigmas(ro.steps, ro.flow_shift)
    noise = NoiseConfig(ro.noise_schedule, ro.noise_constant)
    latent = (16, (ro.frames - 1) // 4 + 1, ro.height // 8, ro.width // 8)
    init = [17_000 + 101 * p + s for p in range(P) for s in range(S)]
    x0 = torch.stack([torch.randn(latent, generator=g) for g in video_generators(init)])
    k = sample_step_indices(P, S, r.timesteps.window, None, True, torch.Generator().manual_seed(5))
    mask = torch.zeros(n, ro.steps, dtype=torch.bool)
    mask[torch.arange(n), k] = True
    mb = min(ro.micro_batch, n)

    def roll(ode: OdeConfig, cache=None, videos: int = n, sde=mask) -> torch.Tensor:
        gens = video_generators([90_000 + i for i in range(videos)])  # the same SDE noise for every option
        x, ctx, ng = x0[:videos], context[:videos], neg[:videos]
        finals, _ = sample(transformer, x, ctx, ng, sigmas, sde, noise, ro.cfg_scale, gens, mb, ode=ode, cache=cache)
        return finals

    ratios = ()
    if "mag" in a.caches:  # the model's magnitude ratios, from one uncached micro-batch without SDE step
        no_sde = torch.zeros(mb, ro.steps, dtype=torch.bool)
        grid = OdeConfig("euler", None)
        ratios = tuple(calibrate_mag_ratios(transformer, ro.steps, mb, lambda c: roll(grid, c, mb, no_sde)))
        print(f"  mag ratios: {[round(x, 4) for x in ratios]}", file=sys.stderr, flush=True)

    rows, base = [], None
    for label, ode, kind in options(a, ro.steps):
        with rollout_cache(transformer, CacheConfig(kind, ro.steps, ratios if kind == "mag" else ())) as cache:
            _, cost = measure_step(transformer, lambda ode=ode, cache=cache: roll(ode, cache), dp=1)
            seconds = []
            for _ in range(a.repeats):
                t0 = time.perf_counter()
                finals = roll(ode, cache)
                seconds.append(time.perf_counter() - t0)
        with torch.no_grad():
            gold = mean_score(gold_scores(c.decode(finals), video_prompts)).float().view(P, S)
        base = gold if base is None else base
        diff = gold - base
        lo, hi = bootstrap_interval(diff, a.bootstrap)
        rows_per_evaluation = 1 if ro.cfg_scale == 1.0 else 2  # with CFG, two rows per evaluation
        evals = cost.forward_passes / (rows_per_evaluation * n)
        rows.append(
            (
                label,
                evals,
                cost.flops_rollout / n,
                statistics.median(seconds),
                float(gold.mean()),
                float(diff.mean()),
                lo,
                hi,
            )
        )
        print(f"  {label}: done", file=sys.stderr, flush=True)

    print(
        f"miniature model, {P} held-out prompts x {S} seeds, {ro.steps}-step grid, CFG {ro.cfg_scale}, "
        f"one SDE step in {r.timesteps.window}"
    )
    head = f"{'option':<20}{'evals/video':>12}{'GFLOPs/video':>14}{'rollout s':>11}{'gold':>8}"
    head += f"{'vs euler grid [95% CI]':>32}"
    print(head)
    print("-" * len(head))
    for label, evals, flops, sec, gold, d, lo, hi in rows:
        ci = f"{d:+.4f} [{lo:+.4f}, {hi:+.4f}]"
        print(f"{label:<20}{evals:>12.2f}{flops / 1e9:>14.3f}{sec:>11.2f}{gold:>8.4f}{ci:>32}")


if __name__ == "__main__":
    main()
