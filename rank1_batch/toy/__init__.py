"""The toy Rank1 world: a tiny Qwen2 model, its tokenizer, its training and its synthetic data.

For demos and tests only: the toy model is not a reranker. Modules, in dependency order:
:mod:`~rank1_batch.toy.data` (the synthetic topic world), :mod:`~rank1_batch.toy.tokenizer`
(BPE and model shape), :mod:`~rank1_batch.toy.train` (training and decoding) and
:mod:`~rank1_batch.toy.model` (build and resolve the model folder). Nothing heavy is imported here.
"""

TOY_MODEL_NAME = "toy"  # ``model.name: toy`` in a job file resolves to the packaged model
