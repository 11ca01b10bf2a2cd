"""Helpers shared by the tests: launching tiny runs, small recipes, tiny reward models, k8s and Slurm test utilities."""

from typing import TypeVar

T = TypeVar("T")


def present(value: T | None, what: str) -> T:
    """`value`, failing the test when it is None (a record that should have been written by now)."""
    assert value is not None, f"no {what}"
    return value
