"""``python -m rank1_batch.cli``: what ``rank1-batch`` runs (Ray Jobs entrypoints use it)."""

import sys

from rank1_batch.cli import main

if __name__ == "__main__":
    sys.exit(main())
