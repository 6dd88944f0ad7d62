"""Test helper, run as a script: builds a VLLMEngine on CPU (the toy model), prints
``READY <pid>`` and then, by its argument: ``sleep`` (to be SIGKILLed from outside, as an
actor killed by Ray or a user), or ``fatal`` (a fatal engine error once a line comes on
stdin: the engine's exit path)."""

from __future__ import annotations

import sys
import time

from rank1_batch.engines.base import EngineOptions
from rank1_batch.engines.vllm_engine import VLLMEngine, exit_for_restart
from rank1_batch.toy.model import resolve_toy_model

if __name__ == "__main__":
    engine = VLLMEngine(
        str(resolve_toy_model()),
        EngineOptions(max_model_len=512, max_tokens=8, min_reserve=8),
        device="cpu",
        cpu_kv_cache_gib=1,
    )
    import os

    print("READY", os.getpid(), flush=True)
    mode = sys.argv[1]
    if mode == "fatal":
        sys.stdin.readline()  # the test has noted the engine's processes
        exit_for_restart(RuntimeError("CUDA out of memory (injected)"), engine)
    time.sleep(600)
