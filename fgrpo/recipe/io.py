"""Recipe files, command-line overrides, JSON round-trip and run names."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import runpy
import types
import typing
from pathlib import Path

from .config import Recipe


class RecipeError(ValueError):
    """A recipe problem; the message names the field or file."""


def load_recipe_file(path: str | Path) -> Recipe:
    """Run a recipe file and return its module-level `recipe` (a `Recipe`)."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"recipe file {path} does not exist")
    try:
        namespace = runpy.run_path(str(path))
    except Exception as e:  # the user's file: show what broke, where
        raise RecipeError(f"recipe file {path} failed to load: {type(e).__name__}: {e}") from e
    except SystemExit as e:  # sys.exit() in a recipe would end `fgrpo launch` quietly, having launched nothing
        raise RecipeError(
            f"recipe file {path} called sys.exit({e.code!r}) while loading; a recipe file must "
            "only define `recipe = Recipe(...)`"
        ) from None
    recipe = namespace.get("recipe")
    if not isinstance(recipe, Recipe):
        raise RecipeError(f"recipe file {path} must define `recipe = Recipe(...)` (found {type(recipe).__name__})")
    return recipe


def to_dict(recipe: Recipe) -> dict:
    return dataclasses.asdict(recipe)


def _build(tp: typing.Any, value: typing.Any) -> typing.Any:
    """`value` (JSON data) rebuilt as type hint `tp`: dataclasses and tuples restored."""
    origin = typing.get_origin(tp)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):  # a hint is a class, never an instance
        hints = typing.get_type_hints(tp)
        unknown = set(value) - {f.name for f in dataclasses.fields(tp)}
        if unknown:
            raise RecipeError(f"unknown field(s) {sorted(unknown)} for {tp.__name__}")
        return tp(**{k: _build(hints[k], v) for k, v in value.items()})
    if origin is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_build(args[0], v) for v in value)
        return tuple(_build(a, v) for a, v in zip(args, value))
    if origin in (typing.Union, types.UnionType) and value is not None:
        non_none = [a for a in typing.get_args(tp) if a is not type(None)]
        return _build(non_none[0], value) if len(non_none) == 1 else value
    return value


def from_dict(data: dict) -> Recipe:
    """Inverse of `to_dict` (nested dataclasses and tuples restored)."""
    return _build(Recipe, data)


def recipe_json(recipe: Recipe) -> str:
    return json.dumps(to_dict(recipe), indent=2, sort_keys=True) + "\n"


def save_recipe_json(recipe: Recipe, path: Path) -> None:
    """Atomically (a reader never sees half a recipe)."""
    from fgrpo.fileio import atomic_write_text

    atomic_write_text(path, recipe_json(recipe))


# Written into a run's recipe.json beside the recipe by the run folder (fgrpo.run_folder.versions):
# which fgrpo wrote it, in which format. Not recipe fields: a reader of the recipe drops them.
WRITER_KEYS = ("fgrpo_version", "format_version")


def recipe_from_record(record: dict) -> Recipe:
    """The recipe of a recipe.json's JSON object (`from_dict` without the WRITER_KEYS)."""
    return from_dict({k: v for k, v in record.items() if k not in WRITER_KEYS})


def load_recipe_json(path: Path) -> Recipe:
    return recipe_from_record(json.loads(Path(path).read_text()))


def _flatten(d: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v and all(isinstance(x, str) for x in v) and k != "args":
            out.update(_flatten(v, key + "."))
        elif isinstance(v, (list, tuple)) and v and all(isinstance(x, dict) for x in v):  # rewards
            for i, item in enumerate(v):
                out.update(_flatten(item, f"{key}.{i}."))
            out[f"{key}.count"] = len(v)
        else:
            out[key] = v
    return out


# Fields that do not change what is trained, so they never change a run's name.
_NAME_NEUTRAL = ("launch.", "logging.", "checkpoint.", "eval.", "reward_server.", "name", "optim.max_steps")


def changed_fields(base: Recipe, resolved: Recipe) -> dict[str, object]:
    """{dotted.field: new value} for every field where `resolved` differs from `base`."""
    a, b = _flatten(to_dict(base)), _flatten(to_dict(resolved))
    return {k: b.get(k) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k) and not k.startswith(_NAME_NEUTRAL)}


