"""Job files: YAML mapped onto small, frozen, validated models.

A job file has six sections (input, output, model, reasoning, compute, storage). Loading
validates every field; an error names the file and the dotted field. ``--set a.b=value``
overrides are applied to the raw mapping before validation, so they are checked the same way.
The fingerprint hashes only what determines results; tuning knobs (workers, batch sizes,
CPUs) stay out of it so a job can be resumed with more or fewer workers.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from rank1_batch import rank1


class JobError(ValueError):
    """A job file (or an override) is wrong; the message names the file and field."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Columns(_Section):
    """Input column names for each field the pipeline needs (None: column absent)."""

    query_id: str = "query_id"
    query: str = "query"
    doc_id: str = "doc_id"
    passage: str = "passage"
    title: str | None = None
    instruction: str | None = None


class InputSpec(_Section):
    """Where the candidates come from.

    ``format: pairs`` has one row per (query, passage); ``format: candidates`` has one row per
    query with a list column (``candidates_column``) of structs holding doc_id and passage
    (and optionally title), named by ``columns``.
    """

    path: str
    format: Literal["pairs", "candidates"] = "pairs"
    columns: Columns = Columns()
    candidates_column: str = "candidates"


class OutputSpec(_Section):
    path: str
    shard_size: int = Field(default=2000, ge=1)


class ModelSpec(_Section):
    """The model and how to load it. ``name: toy`` is the built-in toy model (demos, tests)."""

    name: str
    revision: str | None = None
    engine: Literal["auto", "transformers", "vllm"] = "auto"
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    quantization: str | None = None
    max_model_len: int = Field(default=16000, ge=16)
    device: Literal["auto", "cpu", "cuda"] = "auto"


class ReasoningSpec(_Section):
    """Rank1 reasoning: budget, prompt template, instruction, completeness rule."""

    max_tokens: int = Field(default=8192, ge=0)
    min_reserve: int = Field(default=1024, ge=1)
    prompt_template: str | None = None
    instruction: str | None = None
    require_stop: bool = False

    @field_validator("prompt_template")
    @classmethod
    def _has_placeholder(cls, v: str | None) -> str | None:
        if v is not None and rank1.QUERY_PLACEHOLDER not in v:
            raise ValueError(f"must contain {rank1.QUERY_PLACEHOLDER}")
        return v


class ComputeSpec(_Section):
    """Tuning knobs: never part of the fingerprint."""

    workers: int = Field(default=1, ge=1)
    cpus_per_worker: float | None = Field(default=None, gt=0)
    gpus_per_worker: float = Field(default=0, ge=0)
    batch_size: int = Field(default=16, ge=1)
    num_cpus: int | None = Field(default=None, ge=1)
    torch_threads: int | None = Field(default=None, ge=1)


class StorageSpec(_Section):
    """Object-storage options (endpoint, region, profile); credentials never go here."""

    endpoint_url: str | None = None
    region: str | None = None
    profile: str | None = None


class JobSpec(_Section):
    name: str = "rank1-job"
    input: InputSpec
    output: OutputSpec
    model: ModelSpec
    reasoning: ReasoningSpec = ReasoningSpec()
    compute: ComputeSpec = ComputeSpec()
    storage: StorageSpec = StorageSpec()

    def result_settings(self) -> dict[str, Any]:
        """The settings that determine results (the fingerprint's job half)."""
        return {
            "model": {
                "name": self.model.name,
                "revision": self.model.revision,
                "engine": self.model.engine,
                "dtype": self.model.dtype,
                "quantization": self.model.quantization,
                "max_model_len": self.model.max_model_len,
            },
            "reasoning": self.reasoning.model_dump(),
            "prompt_id": self.prompt_id,
            "input": {
                "format": self.input.format,
                "columns": self.input.columns.model_dump(),
                "candidates_column": self.input.candidates_column,
            },
            "shard_size": self.output.shard_size,
        }

    @property
    def prompt_id(self) -> str:
        """Short id of the exact prompt (head, template, instruction) used for every pair."""
        text = json.dumps(
            [
                rank1.PROMPT_HEAD,
                rank1.PASSAGE_SEP,
                rank1.PROMPT_TAIL,
                self.reasoning.prompt_template,
                self.reasoning.instruction,
            ]
        )
        return "rank1-" + hashlib.sha256(text.encode()).hexdigest()[:12]


def parse_override(item: str) -> tuple[list[str], Any]:
    """``section.key=value`` → (["section", "key"], value parsed as YAML scalar)."""
    if "=" not in item:
        raise JobError(f"--set {item!r}: expected section.key=value")
    key, raw = item.split("=", 1)
    path = [p for p in key.strip().split(".") if p]
    if not path:
        raise JobError(f"--set {item!r}: empty field name")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise JobError(f"--set {item!r}: value is not valid YAML: {exc}") from None
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


def _format_errors(source: str, exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown field"
        elif err["type"] == "missing":
            msg = "required field is missing"
        got = "" if err["type"] in ("missing", "extra_forbidden") else f" (got {err['input']!r})"
        lines.append(f"{source}: {field}: {msg}{got}")
    return "\n".join(lines)


def spec_from_mapping(
    raw: Mapping[str, Any], *, source: str = "<job>", overrides: Iterable[str] = ()
) -> JobSpec:
    if not isinstance(raw, Mapping):
        raise JobError(f"{source}: a job file must be a mapping of sections")
    data = apply_overrides(dict(raw), overrides)
    try:
        return JobSpec.model_validate(data)
    except ValidationError as exc:
        raise JobError(_format_errors(source, exc)) from None


def load_job(
    path: str | Path, *, overrides: Iterable[str] = (), output: str | None = None
) -> JobSpec:
    """Load and validate a job file; relative local paths resolve against the working dir."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise JobError(f"{path}: cannot read job file: {exc.strerror}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise JobError(f"{path}: not valid YAML: {exc}") from None
    extra = list(overrides)
    if output is not None:
        extra.append(f"output.path={json.dumps(output)}")
    return spec_from_mapping(raw or {}, source=str(path), overrides=extra)
