"""`fgrpo doctor`'s file checks: the model folder and the reward models' files, as their loaders read them.

What the loaders read, and so what must be there and readable:

    model folder   transformer/  config.json + *.safetensors (every rank reads its shards from all of
                                 them: fgrpo/models/wan/sharded_loading.py)
                   vae/, text_encoder/  config.json + weights (`from_pretrained`: loading.py, text_encoder.py)
                   tokenizer/    tokenizer files (`AutoTokenizer.from_pretrained`)
                   image_encoder/, image_processor/  a CLIP encoder and its preprocessor config, when the
                                 transformer has image attention (Wan2.1 I2V: fgrpo/models/wan/image_condition.py)
    rewards        clip        model_path: CLIPModel + CLIPProcessor (config, weights, preprocessor, tokenizer)
    (fgrpo/rewards/) hpsv2     checkpoint: an open_clip state dict file; tokenizer_path: a CLIP tokenizer
                   hpsv3       model_path: Qwen2-VL config + tokenizer; checkpoint: the HPSv3 state dict file
                   videoalign  model_path: Qwen2-VL config + tokenizer; checkpoint: a VideoReward folder
                               (checkpoint-<step>/model.pth) or a state dict file

A sharded checkpoint's `*.index.json` must name only shards that exist. Every file read is opened
and its first byte read (a permission or network-filesystem problem shows now, not in the job).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .doctor_checks import Check, size

Need = tuple[str, ...]  # glob patterns in a folder; at least one must match
CONFIG: Need = ("config.json",)
WEIGHTS: Need = ("*.safetensors", "*.bin")
TOKENIZER: Need = ("tokenizer.json", "vocab.json", "spiece.model", "tokenizer.model")

MODEL_NEEDS: dict[str, tuple[Need, ...]] = {
    "transformer": (CONFIG, ("*.safetensors",)),  # HuggingFaceStorageReader reads safetensors only
    "vae": (CONFIG, WEIGHTS),
    "text_encoder": (CONFIG, WEIGHTS),
    "tokenizer": (TOKENIZER,),
}
# Wan2.1 image-to-video folders (a transformer with `image_dim`) also hold the CLIP image encoder.
IMAGE_MODEL_NEEDS: dict[str, tuple[Need, ...]] = {
    "image_encoder": (CONFIG, WEIGHTS),
    "image_processor": (("preprocessor_config.json",),),
}
# (reward, arg) -> what its folder must hold; None: the arg names a file.
REWARD_NEEDS: dict[tuple[str, str], tuple[Need, ...] | None] = {
    ("clip", "model_path"): (CONFIG, WEIGHTS, ("preprocessor_config.json",), TOKENIZER),
    ("hpsv2", "checkpoint"): None,
    ("hpsv2", "tokenizer_path"): (TOKENIZER,),
    ("hpsv3", "model_path"): (CONFIG, TOKENIZER),  # the base weights are not read with a checkpoint
    ("hpsv3", "checkpoint"): None,
    ("videoalign", "model_path"): (CONFIG, TOKENIZER),
    ("videoalign", "checkpoint"): (("checkpoint-*/model.pth",),),
}
ALSO_A_FILE = {("videoalign", "checkpoint")}  # a state dict file is accepted instead of the folder


def read_problem(path: Path) -> str | None:
    """Why `path` (a file) cannot be read, or None; JSON files must also parse."""
    try:
        with open(path, "rb") as f:
            head = f.read(1)
            if path.suffix == ".json":
                json.loads(head + f.read())
    except PermissionError:
        return f"{path} is not readable (permission denied)"
    except OSError as e:
        return f"{path} cannot be read: {e.strerror or e}"
    except ValueError as e:
        return f"{path} is not valid JSON: {e}"
    return None


def list_problem(folder: Path) -> str | None:
    """Why `folder` cannot be listed, or None."""
    try:
        with os.scandir(folder):
            pass
    except PermissionError:
        return f"{folder} is not readable (permission denied)"
    except OSError as e:
        return f"{folder} cannot be listed: {e.strerror or e}"
    return None


def indexed_shards(index: Path) -> set[str]:
    """The shard files a `*.index.json` names (its weight_map's values); empty if it cannot be read."""
    try:
        return set(json.loads(index.read_text()).get("weight_map", {}).values())
    except (OSError, ValueError, AttributeError):
        return set()  # read_problem reports the index itself


def folder_problems(folder: Path, needs: tuple[Need, ...]) -> tuple[list[str], int]:
    """(problems, bytes) of one folder the loaders read: each need matched, every matching file and
    every shard its index names readable."""
    if not folder.exists():
        return [f"{folder} is missing"], 0
    if not folder.is_dir():
        return [f"{folder} is not a folder"], 0
    problem = list_problem(folder)
    if problem:
        return [problem], 0
    problems, files = [], []
    for need in needs:
        matches = sorted({p for pattern in need for p in folder.glob(pattern) if p.is_file()})
        if not matches:
            problems.append(
                f"{folder / need[0]} is missing" if len(need) == 1 else f"{folder} holds none of {', '.join(need)}"
            )
        files += matches
    for index in folder.glob("*.index.json"):
        files.append(index)
        problems += [
            f"{folder / shard} is missing (named in {index.name})"
            for shard in sorted(indexed_shards(index))
            if not (folder / shard).is_file()
        ]
    problems += [p for p in map(read_problem, dict.fromkeys(files)) if p]
    return problems, sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def path_problems(path: Path, needs: tuple[Need, ...] | None, file_ok: bool = False) -> tuple[list[str], int]:
    """(problems, bytes) of a path a loader reads: a file (`needs` None) or a folder with `needs`."""
    if not path.exists():
        return [f"{path} does not exist"], 0
    if path.is_file() and (needs is None or file_ok):
        problem = read_problem(path)
        return ([problem] if problem else []), path.stat().st_size
    if needs is None:
        return [f"{path} is a folder; a file is expected"], 0
    return folder_problems(path, needs)


def model_needs(path: Path) -> dict[str, tuple[Need, ...]]:
    """What the loaders read from this model folder (its transformer config says whether it takes images)."""
    try:
        image_dim = json.loads((path / "transformer" / "config.json").read_text()).get("image_dim")
    except (OSError, ValueError):  # reported as the transformer's problem
        image_dim = None
    return {**MODEL_NEEDS, **(IMAGE_MODEL_NEEDS if image_dim else {})}


def model_folder_check(model) -> Check:
    """The recipe's model folder (model.path, or a preset's cached build): every file the loaders read."""
    from fgrpo.miniature.pretrain import released_model_folder
    from fgrpo.models.model_folder import BUILT_PRESETS, model_folder

    if model.path is None and model.preset not in BUILT_PRESETS:
        return Check(
            "model folder",
            "fail",
            f"model.path is not set: preset {model.preset} needs a local "
            "diffusers-format folder (weights are never downloaded)",
        )
    path = model_folder(model, build=False)
    origin = "model.path" if model.path is not None else f"the {model.preset} preset's cached build"
    if model.path is None and not path.exists():
        if model.preset == "miniature" and not released_model_folder(model.seed).is_dir():
            return Check(
                "model folder",
                "warn",
                f"{path} ({origin}) is not built yet: the first run pre-trains it "
                "(minutes on a CPU); `fgrpo make-miniature` builds it ahead",
            )
        how = "copies the released build" if model.preset == "miniature" else "builds it"
        return Check("model folder", "ok", f"{path} ({origin}) is not built yet: fgrpo {how} on first use (seconds)")
    if not path.is_dir():
        what = "is not a folder" if path.exists() else "does not exist"
        return Check("model folder", "fail", f"{origin}: {path} {what}")
    problems, sizes = [], []
    for sub, needs in model_needs(path).items():
        found, nbytes = folder_problems(path / sub, needs)
        problems += found
        sizes.append(f"{sub} {size(nbytes)}")
    if problems:
        return Check("model folder", "fail", f"{origin}: " + "; ".join(problems))
    return Check("model folder", "ok", f"{path} ({origin}): {', '.join(sizes)}; every file readable")


def reward_check(index: int, spec) -> Check:
    """One reward's files: its required path arguments set, each path holding what its loader reads."""
    from fgrpo.recipe.validate import REWARD_PATH_ARGS
    from fgrpo.rewards import missing_reward_args

    label = f"reward {index} ({spec.name})"
    try:
        missing = missing_reward_args(spec)
    except ValueError as e:
        return Check(label, "fail", f"rewards.{index}: {e}")
    problems = [f"rewards.{index}.args.{key} is not set ({what})" for key, what in missing.items()]
    details = []
    for key in REWARD_PATH_ARGS:
        value = spec.args.get(key)
        if not isinstance(value, str) or not value:
            continue
        needs = REWARD_NEEDS.get((spec.name, key), ())  # another reward's path: it must exist and be readable
        found, nbytes = path_problems(Path(value), needs, file_ok=(spec.name, key) in ALSO_A_FILE or needs == ())
        problems += [f"args.{key}: {p}" for p in found]
        details.append(f"{key} {value} ({size(nbytes)})")
    if problems:
        return Check(label, "fail", "; ".join(problems))
    return Check(label, "ok", "; ".join(details) + ", every file readable" if details else "no model files")


def reward_checks(recipe) -> list[Check]:
    """Every reward's files, unless a running server (reward_server.url) scores them with its own."""
    if recipe.reward_server.url is not None:
        url = recipe.reward_server.url
        return [Check("rewards", "ok", f"scored by the server at {url}: the model files are its own")]
    return [reward_check(i, spec) for i, spec in enumerate(recipe.rewards)]


__all__ = [
    "MODEL_NEEDS",
    "REWARD_NEEDS",
    "folder_problems",
    "model_folder_check",
    "path_problems",
    "read_problem",
    "reward_check",
    "reward_checks",
]
