"""Run one offline vLLM engine in a child process on a fixed list of prompts.

:func:`run_engine` is the batch form of :class:`~testkit.vllm_session.EngineSession`
(the one way vLLM runs out of process here): it starts the engine with
``options`` (:class:`~testkit.vllm_offline.LLMOptions` fields plus ``prompts``,
token-id lists sent in order, and ``max_tokens``), sends each prompt as one
timed request, and returns the per-prompt results (``ttft_s``, ``from_lmcache``,
``token_ids``, ``logprobs``; with CacheBlend on, ``blend``). The engine's log
goes to a temporary file; a failure raises :class:`EngineRunError` with its
last lines.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from testkit.vllm_session import EngineSession, kit_env, parse_result

__all__ = ["EngineRunError", "kit_env", "parse_result", "run_engine"]
LOG_TAIL_LINES = 60


class EngineRunError(RuntimeError):
    pass


def run_engine(
    options: Mapping[str, Any], *, timeout_s: float = 420, env: Mapping[str, str] | None = None, rpc_dir: Path | None = None
) -> list[dict[str, Any]]:
    """Run the engine described by ``options`` in a child process; per-prompt results.

    ``timeout_s`` bounds the start and each prompt; past it the engine's whole
    process group is killed.
    """
    opts = dict(options)
    prompts = opts.pop("prompts")
    max_tokens = int(opts.pop("max_tokens", 16))
    fd, name = tempfile.mkstemp(prefix="lmcache-ascend-engine-", suffix=".log")
    os.close(fd)
    log = Path(name)
    try:
        session = EngineSession(opts, log_path=log, rpc_dir=rpc_dir, env=env, start_timeout_s=timeout_s)
        try:
            results = [session.prompt(p, max_tokens=max_tokens, timeout_s=timeout_s) for p in prompts]
        finally:
            status = session.close()
        if status != 0:
            raise RuntimeError(f"engine process exited with status {status} after its last prompt")
    except (RuntimeError, TimeoutError) as exc:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:])
        raise EngineRunError(f"vLLM engine process failed: {exc}\n{tail}") from exc
    log.unlink()
    return results
