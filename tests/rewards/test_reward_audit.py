"""`fgrpo reward-audit`: the controlled edits, the flag rules, and the audit of known rewards.

The miniature world supplies probe videos without a model (its ground-truth renders) and rewards
whose weaknesses are known: `miniature_proxy` pays for HSV saturation, `miniature_gold` is strict,
a per-frame reward aggregated over frames cannot see frame order.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fgrpo.cli import main
from fgrpo.cli.reward_audit import ground_truth_probes, heldout_prompts
from fgrpo.miniature.scoring import saturation
from fgrpo.recipe.io import load_recipe_file
from fgrpo.rewards import WeightedRewards, get_reward_info, list_rewards
from fgrpo.rewards import audit_edits as E
from fgrpo.rewards.audit import (
    MOTION_BLIND,
    PREFERS,
    AuditRules,
    audit,
    edit_rows,
    reward_flags,
    score_probes,
)
from fgrpo.rewards.programmatic import luminance
from fgrpo.run_folder import RunFolder
from tests.conftest import REPO, run_fgrpo
from tests.helpers.tiny_clip_tokenizer import save_tiny_clip
from tests.helpers.tiny_hpsv2 import HEADS, open_clip_installed, open_clip_modules, save_tiny_hpsv2
from tests.helpers.tiny_qwen2vl import save_tiny_hpsv3, save_tiny_videoalign


def synthetic(b: int = 2, f: int = 9, h: int = 24, w: int = 32, seed: int = 0) -> torch.Tensor:
    """Smooth coloured videos with a moving bright square: colour, edges and motion to edit."""
    g = torch.Generator().manual_seed(seed)
    base = 0.25 + 0.5 * torch.rand(b, 1, 3, 1, 1, generator=g)
    ramp = torch.linspace(-0.15, 0.15, w).view(1, 1, 1, 1, w)
    x = (base + ramp).expand(b, f, 3, h, w).clone()
    for t in range(f):
        x[:, t, :, 6:14, 2 + 2 * t : 10 + 2 * t] = torch.tensor([0.9, 0.3, 0.2]).view(1, 3, 1, 1)
    return x.clamp(0, 1)


def edge_energy(x: torch.Tensor) -> float:
    return float((x[..., :, 1:] - x[..., :, :-1]).abs().mean() + (x[..., 1:, :] - x[..., :-1, :]).abs().mean())


# ----- the edits
@pytest.mark.parametrize("edit", E.EDITS, ids=E.edit_names())
def test_every_edit_keeps_layout_and_range_and_leaves_its_input(edit):
    x = synthetic()
    before = x.clone()
    y = edit(x)
    frames = (x.shape[1] - 1) // 2 + 1 if edit.name == "fewer_frames" else x.shape[1]
    assert y.shape == (x.shape[0], frames, *x.shape[2:]) and y.dtype == torch.float32
    assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0
    assert torch.equal(x, before)
    assert y.shape != x.shape or not torch.equal(y, x)  # it edits
    assert torch.equal(edit(x), y)  # seeded: an audit is repeatable
    assert edit.fn.__doc__


def test_temporal_edits():
    x = synthetic()
    frozen = E.frozen(x)
    assert float((frozen[:, 1:] - frozen[:, :-1]).abs().max()) == 0.0 and torch.equal(frozen[:, 0], x[:, 0])
    assert float((x[:, 1:] - x[:, :-1]).abs().max()) > 0  # the original moves
    assert torch.equal(E.frame_reversal(x), torch.stack([x[:, x.shape[1] - 1 - t] for t in range(x.shape[1])], 1))
    order = E.shuffle_order(x.shape[1])
    assert sorted(order.tolist()) == list(range(x.shape[1])) and order.tolist() != list(range(x.shape[1]))
    assert torch.equal(E.frame_shuffle(x), x[:, order])
    assert E.shuffle_order(2).tolist() == [1, 0]  # never the identity, even where the draw is
    dup = E.duplicated_frames(x)
    assert all(torch.equal(dup[:, t], x[:, t // 2]) for t in range(x.shape[1]))
    assert torch.equal(E.fewer_frames(x), x[:, ::2])  # F = 4k + 1: exactly every other frame
    assert E.fewer_frames(x[:, :1]).shape[1] == 1


def test_colour_edits_move_what_they_name():
    x = synthetic()
    luma = luminance(x)
    assert saturation(E.saturation_up(x)).gt(saturation(x)).all()
    assert saturation(E.saturation_down(x)).lt(saturation(x)).all()
    assert luminance(E.brightness_up(x)).mean() > luma.mean() > luminance(E.brightness_down(x)).mean()
    spread = luma.flatten(2).std(dim=-1).mean()
    assert luminance(E.contrast_up(x)).flatten(2).std(dim=-1).mean() > spread
    assert luminance(E.contrast_down(x)).flatten(2).std(dim=-1).mean() < spread


def test_detail_edits():
    x = synthetic()
    assert edge_energy(E.blur(x)) < edge_energy(x) < edge_energy(E.sharpen(x))
    compressed = E.jpeg(x)
    assert 0 < float((compressed - x).abs().mean()) < 0.1  # lossy, but the same picture
    noisy = E.additive_noise(x, std=0.05)
    assert 0.03 < float((noisy - x).std()) < 0.06


def test_bad_layout_is_refused():
    with pytest.raises(ValueError, match=r"\[B, F, 3, H, W\]"):
        E.blur(torch.rand(9, 3, 8, 8))


# ----- the rules, on hand-made scores
def test_rules_flag_preferred_degrading_edits_and_motion_blindness():
    n = 8
    base = torch.linspace(0, 1, n)
    raise_most = base + torch.tensor([0.2] * 6 + [-0.1] * 2)  # wins 6 of 8, mean +0.125
    raise_few = base + torch.tensor([0.01] * 6 + [-0.5] * 2)  # wins 6 of 8, mean < 0
    original = {"r": base}
    edited = {
        "blur": {"r": raise_most},  # degrading: flagged
        "noise": {"r": raise_few},  # degrading, but the mean falls: not flagged
        "jpeg": {"r": base + torch.tensor([1e-5] * 6 + [-1e-5] * 2)},  # wins 6 of 8 by noise: not flagged
        "sharpen": {"r": raise_most},  # not judged
        "shuffle": {"r": base + 1e-9},  # float rounding of a reordered mean: ties, not wins
        "reverse": {"r": base.clone()},
        "frozen": {"r": base - 1e-4},
    }
    rows = {r.edit: r for r in edit_rows(original, edited)}
    assert rows["blur"].win_rate == 0.75 and rows["blur"].flags == (PREFERS,)
    assert rows["blur"].mean_change == pytest.approx(0.125)
    assert rows["noise"].win_rate == 0.75 and rows["noise"].flags == ()
    assert rows["jpeg"].win_rate == 0.75 and 0 < rows["jpeg"].mean_change and rows["jpeg"].flags == ()
    no_floor = {r.edit: r for r in edit_rows(original, edited, AuditRules(min_change=0.0))}
    assert no_floor["jpeg"].flags == (PREFERS,)
    assert rows["sharpen"].flags == ()
    assert all(rows[m].flags == (MOTION_BLIND,) for m in ("shuffle", "reverse", "frozen"))
    assert rows["shuffle"].win_rate == 0.0 and rows["frozen"].win_rate == 0.0
    flags = reward_flags(list(rows.values()))["r"]
    assert flags[0] == "prefers degenerate edits: blur" and flags[1].startswith("motion-blind")
    # One motion edit the reward sees: the rows say which, the reward is not motion-blind.
    edited["frozen"] = {"r": base - 0.3}
    rows = {r.edit: r for r in edit_rows(original, edited)}
    assert rows["frozen"].flags == () and rows["shuffle"].flags == (MOTION_BLIND,)
    found = reward_flags(list(rows.values()))["r"]
    assert not any(f.startswith("motion-blind") for f in found)
    # ... but it cannot see frame order (a per-frame reward): said as a whole.
    assert any(f.startswith("order-blind: shuffle, reverse") for f in found)
    edited["reverse"] = {"r": base - 0.3}
    rows = {r.edit: r for r in edit_rows(original, edited)}
    assert not any(f.startswith(("motion-blind", "order-blind")) for f in reward_flags(list(rows.values()))["r"])
    # A stricter win rate drops the flag.
    strict = {r.edit: r for r in edit_rows(original, edited, AuditRules(win_rate=0.8))}
    assert strict["blur"].win_rate == 0.75 and strict["blur"].flags == ()


def test_rules_refuse_bad_input():
    with pytest.raises(ValueError, match="--win-rate"):
        AuditRules(win_rate=1.0)
    with pytest.raises(ValueError, match="--min-change"):
        AuditRules(min_change=2.0)
    with pytest.raises(ValueError, match="--motion-tolerance"):
        AuditRules(motion_tolerance=-0.1)
    with pytest.raises(ValueError, match="unknown edits"):
        edit_rows({"r": torch.zeros(2)}, {"smudge": {"r": torch.zeros(2)}})
    with pytest.raises(ValueError, match="scores for"):
        edit_rows({"r": torch.zeros(2)}, {"blur": {"r": torch.zeros(3)}})


# ----- known rewards on the miniature world's ground truth
@pytest.fixture(scope="module")
def renders():
    prompts = heldout_prompts(load_recipe_file(REPO / "recipes" / "miniature.py"))
    found = ground_truth_probes(prompts[:12], 1)
    assert found is not None
    return found


def run_audit(specs, renders, edits=E.EDITS) -> dict:
    prompts, videos = renders
    original, edited = score_probes(WeightedRewards(specs), videos, prompts, edits=edits, batch_size=5)
    return audit(original, edited)


def test_hackable_proxy_is_flagged_and_gold_is_not(renders):
    specs = [
        {"name": "miniature_proxy"},
        {"name": "miniature_gold"},
        {"name": "miniature_faithfulness"},
        {"name": "brightness", "frame_aggregation": "topk:0.3"},
    ]
    result = run_audit(specs, renders)
    flags = {r["reward"]: r["flags"] for r in result["rewards"]}
    rows = {(r["reward"], r["edit"]): r for r in result["rows"]}
    assert PREFERS in rows["miniature_proxy", "saturation_up"]["flags"]  # what it pays for
    assert rows["miniature_proxy", "saturation_up"]["mean_change"] > 0
    assert any("saturation_up" in f for f in flags["miniature_proxy"])
    assert flags["miniature_gold"] == []
    assert not any(f.startswith("motion-blind") for f in flags["miniature_faithfulness"])  # it measures motion
    assert any(f.startswith("motion-blind") for f in flags["brightness"])  # per frame, top-k: no order
    assert json.loads(json.dumps(result)) == result  # JSON-ready as it is
    assert len(result["rows"]) == len(specs) * len(E.EDITS) and result["rules"]["win_rate"] == 0.5


# ----- learned rewards on their tiny random test models
TINY_PIXELS = 56 * 56  # the Qwen2-VL rewards' pixel budget for the tiny models (4 merged tokens a frame)
LEARNED = ("clip", "hpsv2", "hpsv3", "videoalign")
CLIP_WORDS = ["a", "two", "small", "large", "red", "green", "blue", "yellow", "moving", "on", "background"]


@pytest.fixture(scope="module")
def tiny_hpsv3(tmp_path_factory) -> tuple[str, str]:
    """(Qwen2-VL base folder, HPSv3.safetensors) of the tiny HPSv3 release, built once for this module."""
    return save_tiny_hpsv3(tmp_path_factory.mktemp("tiny-hpsv3"))[:2]


def hpsv3_args(folders: tuple[str, str]) -> dict:
    model_path, checkpoint = folders
    return {
        "model_path": model_path,
        "checkpoint": checkpoint,
        "dtype": "float32",
        "min_pixels": TINY_PIXELS,
        "max_pixels": TINY_PIXELS,
    }


def learned_spec(name: str, root: Path, request) -> dict:
    """The reward spec of `name` on its tiny random model (tests/helpers), saved under `root`."""
    if name == "clip":
        return {"name": "clip", "args": {"model_path": save_tiny_clip(root / "clip", CLIP_WORDS)}}
    if name == "hpsv2":
        if not open_clip_installed():
            pytest.skip("open_clip_torch is not installed (scripts/setup.sh installs it with --no-deps)")
        with open_clip_modules() as oc:  # open_clip builds the checkpoint; the reward loads it without
            tiny = save_tiny_hpsv2(oc, root / "hpsv2")
        return {"name": "hpsv2", "args": {"checkpoint": tiny.ckpt, "tokenizer_path": tiny.tok_dir, **HEADS}}
    if name == "hpsv3":  # the paper's aggregation (the official code: the top 30% of frames)
        return {
            "name": "hpsv3",
            "args": hpsv3_args(request.getfixturevalue("tiny_hpsv3")),
            "frame_aggregation": "topk:0.3",
        }
    assert name == "videoalign"
    base, release = save_tiny_videoalign(root / "videoalign")[:2]
    return {
        "name": "videoalign",
        "args": {"model_path": base, "checkpoint": release, "dtype": "float32", "min_pixels": TINY_PIXELS},
    }


def test_every_learned_reward_is_audited_below():
    """The built-in rewards that load a model (they require args naming its files) are the ones
    audited on their tiny models below: a new adapter must be added there."""
    builtin = [get_reward_info(n) for n in list_rewards() if get_reward_info(n).fn.__module__.startswith("fgrpo.")]
    assert sorted(r.name for r in builtin if r.required_args) == sorted(LEARNED)


@pytest.mark.parametrize("name", LEARNED)
def test_learned_reward_is_audited(name, renders, tmp_path, request):
    """Each learned adapter through the audit on its tiny random model: finite changes, blur moves
    the score, and the per-frame ones (CLIP, HPSv2, HPSv3: frames scored one by one, then mean or
    top-k over frames) are motion-blind on shuffle and reverse, the same frames in another order.
    VideoAlign sees frame order: it samples frames in order, patchifies them in pairs
    (temporal_patch_size 2) and reads them as one token sequence with positions; no motion edit
    leaves it unmoved."""
    spec = learned_spec(name, tmp_path, request)
    edits = [e for e in E.EDITS if e.name in ("blur", "shuffle", "reverse", "frozen")]
    result = run_audit([spec], renders, edits)
    rows = {r["edit"]: r for r in result["rows"]}
    assert set(rows) == {"blur", "shuffle", "reverse", "frozen"} and all(r["reward"] == name for r in rows.values())
    (reward,) = result["rewards"]
    numbers = [reward["original_mean"], *(r[k] for r in rows.values() for k in ("mean_change", "mean_abs_change"))]
    assert torch.isfinite(torch.tensor(numbers)).all()
    assert rows["blur"]["mean_abs_change"] > 1e-4 * max(1.0, abs(reward["original_mean"]))  # not float rounding
    blind = {e: MOTION_BLIND in rows[e]["flags"] for e in ("shuffle", "reverse", "frozen")}
    if get_reward_info(name).per_frame:
        assert blind["shuffle"] and blind["reverse"]
        assert rows["shuffle"]["win_rate"] == rows["reverse"]["win_rate"] == 0.0  # ties: the same frames
    else:
        assert name == "videoalign" and blind == {"shuffle": False, "reverse": False, "frozen": False}
        assert not any(f.startswith("motion-blind") for f in reward["flags"])


# ----- the command
def test_cli_end_to_end_on_the_miniature_renders(tmp_path):
    out, run = tmp_path / "audit.json", tmp_path / "runs" / "miniature"
    res = run_fgrpo(
        "reward-audit", "recipes/miniature.py", "--no-samples", "--videos", "1", "--json", str(out), "--run", str(run)
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "fgrpo reward-audit" in res.stdout and "saturation_up" in res.stdout and "win rate" in res.stdout
    written = json.loads(out.read_text())
    assert written["probe_videos"] == {"renders": 24} and written["recipe"] == "miniature"
    # The rewards trained on; the gold metrics (eval.gold_rewards) are not audited.
    assert [r["reward"] for r in written["rewards"]] == ["miniature_faithfulness"]
    assert len(written["rows"]) == len(E.EDITS)
    stored = RunFolder(run).read_reward_audit()
    assert stored is not None and stored["rows"] == written["rows"]
    # The report of the run shows it.
    from fgrpo.report import build

    RunFolder(run).write_recipe(load_recipe_file(REPO / "recipes" / "miniature.py"))
    page = build([run])[0]
    assert "<h2>Reward audit</h2>" in page and "miniature_faithfulness" in page and "saturation_up" in page


def test_cli_samples_the_recipes_model(tiny_model_dir, tmp_path):
    """The tiny recipe: no ground truth, its model's own samples; its per-frame brightness reward
    (mean over frames) cannot see frame order."""
    out = tmp_path / "audit.json"
    res = run_fgrpo(
        "reward-audit",
        str(REPO / "recipes" / "tiny.py"),
        "--videos",
        "1",
        "--model.path",
        str(tiny_model_dir),
        "--logging.runs-dir",
        str(tmp_path / "runs"),
        "--json",
        str(out),
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    written = json.loads(out.read_text())
    prompts = heldout_prompts(load_recipe_file(REPO / "recipes" / "tiny.py"))
    assert written["probe_videos"] == {"samples": len(prompts)} and written["scored"] == "in-process"
    rows = {r["edit"]: r for r in written["rows"]}
    assert MOTION_BLIND in rows["shuffle"]["flags"] and MOTION_BLIND in rows["reverse"]["flags"]
    assert rows["brightness_up"]["mean_abs_change"] > 0


def test_cli_audits_a_learned_reward_given_on_the_command_line(tiny_model_dir, tiny_hpsv3, tmp_path):
    """The tiny recipe with its rewards replaced on the command line by the tiny HPSv3 (its files,
    dtype and pixel budget as --rewards.0.args pairs; top 30% of frames, as the official code):
    one row per edit, and per frame it cannot see frame order."""
    out = tmp_path / "audit.json"
    args = [str(x) for pair in hpsv3_args(tiny_hpsv3).items() for x in pair]
    res = run_fgrpo(
        "reward-audit",
        str(REPO / "recipes" / "tiny.py"),
        "--videos",
        "1",
        "--model.path",
        str(tiny_model_dir),
        "--logging.runs-dir",
        str(tmp_path / "runs"),
        "--rewards.0.name",
        "hpsv3",
        "--rewards.0.args",
        *args,
        "--rewards.0.frame-aggregation",
        "topk:0.3",
        "--json",
        str(out),
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "hpsv3" in res.stdout and "motion-blind" in res.stdout and "order-blind" in res.stdout
    written = json.loads(out.read_text())
    assert [r["reward"] for r in written["rewards"]] == ["hpsv3"] and written["scored"] == "in-process"
    rows = {r["edit"]: r for r in written["rows"]}
    assert list(rows) == E.edit_names() and all(r["reward"] == "hpsv3" for r in rows.values())
    assert all(torch.isfinite(torch.tensor([r["mean_change"], r["win_rate"]])).all() for r in rows.values())
    assert MOTION_BLIND in rows["shuffle"]["flags"] and MOTION_BLIND in rows["reverse"]["flags"]
    assert rows["blur"]["mean_abs_change"] > 0


def test_report_without_an_audit_has_no_section(tmp_path):
    from fgrpo.report import build

    run = tmp_path / "run"
    RunFolder(run).write_recipe(load_recipe_file(REPO / "recipes" / "miniature.py"))
    assert "Reward audit" not in build([run])[0]


@pytest.mark.parametrize(
    "args, message",
    [
        (["tiny.py", "--no-samples"], "no ground-truth renders"),
        (["miniature.py", "--no-samples", "--videos", "0"], "--videos: must be >= 1"),
        (["miniature.py", "--no-samples", "--win-rate", "1.5"], "--win-rate"),
        (["miniature.py", "--no-samples", "--prompts.heldout", "0"], "prompts.heldout"),
    ],
)
def test_cli_refuses_bad_input_before_writing(args, message, tmp_path, capsys):
    out = tmp_path / "audit.json"
    recipe, *rest = args
    assert (
        main(
            ["reward-audit", str(REPO / "recipes" / recipe), *rest, "--json", str(out), "--run", str(tmp_path / "run")]
        )
        == 2
    )
    assert message in capsys.readouterr().err
    assert not out.exists() and not (tmp_path / "run").exists()


def test_cli_refuses_a_run_folder_that_is_a_file(tmp_path, capsys):
    path = tmp_path / "file"
    path.write_text("x")
    assert main(["reward-audit", str(REPO / "recipes" / "miniature.py"), "--no-samples", "--run", str(path)]) == 2
    assert "is not a folder" in capsys.readouterr().err
