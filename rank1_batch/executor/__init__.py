"""Executors: what runs :func:`rank1_batch.pipeline.score.process_shard` over pending shards.

* :mod:`~rank1_batch.executor.ray_pool` -- a Ray Data actor pool, one engine per actor, with
  the Ray resource policy (CPUs and GPUs per actor, tensor-parallel placement). ``run`` uses it.
* :mod:`~rank1_batch.executor.stream` -- the streaming scheduler for stream engines (vLLM):
  one request per pair, several shards per actor, one commit body; the Ray actor runs it.
* :mod:`~rank1_batch.executor.local` -- a plain loop in this process, no Ray: tests and
  benchmarks call it to exercise the exact per-shard code the actors run.
"""
