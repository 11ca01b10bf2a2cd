"""Where the trainer's rewards are scored: in the training process, or by a reward server.

Both scorers have one interface: calling one scores at once and returns ``(total [B], components)``;
``submit`` returns a pending score whose ``result()`` gives the same. The step submits each
micro-batch of videos as soon as it is decoded and collects the results after the last rollout, so
a server scores while the trainer rolls out the next micro-batch. In-process rewards score each
micro-batch at once, on the training device, so its decoded frames (hundreds of MB per 81-frame
480p video) are freed before the next rollout; ``inline_s`` says how long that took. Both tell
their rewards' ``identity`` (fgrpo.rewards.identity): in-process, of this machine's files; through
a server, the server's, after its handshake has found them to be what the run expects.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from concurrent.futures import Future
from functools import cached_property
from pathlib import Path

import torch

from fgrpo.rewards import WeightedRewards
from fgrpo.rewards.client import RewardClient
from fgrpo.rewards.identity import reward_identities
from fgrpo.rewards.server_lifecycle import reward_token, wait_for_server
from fgrpo.run_folder import RunFolder

Scores = tuple[torch.Tensor, dict[str, torch.Tensor]]
REWARD_URL_ENV = "FGRPO_REWARD_URL"  # set by backends that know the server's address up front (k8s)


class PendingScore:
    """A submitted batch: ``result()`` blocks until it is scored. ``inline_s``: seconds spent scoring
    inside ``submit`` (in-process), which the step books as reward time, not rollout time."""

    def __init__(self, future: Future | None = None, scores: Scores | None = None, inline_s: float = 0.0) -> None:
        self._future, self._result, self.inline_s = future, scores, inline_s

    def result(self) -> Scores:
        if self._result is None:
            assert self._future is not None  # made with a future or with its scores
            self._result = self._future.result()
        return self._result


def not_scored(n: int, names: list[str]) -> PendingScore:
    """Zeros for a rank whose videos another rank scores (tensor-parallel replicas hold the same
    videos; only TP rank 0's scores are gathered)."""
    zeros = torch.zeros(n)
    return PendingScore(scores=(zeros, {k: zeros for k in names}))


class InProcessRewards:
    """The recipe's rewards, scored in this process on the frames' device."""

    where = "in-process"

    def __init__(self, specs) -> None:
        self.specs = list(specs)
        self.rewards = WeightedRewards(self.specs)
        self.names = self.rewards.names

    @cached_property
    def identity(self) -> list[dict]:
        """The rewards' identities, their files fingerprinted here (once: hashing takes a moment)."""
        return reward_identities(self.specs)

    def __call__(self, frames: torch.Tensor, prompts: list[str]) -> Scores:
        return self.rewards(frames, prompts)

    def submit(self, frames: torch.Tensor, prompts: list[str]) -> PendingScore:
        start = time.perf_counter()
        scores = self(frames, prompts)
        return PendingScore(scores=scores, inline_s=time.perf_counter() - start)

    def close(self) -> None:
        pass


class RemoteRewards:
    """The recipe's rewards, scored by a reward server; frames travel as uint8, a batch in requests
    of a few videos each (any micro-batch or held-out set fits), with the server's token."""

    where = "server"

    def __init__(
        self,
        url: str,
        names: list[str],
        expected: list[dict],
        timeout_s: float,
        retries: int,
        reconnect: Callable[[], str] | None = None,
        token: str | None = None,
    ) -> None:
        self.client = RewardClient(url, timeout_s=timeout_s, retries=retries, reconnect=reconnect, token=token)
        served = self.client.health().get("rewards", [])
        if served != names:
            raise ValueError(
                f"reward server {url} serves rewards {served}, but the recipe's rewards are {names}; "
                "start it with the recipe's rewards (fgrpo reward-server --recipe-file RECIPE)"
            )
        self.names = names
        self.identity = self.client.handshake(expected)  # the server refuses (409: ValueError) any other

    @property
    def url(self) -> str:
        """Where the server is now (it may have moved since connecting)."""
        return self.client.url

    def __call__(self, frames: torch.Tensor, prompts: list[str]) -> Scores:
        return self.client.score(frames, prompts)

    def submit(self, frames: torch.Tensor, prompts: list[str]) -> PendingScore:
        return PendingScore(future=self.client.submit(frames, prompts))

    def close(self) -> None:
        self.client.close()


def connect_rewards(
    recipe,
    run_dir: Path,
    check_stop: Callable[[], None] = lambda: None,
    all_agree: Callable[[bool], bool] = lambda ok: ok,
    local_stop: Callable[[], None] = lambda: None,
    expected: list[dict] | None = None,
):
    """In-process rewards, or a client of the configured server once it answers (waiting while a
    launched server loads its models; ``check_stop`` may abandon the wait). If the server becomes
    unreachable later, the client waits for it to come back (``local_stop`` may abandon that).
    The token is FGRPO_REWARD_TOKEN's or the run folder's (read once the server answers: a launched
    server makes it before announcing itself). The server's handshake must find its rewards to be
    ``expected`` (the run's recorded identities; by default the recipe's, without file fingerprints)."""
    rs = recipe.reward_server
    if not rs.url and not rs.launch:
        return InProcessRewards(recipe.rewards)
    if rs.url:

        def find_url() -> str | None:
            return rs.url
    else:
        folder = RunFolder(run_dir)

        def find_url() -> str | None:
            return os.environ.get(REWARD_URL_ENV) or folder.read_server_address()

    url = wait_for_server(find_url, rs.startup_timeout_s, check_stop, all_agree=all_agree)

    def reconnect() -> str:
        # Mid-step, so each rank on its own (no collectives): a launched server that was requeued
        # announces a new address; a fixed URL may come back after a restart.
        return wait_for_server(find_url, rs.startup_timeout_s, local_stop)

    if expected is None:
        expected = reward_identities(recipe.rewards, fingerprint=False)
    return RemoteRewards(
        url,
        WeightedRewards.keys(recipe.rewards),
        expected,
        rs.timeout_s,
        rs.retries,
        reconnect,
        token=reward_token(Path(run_dir)),
    )
