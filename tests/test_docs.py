"""The docs: generated pages and schema current, job files valid, links alive, MkDocs builds.

Fast (a few seconds): no Ray, no model. The generated files are ``docs/job-file.md`` and
``rank1_batch/data/job.schema.json`` (from the pydantic models) and the benchmark figures in
``docs/*.md`` (from ``benchmarks/results/*.json``); ``python scripts/gen_docs.py`` rewrites
them.
"""

from __future__ import annotations

import glob
import importlib.util
import json
import re
import subprocess
import sys
import unicodedata
from pathlib import Path

import jsonschema
import pytest
import yaml

from rank1_batch.job.load import load_job, spec_from_mapping
from rank1_batch.job.spec import JobSpec

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))  # the docs generator is a script, not package code
import job_reference as reference  # noqa: E402

DOCS = ROOT / "docs"
JOBS = sorted((ROOT / "jobs").glob("*.yaml"))
PAGES = [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]
REGENERATE = "python scripts/gen_docs.py"


def _gen_docs():  # scripts/ is not a package
    spec = importlib.util.spec_from_file_location("gen_docs", ROOT / "scripts" / "gen_docs.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _schema() -> dict:
    return json.loads((ROOT / reference.SCHEMA_PATH).read_text())


def test_generated_files_are_current():
    """The job-file reference, the JSON Schema and every benchmark figure in docs/ equal what
    the generator writes from the models and benchmarks/results/ now."""
    stale = [str(p.relative_to(ROOT)) for p in _gen_docs().stale()]
    assert not stale, f"stale generated docs: {stale}; regenerate with: {REGENERATE}"


def test_figures_are_markers_not_typed():
    """The performance page's figures come from the results files: every table row that
    names a measured case carries figure markers."""
    text = (DOCS / "performance.md").read_text()
    rows = [line for line in text.splitlines() if re.match(r"\| [1-9] \|", line)]
    assert len(rows) == 9, rows
    assert all("<!--fig " in row for row in rows)


def _sections():
    return [(prefix, cls) for prefix, cls in reference._sections()]


def test_every_field_is_described_and_every_note_is_a_field():
    fields = set()
    for prefix, cls in _sections():
        for row in reference.field_rows(cls, prefix + "." if prefix else ""):
            fields.add(row["path"])
            assert row["text"], f"{row['path']}: no description (add a NOTES entry)"
    assert set(reference.NOTES) <= fields, set(reference.NOTES) - fields
    assert {path for path, _ in reference.RULES.values()} <= fields


def test_every_validator_has_its_rule_in_the_reference():
    validators = set()
    for _, cls in _sections():
        decorators = cls.__pydantic_decorators__
        validators |= set(decorators.field_validators) | set(decorators.model_validators)
    assert validators == set(reference.RULES), (
        "validators without a rule in scripts/job_reference.py RULES (or rules without a "
        f"validator): {validators ^ set(reference.RULES)}"
    )


def test_fingerprint_column_matches_result_settings():
    printed = reference.fingerprinted()
    assert "compute.workers" not in printed and "output.path" not in printed
    assert {"model.name", "reasoning.max_tokens", "output.shard_size"} <= printed


@pytest.mark.parametrize("path", JOBS, ids=lambda p: p.name)
def test_job_file_validates_against_schema_and_loader(path: Path):
    first = path.read_text().splitlines()[0]
    match = re.fullmatch(r"# yaml-language-server: \$schema=(\S+)", first)
    assert match, f"{path.name}: the first line must name the schema"
    assert (path.parent / match.group(1)).resolve() == (ROOT / reference.SCHEMA_PATH).resolve()
    jsonschema.Draft202012Validator(_schema()).validate(yaml.safe_load(path.read_text()))
    load_job(path)


def test_schema_refuses_what_the_loader_refuses():
    validator = jsonschema.Draft202012Validator(_schema())
    good = {"input": {"path": "x.parquet"}, "output": {"path": "out"}, "model": {"name": "toy"}}
    validator.validate(good)
    for bad in (
        {**good, "bogus": 1},
        {**good, "model": {"name": "toy", "max_model_len": "lots"}},
        {**good, "reasoning": {"mode": "ponder"}},
        {"input": {"path": "x"}, "output": {"path": "out"}},
    ):
        assert not validator.is_valid(bad), bad
    assert _schema()["$defs"]["ModelSpec"]["properties"]["dtype"]["description"]


def test_readme_minimal_job_is_a_valid_job():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## A minimal job", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```yaml\n(.*?)```", section, re.S)
    assert block, "README: the minimal job's YAML block"
    raw = yaml.safe_load(block.group(1))
    jsonschema.Draft202012Validator(_schema()).validate(raw)
    spec = spec_from_mapping(raw, source="README.md")
    assert isinstance(spec, JobSpec)


def _venv_commands(page: Path) -> list[str]:
    return re.findall(r"^python3 -m venv .*$", page.read_text(), re.M)


def test_set_up_commands_are_the_readmes():
    """Getting started and Contributing repeat the README's set-up commands byte for byte."""
    readme = _venv_commands(ROOT / "README.md")
    assert len(readme) == 3, readme  # demo, tests, demo with PyTorch's CPU index
    assert _venv_commands(DOCS / "getting-started.md") == readme
    assert _venv_commands(DOCS / "contributing.md") == readme[1:2]


def test_readme_stays_short():
    lines = len((ROOT / "README.md").read_text().splitlines())
    assert lines <= 250, f"README.md has {lines} lines: move detail to docs/ (at most ~250)"


def slugify(title: str) -> str:
    """A heading's anchor as MkDocs (Python-Markdown's toc) makes it."""
    value = unicodedata.normalize("NFKD", title).encode("ascii", "ignore").decode("ascii")
    value = re.sub(r"[^\w\s-]", "", value).strip().lower()
    return re.sub(r"[-\s]+", "-", value)


def _strip_code(text: str) -> str:
    return re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)


