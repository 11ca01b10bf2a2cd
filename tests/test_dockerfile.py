"""The shipped Dockerfile (the image of `--backend k8s`, k8s/README.md) without a Docker daemon:
it parses, runs as the pods' non-root uid, installs the CUDA build of the torch that pyproject.toml
pins and then this repository, and .dockerignore keeps checkout-local files out of the context."""

from __future__ import annotations

import dataclasses
import re
import shlex
import tomllib
from collections.abc import Mapping, Sequence
from typing import Any

import pytest
from dockerfile_parse import DockerfileParser
from packaging.requirements import Requirement

from fgrpo.recipe.config import KubernetesConfig
from tests.conftest import REPO


@pytest.fixture(scope="module")
def dockerfile() -> DockerfileParser:
    return DockerfileParser(str(REPO / "Dockerfile"))


def final_stage(df: DockerfileParser) -> Sequence[Mapping[str, Any]]:
    froms = [i for i, ins in enumerate(df.structure) if ins["instruction"] == "FROM"]
    assert froms, "no FROM"
    return df.structure[froms[-1] :]


def pip_installs(df: DockerfileParser) -> list[list[str]]:
    """Each `pip install` of the final stage's RUN lines: its words, ARGs expanded."""
    installs = []
    for ins in final_stage(df):
        if ins["instruction"] != "RUN":
            continue
        value = re.sub(r"\$\{?(\w+)\}?", lambda m: df.args.get(m[1], m[0]), ins["value"])
        for command in re.split(r"&&|;", value):
            words = shlex.split(command)
            if words[:2] in (["pip", "install"], ["pip3", "install"]) or words[1:4] == ["-m", "pip", "install"]:
                installs.append(words[words.index("install") + 1 :])
    return installs


VALUE_OPTIONS = {
    "-i",
    "--index-url",
    "--extra-index-url",
    "-f",
    "--find-links",
    "-c",
    "--constraint",
    "-r",
    "--requirement",
}


def targets(words: list[str]) -> list[str]:
    """What a `pip install` installs: its words less options and their values."""
    out, skip = [], False
    for w in words:
        if not skip and not w.startswith("-"):
            out.append(w)
        skip = w in VALUE_OPTIONS
    return out


def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def test_the_final_stage_runs_as_the_pods_non_root_uid(dockerfile):
    run_as_user = {f.name: f.default for f in dataclasses.fields(KubernetesConfig)}["run_as_user"]
    users = [ins["value"] for ins in final_stage(dockerfile) if ins["instruction"] == "USER"]
    assert users, "the image would run as root"
    uid, _, gid = users[-1].partition(":")
    assert uid == str(run_as_user) != "0" and gid in ("", str(run_as_user))
    # The user exists in the image (with that uid and a home for the caches), and HOME is it.
    runs = " ".join(ins["value"] for ins in final_stage(dockerfile) if ins["instruction"] == "RUN")
    useradd = re.search(r"useradd ([^&;]*)", runs)
    assert useradd and f"--uid {run_as_user}" in useradd[1] and "--create-home" in useradd[1]
    home = re.search(r"--home-dir (\S+)", useradd[1])
    assert home and dockerfile.envs.get("HOME") == home[1]


def test_torch_comes_from_the_cuda_index_with_pyprojects_pin(dockerfile):
    """Bumping torch in pyproject.toml and not here (or the reverse) fails this test."""
    pinned = next(Requirement(d) for d in pyproject()["project"]["dependencies"] if Requirement(d).name == "torch")
    torch_installs = [
        w for w in pip_installs(dockerfile) if any(Requirement(t).name == "torch" for t in targets(w) if t != ".")
    ]
    assert len(torch_installs) == 1, torch_installs
    words = torch_installs[0]
    (req,) = [Requirement(t) for t in targets(words) if Requirement(t).name == "torch"]
    assert req.specifier == pinned.specifier, f"Dockerfile installs {req}, pyproject.toml pins {pinned}"
    index = words[words.index("--index-url") + 1]
    assert re.fullmatch(r"https://download\.pytorch\.org/whl/cu\d+", index), index


def test_the_project_installed_is_this_repository_after_torch(dockerfile):
    stage = final_stage(dockerfile)
    copies = [ins["value"].split() for ins in stage if ins["instruction"] == "COPY"]
    workdirs = [ins["value"] for ins in stage if ins["instruction"] == "WORKDIR"]
    assert [".", workdirs[-1]] in copies, "the working directory must hold the repository (recipes' relative paths)"
    installs = pip_installs(dockerfile)
    project = [i for i, w in enumerate(installs) if "." in targets(w)]
    assert len(project) == 1 and targets(installs[project[0]]) == ["."], installs
    assert not {"-e", "--editable"} & set(installs[project[0]]), "the image installs the project, not a link to it"
    torch = [i for i, w in enumerate(installs) if any(t.startswith("torch") for t in targets(w))]
    assert torch and torch[0] < project[0], "torch's CUDA build must be installed before `pip install .`"
    assert pyproject()["project"]["name"] == "fgrpo"


def dockerignore_excludes(patterns: list[str], path: str) -> bool:
    """Docker's rule: the last pattern matching the path or a folder above it decides; `!` keeps."""

    def regex(pattern: str) -> re.Pattern:
        out = ""
        for part in re.split(r"(\*\*/?|\*|\?)", pattern.strip("/")):
            out += {"**/": "(.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}.get(part, re.escape(part))
        return re.compile(out)

    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for p in patterns:
        keep = p.startswith("!")
        if any(regex(p.lstrip("!")).fullmatch(prefix) for prefix in prefixes):
            excluded = not keep
    return excluded


def test_dockerignore_keeps_the_checkout_local_files_out():
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for path in (
        ".venv/bin/python",
        ".git/HEAD",
        "runs/tiny/recipe.json",
        ".cache/fgrpo/x",
        "tests/test_cli.py",
        "fgrpo/__pycache__/cli.cpython-311.pyc",
        "fgrpo.egg-info/PKG-INFO",
    ):
        assert dockerignore_excludes(patterns, path), path
    # What `pip install .` builds from and what runs read stays in.
    needed = ["pyproject.toml", pyproject()["project"]["readme"]]
    for folder in ("fgrpo", "launchers", "recipes", "prompts"):
        needed += [
            str(p.relative_to(REPO)) for p in (REPO / folder).rglob("*") if p.is_file() and "__pycache__" not in p.parts
        ]
    assert len(needed) > 20 and not [p for p in needed if dockerignore_excludes(patterns, p)]


def test_the_dockerignore_matcher():
    assert dockerignore_excludes(["runs"], "runs/a/b") and not dockerignore_excludes(["runs"], "fgrpo/cli/runs.py")
    assert dockerignore_excludes(["**/__pycache__"], "a/b/__pycache__/c.pyc")
    assert dockerignore_excludes(["*.egg-info"], "fgrpo.egg-info/x") and not dockerignore_excludes(
        ["*.md"], "docs/a.md"
    )
    assert not dockerignore_excludes(["docs", "!docs/keep.md"], "docs/keep.md")
