"""Recipes and readers for the Kubernetes manifest tests."""

import dataclasses
import json

import pytest

from fgrpo.recipe.io import load_recipe_file
from tests.conftest import REPO

SCHEMA = REPO / "launchers" / "k8s" / "jobset_schema.json"
OLDEST = "1.31"
IMAGE = "registry.example.com/fgrpo:1.0"
RUN = "tiny__lr=0.001_seed=3"


def make_recipe(**k8s_changes):
    r = load_recipe_file(REPO / "recipes" / "tiny.py")
    k8s = dataclasses.replace(
        r.launch.k8s,
        image=IMAGE,
        secret_env={"WANDB_API_KEY": "wandb/api-key"},
        tolerations=("nvidia.com/gpu:NoSchedule",),
        kueue_queue="team-a",
    )
    k8s = dataclasses.replace(k8s, **k8s_changes)
    return dataclasses.replace(
        r, launch=dataclasses.replace(r.launch, nodes=2, procs_per_node=2, gpus_per_node=8, k8s=k8s)
    )


def by_kind(objs) -> dict:
    return {o["kind"]: o for o in objs}


def schema_validator():
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)