def _anchors(page: Path) -> set[str]:
    out = set()
    for line in _strip_code(page.read_text()).splitlines():
        if m := re.match(r"#{1,6} (.+?)\s*$", line):
            title = re.sub(r"[`*]", "", m.group(1))
            out.add(slugify(title))
    return out


def _links(page: Path) -> list[str]:
    text = _strip_code(page.read_text())
    text = re.sub(r"`[^`\n]*`", "", text)
    return re.findall(r"!?\[[^\]]*\]\(([^)\s]+)\)", text)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page: Path):
    broken = []
    for link in _links(page):
        if re.match(r"[a-z]+:", link):
            continue
        target, _, anchor = link.partition("#")
        path = (page.parent / target).resolve() if target else page
        if not path.exists():
            broken.append(link)
        elif anchor and path.suffix == ".md" and anchor not in _anchors(path):
            broken.append(f"{link} (no such heading)")
    assert not broken, f"{page.relative_to(ROOT)}: broken links {broken}"


@pytest.mark.parametrize("path", JOBS, ids=lambda p: p.name)
def test_job_file_links_resolve(path: Path):
    text = path.read_text()
    missing = [m for m in re.findall(r"\bdocs/[\w./-]+\.md", text) if not (ROOT / m).exists()]
    schema = re.findall(r"\$schema=(\S+)", text)
    missing += [s for s in schema if not (path.parent / s).exists()]
    assert not missing, f"{path.name}: {missing}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_named_repository_paths_exist(page: Path):
    """Paths of the repository named in code spans (modules, tests, benchmarks, job files)
    exist, so the docs follow the code when modules move."""
    spans = re.findall(r"`([^`\n]+)`", page.read_text())
    missing = []
    for span in spans:
        for path in re.findall(
            r"(?<![\w/.])((?:rank1_batch|tests|benchmarks|scripts|jobs|cluster)/[\w./*-]*\w/?)",
            span,
        ):
            if not glob.glob(str(ROOT / path)):
                missing.append(path)
        for dotted in re.findall(r"(?<![\w/.])rank1_batch(?:\.\w+)+", span):
            if not _module_name_exists(dotted):
                missing.append(dotted)
    assert not missing, f"{page.relative_to(ROOT)}: no such path {sorted(set(missing))}"


def _module_name_exists(dotted: str) -> bool:
    """``rank1_batch.a.b[.name]``: the longest module prefix exists, and a name after it is
    defined there (by its source text: no import)."""
    parts = dotted.split(".")
    for n in range(len(parts), 1, -1):
        base = ROOT.joinpath(*parts[:n])
        source = base.with_suffix(".py")
        source = source if source.exists() else base / "__init__.py"
        if source.exists():
            rest = parts[n:]
            if not rest:
                return True
            pattern = rf"^\s*(?:def|class|async def)\s+{rest[0]}\b|^\s*{rest[0]}\s*[:=]"
            return re.search(pattern, source.read_text(), re.M) is not None
    return False


def test_mkdocs_build_strict(tmp_path: Path):
    if importlib.util.find_spec("mkdocs") is None:
        pytest.skip("mkdocs is not installed (it is in the test extra: pip install -e '.[test]')")
    run = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert (tmp_path / "job-file" / "index.html").exists()
