"""The pipeline steps: prepare (input -> shards), score (one commit body per shard), finalize,
and ``run``, which chains them over an executor."""
