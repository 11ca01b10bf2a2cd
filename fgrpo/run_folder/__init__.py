"""The run folder: every file in it, named, written and read here and nowhere else.

    runs/<run name>/
      recipe.json          the resolved recipe (written once by `fgrpo launch`; resume reads it)
      prompts.json         the prompt file's identity when the run started
      rewards.json         each reward's identity (name, settings, weights' fingerprint) when the run
                           started; a resume that would score with another is refused (fgrpo.rewards.identity)
      reward-audit.json    `fgrpo reward-audit RECIPE.py --run RUN`: each reward's score change under
                           controlled edits and its flags (fgrpo.rewards.audit); the report shows it
      status.json          running, completed, stopped, failed, cancelled; killed when it said running
                           and no process holds the run any more
      metrics.jsonl        one record per optimizer step and per evaluation (append-only; on resume,
                           records past the checkpoint move to metrics.rewound.jsonl)
      timings.jsonl        when each phase of every start (process start -> first step) and stop
                           (signal -> saved -> requeued) ended (fgrpo.trainer.timeline)
      heartbeat.json       rank 0's last finished step and when (fgrpo.run_folder.status): `fgrpo
                           status` shows "last step N min ago", or stalled
      .status.lock         flock held while a rank records a failure (the first one of a job stays)
      .lock                flock held by the run's rank 0 while it runs; names the holder
      jobs.jsonl           every submission: backend, job id, kind (training or reward server)
      launch.json          the local backend's processes (pids, world size)
      failures.json        how many real failures the Slurm job has requeued after
      CANCEL_REQUESTED     `fgrpo cancel` was asked: a stopped job must not requeue
      reward-server.json   where the run's reward server listens (a requeued one announces anew)
      reward-server.token  the shared secret of the run's reward server (mode 0600, never printed)
      checkpoints/step-N/  DCP checkpoints; complete once `.metadata` exists (`.step-N.partial` before)
      checkpoints/best-gold.json  the step of the best held-out gold evaluation (eval.gold_rewards):
                           rotation keeps its checkpoint, `fgrpo export RUN OUT --best gold` exports it
      samples/<tag>.mp4    held-out samples of each evaluation: the captioned grid, samples/<tag>/prompt-NN.mp4
                           (one video per prompt) and samples/<tag>.json (their index); GIF where no
                           MP4 writer is installed (fgrpo.run_folder.samples)
      report.html          `fgrpo report RUN` (refreshed at each evaluation with logging.report)
      tensorboard/         TensorBoard event files (logging.trackers: tensorboard)
      wandb/               Weights & Biases run files (logging.trackers: wandb; offline runs too)
      tracking.json        the run's wandb run id and the last step each tracker logged
      eval/<name>/         `fgrpo eval` outputs
      logs/rank-R.log      per-rank output of local runs (logs/reward-server.log: a local reward server's)
      submitit/            Slurm scripts and per-task logs (a sweep's array: ../.submitit-arrays/)

Writes are atomic (fgrpo.fileio), so a crash or kill -9 never leaves a half-written file; the
run folder's name is a pure function of the recipe (fgrpo.recipe.io.run_name), never of a job id.
recipe.json, status.json, rewards.json and checkpoint manifests record the fgrpo and format
version that wrote them; a newer format than this fgrpo's is refused (fgrpo.run_folder.versions).
"""

from __future__ import annotations

import errno
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from fgrpo.fileio import append_jsonl, atomic_write_json, atomic_write_text, env_rank, read_json, read_jsonl
from fgrpo.processes import ProcessId

from .checkpoints import (
    check_checkpoint_format,
    checkpoint_path,
    checkpoint_problem,
    complete_checkpoints,
    manifest_fingerprint,
    partial_checkpoint_path,
)
from .inputs import PROMPTS, REWARD_AUDIT, REWARDS, RunInputs  # noqa: F401 - re-exported
from .lock import RunLock, RunLockedError, exclusive
from .samples import SampleFolder
from .server_files import RewardServerFiles
from .status import keeps_failure, next_beat
from .versions import RUN_FORMAT_VERSION, RunFormatError, check_format, version_stamp  # noqa: F401 - re-exported

