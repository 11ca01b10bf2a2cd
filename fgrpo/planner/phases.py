"""One rank's phases of a Flash-GRPO step, run on fake tensors and measured by torch's trackers.

Each phase runs the trainer's own code on the rank's real shapes: the parallelised transformer
(`prepare_on_meta`: LoRA, storage dtypes, TP -> activation checkpointing -> FSDP2, the trainer's
path), `velocity` (CFG in one batch), `ode_step` / `sde_step`, `policy_loss` and backward,
`PolicyUpdate` (AdamW) and `EMA`, `WanComponents.decode`, the UMT5 encoder. Every tensor is a
fake tensor (`FakeTensorMode`): shapes, dtypes and lifetimes are real, no memory is used and
nothing is computed. The resident state each phase starts from is the trainer's in steady state
(step >= 1: AdamW moments exist, gradients were dropped by `zero_grad`), and the batch state the
trainer keeps (`flash_grpo_step`): latents and text encodings of the rank's videos, the recorded
transitions (kept twice during training: the per-micro-batch parts and their concatenation),
the decoded frames of a micro-batch.

Where the trainer's code cannot run on fake tensors the step is mirrored: `sample` and
`transition_log_prob` read values (`nonzero`, `float(sigma)`), so their few lines are repeated
here around the same `velocity`, `ode_step`, `sde_step` calls; `clip_grad_norm` tests
`isfinite` of the norm, so it is not run (it allocates a few scalars and scales in place).
One micro-batch stands for all: the last rollout micro-batch (the most transitions recorded),
the second training micro-batch (gradients of the first accumulated). FLOPs are linear in the
batch, so a micro-batch's count scales to the step.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, cast

import torch

from fgrpo.algorithm import ode_step, policy_loss, sde_step
from fgrpo.models.wan.cross_attention_cache import cached_text_projections
from fgrpo.models.wan.loading import WanComponents
from fgrpo.models.wan.lora import trainable_parameters
from fgrpo.models.wan.sharded_loading import meta_transformer, prepare_on_meta
from fgrpo.models.wan.text_cache import TextEmbeddingCache
from fgrpo.trainer.ema import EMA
from fgrpo.trainer.evaluate import thumbnails
from fgrpo.trainer.policy import lora_shape
from fgrpo.trainer.rollout import guided_velocity, text_input, velocity
from fgrpo.trainer.update import PolicyUpdate

from .guidance import measured_scale
from .world import PhaseTracker, count_flops, storage_bytes

if TYPE_CHECKING:
    from diffusers import WanTransformer3DModel

TEXT_BATCH = inspect.signature(TextEmbeddingCache.build).parameters["batch_size"].default


@dataclass
class Phase:
    """One phase's peak on one GPU: bytes in total and by part, and FLOPs per unit of work."""

    name: str
    peak: int
    parts: dict[str, int]
    flops: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Sizes:
    """The rank's share of a step (see flash_grpo_step)."""

    videos: int  # rollout videos on this rank
    micro_batch: int  # videos (rollout) or transitions (training) per forward
    transitions: int  # recorded SDE transitions on this rank
    per_video: int  # transitions recorded per video (1, or steps for full-trajectory)
    eval_videos: int  # held-out videos on this rank (0: no evaluation)
    latent: tuple[int, int, int, int]
    text_tokens: int
    text_dim: int


def _parts(peak: dict[str, int], known: dict[str, int]) -> dict[str, int]:
    """FSDPMemTracker's categories at the peak -> the planner's parts. `known` are resident
    tensors registered as inputs whose bytes are known (EMA, VAE); the rest of the inputs is batch state."""
    g = peak.get
    inputs = g("Inputs", 0)
    parts = {
        "weights": g("Sharded Param", 0) + g("Buffer", 0),
        "gathered": g("Unsharded Param", 0) + g("All Gather", 0),
        "grads": g("Sharded Grad", 0) + g("Unsharded Grad", 0) + g("Reduce Scatter", 0),
        "optimizer": g("OptState", 0),
    }
    for name, nbytes in known.items():
        parts[name] = min(nbytes, inputs)
        inputs -= parts[name]
    parts["batch"] = inputs
    parts["activations"] = g("Activation", 0) + g("Temp", 0)
    return parts


