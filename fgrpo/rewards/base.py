"""Reward interface, registry and weighted combination.

A reward is a callable ``score(frames, prompts, **kwargs) -> Tensor`` where
``frames`` is float ``[B, F, C, H, W]`` in ``[0, 1]`` (C = 3, RGB) and
``prompts`` has ``B`` strings. It returns one score per video, ``[B]``, or,
when registered with ``per_frame=True``, one score per frame, ``[B, F]``,
which :func:`aggregate_frames` reduces to ``[B]``.

Rewards are looked up by registered name (``"colour"``) or by import path
(``"mypkg.rewards:score"``). A user callable found by import path is treated
as per-frame when it has a truthy ``per_frame`` attribute.

A reward declares the arguments it cannot run without (``required_args``: name ->
what to pass, e.g. ``{"model_path": "a local CLIPModel folder"}``), and
:func:`missing_reward_args` reports those a spec leaves unset, so a recipe is
refused before launch rather than failing when the first videos are scored. A
user callable may declare them as a ``required_args`` attribute.
"""

from __future__ import annotations

import importlib
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, cast

import torch

__all__ = [
    "RewardFn",
    "RewardInfo",
    "WeightedRewards",
    "aggregate_frames",
    "build_rewards",
    "duplicate_reward_keys",
    "get_reward",
    "get_reward_info",
    "list_rewards",
    "missing_reward_args",
    "parse_aggregation",
    "register_reward",
    "validate_reward_spec",
]

RewardFn = Callable[..., torch.Tensor]
LABEL_PATTERN = re.compile(r"[A-Za-z0-9_.-]+")  # a metric name in jsonl, TensorBoard, W&B and reports


@dataclass(frozen=True)
class RewardInfo:
    """A resolved reward: its spec string, the callable, its output kind and the
    ``(arg, description)`` pairs of the arguments it requires."""

    name: str
    fn: RewardFn
    per_frame: bool
    required_args: tuple[tuple[str, str], ...] = ()


_REGISTRY: dict[str, RewardInfo] = {}


def _ident(fn: Any) -> tuple[Any, Any]:
    return getattr(fn, "__module__", None), getattr(fn, "__qualname__", id(fn))


def _required(name: str, required_args: Any) -> tuple[tuple[str, str], ...]:
    if required_args is None:
        return ()
    if not isinstance(required_args, Mapping) or not all(
        isinstance(k, str) and k and isinstance(v, str) for k, v in required_args.items()
    ):
        raise ValueError(
            f"reward {name!r}: required_args must map argument names to descriptions, got {required_args!r}"
        )
    return tuple(required_args.items())


def register_reward(
    name: str,
    per_frame: bool = False,
    required_args: Mapping[str, str] | None = None,
) -> Callable[[RewardFn], RewardFn]:
    """Decorator registering ``fn`` under ``name``; sets ``fn.per_frame`` and ``fn.required_args``.

    ``required_args`` maps each argument the reward cannot run without to a short
    description of what to pass (shown when a recipe leaves it unset).
    Re-registering the same function (e.g. on module reload) is allowed;
    registering a different function under a taken name raises ValueError.
    """
    if not isinstance(name, str) or not name or ":" in name:
        raise ValueError(f"reward name must be a non-empty string without ':', got {name!r}")
    required = _required(name, required_args)

    def deco(fn: RewardFn) -> RewardFn:
        if not callable(fn):
            raise ValueError(f"reward {name!r}: {fn!r} is not callable")
        old = _REGISTRY.get(name)
        if old is not None and _ident(old.fn) != _ident(fn):
            raise ValueError(f"reward {name!r} is already registered ({old.fn!r})")
        try:
            fn.per_frame = bool(per_frame)  # type: ignore[attr-defined]
            fn.required_args = dict(required)  # type: ignore[attr-defined]
        except (AttributeError, TypeError):
            pass
        _REGISTRY[name] = RewardInfo(name, fn, bool(per_frame), required)
        return fn

    return deco


def list_rewards() -> list[str]:
    """Sorted names of all registered rewards."""
    return sorted(_REGISTRY)


