"""Rebuild the TOY Rank1 model (a tiny Qwen2 for demos and tests, not a reranker).

Usage: ``python scripts/build_toy_model.py [OUT_DIR] [--seed N] [--steps N] [--no-eval]``.
Trains on synthetic topic data (rank1_batch/toy/data.py) in a few minutes on 2 CPU cores and
prints JSON: training time, held-out accuracy, nDCG@10 of the model vs. the shuffled order.
The committed copy is rank1_batch/toy/model_files (the default OUT_DIR).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rank1_batch.toy import model as toy_model


def main() -> None:
    parser = argparse.ArgumentParser(
        description="Train the TOY Rank1 model (synthetic data only; not a real reranker)."
    )
    parser.add_argument("out_dir", nargs="?", default=str(toy_model.TOY_MODEL_DIR))
    parser.add_argument("--seed", type=int, default=toy_model.DEFAULT_SEED)
    parser.add_argument("--steps", type=int, default=toy_model.DEFAULT_STEPS)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-eval", action="store_true", help="skip the held-out checks")
    args = parser.parse_args()
    stats = toy_model.build_toy_model(
        args.out_dir,
        seed=args.seed,
        steps=args.steps,
        threads=args.threads,
        evaluate=not args.no_eval,
    )
    print(json.dumps(stats, indent=2))


if __name__ == "__main__":
    main()
