"""Published files get the mode an ordinary write would (umask honoured),
not mkstemp's 0600, so other users, containers and nodes can read results."""

from __future__ import annotations

import os
import stat

import pytest

from rank1_batch.io.store import Store


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_every_local_write_honours_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        store = Store(str(tmp_path / "out"))
        store.write_atomic("a/atomic.json", b"{}")
        store.create_exclusive("_commits/marker.json", b"{}")
        store.create_exclusive("scores/shard.parquet", b"data")
    finally:
        os.umask(old)
    want = 0o666 & ~umask
    for rel in ("a/atomic.json", "_commits/marker.json", "scores/shard.parquet"):
        mode = stat.S_IMODE(os.stat(store.path(rel)).st_mode)
        assert mode == want, f"{rel}: {oct(mode)}, expected {oct(want)} (umask {oct(umask)})"
