"""Reward server/client: remote scores match in-process scores; errors are reported, not fatal."""

import json
import socket
import threading
import urllib.error
import urllib.request
import uuid

import pytest
import torch

from fgrpo.cli.reward_server import RewardServerArgs, cmd_reward_server, parse_args, reward_specs
from fgrpo.recipe.config import RewardSpec
from fgrpo.rewards import WeightedRewards, register_reward
from fgrpo.rewards.server import RewardClient, RewardServer, dequantize, quantize

SPECS = [
    RewardSpec(name="brightness", weight=1.0, frame_aggregation="mean"),
    RewardSpec(name="colour", weight=0.5, frame_aggregation="mean"),
]
PROMPTS = ["a red car at night", "a bright blue sky", "a green field"]


@pytest.fixture(scope="module")
def server():
    srv = RewardServer(SPECS, host="127.0.0.1", port=0)
    srv.start()
    yield srv
    srv.stop()


def _frames(seed=0, b=3):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 2, 3, 8, 8, generator=g)


def _post(url, body: bytes):
    req = urllib.request.Request(url + "/score", data=body, method="POST", headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _closed_port_url():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def test_quantize_roundtrip():
    x = torch.tensor([-0.5, 0.0, 0.5, 1.0, 2.0, 0.2])
    q = quantize(x)
    assert q.dtype == torch.uint8
    assert q.tolist() == [0, 0, 128, 255, 255, 51]
    assert (dequantize(q) - x.clamp(0, 1)).abs().max() <= 0.5 / 255 + 1e-7


def test_health(server):
    client = RewardClient(server.url)
    assert client.health() == {"ok": True, "rewards": ["brightness", "colour"]}


def test_scores_match_in_process(server):
    frames = _frames()
    client = RewardClient(server.url)
    total, comps = client.score(frames, PROMPTS)
    local = WeightedRewards(SPECS)
    q_total, q_comps = local(dequantize(quantize(frames)), PROMPTS)
    assert total.shape == (3,) and total.dtype == torch.float32
    assert set(comps) == {"brightness", "colour"}
    torch.testing.assert_close(total, q_total, atol=1e-6, rtol=0)
    for k in q_comps:
        torch.testing.assert_close(comps[k], q_comps[k], atol=1e-6, rtol=0)
    f_total, _ = local(frames, PROMPTS)
    assert (total - f_total).abs().max() < 1e-2
    # Scores really depend on the frames sent (not a constant answer).
    other, _ = client.score(1.0 - frames * 0.1, PROMPTS)
    assert (other - total).abs().max() > 1e-2


def test_submit_and_concurrent(server):
    client = RewardClient(server.url, max_workers=3)
    try:
        batches = [_frames(seed=s) for s in range(5)]
        futures = [client.submit(f, PROMPTS) for f in batches]
        local = WeightedRewards(SPECS)
        for f, fut in zip(batches, futures):
            total, comps = fut.result(timeout=20)
            ref_total, ref_comps = local(dequantize(quantize(f)), PROMPTS)
            torch.testing.assert_close(total, ref_total, atol=1e-6, rtol=0)
            torch.testing.assert_close(comps["colour"], ref_comps["colour"], atol=1e-6, rtol=0)
        # Plain threads hitting score() at once also work.
        results = {}
        threads = [
            threading.Thread(target=lambda i=i: results.__setitem__(i, client.score(batches[i], PROMPTS)[0]))
            for i in range(4)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(20)
        assert sorted(results) == [0, 1, 2, 3]
        for i in range(4):
            torch.testing.assert_close(results[i], futures[i].result()[0], atol=0, rtol=0)
    finally:
        client.close()


def test_malformed_requests_get_400(server):
    u8 = quantize(_frames())
    import base64

    good = {
        "prompts": PROMPTS,
        "shape": list(u8.shape),
        "dtype": "uint8",
        "frames": base64.b64encode(u8.numpy().tobytes()).decode(),
    }
    assert _post(server.url, json.dumps(good).encode())[0] == 200
    bad = {
        "not json": b"{not json",
        "not an object": b"[1, 2]",
        "missing prompts": json.dumps({k: v for k, v in good.items() if k != "prompts"}).encode(),
        "wrong shape": json.dumps({**good, "shape": [3, 2, 3, 8, 9]}).encode(),
        "4-d shape": json.dumps({**good, "shape": [3, 2, 3, 64]}).encode(),
        "B != prompts": json.dumps({**good, "prompts": PROMPTS[:2]}).encode(),
        "dtype": json.dumps({**good, "dtype": "float32"}).encode(),
        "base64": json.dumps({**good, "frames": "!!!"}).encode(),
    }
    for what, body in bad.items():
        code, out = _post(server.url, body)
        assert code == 400, what
        assert isinstance(out.get("error"), str) and out["error"], what
    assert "prompts" in _post(server.url, bad["missing prompts"])[1]["error"]
    assert RewardClient(server.url).health()["ok"] is True
    # The client reports a 4xx as ValueError with the server's message, without retrying.
    with pytest.raises(ValueError, match="2 prompts"):
        RewardClient(server.url, retries=3, backoff_s=5.0).score(_frames(), PROMPTS[:2])


def test_unreachable_raises_connection_error():
    url = _closed_port_url()
    client = RewardClient(url, timeout_s=2, retries=2, backoff_s=0.01)
    with pytest.raises(ConnectionError, match=url.replace(".", r"\.")) as info:
        client.score(_frames(), PROMPTS)
    assert "3 attempt" in str(info.value)


def test_reward_error_is_500_then_retried():
    name = f"_flaky_{uuid.uuid4().hex}"
    calls = {"n": 0}

    @register_reward(name)
    def flaky(frames, prompts):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("boom on first call")
        return frames.mean(dim=(1, 2, 3, 4))

    with RewardServer([RewardSpec(name=name)]) as srv:
        # Without retries the 500 surfaces with the reward's message.
        with pytest.raises(RuntimeError, match="boom on first call"):
            RewardClient(srv.url, retries=0).score(_frames(), PROMPTS)
        calls["n"] = 0
        total, comps = RewardClient(srv.url, retries=2, backoff_s=0.01).score(_frames(), PROMPTS)
        assert calls["n"] == 2
        expected = dequantize(quantize(_frames())).mean(dim=(1, 2, 3, 4))
        torch.testing.assert_close(total, expected, atol=1e-6, rtol=0)
        assert RewardClient(srv.url).health()["ok"] is True


def test_cli_rejects_unknown_reward(capsys):
    with pytest.raises(SystemExit):
        cmd_reward_server(["--reward", "no_such_reward_xyz", "--port", "0"])
    assert "no_such_reward_xyz" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cmd_reward_server(["--reward", "colour", "--arg", "brightness", "k", "1", "--port", "0"])
    assert "--arg names reward 'brightness'" in capsys.readouterr().err


def test_cli_serves_a_recipes_rewards_and_stops_on_sigterm(tmp_path):
    """`fgrpo reward-server --recipe-file R --address-file A`: announces itself, scores like
    in-process, and on SIGTERM says how much it scored and exits 0."""
    import dataclasses
    import signal
    import subprocess
    import sys

    from fgrpo.recipe.io import load_recipe_file, save_recipe_json
    from fgrpo.rewards.server_lifecycle import wait_for_server
    from fgrpo.run_folder import RunFolder
    from tests.conftest import REPO

    recipe = load_recipe_file(REPO / "recipes" / "tiny.py")
    specs = (RewardSpec(name="brightness", weight=2.0), RewardSpec(name="contrast"))
    save_recipe_json(dataclasses.replace(recipe, rewards=specs), tmp_path / "recipe.json")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fgrpo",
            "reward-server",
            "--recipe-file",
            str(tmp_path / "recipe.json"),
            "--port",
            "0",
            "--address-file",
            str(tmp_path / "addr.json"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        url = wait_for_server(
            lambda: RunFolder(tmp_path).read_server_address(tmp_path / "addr.json"), timeout_s=60, poll_s=0.1
        )
        total, comps = RewardClient(url).score(_frames(), PROMPTS)
        want_total, want = WeightedRewards(specs)(dequantize(quantize(_frames())), PROMPTS)
        torch.testing.assert_close(total, want_total, atol=1e-6, rtol=0)
        assert list(comps) == ["brightness", "contrast"]
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert f"reward server at {url} serving brightness, contrast" in out
    assert f"reward server stopped after scoring {len(PROMPTS)} videos in 1 batches" in out


def test_cli_argument_errors(tmp_path, capsys):
    for argv, message in (
        ([], "name at least one --reward"),
        (["--run-dir", str(tmp_path)], f"recipe file {tmp_path}/recipe.json does not exist"),
        (["--reward", "colour", "--recipe-file", str(tmp_path / "r.json")], "not both"),
    ):
        with pytest.raises(SystemExit):
            cmd_reward_server(argv + ["--port", "0"])
        assert message in capsys.readouterr().err


def test_model_path_fills_every_reward_without_one():
    a = RewardServerArgs(
        reward=("clip", "hpsv3"),
        arg=(("hpsv3", "checkpoint", "/m/HPSv3.safetensors"), ("clip", "model_path", "/m/pick")),
        model_path="/m/qwen",
    )
    clip_spec, hps_spec = reward_specs(a)
    assert clip_spec.args == {"model_path": "/m/pick"}
    assert hps_spec.args == {"checkpoint": "/m/HPSv3.safetensors", "model_path": "/m/qwen"}


def test_repeated_flags_and_typed_values():
    """`--reward`, `--weight NAME W` and `--arg NAME KEY VALUE` repeat; VALUE is JSON when it parses."""
    a = parse_args(
        [
            "--reward",
            "clip",
            "--reward",
            "colour",
            "--weight",
            "colour",
            "0.5",
            "--arg",
            "colour",
            "target",
            "[1, 0, 0]",
            "--arg",
            "colour",
            "gamma",
            "2.2",
            "--arg",
            "clip",
            "model_path",
            "/m/pick",
            "--port",
            "0",
        ]
    )
    clip_spec, colour_spec = reward_specs(a)
    assert (clip_spec.name, clip_spec.weight, clip_spec.args) == ("clip", 1.0, {"model_path": "/m/pick"})
    assert (colour_spec.weight, colour_spec.args) == (0.5, {"target": [1, 0, 0], "gamma": 2.2})
    assert a.port == 0 and a.host == "127.0.0.1"