RECIPE, STATUS, METRICS, JOBS = "recipe.json", "status.json", "metrics.jsonl", "jobs.jsonl"
LAUNCH, FAILURES, CANCEL = "launch.json", "failures.json", "CANCEL_REQUESTED"
CHECKPOINTS, SAMPLES, EVAL, LOGS = "checkpoints", "samples", "eval", "logs"
SUBMITIT, SUBMITIT_ARRAYS = "submitit", ".submitit-arrays"  # the second beside the run folders, shared
SERVER_KIND = "reward-server"  # a reward server the backend started beside the training job
FINAL_STATES = ("completed", "failed", "cancelled", "killed")
LIVE_STATES = ("starting", "running")  # a trainer says so; found stale once no process holds the lock
NOT_WRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS)  # a reader may look at a run it may not change
LOCK, METRICS_REWOUND, TIMINGS = ".lock", "metrics.rewound.jsonl", "timings.jsonl"
HEARTBEAT, STATUS_LOCK = "heartbeat.json", ".status.lock"
REPORT, TENSORBOARD, WANDB, TRACKING = "report.html", "tensorboard", "wandb", "tracking.json"
SWEEP_INDEX = "sweep.json"  # a sweep folder's list of its runs (written by fgrpo sweep)


def report_file(folder: Path) -> Path:
    """Where `fgrpo report` writes the report of a run folder, a sweep folder or a folder of runs."""
    return Path(folder) / REPORT


