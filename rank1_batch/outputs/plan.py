"""``rank1-batch plan JOB.yaml``: everything ``run`` would check, and the bill, without scoring.

Checks, in order (each a row of the report; a failed one is why ``run`` would fail):

1. ``output``: the location is reachable and writable (a probe file is written and deleted
   under it; for a local folder that does not exist yet, in its nearest existing parent);
2. ``input``: every input file lists, opens and has the job's columns (``inputs.scan_inputs``,
   the very check ``run`` makes); run/corpus and HF inputs are converted into a temporary
   folder, as ``run`` would convert them into the output;
3. ``fingerprint``: against an existing ``job.json``: a new job, a resume (how many shards and
   pairs remain), a finished job, or a refusal naming every changed setting (or the other
   layout version the folder was written in);
4. ``model``: the model's config and tokenizer load (a toy model is built if missing) and
   ``max_model_len`` fits the model; ``engine``: the engine ``run`` would use is installed;
5. ``reuse``: each earlier output named in ``reuse:`` is readable, of this layout version,
   and holds committed shards.

Then the forecast (:mod:`rank1_batch.outputs.forecast`): a streamed full scan (the report's
``work``), prompt lengths on a token sample, a calibration run of ``sample`` pairs on the
job's engine (or a given reasoning mean and p95), and GPU-hours and cost per GPU type
(:mod:`rank1_batch.outputs.throughput`).
"""

from __future__ import annotations

import math
import os
import tempfile
import uuid
from dataclasses import dataclass, field
from typing import Any

from rank1_batch.core.progress import plural
from rank1_batch.io import commit, layout
from rank1_batch.io.store import StorageError, Store
from rank1_batch.job.record import _diff, job_record
from rank1_batch.job.spec import JobSpec
from rank1_batch.outputs import throughput


@dataclass
class PlanOptions:
    sample: int = 100  # pairs judged on the job's engine (0: no calibration)
    token_sample: int = 2000  # pairs tokenised for the prompt-length distribution
    reasoning_mean: float | None = None  # given instead of calibrating
    reasoning_p95: float | None = None
    throughput_file: str | None = None
    throughput: list[str] = field(default_factory=list)  # GPU=TOKENS_PER_S[@USD]


class Checks:
    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def add(self, name: str, ok: bool, detail: str) -> bool:
        self.rows.append({"check": name, "ok": ok, "detail": detail})
        return ok

    @property
    def failures(self) -> list[str]:
        return [f"{r['check']}: {r['detail']}" for r in self.rows if not r["ok"]]


def probe_output(store: Store) -> str:
    """Write and delete a probe file under the output; raise naming why that fails."""
    store.check_access()
    name = f".rank1-plan-probe-{uuid.uuid4().hex[:12]}"
    if store.local:
        folder = store.root
        while not os.path.exists(folder):
            folder = os.path.dirname(folder)
        if not os.path.isdir(folder):
            raise StorageError(f"{store.uri}: {folder} is a file, not a folder")
        probe = os.path.join(folder, name)
        try:
            with open(probe, "wb"):
                pass
            os.unlink(probe)
        except OSError as exc:
            raise StorageError(f"{store.uri}: cannot write under {folder}: {exc}") from exc
        return f"writable ({'exists' if folder == store.root else 'will be created'})"
    try:
        store.write_atomic(name, b"")
        store.fs.rm(store.path(name))
    except (PermissionError, StorageError) as exc:
        raise StorageError(f"{store.uri}: cannot write: {exc}") from exc
    return "readable and writable (probe written and deleted)"


