"""`fgrpo reward-audit`: which controlled edits (fgrpo.rewards.audit_edits) each reward prefers.

Every probe video is scored as it is and after each edit. Per reward and edit, over the videos:

* mean change: ``mean(edited - original)``;
* win rate: the share of videos whose edited version scores higher (ties do not win: changes
  within 1e-6 of the reward's score range in this audit, float rounding, count as ties);
* mean |change|: ``mean(|edited - original|)``, what the motion-blind rule compares.

Flags (:class:`AuditRules`, stated in `fgrpo reward-audit --help` and the JSON):

* ``prefers``: a degrading edit (blur, noise, JPEG, saturation/brightness/contrast either way,
  frozen, shuffle, reverse) wins on more than ``win_rate`` (0.5) of the videos AND raises the
  mean score by more than ``min_change`` (0.001) of the reward's score range in this audit (the
  highest minus the lowest score of any video, original or edited; below that the rise is noise,
  e.g. a blur that keeps a brightness reward's mean luminance): training on this reward can climb
  by degrading videos (reward hacking).
* ``motion-blind`` (a row): a motion edit (frozen, shuffle, reverse) moves the score by a mean
  |change| of at most ``motion_tolerance`` (2%) of the reward's score range (a constant reward is
  blind to everything). The reward is motion-blind when every motion edit is: it cannot tell a video from
  a still or scrambled one. It is *order-blind* when the reorderings (shuffle, reverse) are but a
  still video is not: per-frame rewards, blind to order by construction (a still video changes
  which frames they score, so it moves them).

The rules are pure functions of the scores (:func:`edit_rows`, :func:`reward_flags`);
:func:`score_probes` is the one part that calls rewards.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import torch

from fgrpo.rewards.audit_edits import EDITS, Edit

__all__ = [
    "DEFAULT_RULES",
    "AuditRules",
    "EditRow",
    "Scores",
    "audit",
    "edit_rows",
    "reward_flags",
    "score_probes",
]

PREFERS, MOTION_BLIND = "prefers", "motion-blind"
REORDERING = ("shuffle", "reverse")  # the motion edits that keep every frame, in another order
TIE = 1e-6  # changes within this share of the reward's score range are ties (float rounding)
Scores = dict[str, torch.Tensor]  # reward key -> one score per probe video, [N]
ScoreFn = Callable[[torch.Tensor, list[str]], tuple[torch.Tensor, dict[str, torch.Tensor]]]


@dataclass(frozen=True)
class AuditRules:
    """When a row is flagged (see the module docstring)."""

    win_rate: float = 0.5
    """`prefers`: a degrading edit's win rate above this, with a mean change above 0."""
    motion_tolerance: float = 0.02
    """`motion-blind`: a motion edit's mean |change| at most this share of the reward's score range."""
    min_change: float = 0.001
    """`prefers`: the mean change must also exceed this share of the reward's score range."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.win_rate < 1.0:
            raise ValueError(f"--win-rate: must be in [0, 1), got {self.win_rate}")
        if not 0.0 <= self.motion_tolerance < 1.0:
            raise ValueError(f"--motion-tolerance: must be in [0, 1), got {self.motion_tolerance}")
        if not 0.0 <= self.min_change < 1.0:
            raise ValueError(f"--min-change: must be in [0, 1), got {self.min_change}")


DEFAULT_RULES = AuditRules()


@dataclass(frozen=True)
class EditRow:
    """One reward under one edit, over the probe videos."""

    reward: str
    edit: str
    degrading: bool
    motion: bool
    videos: int
    mean_change: float
    mean_abs_change: float
    win_rate: float
    flags: tuple[str, ...] = field(default=())


def score_range(original: torch.Tensor, edited: Sequence[torch.Tensor]) -> float:
    """Highest minus lowest score of any video, original or edited (the motion tolerance's unit)."""
    everything = torch.cat([original.flatten(), *(e.flatten() for e in edited)]).double()
    return float(everything.max() - everything.min())


def _row(reward: str, edit: Edit, original: torch.Tensor, edited: torch.Tensor, scale: float, rules: AuditRules):
    change = edited.double() - original.double()
    mean_change, mean_abs = float(change.mean()), float(change.abs().mean())
    tie = TIE * scale  # a mean over reordered frames differs in its last bits: not a win
    win_rate = float((change > tie).double().mean())
    flags = []
    if edit.degrading and win_rate > rules.win_rate and mean_change > max(tie, rules.min_change * scale):
        flags.append(PREFERS)
    if edit.motion and mean_abs <= rules.motion_tolerance * scale:
        flags.append(MOTION_BLIND)
    return EditRow(
        reward, edit.name, edit.degrading, edit.motion, change.numel(), mean_change, mean_abs, win_rate, tuple(flags)
    )


def edit_rows(
    original: Scores, edited: dict[str, Scores], rules: AuditRules = DEFAULT_RULES, edits: Sequence[Edit] = EDITS
) -> list[EditRow]:
    """One row per (reward, edit), rewards in `original`'s order and edits in `edits`' order.
    `edited[edit name][reward]` holds the edited videos' scores in the originals' order."""
    by_name = {e.name: e for e in edits}
    unknown = [name for name in edited if name not in by_name]
    if unknown:
        raise ValueError(f"scores of unknown edits {unknown}; edits: {', '.join(by_name)}")
    rows = []
    for reward, base in original.items():
        per_edit = {name: scores[reward] for name, scores in edited.items()}
        for name, scores in per_edit.items():
            if scores.shape != base.shape:
                raise ValueError(
                    f"reward {reward!r}, edit {name!r}: {tuple(scores.shape)} scores for {tuple(base.shape)}"
                )
        scale = score_range(base, list(per_edit.values()))
        rows += [
            _row(reward, by_name[name], base, per_edit[name], scale, rules) for name in by_name if name in per_edit
        ]
    return rows


def reward_flags(rows: Sequence[EditRow]) -> dict[str, list[str]]:
    """Each reward's findings in words: the degrading edits it prefers, and motion-blind when every
    motion edit audited is flagged so. Rewards without findings map to []."""
    out: dict[str, list[str]] = {}
    for reward in dict.fromkeys(r.reward for r in rows):
        mine = [r for r in rows if r.reward == reward]
        preferred = [r.edit for r in mine if PREFERS in r.flags]
        motion = [r for r in mine if r.motion]
        found = [f"prefers degenerate edits: {', '.join(preferred)}"] if preferred else []
        reordered = [r for r in motion if r.edit in REORDERING]
        if motion and all(MOTION_BLIND in r.flags for r in motion):
            found.append(f"motion-blind: {', '.join(r.edit for r in motion)} score as the originals")
        elif reordered and all(MOTION_BLIND in r.flags for r in reordered):
            # A still video changes which frames a per-frame reward sees; reordering them does not.
            found.append(
                f"order-blind: {', '.join(r.edit for r in reordered)} score as the originals "
                "(the same frames in another order: it scores frames, not their motion)"
            )
        out[reward] = found
    return out


def _batches(n: int, size: int):
    return (slice(i, min(i + size, n)) for i in range(0, n, size))


def score_probes(
    score: ScoreFn,
    videos: torch.Tensor,
    prompts: list[str],
    edits: Sequence[Edit] = EDITS,
    batch_size: int = 8,
    device: torch.device | str = "cpu",
    with_total: bool = False,
) -> tuple[Scores, dict[str, Scores]]:
    """(original scores, {edit name: edited scores}) of every reward that ``score`` returns
    (``score(frames, prompts) -> (total, components)``: fgrpo.rewards.WeightedRewards or a reward
    server client), and of the weighted total too with ``with_total``. ``videos``: ``[N, F, 3, H, W]``,
    float in [0, 1] or uint8 (0..255); edited in batches of ``batch_size`` on the CPU, scored on
    ``device``."""
    if videos.ndim != 5 or videos.shape[2] != 3 or videos.shape[0] != len(prompts):
        raise ValueError(
            f"probe videos must be [N, F, 3, H, W] with N = {len(prompts)} prompts, got {tuple(videos.shape)}"
        )
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    parts: dict[str, list[Scores]] = {"": [], **{e.name: [] for e in edits}}  # "": the originals
    for part in _batches(videos.shape[0], batch_size):
        batch = videos[part].cpu()
        batch = batch.float() / 255.0 if batch.dtype == torch.uint8 else batch.float()
        for name, frames in (("", batch), *((e.name, e(batch)) for e in edits)):
            total, components = score(frames.to(device), list(prompts[part]))
            found = {k: v.detach().float().cpu() for k, v in components.items()}
            if with_total:
                found["total"] = total.detach().float().cpu()
            parts[name].append(found)
    joined = {name: {k: torch.cat([p[k] for p in got]) for k in got[0]} for name, got in parts.items()}
    original = joined.pop("")
    return original, joined


def audit(original: Scores, edited: dict[str, Scores], rules: AuditRules = DEFAULT_RULES) -> dict:
    """The audit as a JSON-ready dict: the rules, each reward's original mean and findings, the rows."""
    rows = edit_rows(original, edited, rules)
    flags = reward_flags(rows)
    return {
        "rules": {
            **asdict(rules),
            "prefers": f"a degrading edit's win rate > {rules.win_rate} and mean change > {rules.min_change} x the "
            "reward's score range in this audit",
            "ties": f"changes within {TIE:g} x the reward's score range in this audit (float rounding)",
            "motion-blind": f"a motion edit's mean |change| <= {rules.motion_tolerance} x the reward's score range "
            "in this audit; the reward is motion-blind when every motion edit is",
        },
        "edits": [
            {"edit": e.name, "what": e.what, "degrading": e.degrading, "motion": e.motion}
            for e in EDITS
            if e.name in edited
        ],
        "rewards": [
            {"reward": k, "original_mean": float(v.double().mean()), "videos": v.numel(), "flags": flags[k]}
            for k, v in original.items()
        ],
        "rows": [{**asdict(r), "flags": list(r.flags)} for r in rows],  # as JSON reads back
    }
