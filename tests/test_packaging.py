"""What the package declares and what the README's set-up installs."""

from __future__ import annotations

import ast
import importlib.metadata as md
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
README = (ROOT / "README.md").read_text()


def _name(requirement: str) -> str:
    return re.split(r"[\s<>=!~;\[]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def _declared(extras: tuple[str, ...] | None = None) -> set[str]:
    project = PYPROJECT["project"]
    names = {_name(r) for r in project["dependencies"]}
    for extra, reqs in project["optional-dependencies"].items():
        if extras is None or extra in extras:
            names |= {_name(r) for r in reqs}
    return names


def _imports() -> set[str]:
    found = set()
    for path in (ROOT / "rank1_batch").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return {m for m in found if m not in sys.stdlib_module_names and m != "rank1_batch"}


def test_every_imported_package_is_declared():
    """Each third-party package the code imports is a declared dependency (pydantic
    used to arrive only through ray[default])."""
    declared = _declared()
    dists = md.packages_distributions()
    missing = []
    for module in sorted(_imports()):
        names = {module.lower().replace("_", "-")}
        names |= {d.lower().replace("_", "-") for d in dists.get(module, [])}
        if not names & declared:
            missing.append(module)
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"
    assert "pydantic" in {_name(r) for r in PYPROJECT["project"]["dependencies"]}


def _setup_commands() -> list[str]:
    section = README.split("## Set-up", 1)[1].split("\n## ", 1)[0]
    # A block whose command line starts a venv; lines before it (the test set-up's Chromium
    # install) belong to the command.
    return re.findall(r"```bash\n((?:[^\n`]*\n)*?python3 -m venv [^\n]*)\n```", section)


def test_the_demo_set_up_installs_what_eval_needs():
    """`eval` works right after the README's demo set-up."""
    demo = _setup_commands()[0]
    extras = re.search(r"-e '\.\[([^\]]*)\]'", demo)
    assert extras, demo
    installed = _declared(tuple(extras.group(1).split(",")))
    assert "ir-measures" in installed


def test_readme_set_up_commands_and_torch_note():
    """The torch note says PyPI's Linux wheel bundles CUDA and names PyTorch's CPU
    index; the test command is the one CI runs."""
    demo, tests = _setup_commands()[:2]
    ci = (ROOT / ".ci/run").read_text()
    assert tests in ci
    assert "torch==2.13.0" in demo
    note = README.split("## Set-up", 1)[1].split("\n## ", 1)[0]
    assert "--index-url https://download.pytorch.org/whl/cpu" in note
    assert "CUDA" in note and "local wheel" in note
