"""The recipe: typed dataclasses whose docstrings become `fgrpo ... --help`.

Defaults follow the paper's Wan2.1-T2V-1.3B settings (`docs/flash-grpo.md`, section 4); a
recipe file states only what differs. Every field can be overridden on the command line as
`--section.field value` (hyphens or underscores). Every numeric field declares its valid range
beside it (`within`, fgrpo/recipe/ranges.py); validation refuses values outside it, and NaN.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

from .launch_config import KubernetesConfig as KubernetesConfig  # re-exported: recipe files import *
from .launch_config import LaunchConfig
from .ranges import within

ModelPreset = Literal[
    "tiny",
    "tiny-ti2v",
    "tiny-i2v",
    "tiny-a14b",
    "tiny-i2v-a14b",
    "miniature",
    "wan2.1-t2v-1.3b",
    "wan2.1-t2v-14b",
    "wan2.1-i2v-14b-480p",
    "wan2.1-i2v-14b-720p",
    "wan2.2-ti2v-5b",
    "wan2.2-t2v-a14b",
    "wan2.2-i2v-a14b",
]
Mode = Literal["flash", "full-trajectory", "fast"]
NoiseSchedule = Literal["wan", "flow-grpo", "dance-grpo"]
RolloutCacheKind = Literal["none", "first_block", "mag", "taylorseer"]
Backend = Literal["local", "slurm", "k8s"]
# diffusers' attention backends fgrpo offers (AttentionBackendName values); which can train is in
# fgrpo/models/wan/attention.py (TRAINABLE_BACKENDS, FORWARD_ONLY_BACKENDS), with the reasons.
AttentionBackend = Literal[
    "native",
    "_native_flash",
    "_native_efficient",
    "_native_cudnn",
    "_native_math",
    "flex",
    "flash",
    "flash_hub",
    "_flash_3",
    "_flash_3_hub",
    "xformers",
    "sage",
    "sage_hub",
    "_sage_qk_int8_pv_fp8_cuda",
    "_sage_qk_int8_pv_fp8_cuda_sm90",
    "_sage_qk_int8_pv_fp16_cuda",
    "_sage_qk_int8_pv_fp16_triton",
]


@dataclass
class ModelConfig:
    """Which Wan model to align (text-to-video or image-to-video)."""

    preset: ModelPreset = "wan2.1-t2v-1.3b"
    """Architecture preset. `miniature`: the miniature world's text-to-video model, pre-trained by fgrpo
    (fgrpo/miniature/pretrain.py; seed 0's build ships with fgrpo and is copied into the cache on first
    use, other seeds are pre-trained there, minutes on a CPU); `tiny`: a small random
    Wan-architecture model (colour noise; tests that need the smallest model); `tiny-ti2v`: the same
    for Wan2.2-TI2V-5B's architecture (its 16x VAE, heights and widths multiples of 32); `tiny-i2v`:
    the same for Wan2.1-I2V-14B's (36 input channels, image cross-attention, a tiny CLIP image
    encoder; max_text_tokens 512). Wan2.1-T2V 1.3B and 14B; Wan2.1-I2V-14B 480p and 720p
    (image-to-video: prompts.file must give an image per prompt; parallelism.tp and sp 1);
    Wan2.2-TI2V-5B text-to-video (a prompt file without images: its per-token timesteps are all
    equal) or text+image (a JSONL with an `image` per prompt: the image is the first latent frame,
    its tokens at t = 0; parallelism.sp 1). Wan2.2's two-expert A14B models
    (T2V, I2V): `transformer` for the high-noise steps, `transformer_2` for the low-noise ones,
    switched at the folder's boundary_ratio as WanPipeline does (lora.experts: which train);
    `tiny-a14b`, `tiny-i2v-a14b`: their structure at the tiny width. Their numbers and sources:
    fgrpo/models/wan/presets.py."""
    path: str | None = None
    """Local diffusers-format folder (model_index.json, transformer/, vae/, text_encoder/, tokenizer/;
    Wan2.1 I2V also image_encoder/, image_processor/; Wan2.2 A14B also transformer_2/). Required for
    the Wan presets; for `tiny`, `tiny-ti2v`, `tiny-i2v`, `tiny-a14b`, `tiny-i2v-a14b` and `miniature`, None builds
    (and caches) their folders."""
    dtype: Literal["float32", "bfloat16"] = "bfloat16"
    """Compute dtype (the precision policy, docs/design.md): frozen weights are stored and every
    matmul runs in it, on CPU as on GPU; trained weights, optimizer state, gradient reductions,
    Wan's fp32 modules and log-probs stay fp32. The text encoder runs in it too; the VAE in fp32.
    (float16 would need loss scaling, which fgrpo does not implement.)"""
    max_text_tokens: int = within("[1, inf)", 512)
    """Text-encoder sequence length (UMT5, zero-padded), 512 for Wan."""
    seed: int = within("[0, 4294967295]", 0)
    """Seed of the tiny presets' random weights, or of the miniature model's pre-training."""
    attention_backend: AttentionBackend = "native"
    """Attention kernel of the transformer (diffusers' attention dispatcher), for everything:
    training, and rollouts and evaluation unless rollout_attention_backend says otherwise.
    PyTorch's own (no extra package): `native` torch SDPA, which picks the best kernel itself;
    `_native_flash`, `_native_efficient`, `_native_cudnn`, `_native_math` force one SDPA kernel
    (efficient and cudnn need a GPU; math is the exact reference, slow); `flex` FlexAttention
    (GPU for training: no backward on CPU). Flash-attention: `flash` (pip install flash-attn, GPU
    Ampere or newer, bf16), `_flash_3` (FlashAttention-3 built from source, Hopper, forward only
    in diffusers: rollouts only); `flash_hub` and `_flash_3_hub` fetch the same kernels from the
    Hugging Face Hub (pip install kernels; a download on first use, or the HF cache). `xformers`
    (pip install xformers). SageAttention, `sage` and the `_sage_*` variants (pip install
    sageattention, GPU), `sage_hub` (kernels): 8-bit quantized, forward only, so never for
    training: name them in rollout_attention_backend. A backend that cannot run is refused when the
    model is set up (missing package, wrong device or dtype), before the first step."""
    rollout_attention_backend: AttentionBackend | None = None
    """Attention kernel for rollouts and evaluation (sampling, no gradients); None: the same as
    attention_backend. May name a forward-only backend (`sage`, `_flash_3`) to sample faster;
    the loss's log-probabilities always come from the training pass (attention_backend), which
    is why a different rollout backend needs algorithm.recompute_old_log_prob."""


@dataclass
class ParallelismConfig:
    """Device mesh: dp_replicate x dp_shard x sp x tp must equal the world size."""

    dp_replicate: int = within("[1, inf)", 1)
    """Data-parallel replicas (HSDP outer dimension)."""
    dp_shard: int = within("[1, inf) or -1", -1)
    """FSDP2 shard degree; -1 infers world_size / (dp_replicate * sp * tp)."""
    tp: int = within("[1, inf)", 1)
    """Tensor-parallel degree; must divide the transformer's head count."""
    sp: int = within("[1, inf)", 1)
    """Sequence-parallel (Ulysses) degree: each video's tokens are split over sp ranks, which hold the
    same videos; attention exchanges tokens for heads with an all-to-all. sp x tp must divide the
    head count (12 for 1.3B, 40 for 14B) and sp the tokens per video, latent frames x (height / 16)
    x (width / 16) (81 x 480 x 832: 21 x 30 x 52 = 32,760). FSDP2 shards over dp_shard x sp."""
    activation_checkpointing: bool = True
    """Recompute each transformer block in backward (less memory, ~30 % more compute)."""
    compile: bool = False
    """Regional compilation: torch.compile (inductor) each transformer block, as torchtitan does;
    identical blocks share one compiled graph, FSDP2's hooks stay eager. Works with FSDP2, TP, sp,
    LoRA and activation checkpointing (tests/distributed/test_compile.py). Compiles once per input
    shape and grad mode in the first step and evaluation, never after: each step's metrics record
    `compile/graphs`. On in the Wan recipes."""
    rollout_unsharded: Literal["auto", "on", "off"] = "auto"
    """Keep FSDP2's gathered weights across a whole rollout (one all-gather per rollout instead of
    one per block per forward, about 40 per video with 20 steps and CFG). `auto`: on when the
    gathered weights fit beside what the step holds (the device's free memory; always on CPU)."""


@dataclass
class RolloutConfig:
    """How videos are sampled for training."""

    steps: int = within("[1, inf)", 20)
    """Denoising steps per rollout (N)."""
    flow_shift: float = within("(0, inf)", 3.0)
    """Flow-matching shift s of the sigma grid (3 for 480p)."""
    cfg_scale: float = within("[0, inf)", 4.5)
    """Classifier-free guidance scale (negative prompt ""); two experts (Wan2.2 A14B): the high-noise
    expert's steps' (diffusers' guidance_scale)."""
    cfg_scale_2: float | None = within("[0, inf)", None)
    """Two experts only: the guidance scale of the low-noise expert's steps (transformer_2, below
    boundary_ratio; diffusers' guidance_scale_2). None: cfg_scale, as in diffusers. Used by rollouts,
    the training pass's log-probs and evaluation alike; a step at scale 1 takes one forward pass,
    not two. Refused for a one-transformer model."""
    height: int = within("[16, inf)", 480)
    """Video height in pixels (multiple of 16)."""
    width: int = within("[16, inf)", 832)
    """Video width in pixels (multiple of 16)."""
    frames: int = within("[1, inf)", 81)
    """Frames per video; (frames - 1) % 4 == 0."""
    group_size: int = within("[2, inf)", 8)
    """G: videos per prompt (the GRPO group), at least 2."""
    prompts_per_step: int = within("[1, inf)", 24)
    """Prompts per optimizer step over the whole job (global batch = prompts_per_step x G videos);
    at most the number of training prompts."""
    micro_batch: int = within("[1, inf)", 4)
    """Videos per forward pass (per rank) during rollout and training."""
    noise_schedule: NoiseSchedule = "wan"
    """SDE noise scale s_t: `wan` s_t = sigma_1*sigma; `flow-grpo` a*sqrt(sigma/(1-min(sigma, sigma_1)));
    `dance-grpo` constant eta (sigma_1: the grid's second sigma)."""
    noise_constant: float = within("(0, inf)", 0.7)
    """The constant a (flow-grpo) or eta (dance-grpo), > 0; unused by `wan`."""
    share_prefix: bool = False
    """The G videos of a prompt start from the same initial noise (DanceGRPO), so the deterministic
    prefix up to the group's SDE step is computed once per prompt; the group then differs only by
    the SDE step's noise. Flash-GRPO's own code draws each video's initial noise."""
    ode_solver: Literal["euler", "unipc", "dpmpp_2m"] = "euler"
    """Solver of the deterministic steps (the prefix before the SDE step and the suffix after it):
    `euler` (the recipe's own step), `unipc` (Wan's UniPC, 2nd order) or `dpmpp_2m` (DPM-Solver++ 2M),
    the latter two through diffusers' schedulers. The SDE step stays sigma_k -> sigma_{k+1} on the
    grid. flash/fast only (full-trajectory has no deterministic step)."""
    ode_steps: int | None = within("[1, inf)", None)
    """Steps of the deterministic sub-grid over sigma_0 -> 0 (at most rollout.steps; unset: every grid
    step): the grid's points round(j*steps/ode_steps), plus the SDE step's two sigmas, so a video
    takes about ode_steps + 1 model evaluations. flash/fast only."""
    cache: RolloutCacheKind = "none"
    """Training-free cache on the deterministic steps, through diffusers' hooks (`none`: off):
    `first_block` (FirstBlockCache: while the first block's residual changes by under 5 %, the
    other blocks are skipped and their last residual reused), `mag` (MagCache: every block skipped
    while the error accumulated from the model's magnitude ratios stays under 0.06, at most 3
    forwards in a row, never in the first 20 % of steps; needs cache_mag_ratios) or `taylorseer`
    (TaylorSeer lite: full forwards on the first 3 steps and every 5th after, the output
    extrapolated to first order between them). A forward holding an SDE step is always computed in
    full, the cache is reset per micro-batch, and the training pass and evaluation never use it.
    flash/fast only; not with parallelism.compile, tp > 1 or sp > 1."""
    cache_mag_ratios: tuple[float, ...] = within("(0, inf)", ())
    """MagCache's magnitude ratios of the model under this sampler, one per step (interpolated to
    rollout.steps); read by rollout.cache=mag only. diffusers ships Flux's only: measure them with
    calibrate_mag_ratios (fgrpo/trainer/rollout_cache.py)."""
    refill_zero_variance: int = within("[0, inf)", 0)
    """Refill rounds per step (0: off): prompt groups whose G rewards are all equal (zero advantage,
    `zero_variance_groups`) are replaced by fresh prompts from the prompt stream, rolled out and scored
    within the step, so it trains on prompts_per_step groups that teach; after this many rounds the
    groups still all-equal are kept. Each round rolls out about as many groups as remain all-equal
    (counted in `compute/flops`). flash/fast only."""


@dataclass
class TimestepConfig:
    """Distribution of the SDE step index (0 = noisiest)."""

    window: tuple[int, int] = within("[0, inf)", (0, 10))
    """[start, end) of step indices the SDE step is drawn from."""
    weights: tuple[float, ...] = within("[0, inf)", ())
    """One weight per index of the window; empty = uniform."""


@dataclass
class AlgorithmConfig:
    """The GRPO variant and its loss."""

    mode: Mode = "flash"
    """`flash`: one SDE step per rollout (Flash-GRPO); `fast`: one SDE step drawn per rollout with
    neither iso-temporal grouping nor rectification (Flow-GRPO-Fast); `full-trajectory`: SDE at every
    step, loss over all steps (Flow-GRPO)."""
    iso_temporal: bool = True
    """flash mode: all G rollouts of a prompt share its SDE step index."""
    rectification: bool = True
    """flash mode: scale each sample's loss by 1/lambda(t), normalised to mean 1 over the global batch."""
    clip_range: float = within("(0, 1)", 1e-3)
    """PPO ratio clip epsilon, in (0, 1)."""
    adv_clip: float = within("(0, inf)", 5.0)
    """Advantages are clipped to +-adv_clip."""
    adv_std: Literal["global", "group"] = "global"
    """Advantage denominator: std of all rewards in the batch, or of the prompt's group."""
    kl_beta: float = within("[0, inf)", 0.0)
    """KL weight to the reference (LoRA disabled) policy; 0 disables it."""
    recompute_old_log_prob: bool = True
    """Recompute log pi_old with the training pass's own batches before the update, so the
    on-policy ratio is exactly 1: the rollout batches its forwards differently (all videos at one
    step; TP all-reduces sum rows in a position-dependent order; GPU kernels depend on shapes), and
    in bf16 that alone moves the ratio by ~1e-4, a tenth of clip_range (so does parallelism.compile:
    sampling runs inductor's inference graph, training its training graph). Costs one forward per
    trained transition (about 4 % of a flash step)."""


@dataclass
class OptimConfig:
    """AdamW and gradient clipping."""

    lr: float = within("(0, inf)", 1e-4)
    betas: tuple[float, float] = within("[0, 1)", (0.9, 0.999))
    """AdamW betas, each in [0, 1)."""
    weight_decay: float = within("[0, inf)", 1e-4)
    grad_clip: float = within("(0, inf)", 1.0)
    """Max global gradient norm."""
    warmup_steps: int = within("[0, inf)", 0)
    """Linear LR warm-up (optimizer steps)."""
    max_steps: int = within("[0, inf)", 1000)
    """Optimizer steps to train for."""
    max_nonfinite_steps: int = within("[1, inf)", 5)
    """Stop after this many consecutive steps with a NaN/inf loss or gradient."""


@dataclass
class LoraConfig:
    """LoRA adapters (peft); disabled means full fine-tuning."""

    enabled: bool = True
    rank: int = within("[1, inf)", 16)
    alpha: float = within("(0, inf)", 32.0)
    target_modules: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")
    """Module name suffixes that get adapters (attention projections by default)."""
    experts: Literal["high", "low", "both"] = "both"
    """Two-expert models (Wan2.2 A14B): which experts train, `high` (transformer, the high-noise
    steps), `low` (transformer_2) or `both`; the other is frozen (no adapters, no gradients, no
    optimizer state). With full fine-tuning too (enabled=false). Each SDE transition trains the
    expert that produced it (its step's sigma against boundary_ratio), so timesteps.window must lie
    within the trained experts' steps, and reach each of them. One-transformer models: `both`."""


@dataclass
class EmaConfig:
    """Exponential moving average of the trained weights (used for evaluation and samples)."""

    enabled: bool = True
    decay: float = within("[0, 1)", 0.9)
    """Weight of the old average at each update, in [0, 1)."""
    interval: int = within("[1, inf)", 8)
    """Update the EMA every this many optimizer steps."""


@dataclass
class RewardSpec:
    """One reward term: total reward = sum of weight x score."""

    name: str = "colour"
    """Registered reward name, or an import path `package.module:function`."""
    weight: float = within("(-inf, inf)", 1.0)
    """Any finite value (negative: a penalty)."""
    args: dict[str, int | float | bool | str] = field(default_factory=dict)
    """Keyword arguments passed to the reward function."""
    frame_aggregation: str = "mean"
    """For per-frame rewards: mean, min, max or topk:P (mean of the top P fraction, paper: topk:0.3)."""
    label: str | None = None
    """Name its scores are recorded under (reward/LABEL, eval/LABEL); unset: the name, name#2... if repeated."""


@dataclass
class RewardServerConfig:
    """Score the rewards in a reward server (`fgrpo reward-server`) instead of in the training
    processes, e.g. to give a 7B reward model GPUs of its own. The trainer sends each micro-batch
    of decoded videos as soon as it is rolled out, so scoring overlaps the next rollouts."""

    url: str | None = None
    """Use a server that is already running, e.g. http://host:8000."""
    launch: bool = False
    """Let the backend start a server with the recipe's rewards beside the job: a local process, a Slurm
    job of its own, or a replicated job in the JobSet."""
    gpus: int = within("[0, inf)", 0)
    """GPUs for a launched server (its own node on Slurm and Kubernetes)."""
    cpus: int = within("[1, inf)", 4)
    """CPU cores for a launched server (Slurm and Kubernetes)."""
    mem_gb: float = within("[0, inf)", 32.0)
    """Memory in GB for a launched server (Slurm and Kubernetes; 0 on Slurm: the cluster's default)."""
    port: int = within("[1, 65535]", 8000)
    """Port of a launched server on Kubernetes (locally and on Slurm it takes any free port)."""
    timeout_s: float = within("(0, inf)", 600.0)
    """Per-request timeout; connection errors, timeouts and 5xx are retried `retries` times."""
    retries: int = within("[0, inf)", 3)
    startup_timeout_s: float = within("(0, inf)", 1800.0)
    """How long the trainer waits for a launched server to answer /health (model loading)."""


@dataclass
class PromptsConfig:
    """Training and held-out prompts."""

    file: str = "prompts/tiny.txt"
    """Prompt file: one prompt per line, or JSONL with a `prompt` field. Relative paths resolve
    against the current directory, then the fgrpo checkout. Image-to-video models need JSONL whose
    every record also has an `image`: a path relative to the file's folder (or absolute) to an
    image of exactly rollout.width x rollout.height pixels, one image per prompt text (checked
    before launch)."""
    heldout: int = within("[0, inf)", 8)
    """The last `heldout` prompts of the file are held out for evaluation, never trained on."""
    seed: int = within("[0, 4294967295]", 0)
    """Seed for the prompt order and all sampling."""


@dataclass
class EvalConfig:
    """Deterministic (ODE) evaluation on held-out prompts."""

    interval: int = within("[1, inf)", 50)
    """Evaluate and save sample videos every this many optimizer steps (and before/after training)."""
    steps: int = within("[1, inf)", 50)
    """ODE steps for evaluation sampling."""
    videos_per_prompt: int = within("[1, inf)", 1)
    """Fixed seeds per held-out prompt."""
    gold_rewards: tuple[RewardSpec, ...] = ()
    """Gold metrics: rewards scored on the held-out videos at every evaluation, never trained on
    (in the training processes, also with a reward server). Recorded as `eval/<name>` and, weighted
    and summed, `eval_gold`; they guard the trained reward (docs/design.md, "A gold metric that
    guards the proxy")."""
    divergence_window: int = within("[2, inf)", 3)
    """The divergence rule looks at the last this many evaluations (fgrpo.algorithm.divergence)."""
    divergence_tolerance: float = within("[0, inf)", 0.0)
    """The divergence rule fires only while `eval_gold` is below its best by more than this (in the
    gold reward's units)."""
    on_divergence: Literal["warn", "stop"] = "warn"
    """When the rule fires: warn (console, metrics.jsonl, fgrpo status), or stop the run cleanly
    (final checkpoint; status completed, saying why)."""


@dataclass
class CheckpointConfig:
    interval: int = within("[1, inf)", 50)
    """Save every this many optimizer steps (and at the end)."""
    keep_last: int = within("[1, inf)", 3)
    """Keep the newest k complete checkpoints (and, with eval.gold_rewards, the best-gold one)."""


@dataclass
class LoggingConfig:
    runs_dir: str = "runs"
    """Where run folders live; on clusters a folder on the shared filesystem (every node reads it)."""
    run_name: str | None = None
    """Run folder name (letters, digits and _.=,+-, not starting with . or -); None derives it from
    the recipe name and what differs from the recipe file."""
    console_interval: int = within("[1, inf)", 1)
    """Print a metrics line every this many optimizer steps."""
    trackers: tuple[Literal["jsonl", "tensorboard", "wandb"], ...] = ("jsonl",)
    """Where rank 0 logs every train and eval record: `jsonl` (RUN/metrics.jsonl) always; `tensorboard`
    (RUN/tensorboard/) and `wandb` (project `wandb_project`, run id kept in RUN/tracking.json;
    WANDB_MODE=offline works) on request (pip install 'fgrpo[tracking]'). A tracker that cannot
    start or log is dropped with a message; it never stops the run."""
    wandb_project: str = "fgrpo"
    """W&B project of the run (with `trackers` wandb); the run is named after the run folder."""
    wandb_entity: str | None = None
    """W&B entity (team or user); None: the API key's default entity."""
    report: bool = False
    """Refresh RUN/report.html (`fgrpo report RUN`) in the background after every evaluation."""


@dataclass
class Recipe:
    """A Flash-GRPO training recipe."""

    name: str = "recipe"
    """Recipe name, the stem of run folder names (the characters of logging.run_name)."""
    model: ModelConfig = field(default_factory=ModelConfig)
    parallelism: ParallelismConfig = field(default_factory=ParallelismConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    timesteps: TimestepConfig = field(default_factory=TimestepConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    ema: EmaConfig = field(default_factory=EmaConfig)
    rewards: tuple[RewardSpec, ...] = (RewardSpec(),)
    reward_server: RewardServerConfig = field(default_factory=RewardServerConfig)
    prompts: PromptsConfig = field(default_factory=PromptsConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    launch: LaunchConfig = field(default_factory=LaunchConfig)

    @property
    def world_size(self) -> int:
        if self.launch.procs_per_node is not None:
            return self.launch.nodes * self.launch.procs_per_node
        p = self.parallelism
        if p.dp_shard != -1:
            return p.dp_replicate * p.dp_shard * p.sp * p.tp
        return self.launch.nodes * max(1, self.launch.gpus_per_node)

    @property
    def procs_per_node(self) -> int:
        return self.world_size // max(1, self.launch.nodes)


def replace(obj, **changes):
    """dataclasses.replace, re-exported so recipe files need one import."""
    return dataclasses.replace(obj, **changes)
