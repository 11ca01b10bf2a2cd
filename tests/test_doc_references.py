"""Every file the code's docstrings and comments point a reader to exists."""

import re

from tests.conftest import REPO

REFERENCE = re.compile(r"\b((?:docs|k8s|recipes|benchmarks|scripts)/[\w./-]+\.(?:md|py|sh|yaml))")


def test_referenced_files_exist():
    missing = []
    for path in [*(REPO / "fgrpo").rglob("*.py"), *(REPO / "launchers").rglob("*.py")]:
        for ref in REFERENCE.findall(path.read_text()):
            if not (REPO / ref).exists():
                missing.append(f"{path.relative_to(REPO)} -> {ref}")
    assert not missing, "\n".join(missing)


def test_the_pattern_finds_references():
    assert REFERENCE.findall("see docs/flash-grpo.md and k8s/README.md.") == ["docs/flash-grpo.md", "k8s/README.md"]