@dataclass(frozen=True)
class RunFolder(RewardServerFiles, RunInputs):
    path: Path

    def __post_init__(self):
        object.__setattr__(self, "path", Path(self.path))

    # ----- names
    @property
    def recipe_file(self) -> Path:
        return self.path / RECIPE

    @property
    def metrics_file(self) -> Path:
        return self.path / METRICS

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINTS

    @property
    def samples(self) -> Path:
        return self.path / SAMPLES

    @property
    def sample_folder(self) -> SampleFolder:
        return SampleFolder(self.samples)

    @property
    def report_file(self) -> Path:
        return report_file(self.path)

    @property
    def tensorboard(self) -> Path:
        """TensorBoard's log dir (logging.trackers: tensorboard)."""
        return self.path / TENSORBOARD

    @property
    def wandb_parent(self) -> Path:
        """wandb.init's `dir`: wandb writes its run files under `<this>/wandb/`."""
        return self.path

    @property
    def tracking_file(self) -> Path:
        """The wandb run id of this run folder and the last step each tracker logged."""
        return self.path / TRACKING

    def read_tracking(self) -> dict:
        found = read_json(self.tracking_file, {})
        return found if isinstance(found, dict) else {}

    def write_tracking(self, state: dict) -> None:
        atomic_write_json(self.tracking_file, state)

    @property
    def logs(self) -> Path:
        return self.path / LOGS

    def rank_log(self, rank: int) -> Path:
        return self.logs / f"rank-{rank}.log"

    @property
    def report_log(self) -> Path:
        """Output of the trainer's background `fgrpo report` refreshes (logging.report)."""
        return self.logs / "report.log"

    @property
    def server_log(self) -> Path:
        """A reward server's output when the local backend started it."""
        return self.logs / "reward-server.log"

    @property
    def submitit(self) -> Path:
        """submitit's folder for the run's own Slurm jobs (scripts, pickles, `JOBID_TASK_log.out/err`)."""
        return self.path / SUBMITIT

    @property
    def submitit_arrays(self) -> Path:
        """submitit's folder for sweep job arrays: beside the run folders, shared by a sweep's points."""
        return self.path.parent / SUBMITIT_ARRAYS

    def eval_dir(self, name: str) -> Path:
        return self.path / EVAL / name

    def checkpoint(self, step: int) -> Path:
        return checkpoint_path(self.checkpoints, step)

    def partial_checkpoint(self, step: int) -> Path:
        return partial_checkpoint_path(self.checkpoints, step)

    # ----- the recipe
    def is_run(self) -> bool:
        return self.recipe_file.is_file()

    def read_recipe(self):
        """The run's recipe; every error names the file (RunFormatError: written by a newer fgrpo)."""
        from fgrpo.recipe.io import RecipeError, recipe_from_record

        if not self.is_run():
            raise FileNotFoundError(f"{self.path} is not a run folder: it has no {RECIPE}")
        try:
            record = json.loads(self.recipe_file.read_text())
            check_format(record, self.recipe_file)
            return recipe_from_record(record)
        except RunFormatError:
            raise
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as e:
            raise RecipeError(
                f"{self.recipe_file}: unreadable recipe ({type(e).__name__}: {e}); restore it "
                "from the launch command (fgrpo show RECIPE.py --overrides)"
            ) from e

    def write_recipe(self, recipe) -> None:
        """Atomic; written only when it changes (a reader never sees half a recipe). Records the
        fgrpo and format version beside the recipe's fields."""
        from fgrpo.recipe.io import to_dict

        self.path.mkdir(parents=True, exist_ok=True)
        text = json.dumps({**to_dict(recipe), **version_stamp()}, indent=2, sort_keys=True) + "\n"
        try:
            if self.recipe_file.read_text() == text:
                return
        except OSError:
            pass
        atomic_write_text(self.recipe_file, text)

    # ----- versions: which fgrpo wrote the folder's records (fgrpo.run_folder.versions)
    def check_format(self) -> None:
        """RunFormatError naming the file and both versions when recipe.json, status.json,
        rewards.json or a checkpoint's manifest was written in a newer format than this fgrpo
        reads; a record without the field is format 1. Nothing is written."""
        for name in (RECIPE, STATUS, REWARDS):
            check_format(read_json(self.path / name, {}), self.path / name)
        for _, ckpt in self.complete_checkpoints():
            check_checkpoint_format(ckpt)

    def orphan_checkpoints(self) -> bool:
        """Checkpoints with no recipe.json beside them: whose recipe trained them is unknown."""
        return not self.is_run() and bool(self.complete_checkpoints())

    def checkpoints_match(self, fingerprint: str) -> list[Path]:
        """Complete checkpoints whose manifest names another recipe than `fingerprint`."""
        return [p for _, p in self.complete_checkpoints() if manifest_fingerprint(p) not in (None, fingerprint)]

    # ----- status (what `fgrpo status` shows)
    def write_status(self, state: str, reason: str = "", any_rank: bool = False, **extra) -> None:
        """Written by global rank 0 only (the others' calls do nothing), unless `any_rank` (a
        failure seen on another rank). Records its writer, so a stale status can be told."""
        if env_rank() == 0 or any_rank:
            atomic_write_json(
                self.path / STATUS,
                {
                    "state": state,
                    "reason": reason,
                    "time": time.time(),
                    "owner": str(ProcessId.of()),
                    **version_stamp(),
                    **extra,
                },
            )

    def record_failure(self, reason: str, since: float, consequence: bool = False, **extra) -> bool:
        """Any rank: record a failure unless the job's first one is there (fgrpo.run_folder.status),
        read and written under RUN/.status.lock (two ranks failing at once). Returns whether it was."""
        with exclusive(self.path / STATUS_LOCK):
            if keeps_failure(self.read_status(), since, consequence):
                return False
            marks = {"consequence": True} if consequence else {}
            self.write_status("failed", reason, any_rank=True, **extra, **marks)
            return True

    def beat(self, step: int) -> None:
        """Rank 0, after every finished step: heartbeat.json (fgrpo.run_folder.status)."""
        beat = next_beat(self.read_heartbeat(), step, time.time(), str(ProcessId.of()))
        atomic_write_json(self.path / HEARTBEAT, beat)

    def read_heartbeat(self) -> dict | None:
        found = read_json(self.path / HEARTBEAT)
        return found if isinstance(found, dict) else None

    def read_status(self) -> dict:
        """status.json as written; `effective_status` tells whether it still holds. A damaged one
        (not an object with a string `state`) reads as no status: `problems` names it."""
        status = read_json(self.path / STATUS, {}) or {}
        return status if _valid_status(status) else {}

    def problems(self) -> list[str]:
        """What is wrong with the folder's bookkeeping (ignored where it is read), for `fgrpo status`."""
        out = []
        raw = read_json(self.path / STATUS, None)
        if (self.path / STATUS).exists() and not _valid_status(raw or {}):
            out.append(
                f"{STATUS} is damaged ({json.dumps(raw)[:80] if raw is not None else 'unreadable'}): "
                "its state is unknown"
            )
        bad = [i for i, j in enumerate(read_jsonl(self.path / JOBS), 1) if not _valid_job(j)]
        if bad:
            out.append(f"{JOBS}: record(s) {', '.join(map(str, bad))} lack backend, job_id or kind (ignored)")
        return out

    def effective_status(self) -> dict:
        """The status, with a "running" whose owner is gone turned into "killed" (and recorded so,
        under the lock, so that a trainer starting meanwhile is never overwritten)."""
        status = self.read_status()
        if status.get("state") not in LIVE_STATES:
            return status
        lock = self.lock()
        state = lock.probe()
        if state == "unknown":  # no working locks: the owner's identity is the next best witness
            owner = status.get("owner")
            gone = owner and ProcessId.parse(owner).alive() is False
            if not gone:
                return status
        elif state == "held":
            return status
        unrecorded = f" (not recorded: {self.path} is not writable by this user)"
        try:  # False (written unlocked) where the filesystem has no working locks
            lock.acquire({"backend": "fgrpo status", "job_id": "-", "host": ProcessId.of().host, "pid": os.getpid()})
        except RunLockedError:  # a trainer has just started: its status is the truth
            return self.read_status()
        except OSError as e:  # a reader without write permission (a teammate, a read-only mount): tell, write nothing
            if e.errno not in NOT_WRITABLE:
                raise
            return _killed(status, unrecorded)
        try:
            status = self.read_status()
            if status.get("state") in LIVE_STATES:
                status = _killed(status)
                try:
                    atomic_write_json(self.path / STATUS, status)
                except OSError as e:
                    if e.errno not in NOT_WRITABLE:
                        raise
                    status = _killed(self.read_status(), unrecorded)
        finally:
            lock.release()
        return status

    # ----- the lock: one job per run folder
    def lock(self) -> RunLock:
        return RunLock(self.path / LOCK)

    # ----- jobs
    def record_job(self, backend: str, job_id: str, kind: str) -> None:
        """Append one submission; the newest training job is what status, logs and cancel act on."""
        self.path.mkdir(parents=True, exist_ok=True)
        append_jsonl(self.path / JOBS, {"backend": backend, "job_id": str(job_id), "kind": kind, "time": time.time()})

    def jobs(self) -> list[dict]:
        """The submissions recorded; a damaged record (see `problems`) is skipped."""
        return [j for j in read_jsonl(self.path / JOBS) if _valid_job(j)]

    def latest_job(self) -> dict | None:
        found = [j for j in self.jobs() if j["kind"] != SERVER_KIND]
        return found[-1] if found else None

    def server_jobs(self) -> list[dict]:
        """Reward-server jobs started for the run, oldest first."""
        return [j for j in self.jobs() if j["kind"] == SERVER_KIND]

    def write_launch(self, info: dict) -> None:
        atomic_write_json(self.path / LAUNCH, info)

    def read_launch(self) -> dict | None:
        return read_json(self.path / LAUNCH)

    # ----- cancel and failures
    def request_cancel(self, job_id: str) -> None:
        """Recorded before the scheduler is asked: a job stopped by `fgrpo cancel` must not requeue."""
        atomic_write_json(self.path / CANCEL, {"job_id": job_id, "time": time.time()})

    def cancel_requested(self) -> bool:
        return (self.path / CANCEL).exists()

    def clear_cancel(self) -> None:
        (self.path / CANCEL).unlink(missing_ok=True)

    def count_failure(self) -> int:
        """One more real failure; returns how many there have been."""
        n = int((read_json(self.path / FAILURES, {}) or {}).get("count", 0)) + 1
        atomic_write_json(self.path / FAILURES, {"count": n})
        return n

    # ----- checkpoints and metrics
    def complete_checkpoints(self) -> list[tuple[int, Path]]:
        return complete_checkpoints(self.checkpoints)

    def usable_checkpoint(self, step: int | None = None) -> tuple[int, Path, list[str]]:
        """(step, folder, why newer ones were skipped): the newest complete checkpoint that its
        manifest vouches for, or checkpoint `step` (FileNotFoundError naming why it cannot be used),
        for readers of a run (eval, export), which never change it."""
        found = dict(self.complete_checkpoints())
        if step is not None:
            problem = "it does not exist" if step not in found else checkpoint_problem(found[step])
            if problem:
                raise FileNotFoundError(
                    f"{self.path}: checkpoint step {step} cannot be used: {problem} "
                    f"(complete checkpoints: {sorted(found)})"
                )
            return step, found[step], []
        skipped = []
        for s in sorted(found, reverse=True):
            problem = checkpoint_problem(found[s])
            if problem is None:
                return s, found[s], skipped
            skipped.append(f"checkpoint step {s} skipped: {problem}")
        raise FileNotFoundError(
            f"{self.path}: no usable checkpoint under {self.checkpoints}"
            + (f" ({'; '.join(skipped)})" if skipped else "")
        )

    def latest_checkpoint(self) -> tuple[int, Path] | None:
        found = self.complete_checkpoints()
        return found[-1] if found else None

    def read_metrics(self, kind: str | None = None) -> list[dict]:
        records = read_jsonl(self.metrics_file)
        return records if kind is None else [r for r in records if r.get("kind") == kind]

    def rewind_metrics(self, step: int) -> int:
        """Make metrics.jsonl hold what a run resumed at `step` has done (-1: a fresh start, so
        nothing): records past `step` move to metrics.rewound.jsonl (kept aside, never deleted),
        so every step and evaluation appears once however often the run was killed. Returns how
        many records moved. Rank 0 only, before anything new is logged."""
        keep, drop = [], []
        for r in self.read_metrics():
            (drop if r.get("step", 0) > step else keep).append(r)
        if drop:
            for r in drop:
                append_jsonl(self.path / METRICS_REWOUND, {**r, "rewound_at": time.time()}, fsync=True)
            atomic_write_text(self.metrics_file, "".join(json.dumps(r) + "\n" for r in keep))
        return len(drop)

    def record_timings(self, record: dict) -> None:
        """Append one start or stop record (fgrpo.trainer.timeline) to timings.jsonl."""
        append_jsonl(self.path / TIMINGS, record)

    def read_timings(self, kind: str | None = None) -> list[dict]:
        records = read_jsonl(self.path / TIMINGS)
        return records if kind is None else [r for r in records if r.get("kind") == kind]

    def has_final_eval(self, step: int) -> bool:
        return any(r.get("tag") == "final" and r.get("step") == step for r in self.read_metrics("eval"))

    def progress(self) -> dict:
        """Last step, reward, held-out reward and checkpoint, read from the run folder alone."""
        train, evals = self.read_metrics("train"), self.read_metrics("eval")
        ckpt = self.latest_checkpoint()
        return {
            "step": train[-1]["step"] if train else 0,
            "reward": train[-1]["reward_mean"] if train else None,
            "heldout": evals[-1]["eval_reward"] if evals else None,
            "checkpoint": ckpt[0] if ckpt else None,
            "status": self.read_status(),
        }


def _killed(status: dict, note: str = "") -> dict:
    """The status of a run that said starting or running while no process holds it any more."""
    return {
        "state": "killed",
        "time": time.time(),
        "owner": status.get("owner"),
        "reason": f"status said {status.get('state')}, but its process ({status.get('owner', '?')}) is gone: "
        f"killed or lost its node; resume continues from the newest checkpoint{note}",
        **version_stamp(),
    }


def _valid_status(status) -> bool:
    return isinstance(status, dict) and (not status or isinstance(status.get("state"), str))


def _valid_job(job) -> bool:
    return isinstance(job, dict) and all(isinstance(job.get(k), str) for k in ("backend", "job_id", "kind"))