def fingerprint_state(store: Store, record: dict[str, Any]) -> tuple[bool, str, dict[str, Any]]:
    """(ok, detail, facts) for this job against what ``store`` already holds."""
    if not store.exists(layout.JOB_FILE):
        return True, "new output: run starts from scratch", {"state": "new"}
    try:
        old = layout.read_job(store)
    except layout.LayoutVersionError as exc:
        return False, f"refused: {exc}", {"state": "refused", "layout": "other version"}
    if old.get("fingerprint") != record["fingerprint"]:
        changes = _diff(old.get("settings", {}), record["settings"]) or ["fingerprint"]
        detail = f"refused: {store.uri} holds a different job; changed: {'; '.join(changes)}"
        return False, detail, {"state": "refused", "changed": changes}
    if store.exists(layout.SUCCESS):
        return True, "complete: run would write nothing", {"state": "complete"}
    if not store.exists(layout.MANIFEST):
        return True, "resume: prepare not finished, no shard committed", {"state": "resume"}
    manifest = store.read_json(layout.MANIFEST)
    done = commit.committed_shards(store)
    pending = [s for s in manifest["shards"] if s["id"] not in done]
    facts = {
        "state": "resume",
        "shards_total": len(manifest["shards"]),
        "shards_committed": len(manifest["shards"]) - len(pending),
        "pairs_pending": sum(int(s["rows"]) for s in pending),
    }
    detail = (
        f"resume: {facts['shards_committed']}/{facts['shards_total']} shards committed, "
        f"{facts['pairs_pending']} pairs pending"
    )
    return True, detail, facts


def _inputs(spec: JobSpec, checks: Checks, scratch: str) -> tuple[JobSpec, list[Any], Any]:
    """Scan (or convert, then scan) the input; (spec as scored, files, listing) or files []."""
    from rank1_batch.job import convert as formats
    from rank1_batch.job.inputs import InputError, listing, scan_inputs

    try:
        if spec.input.format in formats.CONVERTED:
            source = formats.source_listing(spec.input, spec.storage)
            converted = spec.model_copy(update={"input": formats.convert(spec, Store(scratch))})
            files = scan_inputs(converted.input, spec.storage)
            spec, fingerprint_listing = converted, source
        else:
            files = scan_inputs(spec.input, spec.storage)
            fingerprint_listing = listing(files)
    except (InputError, FileNotFoundError, StorageError, PermissionError) as exc:
        checks.add("input", False, str(exc))
        return spec, [], None
    rows = sum(f.rows for f in files)
    if not rows:
        checks.add("input", False, f"input {spec.input.path}: {len(files)} file(s), 0 rows")
        return spec, [], None
    checks.add("input", True, f"{len(files)} file(s), {rows} rows, schema ok")
    return spec, files, fingerprint_listing


def _model(spec: JobSpec, checks: Checks) -> tuple[str | None, Any, int]:
    """(model folder, tokenizer, parameter count) or (None, None, 0) with a failed check."""
    from rank1_batch.engines.factory import engine_kind, model_path
    from rank1_batch.outputs.forecast import load_tokenizer

    try:
        path = model_path(spec)
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(path, revision=spec.model.revision).to_dict()
        tokenizer = load_tokenizer(spec, path)
    except Exception as exc:  # a hub id offline, a bad folder: name it, do not crash
        checks.add("model", False, f"{spec.model.name}: cannot load config/tokenizer: {exc}")
        return None, None, 0
    params = throughput.parameter_count(config)
    limit = (config.get("text_config") or config).get("max_position_embeddings")
    kind = engine_kind(spec)
    if limit and spec.model.max_model_len > int(limit) and kind == "vllm":
        checks.add(
            "model",
            False,
            f"model.max_model_len {spec.model.max_model_len} exceeds the model's "
            f"max_position_embeddings {limit} (vLLM refuses it)",
        )
        return None, None, 0
    checks.add("model", True, f"{spec.model.name}: config and tokenizer load, {params:,} params")
    if kind == "vllm":
        import importlib.util

        if importlib.util.find_spec("vllm") is None:
            checks.add("engine", False, "engine vllm: the vllm package is not installed here")
            return None, None, 0
    checks.add("engine", True, f"{kind} (model.engine: {spec.model.engine})")
    return path, tokenizer, params


def _reuse_sources(spec: JobSpec, checks: Checks) -> list[dict[str, Any]]:
    out = []
    for uri in spec.reuse:
        try:
            src = Store(uri, spec.storage)
            layout.read_job(src)  # none: FileNotFoundError; another layout: refused
            shards = commit.committed_shards(src)
        except (FileNotFoundError, StorageError, layout.LayoutVersionError) as exc:
            checks.add("reuse", False, str(exc))
            continue
        checks.add("reuse", True, f"{uri}: {len(shards)} committed shards")
        out.append({"uri": uri, "committed_shards": len(shards)})
    return out