def get_reward_info(spec: str) -> RewardInfo:
    """Resolve a registered name or ``module.path:attr`` into a RewardInfo."""
    if not isinstance(spec, str) or not spec:
        raise ValueError(f"reward spec must be a non-empty string, got {spec!r}")
    if spec in _REGISTRY:
        return _REGISTRY[spec]
    if ":" not in spec:
        raise ValueError(
            f"unknown reward {spec!r}; registered rewards: {', '.join(list_rewards()) or '(none)'}"
            " (or use an import path 'module.path:callable')"
        )
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ValueError(f"reward import path {spec!r} must look like 'module.path:callable'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"reward {spec!r}: cannot import module {module_name!r}: {exc}") from exc
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"reward {spec!r}: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ValueError(f"reward {spec!r}: {attr!r} is not callable (got {type(obj).__name__})")
    fn = cast(RewardFn, obj)  # a user's callable: its return type is its contract (checked when scoring)
    return RewardInfo(
        spec, fn, bool(getattr(fn, "per_frame", False)), _required(spec, getattr(fn, "required_args", None))
    )


def get_reward(name_or_import_path: str) -> RewardFn:
    """Return the reward callable for a registered name or import path."""
    return get_reward_info(name_or_import_path).fn


def parse_aggregation(how: str) -> tuple[str, float]:
    """Parse ``"mean" | "min" | "max" | "topk:P"`` into ``(kind, P)``."""
    if not isinstance(how, str):
        raise ValueError(f"frame aggregation must be a string, got {how!r}")
    how = how.strip().lower()
    if how in ("mean", "min", "max"):
        return how, 1.0
    if how.startswith("topk:"):
        try:
            p = float(how[5:])
        except ValueError:
            p = float("nan")
        if not (0.0 < p <= 1.0):
            raise ValueError(f"frame aggregation {how!r}: P in 'topk:P' must be in (0, 1]")
        return "topk", p
    raise ValueError(f"unknown frame aggregation {how!r}; use 'mean', 'min', 'max' or 'topk:P'")


def aggregate_frames(scores: torch.Tensor, how: str) -> torch.Tensor:
    """Reduce per-frame scores ``[B, F]`` to ``[B]``.

    ``"topk:P"`` is the mean of the best ``k = max(1, ceil(P * F))`` frames,
    e.g. ``"topk:0.3"`` over 10 frames averages the top 3.
    """
    kind, p = parse_aggregation(how)
    if scores.ndim != 2 or scores.shape[1] == 0:
        raise ValueError(f"per-frame scores must be [B, F] with F >= 1, got {tuple(scores.shape)}")
    if kind == "mean":
        return scores.mean(dim=1)
    if kind == "min":
        return scores.amin(dim=1)
    if kind == "max":
        return scores.amax(dim=1)
    n = scores.shape[1]
    k = min(n, max(1, math.ceil(p * n - 1e-9)))
    return scores.topk(k, dim=1).values.mean(dim=1)


def spec_field(spec: Any, key: str, default: Any) -> Any:
    if isinstance(spec, Mapping):
        return spec.get(key, default)
    return getattr(spec, key, default)


def validate_reward_spec(spec: Any) -> None:
    """Check a spec (attrs or mapping: name, weight, args, frame_aggregation).

    Raises ValueError naming the reward; imports user modules but runs nothing.
    """
    name = spec_field(spec, "name", None)
    if not isinstance(name, str) or not name:
        raise ValueError(f"reward spec {spec!r} has no valid 'name'")
    try:
        get_reward_info(name)
    except ValueError as exc:
        raise ValueError(f"reward {name!r}: {exc}") from exc
    weight = spec_field(spec, "weight", 1.0)
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
        raise ValueError(f"reward {name!r}: weight must be a finite number, got {weight!r}")
    args = spec_field(spec, "args", None)
    if args is not None and not isinstance(args, Mapping):
        raise ValueError(f"reward {name!r}: args must be a mapping, got {type(args).__name__}")
    try:
        parse_aggregation(spec_field(spec, "frame_aggregation", "mean"))
    except ValueError as exc:
        raise ValueError(f"reward {name!r}: {exc}") from exc
    label = spec_field(spec, "label", None)
    if label is not None and not (isinstance(label, str) and LABEL_PATTERN.fullmatch(label)):
        raise ValueError(f"reward {name!r}: label must be letters, digits, '_', '.' or '-', got {label!r}")


def missing_reward_args(spec: Any) -> dict[str, str]:
    """``{arg: description}`` of the arguments the spec's reward requires that its ``args``
    leave unset (absent, None or ""), in the reward's order. The spec's name must resolve."""
    info = get_reward_info(spec_field(spec, "name", None))
    args = spec_field(spec, "args", None) or {}
    return {key: what for key, what in info.required_args if args.get(key) in (None, "")}


def duplicate_reward_keys(specs: Any) -> list[str]:
    """The component keys (:meth:`WeightedRewards.keys`) that more than one of ``specs`` would be
    recorded under, in order: a label equal to another reward's name or label."""
    seen: set[str] = set()
    repeated: list[str] = []
    for key in WeightedRewards.keys(specs):
        if key in seen and key not in repeated:
            repeated.append(key)
        seen.add(key)
    return repeated


class WeightedRewards:
    """Weighted sum of rewards: ``total = sum_i weight_i * score_i``.

    Calling returns ``(total [B], components {key: [B]})``, both float32 on
    the frames' device; components are unweighted and keyed by reward name
    (``name#2``, ``name#3``... for repeats). Runs under ``torch.no_grad()``.
    """

    def __init__(self, specs: Any) -> None:
        specs = list(specs)
        if not specs:
            raise ValueError("at least one reward spec is required")
        self.entries: list[tuple[str, RewardInfo, float, dict, str]] = []
        for spec in specs:
            validate_reward_spec(spec)
        if repeated := duplicate_reward_keys(specs):
            raise ValueError(f"rewards recorded under the same name: {', '.join(repeated)}; give them distinct labels")
        for key, spec in zip(self.keys(specs), specs):
            name = spec_field(spec, "name", None)
            self.entries.append(
                (
                    key,
                    get_reward_info(name),
                    float(spec_field(spec, "weight", 1.0)),
                    dict(spec_field(spec, "args", None) or {}),
                    spec_field(spec, "frame_aggregation", "mean"),
                )
            )

    @staticmethod
    def keys(specs: Any) -> list[str]:
        """Component keys of ``specs``: each spec's ``label``, else its reward name (``name#2``... for
        a repeat). Validation (:func:`duplicate_reward_keys`) refuses specs whose keys repeat."""
        seen: dict[str, int] = {}
        keys = []
        for spec in specs:
            label = spec_field(spec, "label", None)
            if label:
                keys.append(label)
                continue
            name = spec_field(spec, "name", None)
            seen[name] = seen.get(name, 0) + 1
            keys.append(name if seen[name] == 1 else f"{name}#{seen[name]}")
        return keys

    @property
    def names(self) -> list[str]:
        """Component keys in spec order."""
        return [e[0] for e in self.entries]

    def __call__(self, frames: torch.Tensor, prompts: list[str]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if frames.ndim != 5 or frames.shape[2] != 3:
            raise ValueError(f"frames must be [B, F, 3, H, W], got {tuple(frames.shape)}")
        b = frames.shape[0]
        if len(prompts) != b:
            raise ValueError(f"got {len(prompts)} prompts for {b} videos")
        total = torch.zeros(b, dtype=torch.float32, device=frames.device)
        components: dict[str, torch.Tensor] = {}
        with torch.no_grad():
            for key, info, weight, args, how in self.entries:
                out = torch.as_tensor(info.fn(frames, list(prompts), **args))
                want = (b, frames.shape[1]) if info.per_frame else (b,)
                if tuple(out.shape) != want:
                    kind = "per-frame [B, F]" if info.per_frame else "[B]"
                    raise ValueError(f"reward {info.name!r} must return {kind} = {want}, got {tuple(out.shape)}")
                out = out.detach().to(device=frames.device, dtype=torch.float32)
                if info.per_frame:
                    out = aggregate_frames(out, how)
                if not torch.isfinite(out).all():
                    raise ValueError(f"reward {info.name!r} returned non-finite scores")
                components[key] = out
                total = total + weight * out
        return total, components


def build_rewards(specs: Any) -> WeightedRewards:
    """Validate ``specs`` and return a :class:`WeightedRewards`."""
    return WeightedRewards(specs)
