"""The score stage and what runs it: the one shard body (:mod:`.score`) and its streaming form
(:mod:`.stream`, several shards per actor), the Ray actor and pool (:mod:`.actor`,
:mod:`.pool`) and the plain local loop (:mod:`.local`), shard-attempt records and blame
(:mod:`.attempts`, :mod:`.blame`), reuse of earlier outputs (:mod:`.reuse`,
:mod:`.reuse_ready`), and finalize. The driver that chains the stages is :mod:`rank1_batch.run`.
"""