def make_plan(spec: JobSpec, options: PlanOptions) -> dict[str, Any]:
    """Run every check and estimate the job; the report as a JSON-able dict."""
    from rank1_batch.outputs import forecast

    checks = Checks()
    table = throughput.load_table(options.throughput_file)
    overrides = [throughput.parse_override(t) for t in options.throughput]
    report: dict[str, Any] = {"job": spec.name, "output": spec.output.path, "checks": checks.rows}
    store = Store(spec.output.path, spec.storage)
    try:
        checks.add("output", True, probe_output(store))
        output_ok = True
    except (StorageError, OSError) as exc:
        checks.add("output", False, str(exc))
        output_ok = False
    with tempfile.TemporaryDirectory(prefix="rank1-plan-input-") as scratch:
        scored_spec, files, fp_listing = _inputs(spec, checks, scratch)
        if files and output_ok:
            ok, detail, facts = fingerprint_state(store, job_record(spec, fp_listing))
            checks.add("fingerprint", ok, detail)
            report["resume"] = facts
        model_dir, tokenizer, params = _model(spec, checks)
        report["reuse"] = _reuse_sources(spec, checks)
        if not files:
            return _finish(report, checks)
        sample_size = max(options.token_sample, options.sample)
        scanned = forecast.scan(scored_spec, files, sample_size=sample_size)
    report["work"] = scanned.to_dict()
    if model_dir is None or scanned.sample is None or not scanned.pairs:
        return _finish(report, checks)
    tokens = forecast.token_stats(scored_spec, scanned.sample, tokenizer)
    report["prompts"] = tokens
    share = 0.0
    if report["reuse"]:
        from rank1_batch.pipeline.reuse import sample_matches

        found = sample_matches(scored_spec, scanned.sample)
        share = found["share"]
        report["reuse_estimate"] = {**found, "pairs": round(share * scanned.pairs)}
    reasoning: dict[str, Any]
    if options.reasoning_mean is not None:
        reasoning = {
            "source": "given",
            "mean": options.reasoning_mean,
            "p95": options.reasoning_p95 if options.reasoning_p95 is not None else math.nan,
        }
        forced = 0.0
    elif options.sample > 0:
        cal = forecast.calibrate(scored_spec, scanned.sample.slice(0, options.sample), model_dir)
        report["calibration"] = cal
        reasoning = {"source": f"calibration on {cal['pairs']} pairs ({cal['engine']})"}
        reasoning.update(
            mean=cal["reasoning_tokens"].get("mean", 0.0),
            p95=cal["reasoning_tokens"].get("p95", 0.0),
        )
        forced = cal["forced_share"]
    else:
        reasoning = {"source": "budget (no sample, no --reasoning-mean): an upper bound"}
        reasoning.update(mean=float(spec.reasoning.max_tokens), p95=spec.reasoning.max_tokens)
        forced = 0.0
    report["reasoning"] = reasoning
    pairs = round(scanned.pairs * (1 - share))  # pairs to judge: reused ones cost nothing
    prompt_mean = tokens["prompt_tokens"].get("mean", 0.0)
    load = throughput.Work(
        pairs=pairs,
        prompt_tokens=prompt_mean * pairs * (1 + forced),
        generated_tokens=(float(reasoning["mean"]) + 1 + forced) * pairs,
    )
    report["tokens"] = {
        "pairs_to_judge": pairs,
        "prompt_tokens": round(load.prompt_tokens),
        "reasoning_tokens": round(float(reasoning["mean"]) * pairs),
        "generated_tokens": round(load.generated_tokens),
    }
    report["estimate"] = throughput.estimate(load, params, table, overrides)
    if "calibration" in report and report["calibration"]["pairs_per_second"]:
        cal = report["calibration"]
        report["this_machine"] = {
            "engine": cal["engine"],
            "pairs_per_second": cal["pairs_per_second"],
            "hours": pairs / cal["pairs_per_second"] / 3600,
            "note": "one engine, measured by the calibration run on this machine",
        }
    return _finish(report, checks)


