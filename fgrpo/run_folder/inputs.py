"""What a run started with, recorded in its folder so a resume can tell when it changed: the prompt
file's identity (`prompts.json`), the rewards' identities (`rewards.json`), and the reward audit
(`reward-audit.json`, `fgrpo reward-audit --run RUN`). Part of RunFolder (fgrpo.run_folder), kept
apart for size."""

from __future__ import annotations

from pathlib import Path

from fgrpo.fileio import atomic_write_json, read_json

from .versions import version_stamp

PROMPTS = "prompts.json"  # the prompt file's identity when the run started
REWARDS = "rewards.json"  # the rewards' identities when the run started
REWARD_AUDIT = "reward-audit.json"  # `fgrpo reward-audit --run RUN`


class RunInputs:
    """RunFolder's records of its inputs (needs `self.path`)."""

    path: Path

    # ----- the prompt file a run started with (its held-out set must not shift under a resume)
    def record_prompts(self, identity: dict) -> None:
        """Written once, when the run first starts; later launches compare against it."""
        if not (self.path / PROMPTS).exists():
            self.path.mkdir(parents=True, exist_ok=True)
            atomic_write_json(self.path / PROMPTS, identity)

    def prompts_problem(self, identity: dict) -> str | None:
        """Why this run must not continue with the prompt file `identity` describes (None: fine)."""
        recorded = read_json(self.path / PROMPTS, None)
        if not isinstance(recorded, dict) or recorded.get("sha256") in (None, identity["sha256"]):
            return None
        return (
            f"prompts.file: {identity['file']} changed since this run started (sha256 "
            f"{str(recorded['sha256'])[:12]}... -> {identity['sha256'][:12]}..., {recorded.get('bytes')} -> "
            f"{identity['bytes']} bytes): its training and held-out prompts would shift under the run. "
            "Restore the file, or start a new run with --logging.run-name NEW_NAME"
        )

    # ----- the rewards a run started with (fgrpo.rewards.identity compares them)
    @property
    def rewards_file(self) -> Path:
        return self.path / REWARDS

    def record_rewards(self, identities: list[dict]) -> None:
        """Written once, when the run first scores; later starts compare against it."""
        if not (self.path / REWARDS).exists():
            atomic_write_json(self.path / REWARDS, {**version_stamp(), "rewards": identities})

    def read_rewards(self) -> list[dict] | None:
        """The reward identities recorded when the run started (None: not yet, or a run from
        before they were recorded)."""
        found = (read_json(self.path / REWARDS, None) or {}).get("rewards")
        return found if isinstance(found, list) else None

    # ----- `fgrpo reward-audit --run RUN`: what the recipe's rewards prefer (fgrpo.rewards.audit)
    @property
    def reward_audit_file(self) -> Path:
        return self.path / REWARD_AUDIT

    def write_reward_audit(self, audit: dict) -> None:
        """Replaces an earlier audit: the newest one is the one the report shows."""
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.reward_audit_file, {**version_stamp(), **audit})

    def read_reward_audit(self) -> dict | None:
        """The audit written with `--run` (None: none, or unreadable)."""
        found = read_json(self.reward_audit_file, None)
        return found if isinstance(found, dict) and isinstance(found.get("rows"), list) else None
