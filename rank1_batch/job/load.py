"""Loading a job file: its YAML read within fixed limits, ``--set`` overrides applied, and the
result validated into a :class:`~rank1_batch.job.spec.JobSpec` (one line per error, naming the
field and the file or the ``--set`` argument).

A job file is often written by someone other than the person running it, and YAML can make
a small file expensive: aliases repeat a node without copying it in the text (nine levels of
nine aliases stand for 9^9 nodes once anything walks the result, as the override merge and
validation do), the composer recurses once per nesting level (a deeply nested list ends in
a ``RecursionError``), and the whole file is held in memory several times over while it is
parsed. So before anything is composed, the file must be at most :data:`MAX_BYTES`, UTF-8,
nested at most :data:`MAX_DEPTH` levels, and stand for at most :data:`MAX_NODES` nodes with
every alias expanded. These are checked on the parser's event stream, which is iterative and
expands nothing, so a hostile file is refused in milliseconds. Each refusal is one line
naming the file.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    ValidationError,
)

from rank1_batch.job.spec import JobError, JobSpec

MAX_BYTES = 1024 * 1024  # 1 MiB: the largest shipped job file is under 2 KiB
MAX_DEPTH = 100  # nested mappings/sequences
MAX_NODES = 100_000  # scalars and collections, counting each alias as the node it repeats

# The C parser where PyYAML has it (same events and constructors, much faster).
_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class JobFileError(ValueError):
    """The YAML breaks a limit or does not parse; one line, without the file name."""


def yaml_problem(exc: yaml.YAMLError) -> str:
    """PyYAML's error on one line: the problem and where (its own text spans several)."""
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem:
        mark = exc.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        context = f"{exc.context}: " if exc.context else ""
        return f"{context}{exc.problem}{where}"
    return " ".join(str(exc).split())


def check_events(text: str) -> None:
    """Raise :class:`JobFileError` when ``text`` nests deeper than :data:`MAX_DEPTH` or
    expands to more than :data:`MAX_NODES` nodes. Walks parser events only (no composing)."""
    sizes: dict[str, int] = {}  # anchor -> expanded node count of the node it names
    stack: list[list[Any]] = [[None, 0]]  # open collections: [anchor, expanded nodes so far]
    try:
        for event in yaml.parse(text, Loader=_LOADER):
            if isinstance(event, yaml.CollectionStartEvent):
                if len(stack) > MAX_DEPTH:
                    raise JobFileError(f"nested more than {MAX_DEPTH} levels deep")
                stack.append([event.anchor, 1])
                continue
            if isinstance(event, yaml.CollectionEndEvent):
                anchor, size = stack.pop()
            elif isinstance(event, yaml.ScalarEvent):
                anchor, size = event.anchor, 1
            elif isinstance(event, yaml.AliasEvent):
                name = event.anchor or ""
                anchor, size = None, sizes.get(name, -1)
                if size < 0:
                    if any(frame[0] == name for frame in stack):
                        raise JobFileError(f"alias *{name} refers to a node holding it")
                    size = 1  # undefined: the composer names it below
            else:
                continue
            if anchor is not None:
                sizes[anchor] = size
            stack[-1][1] += size
            if stack[-1][1] > MAX_NODES:
                raise JobFileError(
                    f"more than {MAX_NODES:,} nodes once its aliases are expanded "
                    "(YAML aliases repeat a node; write the values out instead)"
                )
    except yaml.YAMLError as exc:
        raise JobFileError(f"not valid YAML: {yaml_problem(exc)}") from None


def load_text(text: str) -> Any:
    """YAML text → Python data, within the limits (``--set`` values go through here too)."""
    check_events(text)
    try:
        return yaml.load(text, Loader=_LOADER)
    except yaml.YAMLError as exc:
        raise JobFileError(f"not valid YAML: {yaml_problem(exc)}") from None


def read_job_yaml(path: Path) -> Any:
    """Read and parse a job file within the limits; raises ``OSError`` or
    :class:`JobFileError`."""
    with path.open("rb") as f:
        data = f.read(MAX_BYTES + 1)
    if len(data) > MAX_BYTES:
        raise JobFileError(f"larger than the {MAX_BYTES // 1024 // 1024} MiB a job file may be")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise JobFileError(
            f"not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start})"
        ) from None
    return load_text(text)


def parse_override(item: str) -> tuple[list[str], Any]:
    """``section.key=value`` → (["section", "key"], value parsed as YAML scalar)."""
    if "=" not in item:
        raise JobError(f"--set {item!r}: expected section.key=value")
    key, raw = item.split("=", 1)
    path = [p for p in key.strip().split(".") if p]
    if not path:
        raise JobError(f"--set {item!r}: empty field name")
    try:
        value = load_text(raw) if raw.strip() else ""
    except JobFileError as exc:
        raise JobError(f"--set {item!r}: value {exc}") from None
    return path, value


def apply_overrides(raw: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(json.dumps(raw))
    for item in overrides:
        path, value = parse_override(item)
        node = out
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise JobError(f"--set {item!r}: {part} is not a section")
            node = child
        node[path[-1]] = value
    return out


def _format_errors(source: str, exc: ValidationError, overrides: Iterable[str] = ()) -> str:
    """One line per error, naming the job file, or the ``--set`` argument that set the field."""
    by_field = {".".join(parse_override(o)[0]): o for o in overrides}
    lines = []
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"]) or "(top level)"
        where = source
        for name, item in by_field.items():
            if field == name or field.startswith(name + "."):
                where = f"--set {item}"
        msg = err["msg"]
        if not err["loc"] and err["type"] == "value_error":
            # Whole-job checks (path safety) name their own field in the message.
            lines.append(f"{source}: {msg.removeprefix('Value error, ')}")
            continue
        if err["type"] == "extra_forbidden":
            msg = "unknown field"
        elif err["type"] == "missing":
            msg = "required field is missing"
        got = "" if err["type"] in ("missing", "extra_forbidden") else f" (got {err['input']!r})"
        lines.append(f"{where}: {field}: {msg}{got}")
    return "\n".join(lines)


def spec_from_mapping(
    raw: Mapping[str, Any], *, source: str = "<job>", overrides: Iterable[str] = ()
) -> JobSpec:
    if not isinstance(raw, Mapping):
        raise JobError(f"{source}: a job file must be a mapping of sections")
    overrides = list(overrides)
    data = apply_overrides(dict(raw), overrides)
    try:
        return JobSpec.model_validate(data)
    except ValidationError as exc:
        raise JobError(_format_errors(source, exc, overrides)) from None


def load_job(
    path: str | Path, *, overrides: Iterable[str] = (), output: str | None = None
) -> JobSpec:
    """Load and validate a job file (limits: :mod:`rank1_batch.job.load`); relative paths: cwd."""
    path = Path(path)
    try:
        raw = read_job_yaml(path)
    except OSError as exc:
        raise JobError(f"{path}: cannot read job file: {exc.strerror}") from None
    except JobFileError as exc:
        raise JobError(f"{path}: {exc}") from None
    extra = list(overrides)
    if output is not None:
        extra.append(f"output.path={json.dumps(output)}")
    return spec_from_mapping(raw or {}, source=str(path), overrides=extra)
