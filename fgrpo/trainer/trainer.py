"""The training loop: set-up, resume, steps, EMA, evaluation, checkpoints, graceful stop."""

from __future__ import annotations

import time
import warnings
from contextlib import nullcontext, suppress
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from fgrpo.data.prompts import PromptSampler, prompt_file_identity, read_prompts, resolve_prompt_file, split_prompts
from fgrpo.distributed import process_group as dist
from fgrpo.distributed.parallel_dims import ParallelDims
from fgrpo.models.model_folder import model_folder
from fgrpo.models.wan.lora import trainable_parameters
from fgrpo.recipe.config import Recipe
from fgrpo.recipe.io import training_fingerprint
from fgrpo.rewards.identity import rewards_changed
from fgrpo.run_folder import RunFolder, check_checkpoint_format, checkpoint_problem, manifest_fingerprint
from fgrpo.run_folder.pending import drop_rollouts, load_rollouts, save_rollouts
from fgrpo.tracking import SampleSet, open_trackers

from . import checkpoint, timeline
from .compute import ComputeMeter, gather_per_rank, peak_memory_bytes
from .ema import EMA
from .evaluate import evaluate_heldout
from .failures import CollectiveError, NonFiniteError
from .flash_grpo import Rollout, StopRequested, flash_grpo_step
from .gold_guard import GoldGuard
from .guardrails import before_of, drift
from .metrics import MetricsLog, ReportRefresher, console_line
from .policy import build_policy
from .reward_scoring import RemoteRewards, connect_rewards
from .signals import EXIT_REQUEUE, StopFlag
from .update import PolicyUpdate

# FSDP2 warns that Wan's output is a view; nothing here modifies it in place (velocity() casts it).
warnings.filterwarnings("ignore", message="FSDP2-wrapped module .* returned a view tensor")


