"""The reward server's shared token: scoring needs it, the trainers send it, it is never printed.

The first server had no authentication at all, and Slurm and Kubernetes bound it to 0.0.0.0:
anyone who could reach the port could use the reward models. Every test here fails on it."""

from __future__ import annotations

import dataclasses
import os
import signal
import stat
import subprocess
import sys
import urllib.error
import urllib.request

import pytest
import torch

from fgrpo.cli.reward_server import cmd_reward_server
from fgrpo.recipe.config import RewardSpec
from fgrpo.recipe.io import load_recipe_file, save_recipe_json
from fgrpo.rewards import WeightedRewards
from fgrpo.rewards import server as server_mod
from fgrpo.rewards.server import RewardClient, RewardServer, dequantize, is_loopback, quantize
from fgrpo.rewards.server_lifecycle import TOKEN_ENV, reward_token, wait_for_server
from fgrpo.run_folder import RunFolder
from fgrpo.trainer.reward_scoring import REWARD_URL_ENV, RemoteRewards, connect_rewards
from tests.conftest import REPO

SPECS = [RewardSpec(name="brightness"), RewardSpec(name="contrast")]
PROMPTS = ["a bright sky", "a dark night"]
TOKEN = "tok-" + "x" * 40


@pytest.fixture(autouse=True)
def _no_ambient_token(monkeypatch):
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    monkeypatch.delenv(REWARD_URL_ENV, raising=False)


def _frames():
    return torch.rand(2, 2, 3, 8, 8, generator=torch.Generator().manual_seed(1))


def _want():
    return WeightedRewards(SPECS)(dequantize(quantize(_frames())), PROMPTS)[0]


def _status(url: str, authorization: str | None) -> int:
    headers = {"Content-Type": "application/json", **({"Authorization": authorization} if authorization else {})}
    try:
        with urllib.request.urlopen(urllib.request.Request(url + "/score", data=b"{}", headers=headers), timeout=10):
            return 200
    except urllib.error.HTTPError as exc:
        return exc.code


def test_scoring_needs_the_token(monkeypatch):
    compared = []
    real = server_mod.hmac.compare_digest
    monkeypatch.setattr(server_mod.hmac, "compare_digest", lambda a, b: compared.append(1) or real(a, b))
    with RewardServer(SPECS, token=TOKEN) as srv:
        assert RewardClient(srv.url).health()["rewards"] == ["brightness", "contrast"]  # probes need no token
        for client in (RewardClient(srv.url), RewardClient(srv.url, token="wrong")):
            with pytest.raises(ValueError, match=r"\(401\).*Bearer") as info:
                client.score(_frames(), PROMPTS)
            assert TOKEN not in str(info.value) and TOKEN not in repr(client)
        total, _ = RewardClient(srv.url, token=TOKEN).score(_frames(), PROMPTS)
        torch.testing.assert_close(total, _want(), atol=1e-6, rtol=0)
        assert srv.scored == (1, 2)
        # The scheme is case-insensitive; anything but Bearer TOKEN is refused before the body is read.
        assert _status(srv.url, f"bearer {TOKEN}") == 400  # authorised; the empty JSON object is not a request
        for auth in (None, f"Basic {TOKEN}", f"Bearer {TOKEN}x", "Bearer", f"Bearer  {TOKEN[:-1]}"):
            assert _status(srv.url, auth) == 401, auth
    assert compared  # constant-time comparison


def test_open_servers_bind_loopback_only():
    for host in ("127.0.0.1", "127.0.0.2", "localhost", "::1"):
        assert is_loopback(host)
    for host in ("0.0.0.0", "::", "10.1.2.3", "node042.cluster"):
        assert not is_loopback(host)
    with pytest.raises(ValueError, match=r"refusing to serve on 0\.0\.0\.0 without a token.*FGRPO_REWARD_TOKEN"):
        RewardServer(SPECS, host="0.0.0.0")
    RewardServer(SPECS, host="0.0.0.0", token=TOKEN).stop()


def test_cli_refuses_an_open_server_on_all_interfaces(capsys):
    with pytest.raises(SystemExit):
        cmd_reward_server(["--reward", "colour", "--host", "0.0.0.0", "--port", "0"])
    assert "without a token" in capsys.readouterr().err


def test_trainers_send_the_token_of_the_environment(tmp_path, monkeypatch):
    recipe = load_recipe_file(REPO / "recipes" / "tiny.py")
    recipe = dataclasses.replace(recipe, rewards=tuple(SPECS))
    with RewardServer(SPECS, token=TOKEN) as srv:
        r = dataclasses.replace(recipe, reward_server=dataclasses.replace(recipe.reward_server, url=srv.url))
        with pytest.raises(ValueError, match="401"):  # refused at the handshake, before any scoring
            connect_rewards(r, tmp_path)
        monkeypatch.setenv(TOKEN_ENV, TOKEN)
        rewards = connect_rewards(r, tmp_path)
        assert isinstance(rewards, RemoteRewards)
        torch.testing.assert_close(rewards(_frames(), PROMPTS)[0], _want(), atol=1e-6, rtol=0)


def test_a_run_server_makes_the_run_token_and_its_trainers_use_it(tmp_path):
    """`fgrpo reward-server --run-dir RUN` (how the local and Slurm backends start it): it makes
    RUN/reward-server.token (0600) before announcing itself, scoring needs it, the run's trainers
    read it, and it never appears in the server's output."""
    run = tmp_path / "run"
    run.mkdir()
    recipe = load_recipe_file(REPO / "recipes" / "tiny.py")
    recipe = dataclasses.replace(
        recipe,
        rewards=tuple(SPECS),
        reward_server=dataclasses.replace(recipe.reward_server, launch=True, startup_timeout_s=60),
    )
    save_recipe_json(recipe, RunFolder(run).recipe_file)
    env = {k: v for k, v in os.environ.items() if k not in (TOKEN_ENV, REWARD_URL_ENV)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "fgrpo", "reward-server", "--run-dir", str(run), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        url = wait_for_server(lambda: RunFolder(run).read_server_address(), timeout_s=60, poll_s=0.1)
        folder = RunFolder(run)
        token = folder.server_token()
        assert token and len(token) >= 40 and reward_token(run) == token
        assert stat.S_IMODE(folder.server_token_file.stat().st_mode) == 0o600
        with pytest.raises(ValueError, match="401"):
            RewardClient(url).score(_frames(), PROMPTS)
        rewards = connect_rewards(recipe, run)  # what each trainer rank does
        torch.testing.assert_close(rewards(_frames(), PROMPTS)[0], _want(), atol=1e-6, rtol=0)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert "(token required)" in out and token not in out


def test_slurm_server_job_serves_with_the_run_token(tmp_path, monkeypatch):
    pytest.importorskip("submitit")
    from fgrpo.rewards import server_lifecycle
    from launchers.job import RewardServerJob

    recipe = dataclasses.replace(load_recipe_file(REPO / "recipes" / "tiny.py"), rewards=tuple(SPECS))
    RunFolder(tmp_path).write_recipe(recipe)
    served = []

    def fake_serve(server, bind_host, advertise_host=None, run_dir=None, **kw):
        served.append((server.requires_token, bind_host, server.url))
        server.stop()
        return 0

    monkeypatch.setattr(server_lifecycle, "serve_until_done", fake_serve)
    assert RewardServerJob(str(tmp_path))() == 0  # binds 0.0.0.0: allowed with the run's token only
    assert served and served[0][:2] == (True, "0.0.0.0")
    assert RunFolder(tmp_path).server_token()
