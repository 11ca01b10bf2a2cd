#!/usr/bin/env bash
# Set up (if needed), start a local Slurm cluster (if we can), run the guards (ruff, pyright) and
# the whole test suite, stop the cluster again if this script started it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export FGRPO_CACHE="${FGRPO_CACHE:-$PWD/.cache/fgrpo}"
# One torch thread per process: the pytest workers already keep both cores busy, and a process with
# two threads beside another waits at every parallel region for its second thread (measured: a
# rollout 8.5 s at one thread, 11.6 s at two, under load; docs/design.md, "rollout_peak"). The
# launchers pass it on to every rank and Slurm job.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
# Inductor compiles in the process itself rather than in a pool of worker processes that each import
# torch first: the compile tests' CPU time on these 2 cores, 72 -> 64 s for one case. The kernels are
# the same either way.
export TORCHINDUCTOR_COMPILE_THREADS="${TORCHINDUCTOR_COMPILE_THREADS:-1}"
# Every process of the suite imports fgrpo; with PYTHONDONTWRITEBYTECODE set (as on some CI images)
# each would compile it from source again.
.venv/bin/python -m compileall -q fgrpo launchers >/dev/null
started_slurm=0
if ! bash scripts/slurm-local.sh status >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    bash scripts/slurm-local.sh start
    started_slurm=1
    # Our private test cluster: jobs left from an earlier session would hold its nodes.
    squeue -h -o %i | xargs -r scancel || true
  else
    echo "not root: no local Slurm cluster, the Slurm tests will be skipped" >&2
  fi
fi
# The report's browser test renders in Debian's chromium: installed like Slurm (root only).
bash scripts/chromium.sh >/dev/null || echo "no chromium: the report's browser test will be skipped" >&2
stop_slurm() { if [ "$started_slurm" = 1 ]; then bash scripts/slurm-local.sh stop || true; fi; }
trap stop_slurm EXIT
# The repository's own guards first (configured in pyproject.toml): a finding fails the run.
.venv/bin/ruff check fgrpo launchers benchmarks tests recipes
.venv/bin/ruff format --check fgrpo launchers benchmarks tests recipes
.venv/bin/pyright
# Three workers (pytest-xdist) on 2 cores: much of the suite waits (on Slurm's scheduler, on a
# collective's timeout, on process start-up), and one worker's waiting is another's compute (the
# whole suite at three workers 3573 s, every test passing; 3973 s at two workers the day before,
# before that day's cuts, docs/design.md "The suite's time"). Tests that share the local Slurm cluster or need the real 1.3B architecture's memory run one
# after another (tests/conftest.py, SERIAL_GROUPS). The slowest tests are listed at the end: the
# suite must stay within 45 minutes on 2 cores.
.venv/bin/python -m pytest -q -n 3 --dist loadgroup --durations=40 "$@"
