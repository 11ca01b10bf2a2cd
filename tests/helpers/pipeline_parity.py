"""The diffusers side of the sampler-parity tests: the same initial noise, text and guidance given to a
Wan pipeline and to fgrpo's sampler (fgrpo.trainer.rollout.sample with no SDE step)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import torch

STEPS, CFG = 4, 2.0  # 4 steps of the pipeline's own grid, guidance 2 (both CFG halves exercised)


@dataclass
class ParityInputs:
    x0: torch.Tensor
    """Initial noise, [1, C, F', H', W']."""
    text: torch.Tensor
    negative: torch.Tensor


def parity_inputs(preset, frames: int, size: int, text_tokens: int = 16) -> ParityInputs:
    """Seeded noise of the preset's latent shape and random text/negative embeddings."""
    gen = torch.Generator().manual_seed(1)
    x0 = torch.randn(1, *preset.latent_shape(frames, size, size), generator=gen)
    text, negative = torch.randn(2, 1, text_tokens, preset.text_dim, generator=gen)
    return ParityInputs(x0, text, negative)


def pipeline_latents(
    pipe: Any, inputs: ParityInputs, frames: int, size: int, *image, guidance_scale_2: float | None = None
) -> torch.Tensor:
    """The pipeline's final latents for `inputs` (an image first for image-to-video pipelines);
    `guidance_scale_2`: a two-expert pipeline's low-noise expert's scale (None: the pipeline's default, CFG)."""
    extra = {} if guidance_scale_2 is None else {"guidance_scale_2": guidance_scale_2}
    return pipe(
        *image,
        prompt_embeds=inputs.text,
        negative_prompt_embeds=inputs.negative,
        latents=inputs.x0.clone(),
        height=size,
        width=size,
        num_frames=frames,
        num_inference_steps=STEPS,
        guidance_scale=CFG,
        output_type="latent",
        return_dict=False,
        **extra,
    )[0]


def pipeline_sigmas(pipe: Any) -> torch.Tensor:
    """The grid the pipeline just sampled on (its scheduler's sigmas after the call)."""
    return cast(torch.Tensor, pipe.scheduler.sigmas)


def sample_image_to_video(pipe: Any, image, text: torch.Tensor, frames: int, size: int, seed: int = 0) -> torch.Tensor:
    """`WanImageToVideoPipeline` sampled in 2 steps (with two experts: sigma 1.0 high noise, 0.5 low),
    the text given as embeddings [prompt; negative prompt]: diffusers 0.42's I2V prompt cleaning calls
    ftfy unguarded (not installed). Returns the frames [1, F, 3, H, W]."""
    from diffusers.pipelines.wan.pipeline_output import WanPipelineOutput

    out = pipe(
        image,
        prompt_embeds=text[:1],
        negative_prompt_embeds=text[1:],
        height=size,
        width=size,
        num_frames=frames,
        num_inference_steps=2,
        output_type="pt",
        generator=torch.Generator().manual_seed(seed),
    )
    assert isinstance(out, WanPipelineOutput)
    return out.frames
