"""One offline vLLM engine in a child process, driven command by command: the one
way tests, examples and benchmarks run vLLM out of process.

Every engine gets its own process (vLLM CPU spawns workers and owns global
state; LMCache's engine is a per-process singleton), as in production where a
second engine is a second process. :class:`EngineSession` starts the child with
:class:`~testkit.vllm_offline.LLMOptions` fields and talks to it over
stdin/stdout, one JSON command per line:

- ``{"op": "start", "options": {...}}``: :func:`~testkit.vllm_offline.start_llm`;
- ``{"op": "prompt", "token_ids": [...], "max_tokens": n}``: one timed prompt
  (:func:`~testkit.vllm_offline.run_prompt`: ``ttft_s``, ``from_lmcache``,
  ``token_ids``, ``logprobs``); with CacheBlend on, also ``blend``: the
  blender's counters for that prompt, read in vLLM's worker (``{}`` when vLLM
  did not call the blender: no LMCache hit);
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
``ERROR <text>``), on a line of its own; everything else it and vLLM's engine
processes print goes to ``log_path``. Every wait is bounded: a command that
does not answer in time kills the child's whole process group and raises
``TimeoutError``, so a deadlock fails the caller instead of hanging it.

LMCache is configured through ``LMCACHE_*`` variables: ``start_llm``'s defaults
for the options, then ``LLMOptions.lmcache_overrides`` (``LMCACHE_LOCAL_CPU=False``
there leaves the CPU tier as a staging allocator only, so every hit must come
from a lower tier).
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
from collections.abc import Mapping
from pathlib import Path
from typing import Any

RESULT = "RESULT "
ERROR = "ERROR "
KIT_ROOT = Path(__file__).resolve().parents[1]  # the repository root: testkit/ is importable from here
_PATH_KEYS = ("model_dir", "disk_dir", "example_storage")


def kit_env(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` with the repository root first on ``PYTHONPATH``, so a child can import ``testkit``."""
    child = dict(env)
    rest = child.get("PYTHONPATH", "")
    child["PYTHONPATH"] = str(KIT_ROOT) + (os.pathsep + rest if rest else "")
    return child


def parse_result(text: str) -> Any:
    """The JSON value at the start of ``text``.

    vLLM's engine-core process shares the child's stdout: a log line it
    writes without a newline of its own can land right after the result on the
    same line (seen once in ``benchmarks/e2e_vllm.py``), so trailing text is ignored.
    """
    value, _ = json.JSONDecoder().raw_decode(text)
    return value


class EngineSession:
    def __init__(
        self,
        options: Mapping[str, Any],
        *,
        log_path: Path,
        rpc_dir: Path | None = None,
        env: Mapping[str, str] | None = None,
        start_timeout_s: float = 300.0,
    ) -> None:
        child_env = kit_env(os.environ if env is None else env)
        child_env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        # Worker-side helpers (worker_state, blend_state) travel through collective_rpc(function).
        child_env["VLLM_ALLOW_INSECURE_SERIALIZATION"] = "1"
        if rpc_dir is not None:
            child_env["VLLM_RPC_BASE_PATH"] = str(rpc_dir)  # LMCache's ZMQ sockets live here
        self.log_path = log_path
        self._log = open(log_path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        self._proc = subprocess.Popen(
            [sys.executable, "-m", __name__],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            env=child_env,
            start_new_session=True,
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        try:
            self._call({"op": "start", "options": dict(options)}, start_timeout_s)
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
        self._proc.stdin.write(json.dumps(command, default=str) + "\n")  # default=str: Path options
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
        return parse_result(line[len(RESULT) :])

    def prompt(self, token_ids: list[int], *, max_tokens: int = 16, timeout_s: float = 180.0) -> dict[str, Any]:
        return dict(self._call({"op": "prompt", "token_ids": token_ids, "max_tokens": max_tokens}, timeout_s))

    def generate(self, prompts: list[list[int]], *, max_tokens: int = 16, timeout_s: float = 180.0) -> list[dict[str, Any]]:
        return list(self._call({"op": "generate", "prompts": prompts, "max_tokens": max_tokens}, timeout_s))

    def worker(self, timeout_s: float = 60.0) -> dict[str, Any]:
        return dict(self._call({"op": "worker"}, timeout_s))

    def blend(
        self, recompute_ratio: float | None = None, *, break_it: bool = False, timeout_s: float = 60.0
    ) -> dict[str, Any]:
        return dict(self._call({"op": "blend", "recompute_ratio": recompute_ratio, "break": break_it}, timeout_s))

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
    from testkit.lmcache_engines import cpu_allocator

    backends = engine.storage_manager.storage_backends
    cpu = backends.get("LocalCPUBackend")
    remote = backends.get("RemoteBackend")
    inner = cpu_allocator(engine)
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


def _start(raw: Mapping[str, Any]) -> tuple[Any, Any]:
    from testkit.vllm_offline import LLMOptions, start_llm

    fields = {k: (Path(v) if k in _PATH_KEYS and v is not None else v) for k, v in raw.items()}
    opts = LLMOptions(**fields)
    return start_llm(opts), opts


class _Child:
    """The engine process's side: one ``LLM`` and the blend counter between prompts."""

    def __init__(self) -> None:
        self.llm: Any = None
        self.opts: Any = None
        self.blends = 0

    def prompt(self, token_ids: list[int], max_tokens: int) -> dict[str, Any]:
        from testkit.vllm_offline import run_prompt

        result = run_prompt(self.llm, token_ids, max_tokens).to_dict()
        if self.opts.blend_hole_mode is not None:
            from lmcache_ascend.integrations.vllm.blend import worker_stats

            stats = self.llm.collective_rpc(worker_stats)[0]
            # vLLM calls the blender only for a prompt with an LMCache hit: {} when it did not run
            result["blend"] = stats["last"] if stats.get("requests", 0) > self.blends else {}
            self.blends = stats.get("requests", 0)
        return result

    def run(self, cmd: dict[str, Any]) -> Any:
        op = cmd["op"]
        if op == "start":
            self.llm, self.opts = _start(cmd["options"])
            return {"started": True}
        if self.llm is None:
            raise RuntimeError(f"{op!r} before a successful 'start'")
        if op == "prompt":
            return self.prompt(cmd["token_ids"], cmd["max_tokens"])
        if op == "generate":
            return _generate(self.llm, cmd["prompts"], cmd["max_tokens"])
        if op == "worker":
            return self.llm.collective_rpc(worker_state)[0]
        if op == "blend":
            return self.llm.collective_rpc(blend_state, args=(cmd["recompute_ratio"], cmd.get("break", False)))[0]
        if op == "file_size_limit":
            return self.llm.collective_rpc(file_size_limit, args=(cmd["bytes"],))[0]
        raise ValueError(f"unknown op {op!r}")


def _serve() -> int:
    child = _Child()
    for raw in sys.stdin:
        cmd = json.loads(raw)
        if cmd["op"] == "exit":
            break
        try:
            out = child.run(cmd)
        except Exception as exc:  # reported to the caller, which fails on it
            print("\n" + ERROR + f"{type(exc).__name__}: {exc}", flush=True)
            continue
        # On a line of its own even if an engine process left a partial line on stdout.
        print("\n" + RESULT + json.dumps(out), flush=True)
    if child.llm is not None:
        from testkit.vllm_offline import stop_llm

        stop_llm(child.llm)
    return 0


if __name__ == "__main__":
    raise SystemExit(_serve())
