"""Kubernetes backend pieces. `manifests`: the objects for one run, as plain dicts."""

from .manifests import (
    MASTER_PORT,
    QUEUE_LABEL,
    RECIPE_FILE,
    RUN_ANNOTATION,
    RUN_LABEL,
    master_addr,
    object_name,
    parse_secret_ref,
    parse_toleration,
    render,
)

__all__ = [
    "MASTER_PORT",
    "QUEUE_LABEL",
    "RECIPE_FILE",
    "RUN_ANNOTATION",
    "RUN_LABEL",
    "master_addr",
    "object_name",
    "parse_secret_ref",
    "parse_toleration",
    "render",
]
