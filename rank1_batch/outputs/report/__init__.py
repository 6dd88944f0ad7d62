"""``rank1-batch report``: one self-contained HTML page about a job and its traces.

Modules: :mod:`.data` reads committed shards (through the commit markers, only the columns a
figure needs) into accumulators; :mod:`.stats` holds the pure figures (rank correlations,
calibration); :mod:`.explorer` picks and reads the bounded set of queries the trace explorer
embeds; :mod:`.plots` draws inline SVG; :mod:`.html` assembles the page with the CSS and
JavaScript in ``assets/``; :mod:`.build` ties them together. Importing this package is cheap:
pyarrow and friends load when a report is built.
"""

from __future__ import annotations

from typing import Any


def write_report(*args: Any, **kwargs: Any) -> dict[str, Any]:
    """See :func:`rank1_batch.outputs.report.build.write_report`."""
    from rank1_batch.outputs.report.build import write_report as _write

    return _write(*args, **kwargs)
