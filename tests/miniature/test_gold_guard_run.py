"""The gold guard on a real run: the miniature trained on its hackable proxy (`miniature_proxy`, the
saturation bonus raised to 2 so that gaming it pays within a few steps) with `miniature_gold` as
eval.gold_rewards. The held-out proxy keeps rising while gold falls from its peak; the divergence
rule fires, eval.on_divergence = stop ends the run cleanly before optim.max_steps (final
checkpoint, status completed saying why), rotation (keep_last 1) keeps the best-gold checkpoint,
and `fgrpo export --best gold` exports that one, not the last."""

import json

from tests.conftest import REPO, run_fgrpo

RECIPE = f'''
import runpy
from fgrpo.recipe.config import *

base = runpy.run_path("{REPO / "recipes" / "miniature.py"}")["recipe"]
recipe = replace(
    base,
    name="proxy",
    rewards=(RewardSpec(name="miniature_proxy", args={{"saturation_bonus": 2.0}}),),
    # the setting this test was measured in (guided rollouts, a short EMA): independent of the recipe's
    rollout=replace(base.rollout, cfg_scale=4.0),
    ema=EmaConfig(decay=0.5, interval=1),
    optim=replace(base.optim, lr=3e-4, max_steps=24),
    eval=EvalConfig(
        interval=2,
        steps=10,
        videos_per_prompt=1,
        gold_rewards=(RewardSpec(name="miniature_gold"),),
        divergence_window=3,
        on_divergence="stop",
    ),
    checkpoint=CheckpointConfig(interval=2, keep_last=1),
)
'''


def test_training_on_the_proxy_diverges_stops_and_exports_the_best_gold_checkpoint(miniature_model_dir, tmp_path):
    (tmp_path / "proxy.py").write_text(RECIPE)
    env = {"FGRPO_CACHE": str(miniature_model_dir.parent)}
    runs = tmp_path / "runs"
    res = run_fgrpo(
        "launch",
        "proxy.py",
        "--backend",
        "local",
        "--logging.runs-dir",
        str(runs),
        "--logging.run-name",
        "p",
        cwd=tmp_path,
        timeout=900,
        env=env,
    )
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-4000:]
    run = runs / "p"
    evals = [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "eval"]
    assert all("eval_gold" in e and e["eval/miniature_gold"] == e["eval_gold"] for e in evals)
    # The rule fired once, at the last evaluation: the run stopped there, well before max_steps.
    fired = [e for e in evals if "divergence" in e]
    assert len(fired) == 1 and fired[0] is evals[-1], [(e["step"], e["eval_reward"], e["eval_gold"]) for e in evals]
    stop = fired[0]["step"]
    assert 0 < stop < 24 and "gold diverges from the trained reward" in out
    d = fired[0]["divergence"]
    assert d["proxy_slope"] > 0 and d["gold_slope"] < 0 and d["gold"] < d["best_gold"]
    assert fired[0]["eval_reward"] > evals[0]["eval_reward"]  # the proxy was gamed: up from "before"
    best = max(evals, key=lambda e: e["eval_gold"])
    assert best["step"] == d["best_step"] < stop

    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "completed" and status["stopped_early"] is True
    assert status["reason"].startswith(f"stopped early at step {stop} by eval.on_divergence = stop: gold diverges")
    shown = run_fgrpo("status", str(run), "--json", cwd=tmp_path, env=env)
    row = json.loads(shown.stdout.splitlines()[0])
    assert row["step"] == stop and f"gold diverged from the trained reward at step {stop}" in row["reason"]

    # The final checkpoint is the stop's; the best-gold one survives keep_last = 1 beside it.
    marker = json.loads((run / "checkpoints" / "best-gold.json").read_text())
    assert marker["step"] == best["step"] and marker["value"] == best["eval_gold"]
    kept = sorted(p.name for p in (run / "checkpoints").iterdir() if p.is_dir())
    assert kept == sorted({f"step-{best['step']}", f"step-{stop}"})

    exported = run_fgrpo("export", str(run), str(tmp_path / "best"), "--best", "gold", cwd=tmp_path, env=env)
    assert exported.returncode == 0, exported.stderr[-3000:]
    info = json.loads((tmp_path / "best" / "export.json").read_text())
    assert info["step"] == best["step"] != stop

    report = run_fgrpo("report", str(run), cwd=tmp_path, env=env)
    assert report.returncode == 0, report.stderr[-3000:]
    page = (run / "report.html").read_text()
    assert "Proxy vs gold" in page and "proxy-vs-gold" in page and "divergence rule fired" in page