class Trainer:
    def __init__(self, recipe: Recipe, run_dir: Path, stop: StopFlag | None = None):
        self.recipe, self.run_dir = recipe, Path(run_dir)
        self.started = time.time()  # compute/wall_s counts the set-up too
        self.folder = RunFolder(self.run_dir)
        self.prompts_identity = prompt_file_identity(recipe.prompts.file)
        problem = self.folder.prompts_problem(self.prompts_identity)  # a queued job: edited since the launch?
        if problem:
            raise ValueError(problem)
        self.stop = stop or StopFlag()
        self.device = dist.init_distributed(recipe.launch.collective_timeout_s)
        par = recipe.parallelism
        self.dims = ParallelDims.from_config(par.dp_replicate, par.dp_shard, par.tp, dist.world_size(), sp=par.sp)
        self.dims.build_mesh(self.device.type)
        self.is_main = dist.rank() == 0
        self.console = Console(quiet=not self.is_main, soft_wrap=True)  # logs: one line per message
        if recipe.model.path is None and self.is_main:
            model_folder(recipe.model)  # the tiny preset is built once, by rank 0
        dist.barrier()
        prompts = read_prompts(resolve_prompt_file(recipe.prompts.file))
        if self.is_main:
            self.folder.record_prompts(self.prompts_identity)
        # Text encodings are cached in the runs folder, shared by its runs and sweep points.
        self.policy = build_policy(recipe, self.dims, self.device, prompts, self.run_dir.parent)
        self.update = PolicyUpdate.adamw(trainable_parameters(self.policy.transformer), recipe.optim)
        self.params = self.update.params
        self.ema = EMA(self.params, recipe.ema.decay) if recipe.ema.enabled else None
        rs = recipe.reward_server
        # A reward server may still be loading its models: run() waits for it (connect_rewards).
        self.rewards = None if rs.url or rs.launch else connect_rewards(recipe, self.run_dir)
        self.rewards_checked = False  # against the identities recorded at the run's first start
        self.train_prompts, self.heldout_prompts = split_prompts(prompts, recipe.prompts.heldout)
        self.sampler = PromptSampler(self.train_prompts, recipe.prompts.seed)
        self.step = 0
        self.nonfinite_in_a_row = 0
        self.nonfinite_total = 0
        self.ckpt_dir = self.folder.checkpoints
        self.metrics = MetricsLog(self.folder.metrics_file, self.is_main)  # + trackers once resumed (_train)
        ro = recipe.rollout
        self.compute = ComputeMeter(ro.prompts_per_step * ro.group_size, dist.world_size(), self.dims.dp, self.started)
        self.report = ReportRefresher(self.folder) if recipe.logging.report and self.is_main else None
        self.fingerprint = training_fingerprint(recipe)
        self.resume_note = ""  # what resume had to skip, for the console and the status
        self.gold = GoldGuard(recipe, self.folder, self.is_main, self.console.print)  # eval.gold_rewards

    def run_step(self, prompts: list[str], check_stop=None, kept: Rollout | None = None):
        """One Flash-GRPO optimizer step on `prompts` (the loop's; tests call it directly), from the
        step's `kept` rollouts when a stop kept them (fgrpo.run_folder.pending)."""
        # Rank 0 counts the FLOPs and forwards of its first step of each launch that rolls out
        # (fgrpo.trainer.compute).
        return self.compute.run_step(
            self.policy.transformer,
            lambda: flash_grpo_step(
                self.policy,
                self.update,
                self.rewards,
                self.recipe,
                self.step,
                prompts,
                check_stop or self._check_stop,
                kept,
                self.sampler.next,  # fresh prompts for rollout.refill_zero_variance
            ),
            measure=self.is_main and kept is None,
        )

    def kept_rollouts(self, prompts: list[str]) -> Rollout | None:
        """This step's rollouts kept by a stop, when every rank has its share for these prompts; the
        sampler then moves past the fresh prompts their refill drew, as the rolled-out step did."""
        state, why = load_rollouts(self.ckpt_dir, self.step, dist.rank(), dist.world_size())
        usable = (
            state is not None
            and int(state["step"]) == self.step
            and list(state.get("drawn") or state["prompts"]) == prompts  # drawn: before a refill
        )
        if not dist.all_ranks(usable):
            if state is not None or why:
                self.console.print(
                    f"rolling out step {self.step + 1} again: its kept rollouts are not usable "
                    f"({why or 'another rank has none, or the prompts differ'})",
                    markup=False,
                )
            return None
        assert state is not None  # usable on every rank, this one included
        kept = Rollout.from_state_dict(state)
        self.sampler.next(kept.refill.draws)
        self.console.print(
            f"step {self.step + 1}: training on the rollouts kept when the last job stopped "
            f"({float(state['times']['rollout']):.1f} s of rollout not repeated)",
            markup=False,
        )
        return kept

    def keep_rollouts(self, rollout: Rollout) -> None:
        """Save this rank's share of a stopped step's finished rollouts (beside checkpoint step-N)."""
        save_rollouts(self.ckpt_dir, rollout.step, dist.rank(), dist.world_size(), rollout.state_dict())

    # ----- checkpoint state
    def state(self) -> dict:
        model_sd, optim_sd = checkpoint.model_and_optimizer_state(self.policy.transformer, self.update.optimizer)
        state = {
            "model": model_sd,
            "optim": optim_sd,
            "lr_schedule": self.update.lr_schedule.state_dict(),
            "trainer": {
                "step": self.step,
                "nonfinite_total": self.nonfinite_total,
                "sampler": self.sampler.state_dict(),
            },
        }
        if self.ema:
            state["ema"] = self.ema.state_dict()
        return state

    def save(self) -> None:
        checkpoint.save(self.state(), self.ckpt_dir, self.step, self.recipe.checkpoint.keep_last, self.fingerprint)

    def resume(self, path: Path | None = None) -> bool:
        """Load the newest checkpoint that is intact (or `path`); False when there is none.

        A damaged checkpoint (see fgrpo.run_folder.checkpoints) or one DCP cannot read is skipped
        for the next older one, loudly; it is moved to checkpoints/corrupt-step-N once an older
        one has loaded. Checkpoints of another recipe, or only damaged ones, stop the run: starting
        over silently would lose the run's progress."""
        candidates = [(None, path)] if path is not None else list(reversed(self.folder.complete_checkpoints()))
        if not candidates:
            return False
        skipped = []
        for _, ckpt in candidates:
            check_checkpoint_format(ckpt)  # a newer fgrpo's checkpoint: refused, never skipped
            other = manifest_fingerprint(ckpt)
            if other not in (None, self.fingerprint):
                raise RuntimeError(
                    f"{ckpt} was trained with a different recipe (fingerprint {other}, this run's is "
                    f"{self.fingerprint}); refusing to adopt it. Launch with another "
                    "--logging.run-name, or restore the run's recipe.json"
                )
            problem = checkpoint_problem(ckpt)
            if problem is None:
                try:
                    self._load(ckpt)
                    break
                except (Exception, checkpoint.CheckpointException) as e:  # DCP raises on every rank together
                    problem = f"DCP could not read it: {type(e).__name__}: {str(e).strip().splitlines()[0][:200]}"
            skipped.append((ckpt, problem))
            if self.is_main:
                self.console.print(
                    f"[bold red]WARNING[/] checkpoint {escape(str(ckpt))} is unusable: {escape(str(problem))}"
                )
        else:
            raise RuntimeError(
                "no usable checkpoint in "
                + str(self.ckpt_dir)
                + ": "
                + "; ".join(f"{c.name}: {p}" for c, p in skipped)
                + ". Move the checkpoints folder aside to start the run over"
            )
        if skipped:
            if self.is_main:
                for ckpt, _ in skipped:
                    if path is None:
                        ckpt.rename(ckpt.with_name(f"corrupt-{ckpt.name}"))
            self.resume_note = (
                f"resumed from step {self.step}, skipping damaged checkpoint(s) "
                + ", ".join(f"{c.name} ({p})" for c, p in skipped)
                + (" moved to corrupt-step-N" if path is None else "")
            )
            if self.is_main:
                self.console.print(f"[bold red]WARNING[/] {escape(str(self.resume_note))}")
        dist.barrier()
        return True

    def _load(self, ckpt: Path) -> None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

        state = checkpoint.load(self.state(), ckpt)
        missing = set(self.params) - set(state["model"])
        if missing:
            raise RuntimeError(
                f"{ckpt} lacks trained weights {sorted(missing)[:5]}...: a checkpoint of another recipe?"
            )
        # strict=False because frozen weights are not in the checkpoint (they come from model.path).
        set_state_dict(
            self.policy.transformer,
            self.update.optimizer,
            model_state_dict=state["model"],
            optim_state_dict=state["optim"],
            options=StateDictOptions(ignore_frozen_params=True, strict=False),
        )
        self.update.lr_schedule.load_state_dict(state["lr_schedule"])
        if self.ema:
            self.ema.load_state_dict(state["ema"])
        self.step = int(state["trainer"]["step"])
        self.nonfinite_total = int(state["trainer"]["nonfinite_total"])
        self.sampler.load_state_dict(state["trainer"]["sampler"])

    # ----- loop
    def _check_local_stop(self) -> None:
        """This rank's own flag (no collective): for waits that ranks do not enter together."""
        if self.stop.raised:
            raise StopRequested

    def _check_stop(self) -> None:
        if dist.any_rank(self.stop.raised):
            raise StopRequested

    def connect_rewards(self) -> None:
        if self.rewards is None:
            self.rewards = connect_rewards(
                self.recipe,
                self.run_dir,
                self._check_stop,
                dist.all_ranks,
                self._check_local_stop,
                expected=self.folder.read_rewards(),
            )
            if self.is_main and isinstance(self.rewards, RemoteRewards):
                self.console.print(f"rewards scored by the reward server at {self.rewards.url}", markup=False)
        if not self.rewards_checked:
            self.check_reward_identity()

    def check_reward_identity(self) -> None:
        """The rewards must be those the run started with (RUN/rewards.json, recorded by rank 0 at
        the first start): a run never silently changes reward. The ranks refuse together."""
        assert self.rewards is not None  # connect_rewards() first
        recorded = self.folder.read_rewards()
        problem = rewards_changed(recorded, self.rewards.identity, self.folder.rewards_file)
        if dist.any_rank(problem is not None):
            raise ValueError(problem or "another rank found the run's rewards changed since it started")
        if self.is_main and recorded is None:
            self.folder.record_rewards(self.rewards.identity)
        self.rewards_checked = True

    def evaluate(self, tag: str) -> dict:
        self.connect_rewards()
        ctx = self.ema.swapped_in() if self.ema else nullcontext()
        t0 = time.perf_counter()
        with ctx:
            result = evaluate_heldout(
                self.policy, self.rewards, self.recipe, self.heldout_prompts, self.folder.samples, tag, self.gold.scorer
            )
        if self.is_main:  # drift against "before": this one, or (after a resume too) metrics.jsonl's
            earlier = self.folder.read_metrics("eval")
            before = result if tag == "before" else before_of(earlier)
            result = {**result, **drift(result, before), **self.gold.judge({**result, "step": self.step}, earlier)}
        self.metrics.write(
            {
                "kind": "eval",
                "step": self.step,
                "tag": tag,
                **result,
                "time_eval": time.perf_counter() - t0,
                **self.compute.snapshot(),
            },
            SampleSet(self.folder.sample_folder, tag) if self.is_main else None,
        )
        if self.report is not None:
            self.report.refresh()
        if self.is_main:
            gold = f", gold {result['eval_gold']:+.4f}" if "eval_gold" in result else ""
            self.console.print(f"[bold]eval[/] step {self.step}: held-out reward {result['eval_reward']:+.4f}{gold}")
        self.gold.act(result, self.step, self.save)  # best-gold checkpoint, divergence (collective)
        return result

    def run(self) -> int:
        """Train to optim.max_steps. Returns 0 when done, EXIT_REQUEUE after a graceful stop."""
        try:
            self.connect_rewards()
            timeline.mark("rewards")
        except StopRequested:
            self.console.print(
                f"stopped by signal {self.stop.signum} while waiting for the reward server; exit {EXIT_REQUEUE}"
            )
            return EXIT_REQUEUE
        assert self.rewards is not None  # connect_rewards() set it
        ok = False
        try:
            code = self._train()
            ok = True
            return code
        finally:
            self.rewards.close()
            self.metrics.close(0 if ok else 1)  # finishes the trackers' runs (a resume continues them)

    def _train(self) -> int:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        r = self.recipe
        resumed = self.resume()
        timeline.mark("checkpoint")
        if self.is_main:  # every step and evaluation appears once in metrics.jsonl, however often killed
            moved = self.folder.rewind_metrics(self.step if resumed else -1)
            if moved:
                self.console.print(
                    f"{moved} metrics record(s) past step {self.step if resumed else 0} moved to metrics.rewound.jsonl"
                )
            if resumed:  # cumulative compute continues from the checkpoint's records
                self.compute.restore(
                    next((x for x in reversed(self.folder.read_metrics()) if "compute/wall_s" in x), None), self.step
                )
            self.metrics.open(
                open_trackers(
                    self.folder, r, self.step if resumed else None, lambda msg: self.console.print(msg, markup=False)
                )
            )
        if resumed:
            self.console.print(f"resumed from {self.ckpt_dir}/step-{self.step}", markup=False)
            if self.resume_note:
                self.folder.write_status("running", self.resume_note)
        elif self.heldout_prompts:
            self.evaluate("before")
        progress = Progress(
            TextColumn("[bold blue]flash-grpo"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=self.console,
            disable=not self.is_main,
        )
        last_saved = self.step if resumed or self.gold.saved_step == self.step else None
        checked_kept = False  # kept rollouts can only be for the first step after a resume
        try:
            with progress:
                task = progress.add_task("train", total=r.optim.max_steps, completed=self.step)
                while self.step < r.optim.max_steps:
                    self._check_stop()
                    timeline.mark("first_step_start")
                    self._sampler_before_step = self.sampler.state_dict()
                    prompts = self.sampler.next(r.rollout.prompts_per_step)
                    first_after_resume = resumed and not checked_kept
                    kept = self.kept_rollouts(prompts) if first_after_resume else None
                    checked_kept = True
                    result = self.run_step(prompts, kept=kept)
                    if self.is_main and first_after_resume:
                        drop_rollouts(self.ckpt_dir, before=self.step + 1)  # used, or stale
                    self._sampler_before_step = None
                    self._after_step(result)
                    timeline.mark("first_step")
                    timeline.write(self.folder, "start", step=self.step, resumed=resumed)
                    progress.update(task, completed=self.step)
                    if self.step % r.checkpoint.interval == 0 and last_saved != self.step:
                        self.save()
                        last_saved = self.step
                    if self.heldout_prompts and self.step % r.eval.interval == 0 and self.step < r.optim.max_steps:
                        self.evaluate(f"step-{self.step:06d}")
                        last_saved = self.step if self.gold.saved_step == self.step else last_saved
                        if self.gold.stop_note:  # eval.on_divergence = stop: this evaluation was the last
                            break
        except StopRequested as e:
            return self._stop(last_saved, getattr(e, "rollout", None))
        except CollectiveError:
            if self.stop.raised:  # e.g. the reward server went with the launcher: a stop, not a failure
                return self._stop(last_saved)
            self._save_after_crash(last_saved)
            raise
        except checkpoint.CheckpointSaveError:
            raise  # the crash is in saving itself: nothing more to save
        except Exception:
            if dist.world_size() == 1:  # no peer can be left waiting in a collective
                self._save_after_crash(last_saved)
            raise
        if last_saved != self.step:
            self.save()
        if self.heldout_prompts and not self.folder.has_final_eval(self.step) and not self.gold.stop_note:
            self.evaluate("final")
        if self.gold.stop_note:
            self.console.print(f"{self.gold.stop_note}; checkpoint at step {self.step}", markup=False)
        self._say_where_the_report_is()
        return 0

    def _say_where_the_report_is(self) -> None:
        if not self.is_main:
            return
        where = self.folder.report_file
        if self.report is None:
            self.console.print(f"report: `fgrpo report {self.folder.path}` writes {where}", markup=False)
        elif self.report.finish():
            self.console.print(f"report: {where}", markup=False)
        else:
            self.console.print(
                f"report: the refresh of {where} failed or is still running; see {self.folder.report_log}", markup=False
            )

    def _stop(self, last_saved: int | None, rollout: Rollout | None = None) -> int:
        # The unfinished step is dropped: the sampler position is rolled back with it. Its rollouts,
        # when they were complete, are kept for the resumed job (fgrpo.run_folder.pending).
        timeline.mark("stop_noticed")
        self._rewind_sampler()
        if rollout is not None and rollout.step == self.step:
            self.keep_rollouts(rollout)
            timeline.mark("rollouts_kept")
        if last_saved != self.step:
            self.save()
        timeline.mark("saved")
        self.console.print(f"stopped by signal {self.stop.signum}; checkpoint at step {self.step}; exit {EXIT_REQUEUE}")
        return EXIT_REQUEUE

    def _save_after_crash(self, last_saved: int | None) -> None:
        """A step failed: keep the last completed step, if it was not saved yet."""
        self._rewind_sampler()
        if last_saved == self.step or self.step == 0:
            return
        try:
            self.save()
            self.console.print(f"[bold]saved the last completed step ({self.step}) before failing[/]")
        except checkpoint.CheckpointSaveError as e:
            self.console.print(f"[bold red]could not save step {self.step} after the failure:[/] {escape(str(e))}")

    def _rewind_sampler(self) -> None:
        """Put the prompt sampler back to where the last completed step left it."""
        if self._sampler_before_step is not None:
            self.sampler.load_state_dict(self._sampler_before_step)

    _sampler_before_step: dict | None = None

    def _after_step(self, result) -> None:
        m = result.metrics
        peak, kind = peak_memory_bytes(self.device)  # a collective: before anything can raise
        m.update({"peak_memory_per_rank": gather_per_rank(peak, self.device), "memory_kind": kind})
        refill_flops = self.compute.add_step(result.applied, result.refill_videos)
        if self.recipe.rollout.refill_zero_variance > 0 and refill_flops is not None:
            m["refill_flops"] = refill_flops  # in compute/flops too: equal-compute comparisons stay fair
        if result.applied:
            self.step += 1
            self.nonfinite_in_a_row = 0
            if self.ema and self.step % self.recipe.ema.interval == 0:
                self.ema.update()
        else:
            self.nonfinite_in_a_row += 1
            self.nonfinite_total += 1
            m["skipped_nonfinite"] = True
            if self.nonfinite_in_a_row >= self.recipe.optim.max_nonfinite_steps:
                raise NonFiniteError(
                    f"{self.nonfinite_in_a_row} steps in a row had a non-finite loss or gradient; stopping. "
                    f"The last good checkpoint is {self.folder.latest_checkpoint()}"
                )
        m.update(
            {"kind": "train", "time": time.time(), "nonfinite_total": self.nonfinite_total, **self.compute.snapshot()}
        )
        self.metrics.write(m)
        if self.is_main:  # heartbeat.json: `fgrpo status` says "last step N min ago", or stalled
            with suppress(OSError):  # a monitoring aid, never a reason to stop training
                self.folder.beat(self.step)
        if self.is_main and self.step % self.recipe.logging.console_interval == 0:
            self.console.print(console_line(m), soft_wrap=True)
