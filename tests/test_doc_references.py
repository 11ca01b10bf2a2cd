"""Every file the code's docstrings and comments point a reader to exists, and none lies outside
the repository."""

import re
import subprocess
from pathlib import Path

from tests.conftest import REPO

REFERENCE = re.compile(r"\b((?:docs|k8s|recipes|benchmarks|scripts)/[\w./-]+\.(?:md|py|sh|yaml))")


def test_referenced_files_exist():
    missing = []
    for path in [
        *(REPO / "fgrpo").rglob("*.py"),
        *(REPO / "launchers").rglob("*.py"),
        *(REPO / "scripts").glob("*.sh"),
    ]:
        for ref in REFERENCE.findall(path.read_text()):
            if not (REPO / ref).exists():
                missing.append(f"{path.relative_to(REPO)} -> {ref}")
    assert not missing, "\n".join(missing)


def test_the_pattern_finds_references():
    assert REFERENCE.findall("see docs/flash-grpo.md and k8s/README.md.") == ["docs/flash-grpo.md", "k8s/README.md"]


def test_no_file_points_outside_the_repository():
    # The notes kept next to the project's checkout (shared/docs) do not ship with it.
    tracked = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()
    pointing = []
    for name in tracked:
        path = REPO / name
        if path.suffix not in {".py", ".sh", ".md", ".yaml", ".yml", ".toml", ".txt", ".cfg", ""} or not path.is_file():
            continue
        if path.resolve() == Path(__file__).resolve():
            continue
        if "shared/docs" in path.read_text(errors="replace"):
            pointing.append(name)
    assert not pointing, f"files that refer to shared/docs, outside the repository: {pointing}"
