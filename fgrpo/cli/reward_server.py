"""`fgrpo reward-server`: serve rewards over HTTP (the server itself: fgrpo.rewards.server).

  fgrpo reward-server --reward NAME [--model-path DIR] [--arg NAME KEY VALUE] [--weight NAME W] [--port 8000]
  fgrpo reward-server --run-dir RUN [--recipe-file FILE]     a run's own rewards; exits when it ends

A server started by a backend for a run (`--run-dir RUN`) serves the run's own reward specs
(RUN/recipe.json, or --recipe-file) and announces its address in the run folder
(RunFolder.reward_server_file); the trainers read it from there, so the server may land on any node
and move when it is requeued. It exits once the run has ended (completed, failed or cancelled), so
it never outlives its training job.

Scoring needs the token of FGRPO_REWARD_TOKEN, or with --run-dir the run folder's (made when
missing); without either the server is open, and so it may bind a loopback address only.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, NoReturn

import tyro

from fgrpo.rewards.server_lifecycle import reward_token, serve_until_done
from fgrpo.run_folder import RunFolder

Repeated = tyro.conf.UseAppendAction
PROG = "fgrpo reward-server"


@dataclass
class RewardServerArgs:
    """Load reward models once and score batches of frames over HTTP (POST /score, GET /health),
    until Ctrl-C, SIGTERM, or (with --run-dir) the run's end.

    Examples: FGRPO_REWARD_TOKEN=SECRET fgrpo reward-server --reward hpsv3 --model-path
    /models/Qwen2-VL-7B-Instruct --arg hpsv3 checkpoint /models/HPSv3.safetensors --host 0.0.0.0; or
    fgrpo reward-server --run-dir runs/wan14b-0 to serve a run's own rewards (with the run's token)
    and exit when it ends. Scoring needs the token of FGRPO_REWARD_TOKEN or of the run folder
    (--run-dir); without one the server binds loopback addresses only. A trainer uses it with
    --reward-server.url http://HOST:8000 (and the same FGRPO_REWARD_TOKEN), or with
    --reward-server.launch to let the backend start one."""

    reward: Annotated[tuple[str, ...], Repeated, tyro.conf.arg(metavar="NAME")] = ()
    """Registered reward name or module.path:function."""
    weight: Annotated[tuple[tuple[str, float], ...], Repeated, tyro.conf.arg(metavar="NAME W")] = ()
    """Weight of reward NAME in the total (default 1)."""
    arg: Annotated[tuple[tuple[str, str, str], ...], Repeated, tyro.conf.arg(metavar="NAME KEY VALUE")] = ()
    """Keyword argument for reward NAME (VALUE parsed as JSON, else a string)."""
    model_path: Annotated[str | None, tyro.conf.arg(metavar="DIR")] = None
    """Local model folder: sets model_path for every --reward that has none."""
    recipe_file: Annotated[str | None, tyro.conf.arg(metavar="FILE")] = None
    """Serve the rewards of this recipe JSON."""
    run_dir: Annotated[str | None, tyro.conf.arg(metavar="RUN")] = None
    """Serve RUN/recipe.json's rewards (or --recipe-file's), announce the address in
    RUN/reward-server.json and exit when the run has ended."""
    address_file: Annotated[str | None, tyro.conf.arg(metavar="FILE")] = None
    """Write {"url": ...} here once listening (default with --run-dir: RUN/reward-server.json)."""
    host: str = "127.0.0.1"
    """Address to bind (0.0.0.0: all interfaces)."""
    port: int = 8000
    """Port (0: any free port)."""
    advertise_host: str | None = None
    """Host name written to the address file (default: this host's name when bound to 0.0.0.0)."""
    watch_pid: int | None = None
    """Exit when this process (e.g. the launcher) has gone."""
    verbose: bool = False
    """Log every request."""
    read_timeout_s: float = 60.0
    """Drop a connection that sends nothing for this long (a stalled upload)."""
    max_connections: int = 16
    """Connections served at once (one worker thread each); up to 256 more wait, beyond that 503."""


def usage_error(msg: str) -> NoReturn:
    print(f"{PROG}: error: {msg}", file=sys.stderr)
    raise SystemExit(2)


def parse_value(text: str) -> Any:
    """A command-line VALUE: JSON if it parses (0.5 -> float, true -> bool, {"red": [1,0,0]} -> dict),
    else the text."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_args(argv: list[str]) -> RewardServerArgs:
    return tyro.cli(RewardServerArgs, args=argv, prog=PROG)


def reward_specs(a: RewardServerArgs) -> list:
    """The RewardSpecs to serve: a recipe's (--recipe-file or RUN/recipe.json) or the --reward flags'.
    Raises ValueError naming the flag that is wrong."""
    from fgrpo.recipe.config import RewardSpec
    from fgrpo.recipe.io import load_recipe_json

    recipe_file = (
        Path(a.recipe_file) if a.recipe_file else (RunFolder(Path(a.run_dir)).recipe_file if a.run_dir else None)
    )
    if recipe_file is not None:
        if a.reward:
            raise ValueError("give rewards either with --reward or from a recipe (--recipe-file/--run-dir), not both")
        if not recipe_file.is_file():
            raise ValueError(f"recipe file {recipe_file} does not exist")
        if not a.recipe_file:  # the run's own: read as the run folder reads it (its format checked)
            assert a.run_dir is not None  # recipe_file came from it
            return list(RunFolder(Path(a.run_dir)).read_recipe().rewards)
        return list(load_recipe_json(recipe_file).rewards)
    if not a.reward:
        raise ValueError("name at least one --reward (or serve a run's rewards with --run-dir RUN)")
    for opt, items in (("--weight", a.weight), ("--arg", a.arg)):
        for item in items:
            if item[0] not in a.reward:
                raise ValueError(f"{opt} names reward {item[0]!r}, which is not given with --reward")
    weights = {n: float(w) for n, w in a.weight}
    specs = []
    for n in a.reward:
        args = {k: parse_value(v) for m, k, v in a.arg if m == n}
        if a.model_path and "model_path" not in args:
            args["model_path"] = a.model_path
        specs.append(RewardSpec(name=n, weight=weights.get(n, 1.0), args=args))
    return specs


def cmd_reward_server(argv: list[str]) -> int:
    """Serve rewards over HTTP until Ctrl-C, SIGTERM, or (with --run-dir) the run's end. Argument
    errors exit with status 2 (SystemExit), as a parser's do."""
    from fgrpo.rewards.server import RewardServer

    a = parse_args(argv)
    try:
        specs = reward_specs(a)
        token = reward_token(Path(a.run_dir) if a.run_dir else None, create=True)
        server = RewardServer(
            specs,
            host=a.host,
            port=a.port,
            verbose=a.verbose,
            token=token,
            read_timeout_s=a.read_timeout_s,
            max_connections=a.max_connections,
        )
    except ValueError as exc:
        usage_error(str(exc))
    return serve_until_done(
        server,
        a.host,
        a.advertise_host,
        Path(a.run_dir) if a.run_dir else None,
        Path(a.address_file) if a.address_file else None,
        a.watch_pid,
    )


__all__ = ["RewardServerArgs", "cmd_reward_server", "parse_args", "parse_value", "reward_specs", "usage_error"]
