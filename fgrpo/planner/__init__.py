"""Capacity planning: peak memory per GPU for each phase of a run, FLOPs and GPU-hours, from the
real architecture and parallelisation on fake tensors (`fgrpo plan`, and `fgrpo launch`'s
pre-flight check). See plan.py for the phases, phases.py for what each runs, attention.py for how
attention is modelled, world.py for the instruments."""

from .plan import Gpu, Plan, parse_bytes, plan, planning_problems
from .spec import ModelSpec

__all__ = ["Gpu", "ModelSpec", "Plan", "parse_bytes", "plan", "planning_problems"]
