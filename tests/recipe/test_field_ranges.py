"""Every numeric recipe field has a declared range, and values outside it (NaN, inf, zero, negative,
too large) are refused by name before anything is written; run names stay inside the runs folder;
the prompt file must be a readable text file with enough training prompts for one step."""

import dataclasses
import math
from typing import Any

import pytest

from fgrpo.recipe.config import Recipe, RewardSpec
from fgrpo.recipe.io import load_recipe_file
from fgrpo.recipe.ranges import RANGE_KEY, Range, numeric_fields, range_problems, within
from fgrpo.recipe.validate import recipe_problems
from tests.conftest import REPO, run_fgrpo

TINY = REPO / "recipes" / "tiny.py"
FIELDS = numeric_fields(Recipe)


def test_every_numeric_field_declares_its_range():
    assert len(FIELDS) > 50  # the walk reaches every section, rewards.0 and launch.k8s included
    names = {name for name, *_ in FIELDS}
    assert {
        "optim.betas",
        "timesteps.weights",
        "rewards.0.weight",
        "launch.k8s.max_restarts",
        "launch.procs_per_node",
    } <= names
    missing = [name for name, f, *_ in FIELDS if not isinstance(f.metadata.get(RANGE_KEY), Range)]
    assert missing == [], f"declare a range with within(...) beside: {missing}"
    assert range_problems(Recipe()) == []


def test_a_numeric_field_without_a_range_is_reported():
    @dataclasses.dataclass
    class Section:
        declared: float = within("(0, 1)", 0.5)
        undeclared: int = 3

    assert range_problems(Section()) == [
        "undeclared: no valid range declared (declare it with fgrpo.recipe.ranges.within)"
    ]


def test_range_notation():
    r = Range.parse("[1, inf) or -1")
    assert 1 in r and 10**9 in r and -1 in r
    assert 0 not in r and math.inf not in r and math.nan not in r and -2 not in r
    half_open = Range.parse("(0, 1]")
    assert 1 in half_open and 0 not in half_open and 0.5 in half_open
    assert math.inf in Range.parse("[0, inf]")  # only a closed bracket lets inf in
    assert str(r) == "[1, inf) or -1"
    for bad in ("0, 1", "[1, 0)", "[0, 1", "(a, b)"):
        with pytest.raises(ValueError, match="bad range"):
            Range.parse(bad)


def _outside(rng: Range, number: type) -> list:
    """Values just outside `rng` (and NaN, ±inf for floats)."""
    out = []
    if math.isfinite(rng.lo):
        out += [rng.lo - 1] + ([] if rng.lo_closed else [rng.lo])
    if math.isfinite(rng.hi):
        out += [rng.hi + 1] + ([] if rng.hi_closed else [rng.hi])
    out = [number(v) for v in out if v not in rng]
    if number is float:
        out += [v for v in (math.nan, math.inf, -math.inf) if v not in rng]
    assert out, f"{rng} has no value outside it"
    return out


def _set(obj: Any, dotted: str, value: Any) -> Any:
    head, _, rest = dotted.partition(".")
    if isinstance(obj, tuple):  # rewards.0...
        i = int(head)
        return obj[:i] + (_set(obj[i], rest, value),) + obj[i + 1 :]
    new = _set(getattr(obj, head), rest, value) if rest else value
    return dataclasses.replace(obj, **{head: new})


CASES = [
    pytest.param(name, bad, is_tuple, id=f"{name}={bad}")
    for name, f, number, is_tuple in FIELDS
    for bad in _outside(f.metadata[RANGE_KEY], number)
]


@pytest.mark.parametrize("name, bad, is_tuple", CASES)
def test_a_value_outside_the_range_is_refused_by_name(name, bad, is_tuple):
    recipe = load_recipe_file(TINY)
    if name.startswith("eval.gold_rewards."):  # none in the recipe: one to set the field of
        recipe = dataclasses.replace(recipe, eval=dataclasses.replace(recipe.eval, gold_rewards=(RewardSpec(),)))
    if is_tuple:  # one bad element is enough
        current = _get(recipe, name) or (1,)
        value = (bad, *current[1:])
        if name == "timesteps.weights":
            value = (bad,) + (1.0,) * 4  # tiny's window has 5 steps
    else:
        value = bad
    problems = recipe_problems(_set(recipe, name, value))
    mine = [p for p in problems if p.startswith(f"{name}: ")]
    assert mine, problems
    assert "\n" not in mine[0] and "must be in" in mine[0], mine


