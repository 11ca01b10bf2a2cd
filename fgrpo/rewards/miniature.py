"""Rewards of the miniature world (:mod:`fgrpo.miniature`): per video, ``[B]`` float32 in [0, 1]
(the proxy up to ``1 + saturation_bonus``), computed by its attribute detectors, no weights.

* ``miniature_faithfulness``: mean over the 7 attributes of the soft scores (or one attribute's,
  ``attribute="colour"``): the reward to align with.
* ``miniature_gold``: mean of the strict binary scores (or one attribute's): the evaluation.
* ``miniature_proxy``: faithfulness + ``saturation_bonus`` x mean HSV saturation. Deliberately
  hackable: oversaturating the background raises it while gold falls (its colour leaves the
  prompt's), a stand-in for a learned reward model's exploitable bias.

Prompts must be miniature-world prompts; any other raises ValueError naming it.
"""

from __future__ import annotations

import torch

from fgrpo.miniature.scoring import faithfulness_scores, gold_scores, mean_score, saturation
from fgrpo.miniature.world import ATTRIBUTES
from fgrpo.rewards.base import register_reward

__all__ = ["miniature_faithfulness", "miniature_gold", "miniature_proxy"]


def _pick(scores: dict[str, torch.Tensor], attribute: str) -> torch.Tensor:
    return scores[attribute] if attribute else mean_score(scores)


def _check_attribute(attribute: str) -> None:
    if attribute and attribute not in ATTRIBUTES:
        raise ValueError(f"unknown miniature attribute {attribute!r}; use one of {', '.join(ATTRIBUTES)} or ''")


@register_reward("miniature_faithfulness")
def miniature_faithfulness(frames: torch.Tensor, prompts: list[str], attribute: str = "") -> torch.Tensor:
    """Soft faithfulness to the prompt, ``[B]`` in [0, 1]: all attributes' mean, or ``attribute``'s."""
    _check_attribute(attribute)
    return _pick(faithfulness_scores(frames, prompts), attribute).float()


@register_reward("miniature_gold")
def miniature_gold(frames: torch.Tensor, prompts: list[str], attribute: str = "") -> torch.Tensor:
    """Strict gold score, ``[B]`` in [0, 1]: the share of attributes right (or ``attribute``'s 0/1)."""
    _check_attribute(attribute)
    return _pick(gold_scores(frames, prompts), attribute).float()


@register_reward("miniature_proxy")
def miniature_proxy(frames: torch.Tensor, prompts: list[str], saturation_bonus: float = 0.5) -> torch.Tensor:
    """Faithfulness + ``saturation_bonus`` x mean HSV saturation, ``[B]``: a hackable proxy."""
    return (mean_score(faithfulness_scores(frames, prompts)) + float(saturation_bonus) * saturation(frames)).float()