def training_fingerprint(recipe: Recipe) -> str:
    """A hash of every field that changes what is trained (not launch, logging, eval,
    checkpointing or optim.max_steps): written into each checkpoint, so checkpoints are never
    adopted by a recipe that did not train them."""
    # Fields at their default are left out, so a field added in a later version (at its default)
    # does not change the fingerprint of checkpoints written before it existed.
    defaults = _flatten(to_dict(Recipe()))
    fields = {
        k: v
        for k, v in _flatten(to_dict(recipe)).items()
        if not k.startswith(_NAME_NEUTRAL) and (k not in defaults or defaults[k] != v)
    }
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:16]


# Settings that say where files are, not what is trained: a run name leaves them out of its
# readable part and adds a hash instead (`run_name`). Recipe fields naming a file or folder:
LOCATION_FIELDS = ("model.path", "prompts.file")
# Reward arguments naming local files or folders (reward model weights, tokenizers): the built-in
# rewards' ones, and by convention any argument named *_path, *_dir or *_file.
REWARD_PATH_ARGS = ("model_path", "checkpoint", "tokenizer_path")


def is_location_arg(name: str) -> bool:
    """Whether reward argument `name` names a file or folder (see REWARD_PATH_ARGS)."""
    return name in REWARD_PATH_ARGS or name.endswith(("_path", "_dir", "_file"))


def _split_locations(flat: dict[str, object]) -> tuple[dict[str, object], dict[str, object]]:
    """A flattened recipe -> (what a run name shows, the location settings), both flattened."""
    shown, where = {}, {}
    for k, v in flat.items():
        if k in LOCATION_FIELDS:
            where[k] = v
        elif k.endswith(".args") and isinstance(v, dict):
            shown[k] = {a: x for a, x in v.items() if not is_location_arg(a)}
            where.update({f"{k}.{a}": x for a, x in v.items() if is_location_arg(a)})
        else:
            shown[k] = v
    return shown, where


def _fmt(v: object) -> str:
    if isinstance(v, (list, tuple)):
        return ",".join(_fmt(x) for x in v)
    if isinstance(v, dict):
        return ",".join(f"{k}:{_fmt(x)}" for k, x in v.items())
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def _label(key: str) -> str:
    """A field's name in a run name: `lr` for optim.lr, `rewards.0.name` inside a list."""
    parts = key.split(".")
    return key if any(p.isdigit() for p in parts) else parts[-1]


def run_name(base: Recipe, resolved: Recipe) -> str:
    """A pure function of (recipe, overrides): `<name>` or `<name>__<field>=<value>...`, naming what
    a person compares (lr=0.001, group_size=8). Where files are (model.path, prompts.file, reward
    arguments naming files: LOCATION_FIELDS, is_location_arg) is left out of the readable part: a
    hash of those settings is added instead (`<name>__lr=0.001__<hash>`), so runs on other files
    never share a folder, and runs on the same files end alike.

    Never a job id, so a requeued or resubmitted job finds the same folder. Names over 96
    characters are shortened to 80 plus a hash of every change.
    """
    if resolved.logging.run_name:
        return resolved.logging.run_name
    changes = changed_fields(base, resolved)
    if not changes:
        return resolved.name
    (shown_base, where_base), (shown, where) = (_split_locations(_flatten(to_dict(r))) for r in (base, resolved))
    parts = [
        f"{_label(k)}={_fmt(shown.get(k))}"
        for k in sorted(set(shown) | set(shown_base))
        if shown.get(k) != shown_base.get(k) and not k.startswith(_NAME_NEUTRAL) and not k.endswith(".count")
    ]
    name = resolved.name + "__" + "_".join(parts) if parts else resolved.name
    name = re.sub(r"[^A-Za-z0-9_.=,+-]", "-", name)
    moved = {k: where.get(k) for k in sorted(set(where) | set(where_base)) if where.get(k) != where_base.get(k)}
    suffix = "__" + _digest(moved) if moved else ""
    if len(name + suffix) > 96:  # shortened: the hash stands for every change
        return name[:80] + "__" + _digest(changes)
    return name + suffix


def _digest(changes: dict[str, object]) -> str:
    return hashlib.sha1(json.dumps({k: _fmt(v) for k, v in changes.items()}).encode()).hexdigest()[:10]