def text_encoding(spec, recipe, precision, fake) -> Phase:
    """Start-up: the UMT5 encoder (compute dtype) and the VAE (fp32) resident, one batch of
    prompts encoded at max_text_tokens (encode_with_lengths's forward). Freed afterwards."""
    from diffusers import AutoencoderKLWan
    from torch.distributed._tools.mem_tracker import MemTracker
    from transformers import UMT5Config, UMT5EncoderModel

    with torch.device("meta"):
        encoder = UMT5EncoderModel(UMT5Config(**spec.text_encoder)).to(precision.compute)
        vae = AutoencoderKLWan(**spec.vae)
    encoder.eval()  # (frozen in the trainer; MemTracker hooks every parameter, so left trainable: no_grad below)
    length = recipe.model.max_text_tokens
    with fake:
        encoder.to_empty(device="cpu")
        encoder.tie_weights()  # to_empty gives each use of a tied weight its own tensor
        vae.to_empty(device="cpu")
        tracker = MemTracker()
        tracker.track_external(encoder, vae)
        with tracker, count_flops() as flops, torch.no_grad():
            ids = torch.zeros(TEXT_BATCH, length, dtype=torch.long)
            mask = torch.ones(TEXT_BATCH, length, dtype=torch.long)
            hidden = encoder(ids, mask).last_hidden_state
            emb = (hidden * mask.unsqueeze(-1).to(hidden.dtype)).to(precision.compute)
            del hidden, emb
    peak = {
        getattr(k, "value", k): int(v)
        for snap in tracker.get_tracker_snapshot("peak").values()
        for k, v in snap.items()
    }
    enc_bytes, vae_bytes = storage_bytes(*encoder.parameters()), storage_bytes(*vae.parameters(), *vae.buffers())
    parts = {"text encoder": enc_bytes, "VAE": vae_bytes, "activations": peak.get("Total", 0) - enc_bytes - vae_bytes}
    return Phase("text encoding", peak.get("Total", 0), parts, {"batch": flops.get_total_flops()})


def trained_expert(spec, recipe, dims, precision):
    """A trained transformer as the trainer prepares it (`prepare_on_meta`: LoRA or full, storage
    dtypes, TP, activation checkpointing, FSDP2), on the meta device."""
    # cast: diffusers types from_config (behind meta_transformer) as the model or a tuple; it is the model.
    return cast(
        "WanTransformer3DModel",
        prepare_on_meta(
            meta_transformer(spec.transformer),
            dims,
            precision,
            lora_shape(recipe),
            recipe.parallelism.activation_checkpointing,
        ),
    )


def trains_both_experts(spec, recipe) -> bool:
    """Two experts and lora.experts=both: the second is trained as the first (fgrpo.models.wan.experts)."""
    return spec.experts > 1 and recipe.lora.experts == "both"


def frozen_expert(spec, dims, precision):
    """Wan2.2 A14B's expert that is not trained: frozen weights in their storage dtypes, laid out
    (TP, FSDP2) as the trained one, on the meta device; never run (a forward costs the same)."""
    from fgrpo.models.wan.parallelize import parallelize_wan

    expert = meta_transformer(spec.transformer)
    expert.requires_grad_(False)
    precision.apply_storage(expert)
    parallelize_wan(expert, dims, precision, activation_checkpointing=False)
    return expert


class ImageConditioned:
    """The transformer as diffusers' image-to-video pipelines call it: the condition channels (4
    mask + the image's latent) appended to the latents, and the image's CLIP tokens where the
    model has image cross-attention; one video's inputs repeated over the batch."""

    def __init__(self, transformer, condition: torch.Tensor, image: torch.Tensor | None):
        self.transformer, self.condition, self.image = transformer, condition, image
        self.inputs = (condition,) if image is None else (condition, image)

    def __call__(self, x, t, text, return_dict: bool = False):
        n = x.shape[0]
        x = torch.cat([x, self.condition.expand(n, *self.condition.shape[1:]).to(x.dtype)], dim=1)
        if self.image is None:
            return self.transformer(x, t, text, return_dict=return_dict)
        image = self.image.expand(n, *self.image.shape[1:])
        return self.transformer(x, t, text, encoder_hidden_states_image=image, return_dict=return_dict)


def image_conditioned(transformer, spec, latent: tuple[int, ...], dtype: torch.dtype):
    """The transformer itself for text-to-video, else `ImageConditioned` with fake inputs (under the fake mode)."""
    from .spec import CLIP_IMAGE_TOKENS

    if not spec.condition_channels and spec.image_dim is None:
        return transformer
    condition = torch.zeros(1, spec.condition_channels, *latent[1:], dtype=dtype)
    image = None if spec.image_dim is None else torch.zeros(1, CLIP_IMAGE_TOKENS, spec.image_dim, dtype=dtype)
    return ImageConditioned(transformer, condition, image)


