"""The `fgrpo` command line (fgrpo/cli/): every command is reachable and its --help teaches; sweeps
parse to the same points and folder as before; no module imports another's private names."""

import ast
from pathlib import Path

import pytest

from fgrpo.cli import COMMANDS, main
from tests.conftest import REPO

PACKAGES = ("fgrpo", "launchers")


@pytest.mark.parametrize("name", list(COMMANDS))
def test_every_command_has_a_help(name, capsys):
    with pytest.raises(SystemExit) as exc:
        main([name, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert f"usage: fgrpo {name}" in out, out


def test_top_level_help_lists_every_command(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert f"fgrpo {name} " in out or f"fgrpo {name}\n" in out, name
    assert main(["no-such-command"]) == 2
    assert "unknown command 'no-such-command'" in capsys.readouterr().err


def test_logs_follow_has_a_short_flag():
    import tyro

    from fgrpo.cli.runs import LogsArgs

    a = tyro.cli(LogsArgs, args=["runs/x", "-f", "--rank", "3"])
    assert (a.run, a.follow, a.rank) == ("runs/x", True, 3)


def test_sweep_points_and_folder_name_are_unchanged():
    """The sweep folder's name is a hash of the sweep: the same command must find the same folder
    (this value was computed by the parser fgrpo sweep had before it moved into fgrpo/cli/)."""
    from fgrpo.cli.sweep import parse_sweep
    from fgrpo.recipe.sweep import points, sweep_dir

    spec, args = parse_sweep(
        [
            "recipes/tiny.py",
            "--grid",
            "optim.lr=1e-3,2e-3",
            "--optim.max-steps",
            "2",
            "--grid",
            "rollout.group_size=2,4",
            "--random",
            "3",
            "--range",
            "optim.lr=1e-5:1e-3:log",
            "--choice",
            "lora.rank=8,16",
            "--seed",
            "7",
            "--backend",
            "slurm",
        ]
    )
    assert args.backend == "slurm" and not args.dry_run
    assert spec.base_overrides == ["--optim.max-steps", "2"]
    assert sweep_dir(spec, Path("runs"), "tiny") == Path("runs/tiny-sweep-8754d387")
    pts = points(spec)
    assert len(pts) == 12
    assert pts[0] == ["--optim.lr", "1e-3", "--rollout.group-size", "2", "--optim.lr", "4.443e-05", "--lora.rank", "8"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--choice", "lora.rank=8"], "--range/--choice need --random N"),
        (["--grid", "optim.lr"], "--grid 'optim.lr': expected FIELD=VALUES"),
        (["--random", "2", "--range", "optim.lr=1"], "--range optim.lr: expected LOW:HIGH[:log]"),
    ],
)
def test_sweep_errors_name_the_flag(argv, message, capsys):
    assert main(["sweep", str(REPO / "recipes" / "tiny.py"), *argv]) == 2
    assert message in capsys.readouterr().err


def test_sweep_dry_run_resolves_every_point(tmp_path, capsys):
    code = main(
        [
            "sweep",
            str(REPO / "recipes" / "tiny.py"),
            "--grid",
            "optim.lr=1e-3,2e-3",
            "--grid",
            "rollout.group-size=2,4",
            "--logging.runs-dir",
            str(tmp_path / "runs"),
            "--dry-run",
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "4 points; sweep folder" in out and str(tmp_path / "runs" / "tiny__") in out
    assert not (tmp_path / "runs").exists()


def _private_imports(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").split(".")[0] in PACKAGES):
            found += [
                f"{path.relative_to(REPO)}:{node.lineno} {alias.name}"
                for alias in node.names
                if alias.name.startswith("_") and not alias.name.startswith("__")
            ]
    return found


def test_no_module_imports_a_private_name():
    files = [p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py")]
    assert [hit for p in files for hit in _private_imports(p)] == []