def _finish(report: dict[str, Any], checks: Checks) -> dict[str, Any]:
    report["would_fail"] = checks.failures
    report["ok"] = not checks.failures
    return report


def _num(x: float | None, digits: int = 1) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if abs(x) >= 100 or float(x).is_integer():
        return f"{x:,.0f}"
    return f"{x:,.{digits}f}"


def _money(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:,.2f}" if x >= 1 else f"{x:.3g}"


def _counts(by_reason: dict[str, int]) -> str:
    """``{"empty_query": 2, "bad_id": 1}`` as ``empty_query 2, bad_id 1``."""
    return ", ".join(f"{k} {v:,}" for k, v in by_reason.items())


def format_plan(r: dict[str, Any]) -> str:
    """The report as a table for the terminal."""
    lines = [f"plan     {r['job']} -> {r['output']}", ""]
    for c in r["checks"]:
        lines.append(f"  [{'ok' if c['ok'] else 'FAIL'}] {c['check']:<11} {c['detail']}")
    w = r.get("work") or {"pairs": 0}
    if "input_rows" in w:
        lines += [
            "",
            f"input    {plural(w['input_rows'], 'row')}: {plural(w['pairs'], 'pair')} over "
            f"{plural(w['queries'], 'query', 'queries')}, {w['duplicates']:,} duplicates, "
            f"{w['rejected']:,} rejected"
            + (f" ({_counts(w['rejected_by_reason'])})" if w["rejected"] else ""),
        ]
    p = r.get("prompts")
    if p and p["prompt_tokens"]:
        t = p["prompt_tokens"]
        lines.append(
            f"prompts  tokens on {p['sampled_pairs']:,} sampled pairs: mean {_num(t['mean'])}, "
            f"p50 {_num(t['p50'])}, p95 {_num(t['p95'])}, p99 {_num(t['p99'])}, "
            f"max {_num(t['max'])} (limit {p['max_prompt_tokens']:,}); truncated "
            f"{100 * p['truncated_share']:.1f}% (~{p['truncated_share'] * w['pairs']:,.0f} "
            f"pairs), too long {100 * p['prompt_too_long_share']:.1f}%"
        )
    ru = r.get("reuse_estimate")
    if ru:
        lines.append(
            f"reuse    {ru['matched']}/{ru['sampled']} sampled pairs found in earlier outputs: "
            f"~{ru['pairs']:,} pairs copied, not judged"
        )
    rs = r.get("reasoning")
    if rs:
        lines.append(
            f"reason   {_num(rs['mean'])} tokens/pair (p95 {_num(rs['p95'])}) from {rs['source']}"
        )
    if r.get("calibration"):
        cal = r["calibration"]
        lines.append(
            "         statuses "
            + ", ".join(f"{k} {v}" for k, v in cal["statuses"].items())
            + f"; {_num(cal['pairs_per_second'])} pairs/s here"
        )
    tk = r.get("tokens")
    if tk:
        lines.append(
            f"tokens   {tk['prompt_tokens']:,} prompt + {tk['generated_tokens']:,} generated "
            f"for the {plural(tk['pairs_to_judge'], 'pair')} to judge"
        )
    est = r.get("estimate")
    if est:
        lines += ["", f"  {'gpu':<12} {'decode tok/s':>12} {'GPU-hours':>10} {'cost USD':>10}"]
        for e in est:
            lines.append(
                f"  {e['gpu']:<12} {_num(e['decode_tokens_per_s']):>12} "
                f"{e['gpu_hours']:>10.3g} {_money(e['cost_usd']):>10}"
            )
        if est[0]["note"]:
            lines.append(f"  note: {est[0]['note']}")
        lines.append(
            "  sources: rank1_batch/data/throughput.yaml (`plan --json`: the source of each figure)"
        )
    here = r.get("this_machine")
    if here:
        lines.append(
            f"  this machine ({here['engine']}, one engine): {here['hours']:.3g} hours "
            f"at {_num(here['pairs_per_second'])} pairs/s"
        )
    lines.append("")
    if r["would_fail"]:
        lines.append("run would FAIL:")
        lines += [f"  {f}" for f in r["would_fail"]]
    else:
        lines.append("run would start: every check passed")
    return "\n".join(lines)
