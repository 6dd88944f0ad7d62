"""rank1-batch: distributed batch reranking with the Rank1 reasoning reranker.

Importing the package is cheap: ray, torch and vllm are imported only where they are used.
"""

__version__ = "0.1.0"
