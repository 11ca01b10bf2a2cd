"""The policy being aligned, as rollouts, the policy-gradient pass and evaluation use it: the
parallelised transformer, the cached text encodings, the VAE decoder, the sampling schedule.

`build_policy` is the one place a run's model is put together (meta-device build, LoRA, storage
dtypes, TP + FSDP2, per-rank shard loading, prompts encoded once and the encoder freed). Training
adds an optimizer on top (trainer.Trainer); evaluation does not.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from fgrpo.algorithm import wan_sigmas
from fgrpo.distributed.parallel_dims import ParallelDims
from fgrpo.distributed.precision import PrecisionPolicy
from fgrpo.distributed.unsharded import Setting, decide_for
from fgrpo.models.model_folder import model_folder
from fgrpo.models.wan import load_wan
from fgrpo.models.wan.attention import apply_attention_backend, rollout_attention
from fgrpo.models.wan.cross_attention_cache import cached_text_projections
from fgrpo.models.wan.experts import (
    EXPERT_SUBFOLDERS,
    WanExperts,
    adapters_disabled,
    experts_of,
    folder_boundary_ratio,
    for_each_expert,
    rollout_weights,
    step_guidance_scales,
    trained_experts,
)
from fgrpo.models.wan.first_frame import VideoCondition, expands_timesteps
from fgrpo.models.wan.image_cache import ImageConditionCache
from fgrpo.models.wan.image_condition import ImageConditioning
from fgrpo.models.wan.loading import WanComponents
from fgrpo.models.wan.presets import PRESETS, vae_latent_shape
from fgrpo.models.wan.sharded_loading import build_on_meta, materialize, prepare_on_meta
from fgrpo.models.wan.text_cache import TextEmbeddingCache, cache_key, default_cache_folder
from fgrpo.models.wan.text_encoder import LazyTextEncoder
from fgrpo.recipe.config import Recipe

from .rollout import Guidance, NoiseConfig


@dataclass
class Policy:
    components: WanComponents  # transformer (parallelised), VAE; the text encoder is freed
    text: TextEmbeddingCache
    precision: PrecisionPolicy
    dims: ParallelDims
    device: torch.device
    sigmas: torch.Tensor  # the rollout's sigma grid
    noise: NoiseConfig
    cfg_scale: float
    latent_shape: tuple[int, int, int, int]
    rollout_unsharded: Setting = "auto"  # parallelism.rollout_unsharded: FSDP2 weights kept gathered in rollout()
    rollout_attention_backend: str | None = None  # model.rollout_attention_backend, inside rollout(); None: unchanged
    images: ImageConditionCache | None = None  # image-to-video models, TI2V text+image: each prompt's condition
    cfg_scale_2: float | None = None  # rollout.cfg_scale_2: the low-noise expert's steps' scale (None: cfg_scale)

    @property
    def transformer(self) -> torch.nn.Module:
        transformer = self.components.transformer
        assert transformer is not None, "a Policy's components hold its transformer (build_policy sets it)"
        return transformer

    @property
    def compute_dtype(self) -> torch.dtype:
        return self.precision.compute

    def guidance(self, sigmas: torch.Tensor | None = None) -> Guidance:
        """The guidance scale of each step of the grid `sigmas` (default: the rollout's), each expert's
        steps at its own (`step_guidance_scales`); one float when every step takes the same."""
        experts = self.components.transformer
        if self.cfg_scale_2 is None or self.cfg_scale_2 == self.cfg_scale or not isinstance(experts, WanExperts):
            return self.cfg_scale
        grid = self.sigmas if sigmas is None else sigmas
        return step_guidance_scales(grid, experts.boundary_ratio, self.cfg_scale, self.cfg_scale_2)

    def encode(self, prompts: list[str]) -> torch.Tensor:
        """Text encodings [B, L, D] from the cache (a group's G videos share one prompt)."""
        return self.text.lookup(prompts, self.device)

    def image_condition(self, prompts: list[str]) -> VideoCondition | None:
        """Each prompt's image condition from the cache (image-to-video models, TI2V text+image), else None."""
        return None if self.images is None else self.images.lookup(prompts, self.device)

    def image_files(self, prompts: list[str]) -> list[Path] | None:
        """Each prompt's conditioning image file (image-to-video models), else None."""
        return None if self.images is None else [self.images.files[p] for p in prompts]

    def negative_context(self, n: int) -> torch.Tensor:
        """The empty negative prompt's encoding, [n, L, D] (classifier-free guidance)."""
        return self.text.lookup([""], self.device).expand(n, -1, -1)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.components.decode(latents)

    @contextmanager
    def rollout(self):
        """Sampling without gradients (rollouts, evaluation): the transformer in eval mode, and
        what only sampling wants, undone on exit, exceptions included. FSDP2's weights are
        gathered once and kept for the whole block when `rollout_unsharded` says so
        (fgrpo.distributed.unsharded): bitwise the same samples, one all-gather per group. The
        text projection and cross-attention keys and values are computed once per micro-batch,
        not per step (fgrpo.models.wan.cross_attention_cache), also bitwise the same. Two experts
        (fgrpo.models.wan.experts): each gathered only while it samples, and each its own cache."""
        self.transformer.eval()
        try:
            keep = decide_for(experts_of(self.transformer)[0], self.rollout_unsharded, self.device)
            with (
                rollout_weights(self.transformer, enabled=keep),
                rollout_attention(self.transformer, self.rollout_attention_backend),
                for_each_expert(self.transformer, cached_text_projections),
            ):
                yield
        finally:
            self.transformer.train()

    @contextmanager
    def reference(self):
        """The reference policy: the base model, LoRA adapters disabled (for the KL term)."""
        with adapters_disabled(self.transformer):
            yield


def lora_shape(recipe: Recipe) -> tuple[int, float, tuple[str, ...]] | None:
    """The recipe's LoRA as `prepare_on_meta` takes it: (rank, alpha, target modules), or None
    for a full fine-tune."""
    lo = recipe.lora
    return (lo.rank, lo.alpha, tuple(lo.target_modules)) if lo.enabled else None


def encode_prompts_once(
    recipe: Recipe, folder: Path, prompts: list[str], cache_root: Path, device: torch.device, dtype: torch.dtype
) -> TextEmbeddingCache:
    """Every prompt encoded once (1/world of them per rank) into the runs folder's cache; the
    encoder is loaded only if the cache lacks some, and freed before anything else allocates."""
    m = recipe.model
    key = cache_key(folder, prompts, m.max_text_tokens, dtype)
    encoder = LazyTextEncoder(folder, dtype, m.max_text_tokens, device)
    try:
        return TextEmbeddingCache.build(encoder, prompts, default_cache_folder(cache_root, key), key=key)
    finally:
        encoder.free()


def prompt_file_images(file: str) -> dict[str, Path]:
    """Prompt text -> image path of a prompt file's records with an `image` (fgrpo.data.image_prompts)."""
    from fgrpo.data.image_prompts import prompt_images
    from fgrpo.data.prompts import read_prompt_lines, resolve_prompt_file

    path = resolve_prompt_file(file)
    return prompt_images(path, read_prompt_lines(path))


def encode_images_once(
    recipe: Recipe,
    folder: Path,
    vae,
    prompts: list[str],
    images: Mapping[str, Path] | None,
    cache_root: Path,
    device: torch.device,
    dtype: torch.dtype,
) -> ImageConditionCache | None:
    """Every prompt's image condition computed once (1/world of them per rank) into the runs folder's
    cache, for a model that takes images (None for text-to-video); the CLIP encoder is loaded only if
    the cache lacks some, and freed. `images` None: the recipe's prompt file's. Wan2.2-TI2V (its
    pipeline's `expand_timesteps`) takes either: text+image when the prompts have images (each its
    first latent frame, fgrpo.models.wan.first_frame), text-to-video when none has."""
    need = ImageConditioning.of_folder(folder)
    first_frame = expands_timesteps(folder)
    if not need.needed and not first_frame:
        return None
    images = prompt_file_images(recipe.prompts.file) if images is None else images
    if first_frame and not any(p in images for p in prompts):
        return None  # TI2V text-to-video
    lacking = [p for p in dict.fromkeys(prompts) if p not in images]
    if lacking:
        why = (
            "an image-to-video model (it conditions every video on an image)"
            if need.needed
            else "Wan2.2-TI2V, whose text+image mode takes an image for every prompt (or none: text-to-video)"
        )
        raise ValueError(
            f"prompts.file: {len(lacking)} prompt(s) have no `image`, e.g. {lacking[0]!r}, but {folder} is {why}"
        )
    ro = recipe.rollout
    return ImageConditionCache.build(
        folder,
        vae,
        {p: images[p] for p in prompts},
        (ro.frames, ro.height, ro.width),
        vae_latent_shape(vae.config, ro.frames, ro.height, ro.width),
        need.image_dim is not None,
        cache_root,
        device,
        dtype,
        first_frame=first_frame,
    )


def build_transformer(
    recipe: Recipe, folder: Path, dims: ParallelDims, precision: PrecisionPolicy, device: torch.device
) -> torch.nn.Module:
    """The folder's transformer on this rank, or its two experts as one `WanExperts` (Wan2.2 A14B:
    each loaded and parallelised as a single transformer is, the one lora.experts leaves out frozen)."""
    boundary = folder_boundary_ratio(folder)
    preset = PRESETS.get(recipe.model.preset)
    if preset is not None and preset.boundary_ratio != boundary:  # validation read the preset's
        raise ValueError(
            f"model.path: {folder} has boundary_ratio {boundary} (model_index.json), but model.preset "
            f"{recipe.model.preset} has {preset.boundary_ratio}: name the preset of the folder's model"
        )
    trained = (0,) if boundary is None else trained_experts(recipe.lora.experts)

    def load(e: int, subfolder: str) -> torch.nn.Module:
        # Built on the meta device and parallelised there; each rank then reads only its shards.
        transformer = prepare_on_meta(
            build_on_meta(folder, subfolder),
            dims,
            precision,
            lora_shape(recipe),
            recipe.parallelism.activation_checkpointing,
            recipe.parallelism.compile,
            trainable=e in trained,
        )
        # Seeded: every rank, layout and restart creates identical adapter weights (per expert).
        materialize(transformer, folder, device, lora_seed=recipe.prompts.seed + e, subfolder=subfolder)
        # Both backends checked here (package, device, dtype, backward), before any step runs.
        apply_attention_backend(
            transformer,
            recipe.model.attention_backend,
            recipe.model.rollout_attention_backend,
            device=device,
            dtype=precision.compute,
        )
        return transformer

    if boundary is None:
        return load(0, EXPERT_SUBFOLDERS[0])
    high, low = (load(e, sub) for e, sub in enumerate(EXPERT_SUBFOLDERS))
    return WanExperts(high, low, boundary)


def build_policy(
    recipe: Recipe,
    dims: ParallelDims,
    device: torch.device,
    prompts: list[str],
    cache_root: Path,
    images: Mapping[str, Path] | None = None,
) -> Policy:
    """Put a run's model together on this rank (collective: every rank calls it). `images`: prompt ->
    its image file, for an image-to-video model (default: the recipe's prompt file's `image` fields)."""
    precision = PrecisionPolicy.from_name(recipe.model.dtype)
    folder = model_folder(recipe.model)
    components = load_wan(
        folder,
        recipe.model.dtype,
        recipe.model.max_text_tokens,
        str(device),
        with_transformer=False,
        with_text_encoder=False,
    )
    # Encoded before the transformer and an optimizer allocate: the encoder's memory is free again.
    text = encode_prompts_once(recipe, folder, ["", *prompts], cache_root, device, precision.compute)
    image_cache = encode_images_once(
        recipe, folder, components.vae, prompts, images, cache_root, device, precision.compute
    )
    components.transformer = build_transformer(recipe, folder, dims, precision, device)
    ro = recipe.rollout
    return Policy(
        components,
        text,
        precision,
        dims,
        device,
        wan_sigmas(ro.steps, ro.flow_shift),
        NoiseConfig(ro.noise_schedule, ro.noise_constant),
        ro.cfg_scale,
        vae_latent_shape(components.vae.config, ro.frames, ro.height, ro.width),
        recipe.parallelism.rollout_unsharded,
        rollout_attention_backend=recipe.model.rollout_attention_backend,
        images=image_cache,
        cfg_scale_2=ro.cfg_scale_2,
    )
