"""The README's quickstart is the contract CI checks: keep them the same."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _quickstart_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    return [b.strip() for b in re.findall(r"```bash\n(.*?)```", section, re.S)]


def test_quickstart_has_exactly_two_commands():
    cmds = _quickstart_commands()
    assert len(cmds) == 2 and all("\n" not in c for c in cmds)
    assert cmds[0].endswith("acorn speedrun")
    assert all(c.startswith("pip install torch==2.13.0 && ") for c in cmds)


def test_ci_runs_the_readme_test_command_verbatim():
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert _quickstart_commands()[1] in ci


def test_every_test_docs_concepts_names_exists():
    """docs/CONCEPTS.md points each concept at the tests that prove it
    (`tests/x.py::name`, or `::name` for the file named before it on the row):
    every one must exist, so a renamed or moved test cannot leave the map stale."""
    missing = []
    for row in (ROOT / "docs" / "CONCEPTS.md").read_text(encoding="utf-8").splitlines():
        path = None
        for m in re.finditer(r"(tests/[\w/]+\.py)(?:::(\w+))?|::(\w+)", row):
            path = ROOT / m.group(1) if m.group(1) else path
            name = m.group(2) or m.group(3)
            if path is None or not path.is_file():
                missing.append(m.group(0))
            elif name and not re.search(rf"^\s*(async )?def {name}\(", path.read_text(encoding="utf-8"), re.M):
                missing.append(f"{path.relative_to(ROOT)}::{name}")
    assert not missing, f"docs/CONCEPTS.md names tests that do not exist: {missing}"
