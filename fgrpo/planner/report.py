"""A plan as rich tables (`fgrpo plan`, and its `--rollout-options` table) and as the pre-flight
refusal `fgrpo launch` prints."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .plan import GIB, Plan
from .rollout_options import OptionRow, exact_plan, step_minutes

if TYPE_CHECKING:
    from rich.console import JustifyMethod

PARTS = (
    "weights",
    "gathered",
    "grads",
    "optimizer",
    "EMA",
    "VAE",
    "other expert",
    "batch",
    "activations",
    "reward model",
    "text encoder",
    "image encoder",
)
PART_HELP = {
    "weights": "this rank's transformer shards (frozen in the recipe dtype, trained fp32 masters) and buffers",
    "gathered": "FSDP2's all-gathered (unsharded) block weights while a block runs",
    "grads": "fp32 gradients of the trained weights (sharded, and unsharded while reduced)",
    "optimizer": "AdamW's fp32 moments",
    "EMA": "fp32 EMA shadow of the trained weights",
    "VAE": "the VAE (fp32, replicated)",
    "other expert": "two-expert models (Wan2.2 A14B): the untrained expert's frozen shards, in the recipe dtype",
    "batch": "latents, text encodings and recorded transitions of this rank's videos",
    "activations": "forward activations, backward temporaries, decoded frames",
    "reward model": "an in-process reward model's weights (from its config; 0 when served)",
    "text encoder": "UMT5 weights, start-up only (freed before training)",
    "image encoder": "CLIP image encoder weights (fp32; Wan2.1 I2V), start-up only (freed before training)",
}


def _gib(n: int) -> str:
    return f"{n / GIB:.2f}"


def render(p: Plan, console=None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    lay = p.layout
    s = p.sizes
    console.print(
        f"[bold]{p.recipe}[/]: {p.model}, {p.world} GPUs = dp_replicate {lay['dp_replicate']} x "
        f"dp_shard {lay['dp_shard']} x sp {lay['sp']} x tp {lay['tp']}; per GPU {s.videos} videos "
        f"({s.transitions} transitions) per step, micro-batch {s.micro_batch}, "
        f"{'with' if lay['activation_checkpointing'] else 'without'} activation checkpointing"
    )
    used = [k for k in PARTS if any(ph.parts.get(k) for ph in p.phases)]
    unit, scale = ("GiB", GIB) if max(ph.peak for ph in p.phases) >= GIB else ("MiB", 2**20)
    mem = Table(title=f"Peak memory per GPU ({unit}; the GPU has {p.gpu.memory / scale:,.2f})")
    mem.add_column("")
    for ph in p.phases:
        mem.add_column(ph.name, justify="right")
    mem.add_row("[bold]peak[/]", *(f"[bold]{ph.peak / scale:,.2f}[/]" for ph in p.phases))
    mem.add_row(
        "fits", *("[green]yes[/]" if ph.peak <= p.gpu.memory else "[red]NO[/]" for ph in p.phases), end_section=True
    )
    for k in used:
        mem.add_row(k, *(f"{ph.parts.get(k, 0) / scale:,.2f}" for ph in p.phases))
    console.print(mem)
    flops = Table(title=f"Compute (at {p.gpu.tflops:g} TFLOP/s per GPU and {p.gpu.mfu:.0%} MFU)")
    columns: tuple[tuple[str, JustifyMethod], ...] = (
        ("work", "left"),
        ("FLOPs per GPU doing it", "right"),
        ("FLOPs, all GPUs", "right"),
        ("GPU-minutes", "right"),
    )
    for col, just in columns:
        flops.add_column(col, justify=just)
    for k, label in (
        ("rollout", "rollout, per step"),
        ("VAE decode", "VAE decode, per step"),
        ("training", "training, per step"),
    ):
        total = p.total_flops(k)
        flops.add_row(label, f"{p.flops[k]:.3e}", f"{total:.3e}", f"{p.gpu_seconds(total) / 60:.2f}")
    flops.add_row(
        "[bold]optimizer step[/]",
        f"{p.step_flops / p.world:.3e}",
        f"{p.step_flops:.3e}",
        f"[bold]{p.gpu_minutes_per_step:.2f}[/]",
    )
    if "evaluation" in p.flops:
        total = p.total_flops("evaluation")
        flops.add_row(
            "evaluation, each", f"{p.flops['evaluation']:.3e}", f"{total:.3e}", f"{p.gpu_seconds(total) / 60:.2f}"
        )
    console.print(flops)
    console.print(
        f"[bold]{p.steps} steps[/] (optim.max_steps) + {p.evaluations} evaluations: "
        f"[bold]{p.gpu_hours:,.1f} GPU-hours[/] ({p.gpu_hours / p.world:,.1f} h on {p.world} GPUs)"
    )
    for r in p.rewards:
        console.print(f"reward {r.name}: {r.model}, {r.params / 1e9:.2f}B parameters, {_gib(r.bytes)} GiB per GPU")
    for note in p.notes:
        console.print(f"[dim]{note}[/]")
    worst = p.peak
    if p.fits:
        console.print(
            f"[green]fits[/]: the largest peak is {worst.name}, {_gib(worst.peak)} GiB "
            f"({worst.peak / p.gpu.memory:.0%} of the GPU)"
        )
    else:
        console.print("[red]does not fit[/]: " + refusal(p))


def refusal(p: Plan) -> str:
    """Which phases do not fit, by how much, and what to change (recipe fields named)."""
    lines = []
    for ph in p.over():
        big = sorted(((v, k) for k, v in ph.parts.items() if v), reverse=True)[:3]
        lines.append(
            f"{ph.name} needs {_gib(ph.peak)} GiB per GPU, more than {_gib(p.gpu.memory)} GiB "
            f"(largest: {', '.join(f'{k} {_gib(v)}' for v, k in big)}); try:"
        )
        lines += [f"  - {a}" for a in p.advice(ph)]
    return "\n".join(lines)


def render_rollout_options(rows: list[OptionRow], console=None) -> None:
    """`fgrpo plan --rollout-options`: GPU-minutes per optimizer step with each rollout option (a
    recipe under a tenth of a GPU-minute per step, such as tiny, in GPU-milliseconds)."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    exact = exact_plan(rows)
    unit, scale, fmt = ("GPU-minutes", 1, ".2f") if exact.gpu_minutes_per_step >= 0.1 else ("GPU-ms", 60_000, ".2g")
    table = Table(
        title=f"Rollout options: {unit} per optimizer step, all {exact.world} GPUs "
        f"(at {exact.gpu.tflops:g} TFLOP/s and {exact.gpu.mfu:.0%} MFU; total includes VAE decode)"
    )
    table.add_column("option", no_wrap=True)
    for col in ("evals/\nvideo", "rollout", "share", "train", "total", "x of\nexact"):  # fits 80 columns
        table.add_column(col, justify="right")
    skipped = []
    for row in rows:
        if row.plan is None:
            table.add_row(row.option.name, "skipped", *["-"] * 5)
            skipped.append(f"{row.option.name}: skipped, {row.skipped}")
            continue
        m = step_minutes(row.plan)
        table.add_row(
            row.option.name,
            f"{m['evaluations_per_video']:.2f}",
            format(m["rollout_gpu_minutes"] * scale, fmt),
            f"{m['rollout_share']:.0%}",
            format(m["training_gpu_minutes"] * scale, fmt),
            f"[bold]{format(m['gpu_minutes_per_step'] * scale, fmt)}[/]",
            f"{m['gpu_minutes_per_step'] / exact.gpu_minutes_per_step:.2f}",
        )
    console.print(table)
    console.print(
        f"[dim]rollout, train, total: {unit} per step, all GPUs; share: rollout / total; recipe: the "
        "recipe's own rollout; the options are applied to the exact rollout; unipc K: "
        "rollout.ode_solver unipc with rollout.ode_steps K (euler and dpmpp_2m cost the same)[/]"
    )
    for line in skipped:
        console.print(f"[dim]{line}[/]")