def _get(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        obj = obj[int(part)] if isinstance(obj, tuple) else getattr(obj, part)
    return obj


def test_wrong_types_in_a_recipe_file_are_named():
    recipe = load_recipe_file(TINY)
    assert recipe_problems(_set(recipe, "rollout.steps", 2.5)) == ["rollout.steps: must be an integer, got 2.5"]
    assert recipe_problems(_set(recipe, "optim.lr", "fast")) == ["optim.lr: must be a number, got 'fast'"]
    assert recipe_problems(_set(recipe, "rollout.group_size", True)) == [
        "rollout.group_size: must be an integer, got True"
    ]
    assert recipe_problems(_set(recipe, "optim.lr", None)) == ["optim.lr: must be a number, got None"]
    assert recipe_problems(_set(recipe, "launch.procs_per_node", None)) == []  # None is its default


def test_nonfinite_reward_args_are_refused():
    recipe = load_recipe_file(TINY)
    bad = _set(recipe, "rewards.0.args", {"scale": math.nan})
    assert "rewards.0.args.scale: must be finite, got nan" in recipe_problems(bad)


def test_one_message_per_field():
    """A value outside its range is not reported again by the field's other checks."""
    recipe = load_recipe_file(TINY)
    problems = recipe_problems(_set(recipe, "rollout.height", 0))
    assert problems == ["rollout.height: must be in [16, inf), got 0"]


@pytest.mark.parametrize(
    "override, message",
    [
        (["--rollout.cfg-scale", "nan"], "rollout.cfg_scale: must be in [0, inf), got nan"),
        (["--optim.lr", "nan"], "optim.lr: must be in (0, inf), got nan"),
        (["--logging.console-interval", "0"], "logging.console_interval: must be in [1, inf), got 0"),
        (["--eval.videos-per-prompt", "0"], "eval.videos_per_prompt: must be in [1, inf), got 0"),
    ],
)
def test_reported_values_are_refused_by_launch(tmp_path, override, message):
    for dry in ([], ["--dry-run"]):
        res = run_fgrpo(
            "launch", str(TINY), "--logging.runs-dir", str(tmp_path / "runs"), *override, *dry, cwd=tmp_path
        )
        assert res.returncode == 2, res.stdout + res.stderr
        assert message in res.stderr, res.stderr
        assert not (tmp_path / "runs").exists()


def test_show_refuses_every_reported_value():
    overrides = {
        "--rollout.flow-shift": ["nan"],
        "--rollout.noise-constant": ["nan"],
        "--algorithm.clip-range": ["nan"],
        "--optim.grad-clip": ["-1"],
        "--algorithm.adv-clip": ["inf"],
        "--optim.betas": ["2", "2"],
        "--optim.weight-decay": ["nan"],
        "--optim.warmup-steps": ["-5"],
        "--prompts.heldout": ["-3"],
        "--optim.max-nonfinite-steps": ["0"],
        "--model.max-text-tokens": ["0"],
        "--timesteps.weights": ["nan", "1", "1", "1", "1"],
    }
    res = run_fgrpo("show", str(TINY), *[x for k, v in overrides.items() for x in (k, *v)])
    assert res.returncode == 2
    lines = res.stderr.splitlines()
    for flag in overrides:
        field = flag[2:].replace("-", "_")
        assert any(line.startswith(f"  {field}: ") and "must be in" in line for line in lines), (flag, res.stderr)


RUN_NAMES = [
    "../../etc",
    "/tmp/elsewhere",
    ".",
    "..",
    "   ",
    "a/b",
    "a\\b",
    "-rf",
    ".hidden",
    "a b",
    "a\x01b",
    "x" * 201,
]


@pytest.mark.parametrize("name", RUN_NAMES)
def test_run_names_that_escape_or_hide_the_run_are_refused(name):
    problems = recipe_problems(_set(load_recipe_file(TINY), "logging.run_name", name))
    assert [p for p in problems if p.startswith("logging.run_name: ")], problems
    problems = recipe_problems(_set(load_recipe_file(TINY), "name", name))  # the stem of derived run names
    assert [p for p in problems if p.startswith("name: ")], problems


@pytest.mark.parametrize("name", ["run", "tiny__lr=0.001_rank=4", "a.b,c+d-e=f", "2024-01-01"])
def test_ordinary_run_names_are_accepted(name):
    assert recipe_problems(_set(load_recipe_file(TINY), "logging.run_name", name)) == []


@pytest.mark.parametrize(
    "flags",
    [
        ["--logging.run-name", "../../etc"],
        ["--logging.run-name", ".."],
        ["--logging.run-name", "/abs"],
        ["--name", "../up"],
    ],
)
def test_launch_never_writes_outside_the_runs_folder(tmp_path, flags):
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    for dry in (["--dry-run"], []):
        res = run_fgrpo("launch", str(TINY), "--logging.runs-dir", str(work / "runs"), *flags, *dry, cwd=work)
        assert res.returncode == 2, res.stdout + res.stderr
        field = "name" if flags[0] == "--name" else "logging.run_name"
        assert f"\n  {field}: " in res.stderr, res.stderr
        assert sorted(p.name for p in tmp_path.rglob("*")) == ["a", "b"]  # nothing written anywhere


def _with_prompts(tmp_path, file, **changes):
    recipe = load_recipe_file(TINY)
    recipe = _set(recipe, "prompts.file", str(file))
    for k, v in changes.items():
        recipe = _set(recipe, k, v)
    return recipe_problems(recipe)


def test_too_few_training_prompts_for_one_step_are_refused(tmp_path):
    f = tmp_path / "few.txt"
    f.write_text("".join(f"prompt {i}\n" for i in range(10)))
    # 10 prompts, 8 held out: 2 to train on, tiny draws 4 per step
    assert _with_prompts(tmp_path, f) == [
        f"rollout.prompts_per_step: 4 prompts per step, but {f} has only 2 training prompts "
        "(10 minus prompts.heldout=8); a step would repeat prompts"
    ]
    assert _with_prompts(tmp_path, f, **{"prompts.heldout": 6}) == []
    assert _with_prompts(tmp_path, f, **{"prompts.heldout": 10})[0].startswith("prompts.heldout: 10 held out")


def test_a_folder_binary_or_empty_prompt_file_is_named(tmp_path):
    assert _with_prompts(tmp_path, tmp_path) == [f"prompts.file: {tmp_path} is a directory, not a prompt file"]
    binary = tmp_path / "weights.bin"
    binary.write_bytes(bytes(range(256)) * 4)
    [problem] = _with_prompts(tmp_path, binary)
    assert problem.startswith(f"prompts.file: {binary}: not a UTF-8 text file"), problem
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    assert _with_prompts(tmp_path, empty) == [f"prompts.file: {empty} holds no prompts"]


@pytest.mark.parametrize(
    "field, value, ok",
    [
        ("frames", 4093, True),
        ("frames", 4097, False),
        ("height", 16384, True),
        ("height", 16400, False),
        ("width", 16400, False),
    ],
)
def test_sizes_beyond_wans_rotary_table_are_refused(field, value, ok):
    recipe = load_recipe_file(TINY)
    recipe = dataclasses.replace(recipe, rollout=dataclasses.replace(recipe.rollout, **{field: value}))
    named = [p for p in recipe_problems(recipe) if p.startswith(f"rollout.{field}:")]
    assert (named == []) == ok, named
    if not ok:
        assert "rotary" in named[0]


def test_a_recipe_file_calling_sys_exit_is_refused(tmp_path):
    bad = tmp_path / "exits.py"
    bad.write_text("import sys\nsys.exit(0)\n")
    res = run_fgrpo("launch", str(bad), "--logging.runs-dir", str(tmp_path / "runs"), cwd=tmp_path)
    assert res.returncode == 2 and "sys.exit(0)" in res.stderr, (res.returncode, res.stderr[-500:])
    assert not (tmp_path / "runs").exists()
