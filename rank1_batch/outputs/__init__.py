"""Everything read back from a committed output: the results reader, exports (runs and labels),
``eval``, ``report``, ``compare``, ``status`` and ``plan`` (the forecast of a job not run yet).

Readers go through the commit markers (:mod:`rank1_batch.io.commit`), never a listing of data
files, and never import the scoring pipeline or an engine.
"""
