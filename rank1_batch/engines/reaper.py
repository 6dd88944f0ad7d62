"""A reaper for an engine's child processes: they die with the process that started them.

vLLM 0.32 starts its engine core (and, with tensor parallelism, its workers) as child
processes that keep running, holding GPU memory, when their parent is SIGKILLed (a Ray actor
killed from outside runs no code). :func:`start_reaper` starts one small process per engine
owner before the engine starts; the engine's processes inherit ``RANK1_BATCH_ENGINE_OWNER``
(the owner's pid). The reaper watches the owner (twice a second); when the owner ends,
however it ends, the reaper kills every process carrying the mark, then exits. An owner that
shuts its engine down closes the reaper's stdin, and the reaper kills what the shutdown left.
(Not an end-of-file on a pipe alone: vLLM may fork its processes, and a forked child would
hold the pipe open.)
"""

from __future__ import annotations

import os
import subprocess
import sys

OWNER_ENV = "RANK1_BATCH_ENGINE_OWNER"

_REAPER = """
import os, select, sys, psutil
owner = psutil.Process(int(sys.argv[1]))
def alive():
    try:
        return owner.is_running() and owner.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
while alive():
    if select.select([sys.stdin], [], [], 0.5)[0]:
        break  # the owner closed the pipe: its engine is shut down
mark = f"{sys.argv[2]}={sys.argv[1]}".encode()
for p in psutil.process_iter():
    if p.pid in (owner.pid, os.getpid()):
        continue
    try:  # /proc itself: psutil reads no environment from a process that set its title
        with open(f"/proc/{p.pid}/environ", "rb") as fh:
            if mark in fh.read().split(b"\\0"):
                p.kill()
    except (OSError, psutil.Error):  # gone already, or another user's
        pass
"""


def start_reaper() -> subprocess.Popen[bytes]:
    """Mark this process's children to come and start their reaper; close its ``stdin`` to
    have it kill them now."""
    os.environ[OWNER_ENV] = str(os.getpid())
    return subprocess.Popen(
        [sys.executable, "-c", _REAPER, str(os.getpid()), OWNER_ENV],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        start_new_session=True,  # a Ctrl-C or a kill of the process group must not take it first
    )
