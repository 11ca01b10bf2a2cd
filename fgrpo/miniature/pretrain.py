"""Pre-train the miniature world's text-to-video model: Wan's architectures, trained from scratch.

The model is a real Wan2.1 T2V pipeline in miniature, saved as a diffusers folder and loaded by
the same `from_pretrained` code as Wan's weights:

* `AutoencoderKLWan` (base width 8, Wan's 4x temporal / 8x spatial compression, 16 latent
  channels), trained as an autoencoder on rendered videos; its per-channel latent mean and std
  are measured afterwards and saved in its config (`latents_mean` / `latents_std`), as Wan's are.
* `UMT5EncoderModel` (width 64, 2 layers) with seeded random weights, frozen from the start (Wan
  keeps UMT5 frozen); the tokenizer is a byte-level BPE trained on the grammar's prompts.
* `WanTransformer3DModel` (the `miniature` preset: 4 layers, 4 heads of 32), trained with flow
  matching as Wan and SD3 are: x_s = (1 - s) x_0 + s eps, target v = eps - x_0, timestep s * 1000,
  s drawn logit-normal and shifted by the recipe's flow shift; the prompt is replaced by the empty
  prompt for `text_dropout` of the samples so classifier-free guidance works.

Pre-training sees only the scenes whose colour/shape pair is seen (fgrpo.miniature.world): the
held-out prompts ask for pairs it never saw. Everything is seeded; the number of steps is fixed
(not a time budget), so a build is reproducible up to the CPU's floating-point order.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn

from fgrpo.algorithm import ode_step, wan_sigmas
from fgrpo.algorithm.schedule import shift_sigmas
from fgrpo.fileio import atomic_folder, atomic_write_text
from fgrpo.miniature.world import FRAMES, SIZE, WORLD_VERSION, Scene, all_scenes, prompt_sets, render_batch
from fgrpo.models.wan.presets import PRESETS, vae_latent_shape
from fgrpo.models.wan.random_build import (
    TextEncoderSpec,
    build_tokenizer,
    identity_plus_noise_,
    save_components,
    text_encoder_config,
)

if TYPE_CHECKING:
    from diffusers import AutoencoderKLWan

MINIATURE_VERSION = 1  # bump with any change to what a build produces (cached folders are rebuilt)
MINIATURE_MARKER = "FGRPO_MINIATURE_VERSION"
QUALITY_FILE = "miniature_quality.json"
MAX_TEXT_TOKENS = 16
# Wan2.1's compression (4x temporal, 8x spatial, 16 channels), narrow. The 4x-spatial VAEs tried for a
# version 2 reconstruct more sharply but their latents were harder for this transformer
# (docs/miniature.md, "Towards a version 2").
VAE_CONFIG: dict[str, Any] = dict(
    base_dim=8, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True]
)
TEXT_ENCODER = TextEncoderSpec(d_kv=16, d_ff=128, num_layers=2, num_heads=4)


@dataclass(frozen=True)
class PretrainConfig:
    """How the miniature model is built. The defaults are the released build (MINIATURE_VERSION)."""

    seed: int = 0
    vae_image_steps: int = 400
    vae_image_batch: int = 16
    vae_video_steps: int = 200
    vae_video_batch: int = 4
    vae_lr: float = 1.5e-3
    vae_video_lr_scale: float = 0.6
    dataset_seeds: int = 3  # rendered videos per pre-training scene
    dit_steps: int = 2500
    dit_batch: int = 32
    dit_lr: float = 1e-3
    text_dropout: float = 0.1
    flow_shift: float = 3.0
    eval_steps: int = 10
    eval_cfg: float = 4.0


def _progress():
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        transient=False,
    )


def _videos(scenes: list[Scene], seeds: list[int]) -> torch.Tensor:
    """Rendered videos as the VAE takes them: [B, 3, F, H, W] in [-1, 1]."""
    return render_batch(scenes, seeds).permute(0, 2, 1, 3, 4) * 2 - 1


def init_vae_(vae: nn.Module, seed: int) -> None:
    """Start the autoencoder near the identity, so that short training suffices.

    Every conv: a centred Dirac kernel plus small noise (decoded colours follow the latent from
    step 0). The decoder's temporal upsampling convs emit two frames per input frame (their output
    channels are [frame A; frame B]): both halves start as a copy. The encoder's temporal
    downsampling convs start as the mean of their 3 frames, so no frame is ignored at first.
    """
    from diffusers.models.autoencoders.autoencoder_kl_wan import WanResample

    gen = torch.Generator().manual_seed(seed)
    for module in vae.modules():
        if isinstance(module, (nn.Conv2d, nn.Conv3d)):
            identity_plus_noise_(module, gen)
    with torch.no_grad():
        for module in vae.modules():
            if not isinstance(module, WanResample) or module.mode not in ("upsample3d", "downsample3d"):
                continue
            w = module.time_conv.weight  # [out, in, 3, 1, 1]
            channels = w.shape[1]
            for c in range(channels):
                if module.mode == "upsample3d":
                    w[channels + c, c, -1] += 1.0
                else:
                    w[c, c, -1] -= 1.0
                    w[c, c, :] += 1.0 / 3.0


def vae_loss(vae: AutoencoderKLWan, x: torch.Tensor) -> torch.Tensor:
    """L1 + L2 reconstruction, object pixels weighted 5x (the objects are what prompts talk about and
    a few percent of the pixels), of a latent jittered by a tenth of the posterior's std (a smoother
    latent space for the transformer; measured without the jitter, the held-out gold of the VAE's
    reconstructions fell from 0.64 to 0.56), plus a tiny pull of the latent mean towards 0."""
    post = vae.encode(x, return_dict=False)[0]
    rec = vae.decode(post.mean + 0.1 * post.std * torch.randn_like(post.mean), return_dict=False)[0]
    weight = 1 + 4 * ((x - x[..., :1, :1]).abs().amax(1, keepdim=True) > 0.2).float()
    return (weight * ((rec - x).abs() + (rec - x).square())).mean() + 1e-5 * post.mean.square().mean()


def train_vae(
    cfg: PretrainConfig, scenes: list[Scene], progress, vae_config: dict[str, Any] = VAE_CONFIG
) -> AutoencoderKLWan:
    """An AutoencoderKLWan trained in two phases, each with its own cosine learning-rate decay:
    single frames first (the causal VAE encodes a first frame alone: a ninth of a video's cost, so
    many more steps learn the spatial code), then whole videos (the temporal (de)compression).
    `vae_config`: the released build's unless a benchmark tries another
    (benchmarks/miniature_vae_variants.py)."""
    from diffusers import AutoencoderKLWan

    torch.manual_seed(cfg.seed)
    vae = AutoencoderKLWan(**vae_config)
    init_vae_(vae, cfg.seed)
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    rng = random.Random(f"vae:{cfg.seed}")
    phases = (
        ("VAE frames", cfg.vae_image_steps, cfg.vae_image_batch, 1.0),
        ("VAE videos", cfg.vae_video_steps, cfg.vae_video_batch, cfg.vae_video_lr_scale),
    )
    for name, steps, batch, lr_scale in phases:
        task = progress.add_task(name, total=steps, info="")
        for step in range(steps):
            for group in opt.param_groups:
                group["lr"] = cfg.vae_lr * lr_scale * 0.5 * (1 + math.cos(math.pi * step / steps))
            scenes_b = [rng.choice(scenes) for _ in range(batch)]
            x = _videos(scenes_b, [rng.randrange(2**31) for _ in scenes_b])
            if name == "VAE frames":
                x = x[torch.arange(batch), :, torch.tensor([rng.randrange(FRAMES) for _ in range(batch)])][:, :, None]
            loss = vae_loss(vae, x)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            progress.update(task, advance=1, info=f"loss {loss.item():.3f}")
    return vae.requires_grad_(False).eval()


@torch.no_grad()
def encode_dataset(
    vae: AutoencoderKLWan, cfg: PretrainConfig, scenes: list[Scene], progress, batch: int = 16
) -> tuple[torch.Tensor, list[int], list[float], list[float]]:
    """Every scene rendered `dataset_seeds` times and encoded (posterior mean), normalised per channel.
    Returns (latents [N, C, F', H', W'], the scene index of each, latents_mean, latents_std)."""
    items = [(i, seed) for seed in range(cfg.dataset_seeds) for i in range(len(scenes))]
    task = progress.add_task("encode", total=len(items), info="")
    latents = []
    for s in range(0, len(items), batch):
        chunk = items[s : s + batch]
        x = _videos([scenes[i] for i, _ in chunk], [1_000_000 * cfg.seed + 1000 * seed + i for i, seed in chunk])
        latents.append(vae.encode(x, return_dict=False)[0].mean)
        progress.update(task, advance=len(chunk))
    z = torch.cat(latents)
    mean = z.mean(dim=(0, 2, 3, 4))
    std = z.std(dim=(0, 2, 3, 4)).clamp_min(1e-3)
    z = (z - mean.view(1, -1, 1, 1, 1)) / std.view(1, -1, 1, 1, 1)
    return z, [i for i, _ in items], mean.tolist(), std.tolist()


def train_transformer(
    cfg: PretrainConfig, latents: torch.Tensor, scene_of: list[int], text: torch.Tensor, empty: torch.Tensor, progress
) -> nn.Module:
    """Flow matching on the encoded dataset (see the module docstring); AdamW with cosine decay."""
    from diffusers import WanTransformer3DModel

    torch.manual_seed(cfg.seed)
    model = WanTransformer3DModel(**PRESETS["miniature"].transformer_config())
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.dit_lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.dit_lr, total_steps=cfg.dit_steps, pct_start=0.05)
    gen = torch.Generator().manual_seed(cfg.seed)
    scene_of_t = torch.tensor(scene_of)
    task = progress.add_task("transformer", total=cfg.dit_steps, info="")
    ema_loss = None
    for _ in range(cfg.dit_steps):
        idx = torch.randint(0, len(latents), (cfg.dit_batch,), generator=gen)
        x0 = latents[idx]
        ctx = text[scene_of_t[idx]].clone()
        drop = torch.rand(cfg.dit_batch, generator=gen) < cfg.text_dropout
        ctx[drop] = empty
        # Half logit-normal (where the loss matters most), half uniform (every timestep is sampled at).
        u = torch.sigmoid(torch.randn(cfg.dit_batch, generator=gen))
        u = torch.where(torch.rand(cfg.dit_batch, generator=gen) < 0.5, u, torch.rand(cfg.dit_batch, generator=gen))
        sigma = shift_sigmas(u, cfg.flow_shift)
        eps = torch.randn(x0.shape, generator=gen)
        s = sigma.view(-1, 1, 1, 1, 1)
        xs = (1 - s) * x0 + s * eps
        v = model(xs, sigma * 1000.0, ctx, return_dict=False)[0]
        loss = (v - (eps - x0)).square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        ema_loss = loss.item() if ema_loss is None else 0.98 * ema_loss + 0.02 * loss.item()
        progress.update(task, advance=1, info=f"loss {ema_loss:.3f}")
    return model.requires_grad_(False).eval()


@torch.no_grad()
def sample_videos(
    transformer,
    vae,
    text: torch.Tensor,
    empty: torch.Tensor,
    latents_mean,
    latents_std,
    steps: int,
    shift: float,
    cfg_scale: float,
    seed: int,
) -> torch.Tensor:
    """Deterministic ODE samples (Euler on Wan's sigma grid, CFG against the empty prompt), decoded:
    [B, F, 3, H, W] in [0, 1]. The trainer's sampler does the same with more options."""
    b = text.shape[0]
    shape = (b, *vae_latent_shape(vae.config, FRAMES, SIZE, SIZE))
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    sigmas = wan_sigmas(steps, shift).float()
    ctx = torch.cat([text, empty.expand(b, -1, -1)])
    for i in range(steps):
        t = torch.full((2 * b,), float(sigmas[i]) * 1000.0)
        v_c, v_u = transformer(torch.cat([x, x]), t, ctx, return_dict=False)[0].chunk(2)
        x = ode_step(x, v_u + cfg_scale * (v_c - v_u), sigmas[i], sigmas[i + 1])
    mean = torch.tensor(latents_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(latents_std).view(1, -1, 1, 1, 1)
    video = vae.decode(x * std + mean).sample
    return (video.clamp(-1, 1) * 0.5 + 0.5).permute(0, 2, 1, 3, 4).contiguous()


def build_text_side(cfg: PretrainConfig):
    """The tokenizer (BPE on every prompt of the grammar) and the frozen, seeded UMT5 encoder."""
    from transformers import UMT5Config, UMT5EncoderModel

    corpus = [s.prompt for s in all_scenes()]
    tokenizer = build_tokenizer(corpus)
    torch.manual_seed(cfg.seed)
    encoder = UMT5EncoderModel(UMT5Config(**text_encoder_config(TEXT_ENCODER, PRESETS["miniature"].text_dim)))
    return tokenizer, encoder.requires_grad_(False).eval()


def pretrain(path: str | Path, cfg: PretrainConfig = PretrainConfig(), progress: bool = True) -> Path:
    """Build the miniature model and save it as a diffusers folder at `path` (atomically), with
    `miniature_quality.json`: held-out gold faithfulness per attribute of its samples."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    from fgrpo.models.wan.text_encoder import encode_with_lengths

    torch.manual_seed(cfg.seed)
    started = time.perf_counter()
    sets = prompt_sets()
    tokenizer, encoder = build_text_side(cfg)

    def encode(prompts: list[str]) -> torch.Tensor:
        return encode_with_lengths(tokenizer, encoder, prompts, MAX_TEXT_TOKENS, torch.float32)[0]

    seconds: dict[str, float] = {}
    with _progress() if progress else NoProgress() as bar:
        mark = time.perf_counter()
        vae = train_vae(cfg, sets.pretrain, bar)
        seconds["vae"], mark = time.perf_counter() - mark, time.perf_counter()
        latents, scene_of, mean, std = encode_dataset(vae, cfg, sets.pretrain, bar)
        vae.register_to_config(latents_mean=mean, latents_std=std)
        text = encode([s.prompt for s in sets.pretrain])
        empty = encode([""])
        seconds["encode"], mark = time.perf_counter() - mark, time.perf_counter()
        transformer = train_transformer(cfg, latents, scene_of, text, empty, bar)
        seconds["transformer"] = time.perf_counter() - mark
    components = dict(
        transformer=transformer,
        vae=vae,
        text_encoder=encoder,
        tokenizer=tokenizer,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=cfg.flow_shift),
    )
    # The marker that makes a folder count as built is written last, after the quality file.
    out = save_components(path, components, "FGRPO_MINIATURE_SAVED", marker_text(cfg))
    quality = {
        "miniature_version": MINIATURE_VERSION,
        "world_version": WORLD_VERSION,
        "config": asdict(cfg),
        "build_seconds": round(time.perf_counter() - started, 1),
        "phase_seconds": {k: round(v, 1) for k, v in seconds.items()},
        **heldout_quality(out, cfg),  # measured on the saved folder, loaded as a user's run loads it
    }
    atomic_write_text(out / QUALITY_FILE, json.dumps(quality, indent=1) + "\n")
    atomic_write_text(out / MINIATURE_MARKER, marker_text(cfg))
    return out


def heldout_quality(path: str | Path, cfg: PretrainConfig = PretrainConfig(), videos_per_prompt: int = 2) -> dict:
    """Gold faithfulness of a model folder's samples on the held-out prompts, per attribute, loaded
    through `from_pretrained` (fgrpo.models.wan.loading.load_wan). Also the ceiling: the gold of the
    VAE's reconstructions of the ground-truth renders (what a perfect transformer could reach)."""
    from fgrpo.miniature.scoring import gold_scores
    from fgrpo.models.wan.loading import load_wan

    c = load_wan(path, dtype="float32", max_text_tokens=MAX_TEXT_TOKENS)
    scenes = [s for s in prompt_sets().heldout for _ in range(videos_per_prompt)]
    prompts = [s.prompt for s in scenes]
    vae = c.vae
    frames = sample_videos(
        c.transformer,
        vae,
        c.encode_prompts(prompts),
        c.encode_prompts([""]),
        vae.config["latents_mean"],
        vae.config["latents_std"],
        cfg.eval_steps,
        cfg.flow_shift,
        cfg.eval_cfg,
        seed=cfg.seed,
    )
    return {
        "heldout_prompts": len(prompt_sets().heldout),
        "videos_per_prompt": videos_per_prompt,
        "sampler": {"steps": cfg.eval_steps, "cfg": cfg.eval_cfg, "shift": cfg.flow_shift},
        "heldout_gold": gold_summary(gold_scores(frames, prompts)),
        "vae_ceiling_gold": vae_ceiling_gold(vae, videos_per_prompt),
    }


def gold_summary(scores: dict) -> dict:
    """Gold scores per video -> their means: overall, all attributes right, and per attribute."""
    from fgrpo.miniature.scoring import all_correct, mean_score

    return {
        "overall": round(float(mean_score(scores).mean()), 4),
        "all_attributes_right": round(float(all_correct(scores).float().mean()), 4),
        **{k: round(float(v.float().mean()), 4) for k, v in scores.items()},
    }


@torch.no_grad()
def vae_ceiling_gold(vae, videos_per_prompt: int = 2) -> dict:
    """The held-out gold of the VAE's reconstructions of the ground-truth renders (render seeds 0,
    1, ...): what a perfect transformer could reach through this decoder."""
    from fgrpo.miniature.scoring import gold_scores

    scenes = [s for s in prompt_sets().heldout for _ in range(videos_per_prompt)]
    latent = vae.encode(_videos(scenes, list(range(len(scenes)))), return_dict=False)[0].mean
    rec = vae.decode(latent, return_dict=False)[0]
    rec = (rec.clamp(-1, 1) * 0.5 + 0.5).permute(0, 2, 1, 3, 4)
    return gold_summary(gold_scores(rec, [s.prompt for s in scenes]))


def marker_text(cfg: PretrainConfig) -> str:
    return f"{MINIATURE_VERSION} world={WORLD_VERSION} {json.dumps(asdict(cfg), sort_keys=True)}\n"


class NoProgress:
    """The progress bar's interface, silent (builds without a terminal, benchmarks)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def add_task(self, *args, **kwargs) -> int:
        return 0

    def update(self, *args, **kwargs) -> None:
        pass


def miniature_cache_name(seed: int = 0) -> str:
    """The cached miniature model's folder name under $FGRPO_CACHE."""
    return f"miniature-v{MINIATURE_VERSION}-seed{seed}"


def released_model_folder(seed: int = 0) -> Path:
    """The build committed with the package (fgrpo/miniature/released/): the released build of
    `seed`, so a fresh machine copies 5 MB instead of pre-training for 10 minutes. Only seed 0 is
    released; `benchmarks/rebuild_miniature.py` rebuilds it from this module and compares."""
    return Path(__file__).parent / "released" / miniature_cache_name(seed)


def install_released_or_pretrain(path: Path, cfg: PretrainConfig) -> Path:
    """Write the miniature model of `cfg` to `path`: a copy of the released build when one is
    committed for exactly this build (its marker equals `marker_text(cfg)`), else pre-train it.
    The copy is made in a temporary sibling and renamed, so an interrupted copy leaves no folder
    that looks complete."""
    import shutil

    released = released_model_folder(cfg.seed)
    try:
        is_released = (released / MINIATURE_MARKER).read_text() == marker_text(cfg)
    except OSError:
        is_released = False
    if not is_released:
        return pretrain(path, cfg)
    with atomic_folder(path) as tmp:
        shutil.copytree(released, tmp, dirs_exist_ok=True)
    return path


def miniature_model_path(seed: int = 0) -> Path:
    """The cached miniature model folder ($FGRPO_CACHE), on first use copied from the released
    build (seed 0) or pre-trained (minutes; one process builds it while the others wait on a lock)."""
    from fgrpo.models.wan.random_build import cached_build

    cfg = PretrainConfig(seed=seed)
    return cached_build(
        miniature_cache_name(seed),
        MINIATURE_MARKER,
        marker_text(cfg),
        lambda path: install_released_or_pretrain(path, cfg),
    )