class Rank:
    """Rank 0's transformer, optimizer, EMA and VAE on fake tensors, tracked from the first step on."""

    def __init__(self, spec, recipe, dims, precision, fake, sizes: Sizes, foreach: bool = True):
        from diffusers import AutoencoderKLWan

        self.recipe, self.dims, self.precision, self.fake, self.sizes = recipe, dims, precision, fake, sizes
        self.transformer = trained_expert(spec, recipe, dims, precision)
        with torch.device("meta"):
            vae = AutoencoderKLWan(**spec.vae)
        vae.requires_grad_(False).eval()
        # Two experts: the second trained as the first (lora.experts=both: its weights, gradients, AdamW
        # state and EMA), else frozen; it never runs here (one expert gathered and running at a time).
        both = trains_both_experts(spec, recipe)
        second = trained_expert(spec, recipe, dims, precision) if both else None
        other = frozen_expert(spec, dims, precision) if spec.experts > 1 and not both else None
        with fake:
            self.transformer.to_empty(device="cpu")
            vae.to_empty(device="cpu")
            for expert in (other, second):
                if expert is not None:
                    expert.to_empty(device="cpu")
            self.model = image_conditioned(self.transformer, spec, sizes.latent, precision.compute)
            trained = trainable_parameters(self.transformer)
            if second is not None:  # named as WanExperts names them (each expert its own FSDP2 root)
                trained = {
                    **{f"transformer.{n}": p for n, p in trained.items()},
                    **{f"transformer_2.{n}": p for n, p in trainable_parameters(second).items()},
                }
            self.update = PolicyUpdate.adamw(trained, recipe.optim)
            for group in self.update.optimizer.param_groups:  # GPUs take AdamW's foreach path (CPUs: for-loop)
                group["foreach"] = foreach
            self.ema = EMA(self.update.params, recipe.ema.decay) if recipe.ema.enabled else None
            for p in self.update.params.values():  # AdamW moments as after the first step
                p.grad = torch.zeros_like(p)
            self.update.step()
            self.update.zero_grad()
        self.components = WanComponents(
            self.transformer, vae, None, None, precision.compute, recipe.model.max_text_tokens
        )
        self.image_attention = spec.image_dim is not None
        other_weights = tuple(other.parameters()) if other is not None else ()
        self.known = {
            "EMA": storage_bytes(*self.ema.shadow.values()) if self.ema else 0,
            "VAE": storage_bytes(*vae.parameters(), *vae.buffers()),
        }
        if other_weights:
            self.known["other expert"] = storage_bytes(*other_weights)
        self.tracker = PhaseTracker(self.transformer, self.update.optimizer, *([second] if second is not None else []))
        self._resident = (
            *vae.parameters(),
            *vae.buffers(),
            *(self.ema.shadow.values() if self.ema else ()),
            *other_weights,
            *(self.model.inputs if isinstance(self.model, ImageConditioned) else ()),
        )

    # ----- helpers
    def _enter(self):
        self.fake.__enter__()
        self.tracker.__enter__()
        self.tracker.track_inputs(self._resident)

    def _exit(self):
        self.tracker.__exit__(None, None, None)
        self.fake.__exit__(None, None, None)

    def _start(self, *state) -> None:
        """Register this phase's resident batch state and restart the peak."""
        self.tracker.track_inputs(state)
        self.tracker.start_phase()

    def _phase(self, name: str, flops: dict[str, int]) -> Phase:
        peak = self.tracker.peak()
        return Phase(name, peak.get("Total", 0), _parts(peak, self.known), flops)

    def _prime(self, run) -> None:
        """Tensor parallel only: run a pass once before it is measured. DTensor derives an op's
        output sharding by running it on global shapes under the active fake mode the first time
        it meets those shapes (then caches it); a real run's measured step meets them cached, and
        in a real run those ops run under a fake mode of their own, which the counters skip."""
        if self.dims.tp > 1:
            self.tracker.reset_mod_stats()
            run()

    def _batch(self, n: int):
        """Latents (fp32), text encodings and the negative prompt's (compute dtype) of n videos."""
        s = self.sizes
        latents = torch.randn(n, *s.latent)
        context = torch.zeros(n, s.text_tokens, s.text_dim, dtype=self.precision.compute)
        neg = torch.zeros(1, s.text_tokens, s.text_dim, dtype=self.precision.compute)
        return latents, context, neg

    def _records(self, n: int):
        """Recorded transitions of n SDE steps: x (fp32 clone), x_next (fp32), log-prob."""
        s = self.sizes
        return torch.zeros(n, *s.latent), torch.zeros(n, *s.latent), torch.zeros(n)

    def _velocity(self, x, context, neg):
        sigma = torch.full((x.shape[0],), 0.5)
        self.tracker.reset_mod_stats()  # torch's tracker refuses a second root forward otherwise
        scale = measured_scale(self.recipe)  # CFG's two passes when any step guides (fgrpo.planner.guidance)
        return velocity(self.model, x, sigma, context, neg, scale, self.precision.compute), sigma

    def _sampling_forwards(self, x, context, neg) -> tuple[dict[str, int], torch.Tensor, torch.Tensor]:
        """As sample() inside Policy.rollout(): one text input for every step, the text-side
        projections cached (fgrpo.models.wan.cross_attention_cache). The first step's forward
        computes them, later steps' reuse them: FLOPs of both, and the last velocity."""
        sigma = torch.full((x.shape[0],), 0.5)
        text, scale = text_input(context, neg, measured_scale(self.recipe), self.precision.compute)
        flops = {}
        # diffusers' image cross-attention (Wan2.1 I2V) takes no cached projections (spec.preset_notes)
        with cached_text_projections(self.transformer, enabled=not self.image_attention):
            for name in ("first", "later"):
                self.tracker.reset_mod_stats()
                with count_flops() as fc:
                    v = guided_velocity(self.model, x, sigma, text, scale, self.precision.compute)
                flops[name] = fc.get_total_flops()
                if name == "first":
                    del v
        return flops, v, sigma

    # ----- phases
    def run(self) -> list[Phase]:
        self._enter()
        try:
            phases = [self.rollout(), self.vae_decode(), self.training()]
            if self.sizes.eval_videos:
                phases.append(self.evaluation())
            return phases
        finally:
            self._exit()

    @torch.no_grad()
    def rollout(self) -> Phase:
        """The last micro-batch's forward with CFG and its ODE/SDE step, every earlier
        transition recorded; then sample()'s concatenation of the micro-batch's records."""
        s = self.sizes
        self.transformer.eval()
        latents, context, neg = self._batch(s.videos)
        mb = s.micro_batch
        earlier = self._records((s.videos - mb) * s.per_video)
        current = self._records(mb * s.per_video)
        x = latents[-mb:]
        self._prime(lambda: self._velocity(x, context[-mb:], neg.expand(mb, -1, -1)))
        self._start(latents, context, neg, *earlier, *current)
        flops, v, sigma = self._sampling_forwards(x, context[-mb:], neg.expand(mb, -1, -1))
        x_ode = ode_step(x, v, sigma, sigma * 0.9)
        out = sde_step(x, v, sigma, sigma * 0.9, torch.ones(mb), noise=torch.randn(x.shape))
        x_ode.copy_(out.prev_sample.float())
        merged = [torch.cat([t, t[:0]]) for t in current]  # Transitions.cat of the micro-batch's records
        del v, x_ode, out, merged
        return self._phase("rollout", flops)

    @torch.no_grad()
    def vae_decode(self) -> Phase:
        """Decoding the last micro-batch's final latents; every transition recorded."""
        s = self.sizes
        latents, context, neg = self._batch(s.videos)
        records = self._records(s.transitions)
        finals = torch.randn(s.micro_batch, *s.latent)
        self._start(latents, context, neg, *records, finals)
        with count_flops() as fc:
            frames = self.components.decode(finals)
        del frames
        return self._phase("VAE decode", {"decode": fc.get_total_flops()})

    def training(self) -> Phase:
        """Old log-probs recomputed (no grad), then one micro-batch's forward + backward with the
        first micro-batch's gradients accumulated, then the AdamW step."""
        s, r = self.sizes, self.recipe
        self.transformer.train()
        latents, context, neg = self._batch(s.videos)
        parts = self._records(s.transitions)  # flash_grpo_step keeps the parts alive ...
        trans = self._records(s.transitions)  # ... beside Transitions.cat(parts)
        mb = min(s.micro_batch, s.transitions)
        video = torch.zeros(mb, dtype=torch.long)
        self._prime(lambda: self._log_prob(trans, mb, context, neg, video)[0].log_prob.sum().backward())
        self.update.zero_grad()
        self._start(latents, context, neg, *parts, *trans)
        flops = {}
        if r.algorithm.recompute_old_log_prob:
            with torch.no_grad(), count_flops() as fc:
                self._log_prob(trans, mb, context, neg, video)
            flops["recompute"] = fc.get_total_flops()
        if s.transitions > mb:  # earlier micro-batches' gradients, accumulated into
            for p in self.update.params.values():
                p.grad = torch.zeros_like(p)
        with count_flops() as fc:
            out, x_next_old = self._log_prob(trans, mb, context, neg, video)
            kl = None
            if r.algorithm.kl_beta > 0:
                from fgrpo.algorithm import kl_to_reference

                with torch.no_grad():
                    self.transformer.disable_adapters()
                    ref, _ = self._log_prob(trans, mb, context, neg, video)
                    self.transformer.enable_adapters()
                kl = kl_to_reference(out.mean, ref.mean, out.std)
            total = policy_loss(
                out.log_prob,
                torch.zeros(mb),
                torch.zeros(mb),
                r.algorithm.clip_range,
                weights=torch.ones(mb),
                kl=kl,
                beta=r.algorithm.kl_beta,
            )
            (total.loss * (mb / s.transitions)).backward()
        flops["train"] = fc.get_total_flops()
        del out, total, kl, x_next_old
        self.update.step()  # clip_grad_norm is not run (it reads the norm's value)
        self.update.zero_grad()
        return self._phase("training", flops)

    def _log_prob(self, trans, mb: int, context, neg, video):
        """transition_log_prob on the first mb transitions (Transitions.select copies them)."""
        x, x_next = trans[0][:mb].clone(), trans[1][:mb].clone()
        v, sigma = self._velocity(x, context[video], neg.expand(context.shape[0], -1, -1)[video])
        return sde_step(x, v, sigma, sigma * 0.9, torch.ones(mb), prev_sample=x_next), x_next

    @torch.no_grad()
    def evaluation(self) -> Phase:
        """evaluate_heldout with the EMA swapped in (a backup of the trained weights): the last
        micro-batch's forward with every earlier final kept, then every micro-batch decoded, the
        frames concatenated and thumbnailed (the reward's own work on them is not modelled)."""
        s = self.sizes
        self.transformer.eval()
        n, mb = s.eval_videos, min(s.micro_batch, s.eval_videos)
        backup = [p.detach().clone() for p in self.update.params.values()]
        latents, context, neg = self._batch(n)
        earlier = torch.randn(n - mb, *s.latent)
        self._prime(lambda: self._velocity(latents[-mb:], context[-mb:], neg.expand(mb, -1, -1)))
        self._start(*backup, latents, context, neg, earlier)
        flops, v, sigma = self._sampling_forwards(latents[-mb:], context[-mb:], neg.expand(mb, -1, -1))
        x = ode_step(latents[-mb:], v, sigma, sigma * 0.9)
        finals = torch.cat([earlier, x])
        del v, x, earlier
        frames = []
        with count_flops() as dec:
            for i in range(0, n, mb):
                frames.append(self.components.decode(finals[i : i + mb]))
        frames = torch.cat(frames)
        thumbs = thumbnails(frames)  # the sample grid's thumbnails, made on the device
        del frames, finals, thumbs
        # the forwards' FLOPs for all n videos
        return self._phase(
            "evaluation",
            {"first": flops["first"] * n // mb, "later": flops["later"] * n // mb, "decode": dec.get_total_flops()},
        )


def rank_sizes(recipe, spec, dims) -> Sizes:
    from fgrpo.models.wan.presets import vae_latent_shape

    r = recipe.rollout
    videos = r.prompts_per_step * r.group_size // dims.dp
    per_video = r.steps if recipe.algorithm.mode == "full-trajectory" else 1
    held = recipe.prompts.heldout * recipe.eval.videos_per_prompt
    eval_videos = math.ceil(held / dims.dp) if held else 0
    return Sizes(
        videos,
        min(r.micro_batch, videos),
        videos * per_video,
        per_video,
        eval_videos,
        vae_latent_shape(spec.vae, r.frames, r.height, r.width),
        recipe.model.max_text_tokens,
        int(spec.transformer["text_dim"]),
    )
