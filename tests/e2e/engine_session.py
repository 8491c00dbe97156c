"""One vLLM CPU engine with the connector in a child process, driven request by request.

``runner.run_engine`` sends a fixed list of prompts; the fault tests need to act
between requests (kill a server, stall it, fill a disk), so this helper keeps
the engine process alive and talks to it over stdin/stdout, one JSON command per
line:

- ``{"op": "generate", "prompts": [[ids...], ...], "max_tokens": n}``: one
  ``LLM.generate`` call with all prompts (vLLM batches them); per prompt
  ``token_ids``, ``from_lmcache`` (vLLM's ``num_cached_tokens``) and
  ``finish_reason``;
- ``{"op": "worker"}``: LMCache counters read inside vLLM's worker (see
  :func:`worker_state`), through ``LLM.collective_rpc``;
- ``{"op": "blend", "recompute_ratio": r | null, "break": bool}``: the worker's
  CacheBlend counters (:func:`blend_state`), after setting the recompute ratio
  if given; ``break`` makes every later blend fail before it writes any KV;
- ``{"op": "file_size_limit", "bytes": n | null}``: ``RLIMIT_FSIZE`` in the
  worker (:func:`file_size_limit`), a disk that refuses writes even for root;
- ``{"op": "exit"}``.

The child answers each command with one line ``RESULT <json>`` (or
``ERROR <text>``); everything else it prints goes to ``log_path``. Every wait is
bounded: a command that does not answer in time kills the child and raises
``TimeoutError``, so a deadlock fails the test instead of hanging it.

LMCache is configured only through ``LMCACHE_*`` variables: the caller's, over
:func:`~lmcache_ascend.integrations.vllm.settings.lmcache_env`'s defaults
(``LMCACHE_LOCAL_CPU=False`` leaves the CPU tier as a staging allocator only,
so every hit must come from a lower tier).
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

RESULT = "RESULT "
ERROR = "ERROR "
ROOT = Path(__file__).resolve().parents[2]


class EngineSession:
    def __init__(
        self,
        *,
        model_dir: Path,
        lmcache: dict[str, str],
        rpc_dir: Path,
        log_path: Path,
        max_model_len: int = 4096,
        dtype: str = "bfloat16",
        start_timeout_s: float = 300.0,
    ) -> None:
        env = dict(os.environ)
        env.update(VLLM_CPU_KVCACHE_SPACE="1", VLLM_RPC_BASE_PATH=str(rpc_dir), VLLM_ALLOW_INSECURE_SERIALIZATION="1")
        env.update(lmcache)
        self.log_path = log_path
        self._log = open(log_path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "tests.e2e.engine_session"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            cwd=ROOT,
            env=env,
            start_new_session=True,
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        try:
            start = {"op": "start", "model_dir": str(model_dir), "max_model_len": max_model_len, "dtype": dtype}
            self._call(start, start_timeout_s)
        except BaseException:
            self.close()
            raise

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            if line.startswith((RESULT, ERROR)):
                self._lines.put(line.rstrip("\n"))
            else:
                self._log.write(line)
        self._lines.put(None)

    def _call(self, command: dict[str, Any], timeout_s: float) -> Any:
        assert self._proc.stdin is not None
        self._proc.stdin.write(json.dumps(command) + "\n")
        self._proc.stdin.flush()
        try:
            line = self._lines.get(timeout=timeout_s)
        except queue.Empty:
            self.kill()
            raise TimeoutError(f"engine did not answer {command['op']!r} within {timeout_s:.0f} s; log: {self.log_path}") from None
        if line is None:
            raise RuntimeError(f"engine process exited ({self._proc.wait()}); log: {self.log_path}")
        if line.startswith(ERROR):
            raise RuntimeError(f"engine raised: {line[len(ERROR):]}; log: {self.log_path}")
        return json.loads(line[len(RESULT) :])

    def generate(self, prompts: list[list[int]], *, max_tokens: int = 16, timeout_s: float = 180.0) -> list[dict[str, Any]]:
        return self._call({"op": "generate", "prompts": prompts, "max_tokens": max_tokens}, timeout_s)

    def worker(self, timeout_s: float = 60.0) -> dict[str, Any]:
        return self._call({"op": "worker"}, timeout_s)

    def blend(
        self, recompute_ratio: float | None = None, *, break_it: bool = False, timeout_s: float = 60.0
    ) -> dict[str, Any]:
        return self._call({"op": "blend", "recompute_ratio": recompute_ratio, "break": break_it}, timeout_s)

    def settle(self, timeout_s: float = 60.0) -> dict[str, Any]:
        """Wait until the worker holds no memory object (asynchronous remote/disk writes done).

        Meaningful with ``LMCACHE_LOCAL_CPU=False``, where a held object is a
        write in progress. Raises ``TimeoutError`` (a leak or a hung write).
        """
        deadline = time.monotonic() + timeout_s
        while True:
            state = self.worker()
            if state.get("active_objects") == 0 or not state.get("engine"):
                return state
            if time.monotonic() > deadline:
                raise TimeoutError(f"worker still holds memory objects after {timeout_s:.0f} s: {state}")
            time.sleep(0.2)

    def limit_file_size(self, nbytes: int | None, timeout_s: float = 60.0) -> int:
        """Cap (None: lift) the size of any file the worker writes: a full disk, also for root."""
        return int(self._call({"op": "file_size_limit", "bytes": nbytes}, timeout_s))

    def alive(self) -> bool:
        return self._proc.poll() is None

    def kill(self) -> None:
        if self._proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._proc.pid, 9)
        self._proc.wait(timeout=30)

    def close(self, timeout_s: float = 60.0) -> int:
        """Ask the engine to exit; kill it if it does not. Returns its exit status."""
        if self._proc.poll() is None:
            with contextlib.suppress(OSError, ValueError):
                assert self._proc.stdin is not None
                self._proc.stdin.write(json.dumps({"op": "exit"}) + "\n")
                self._proc.stdin.close()
            try:
                self._proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()
        self._reader.join(timeout=10)
        self._log.close()
        return int(self._proc.returncode)

    def __enter__(self) -> EngineSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ------------------------------------------------------------------ child side


def worker_state(worker: Any) -> dict[str, Any]:
    """LMCache's counters in this vLLM worker (runs there, via ``collective_rpc``).

    ``allocated_bytes`` / ``active_objects``: the CPU staging allocator's
    accounting (0 / 0 when no chunk is held); ``cpu_chunks``: chunks kept by
    the CPU tier; ``remote_get_failures`` / ``remote_put_failures``: the remote
    backend's failure counters; ``healthy``: LMCache's health flag.
    """
    from lmcache.v1.cache_engine import LMCacheEngineBuilder

    from lmcache_ascend.integrations.lmcache.plugin import ENGINE_NAME

    engine = LMCacheEngineBuilder.get(ENGINE_NAME)
    if engine is None:
        return {"engine": False}
    manager = engine.storage_manager
    backends = manager.storage_backends
    cpu = backends.get("LocalCPUBackend")
    remote = backends.get("RemoteBackend")
    allocator = cpu.memory_allocator if cpu is not None else None
    inner = getattr(allocator, "pin_allocator", allocator)  # MixedMemoryAllocator wraps one
    inner = getattr(inner, "allocator", inner)
    return {
        "engine": True,
        "backends": sorted(backends),
        "allocated_bytes": int(getattr(inner, "total_allocated_size", -1)),
        "active_objects": int(getattr(inner, "num_active_allocations", -1)),
        "allocator_consistent": bool(inner.address_manager.check_consistency()) if hasattr(inner, "address_manager") else None,
        "cpu_chunks": len(getattr(cpu, "hot_cache", {}) or {}),
        "remote_get_failures": int(remote.get_blocking_failed_count) if remote is not None else None,
        "remote_put_failures": int(remote.put_failed_count) if remote is not None else None,
        "healthy": bool(engine.is_healthy()),
    }


def blend_state(worker: Any, recompute_ratio: float | None, break_it: bool = False) -> dict[str, Any]:
    """The worker's CacheBlend counters (``blend.worker_stats``); sets the recompute ratio first if given.

    ``break_it`` takes the blend connector's K rotator away: each later blend then
    raises at its first layer, before any KV reaches vLLM's paged cache.
    """
    import dataclasses

    from lmcache_ascend.integrations.vllm import blend

    installed = blend.installed()
    if installed is not None and recompute_ratio is not None:
        settings = dataclasses.replace(installed.blender.settings, recompute_ratio=float(recompute_ratio))
        installed.blender = installed.blender.with_settings(settings)
    if installed is not None and break_it:
        installed.blender.connector.rotator = None
    return blend.worker_stats(worker)


def file_size_limit(worker: Any, nbytes: int | None) -> int:
    """RLIMIT_FSIZE in this worker process; writes past it fail with EFBIG (SIGXFSZ ignored)."""
    import resource
    import signal

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the kernel kills the writer
    limit = resource.RLIM_INFINITY if nbytes is None else int(nbytes)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
    return int(resource.getrlimit(resource.RLIMIT_FSIZE)[0])


def _generate(llm: Any, prompts: list[list[int]], max_tokens: int) -> list[dict[str, Any]]:
    from vllm import SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=max_tokens)
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    return [
        {
            "token_ids": list(o.outputs[0].token_ids),
            "from_lmcache": int(o.num_cached_tokens or 0),
            "finish_reason": o.outputs[0].finish_reason,
        }
        for o in outs
    ]


def _start(model_dir: str, max_model_len: int, dtype: str) -> Any:
    from lmcache_ascend.integrations.vllm.settings import kv_transfer_config, lmcache_env

    for key, value in lmcache_env().items():
        os.environ.setdefault(key, value)  # the caller's LMCACHE_* win
    from vllm import LLM

    return LLM(
        model=model_dir,
        dtype=dtype,
        max_model_len=max_model_len,
        enable_prefix_caching=False,
        enforce_eager=True,
        kv_transfer_config=kv_transfer_config(),
    )


def _serve() -> int:
    llm = None
    for raw in sys.stdin:
        cmd = json.loads(raw)
        op = cmd["op"]
        if op == "exit":
            break
        try:
            if op == "start":
                llm = _start(cmd["model_dir"], cmd["max_model_len"], cmd["dtype"])
                out: Any = {"started": True}
            elif op == "generate":
                out = _generate(llm, cmd["prompts"], cmd["max_tokens"])
            elif op == "worker":
                out = llm.collective_rpc(worker_state)[0]
            elif op == "blend":
                out = llm.collective_rpc(blend_state, args=(cmd["recompute_ratio"], cmd.get("break", False)))[0]
            elif op == "file_size_limit":
                out = llm.collective_rpc(file_size_limit, args=(cmd["bytes"],))[0]
            else:
                raise ValueError(f"unknown op {op!r}")
        except Exception as exc:  # reported to the test, which fails on it
            print(ERROR + f"{type(exc).__name__}: {exc}", flush=True)
            continue
        print(RESULT + json.dumps(out), flush=True)
    del llm
    return 0


if __name__ == "__main__":
    raise SystemExit(_serve())
