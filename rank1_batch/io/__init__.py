"""The output folder on local disk or an object store.

:mod:`.store` (the :class:`~.store.Store`, with the one retry layer, :mod:`.faults` deciding
what is transient), :mod:`.layout` (every path a pure function of shard and attempt),
:mod:`.commit` (create-only markers and the readers that trust only them), :mod:`.verify`,
:mod:`.lease` (one run at a time per output), :mod:`.publish` (folder exports published
whole) and :mod:`.paths` (where a job may write).
"""
