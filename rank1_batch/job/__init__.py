"""A job: the job file as typed settings (:mod:`.spec`, :mod:`.load`), the settings resolved on
the driver's hardware (:mod:`.resolve`), its ``job.json`` record (:mod:`.record`), the input
readers and conversions (:mod:`.inputs`, :mod:`.run_files`, :mod:`.convert`), and ``prepare``,
which cuts the input into shards (:mod:`.prepare`, :mod:`.prepare_grouped`).
"""
