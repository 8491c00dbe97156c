"""Shared pieces of the remote-tier and fault end-to-end tests.

Every engine runs with ``LMCACHE_LOCAL_CPU=False``: LMCache's CPU tier is then
only a staging allocator, so each ``from_lmcache`` token came from the remote
(or disk) tier under test, and an engine holding no memory object has no write
in flight (:meth:`EngineSession.settle`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from testkit.tiny_model import prompt_token_ids
from testkit.vllm_session import EngineSession

CHUNK = 256
PROMPT_A = prompt_token_ids(1024)
PROMPT_B = prompt_token_ids(1024, offset=7)
PROMPT_C = prompt_token_ids(1024, offset=19)
FULL_HIT = len(PROMPT_A) - 1  # vLLM always recomputes the last prompt token

# LMCache's health monitor (LMCacheManager) re-creates a dropped remote
# connection every ``ping_interval`` s (default 30); 10 failed gets in one
# interval mark the tier unhealthy for ``waiting_time_for_recovery`` s (default
# 300). Short values keep the tests short; the docs give production values.
FAST_RECOVERY = {"ping_interval": 1, "waiting_time_for_recovery": 2}


def lmcache_settings(*, remote_url: str | None = None, disk_dir: Path | None = None, extra: dict[str, Any] | None = None) -> dict[str, str]:
    env = {
        "LMCACHE_LOCAL_CPU": "False",
        "LMCACHE_MAX_LOCAL_CPU_SIZE": "0.5",
        "LMCACHE_BLOCKING_TIMEOUT_SECS": "5",
        "LMCACHE_EXTRA_CONFIG": json.dumps(extra if extra is not None else FAST_RECOVERY),
    }
    if remote_url is not None:
        env["LMCACHE_REMOTE_URL"] = remote_url
        env["LMCACHE_REMOTE_SERDE"] = "naive"
    if disk_dir is not None:
        env["LMCACHE_LOCAL_DISK"] = f"file://{disk_dir}"
        env["LMCACHE_MAX_LOCAL_DISK_SIZE"] = "1"
    return env


SessionMaker = Callable[..., EngineSession]


def session_maker(model_dir: Path, tmp_path: Path) -> SessionMaker:
    counter = iter(range(1000))

    def make(**settings: Any) -> EngineSession:
        n = next(counter)
        rpc = tmp_path / f"rpc{n}"
        rpc.mkdir()
        options = {"model_dir": model_dir, "lmcache_overrides": lmcache_settings(**settings)}
        return EngineSession(options, rpc_dir=rpc, log_path=tmp_path / f"engine{n}.log")

    return make


def one(session: EngineSession, prompt: list[int], max_tokens: int = 8) -> dict[str, Any]:
    (result,) = session.generate([prompt], max_tokens=max_tokens)
    assert result["finish_reason"] == "length", result
    return result


def warm(session: EngineSession, prompt: list[int], cold: dict[str, Any]) -> dict[str, Any]:
    """A repeat of ``prompt`` that must be a full LMCache hit with the cold run's tokens."""
    result = one(session, prompt)
    assert result["from_lmcache"] == FULL_HIT, result
    assert result["token_ids"] == cold["token_ids"]
    return result


def until_hit(session: EngineSession, prompt: list[int], cold: dict[str, Any], attempts: int, pause_s: float = 0.0) -> int:
    """Store-and-repeat ``prompt`` until it hits again; returns the attempts used (bounded).

    ``pause_s`` between attempts leaves time for a background reconnect.
    """
    for attempt in range(1, attempts + 1):
        result = one(session, prompt)
        assert result["token_ids"] == cold["token_ids"]  # hit or miss, the same output
        assert result["from_lmcache"] == FULL_HIT or result["from_lmcache"] % CHUNK == 0, result  # whole chunks
        if result["from_lmcache"] == FULL_HIT:
            return attempt
        session.settle()
        time.sleep(pause_s)
    raise AssertionError(f"no LMCache hit in {attempts} attempts after recovery")
