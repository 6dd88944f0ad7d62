"""Regenerate the generated parts of the docs: ``python scripts/gen_docs.py`` (``--check``:
write nothing, list what is stale and exit 1).

* ``docs/job-file.md`` and ``rank1_batch/data/job.schema.json``, from the pydantic models
  (``scripts/job_reference.py``);
* every benchmark figure in ``docs/*.md``, from ``benchmarks/results/*.json``. A figure is
  written between two markers, ``<!--fig SOURCE PATH FORMAT-->value<!--/fig-->``: SOURCE is a
  results file's stem (``full`` for ``benchmarks/results/full.json``), optionally with a base
  path (``scale:cases.8_scale``); PATH a dotted path below it (list items by index), or
  arithmetic over such paths and numbers (``a.b/2``, ``1-x.y``, ``a+b``), a path ending in
  ``@median`` taking a list's median; FORMAT a Python format spec (none: the value as it is;
  ``raw``: a string inserted as Markdown, e.g. a table). A list is formatted item by item and
  joined with `` / ``. Edit the prose around the markers freely; the values are this
  script's.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DOCS = ROOT / "docs"
FIGURE = re.compile(r"<!--fig ([^\s>]+?) ([^\s>]+?)(?: ([^\s>]+?))?-->(.*?)<!--/fig-->", re.S)


TOKEN = re.compile(r"([+\-*/()])")


def _walk(value: Any, path: str) -> Any:
    path, _, func = path.partition("@")
    for key in path.split(".") if path else []:
        value = value[int(key)] if isinstance(value, list) else value[key]
    if func == "median":
        return statistics.median(value)
    if func:
        raise ValueError(f"unknown function @{func}")
    return value


def lookup(source: str, path: str, cache: dict[str, Any]) -> Any:
    """The value at ``path`` (or the arithmetic over paths) in results file ``source``."""
    stem, _, base = source.partition(":")
    if stem not in cache:
        cache[stem] = json.loads((RESULTS / f"{stem}.json").read_text())
    root = _walk(cache[stem], base)
    parts = [p for p in TOKEN.split(path) if p]
    if len(parts) == 1:
        return _walk(root, path)
    try:  # a key that holds an operator character (``project-stepped``)
        return _walk(root, path)
    except (KeyError, IndexError, TypeError):
        pass
    expr = []
    for part in parts:
        if TOKEN.fullmatch(part) or re.fullmatch(r"\d+(\.\d+)?", part):
            expr.append(part)
        else:
            expr.append(repr(float(_walk(root, part))))
    return eval("".join(expr), {"__builtins__": {}})  # digits and operators only


def render(value: Any, fmt: str | None) -> str:
    if fmt == "raw":
        return "\n\n" + str(value).strip() + "\n\n"
    if isinstance(value, list):
        return " / ".join(render(v, fmt) for v in value)
    return format(value, fmt) if fmt else str(value)


def refresh_figures(text: str, cache: dict[str, Any] | None = None) -> str:
    """``text`` with every figure marker's value read again from the results files."""
    cache = {} if cache is None else cache

    def one(match: re.Match[str]) -> str:
        source, path, fmt, _old = match.groups()
        value = render(lookup(source, path, cache), fmt)
        spec = f"{source} {path}" + (f" {fmt}" if fmt else "")
        return f"<!--fig {spec}-->{value}<!--/fig-->"

    return FIGURE.sub(one, text)


def expected() -> dict[Path, str]:
    """Every generated file and its content as the generator writes it now."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import job_reference as reference

    out = {
        ROOT / reference.REFERENCE_PATH: reference.reference_markdown(),
        ROOT / reference.SCHEMA_PATH: reference.schema_text(),
    }
    cache: dict[str, Any] = {}
    for page in sorted(DOCS.glob("*.md")):
        if page in out:
            continue
        text = page.read_text(encoding="utf-8")
        if FIGURE.search(text):
            out[page] = refresh_figures(text, cache)
    return out


def stale() -> list[Path]:
    return [
        path
        for path, text in expected().items()
        if not path.exists() or path.read_text(encoding="utf-8") != text
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if stale")
    args = parser.parse_args(argv)
    if args.check:
        paths = stale()
        for path in paths:
            print(f"stale: {path.relative_to(ROOT)}")
        if paths:
            print("regenerate with: python scripts/gen_docs.py")
        return 1 if paths else 0
    for path, text in expected().items():
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
