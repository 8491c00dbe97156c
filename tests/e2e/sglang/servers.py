"""Test and benchmark harness: a real SGLang 0.5.23 server on loopback, and its client.

SGLang's current LMCache route (``--enable-lmcache --lmcache-config-file F``)
runs ``LMCacheUnifiedRadixCache`` in SGLang's scheduler process, which talks to
a standalone ``lmcache server`` (LMCache's multi-process mode; started with
:func:`testkit.mp_server.running_server`). With
``LMCACHE_DEVICE_BACKEND=ascend_cpu`` in both processes, lmcache_ascend's ops
move the KV: in the server (its shared-memory L1 pool) and in the scheduler
(LMCache's engine-driven gather/scatter between SGLang's pool and that pool).

:func:`running_sglang` starts ``python -m sglang.launch_server`` in its own
process group, on CPU (``--device cpu``, ``SGLANG_USE_CPU_ENGINE=1``), with
``tests/sglang_standin`` on ``PYTHONPATH`` (the stand-in ``sgl_kernel`` CPU ops
and the torchvision import fix-up: see that directory), waits until
``/health`` answers, and always stops it by its process id.

This module needs the environment of ``scripts/sglang_env.sh``; nothing in the
``lmcache_ascend`` package imports it.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from testkit.mp_server import free_port
from tests.e2e.http_process import lmcache_process_env, log_tail, start_process, stop, wait_http_ok  # noqa: F401 (log_tail, stop: the tests use them from here)

ROOT = Path(__file__).resolve().parents[3]
STANDIN_DIR = ROOT / "tests" / "sglang_standin"
READY_TIMEOUT_S = 300.0
# CPU serving as measured in REFERENCE ("SGLang today"): the torch attention
# backend, no overlap thread, an idle scheduler that sleeps instead of polling.
CPU_ARGS = (
    "--device", "cpu", "--attention-backend", "torch_native",
    "--disable-overlap-schedule", "--sleep-on-idle",
)  # fmt: skip


@dataclass(frozen=True)
class SGLangServer:
    host: str
    port: int
    pid: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


@dataclass(frozen=True)
class Generation:
    output_ids: list[int]
    ttft_s: float
    e2e_s: float
    cached_tokens: int
    # Tokens SGLang reports as loaded from its storage tier (LMCache).
    storage_tokens: int


# As examples/lmcache_sglang_mp.yaml: one server RPC may wait 10 s (LMCache's default: 300 s).
MP_EXTRA_CONFIG = {"lmcache.mp.mq_timeout": 10}


def write_lmcache_config(path: Path, mp_port: int, *, host: str = "127.0.0.1", extra: dict | None = None) -> Path:
    """The ``--lmcache-config-file`` SGLang hands to LMCache's MP connector (``extra``: its ``extra_config``)."""
    extra = MP_EXTRA_CONFIG if extra is None else extra
    lines = [f"mp_host: {host}", f"mp_port: {mp_port}"]
    if extra:
        lines.append("extra_config:")
        lines += [f"  {key}: {json.dumps(value)}" for key, value in extra.items()]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def sglang_env(backend: str | None, base: dict[str, str] | None = None) -> dict[str, str]:
    env = lmcache_process_env(dict(os.environ if base is None else base), backend, (str(STANDIN_DIR), str(ROOT)))
    env["SGLANG_USE_CPU_ENGINE"] = "1"
    return env


def sglang_command(
    model_dir: Path, port: int, *, lmcache_config: Path | None, max_total_tokens: int = 16384, extra_args: Sequence[str] = ()
) -> list[str]:
    cmd = [
        sys.executable, "-m", "sglang.launch_server",
        "--model-path", str(model_dir), "--host", "127.0.0.1", "--port", str(port),
        *CPU_ARGS, "--max-total-tokens", str(max_total_tokens),
    ]  # fmt: skip
    if lmcache_config is not None:
        cmd += ["--enable-lmcache", "--lmcache-config-file", str(lmcache_config)]
    return cmd + list(extra_args)


def wait_healthy(server: SGLangServer, proc: subprocess.Popen, timeout_s: float) -> None:
    wait_http_ok(server.url + "/health", proc, timeout_s=timeout_s, name="SGLang", log_path=server.log_path)


def start_sglang(
    model_dir: Path,
    *,
    log_path: Path,
    lmcache_config: Path | None,
    backend: str | None,
    port: int | None = None,
    extra_args: Sequence[str] = (),
) -> tuple[subprocess.Popen, SGLangServer]:
    port = port or free_port()
    cmd = sglang_command(model_dir, port, lmcache_config=lmcache_config, extra_args=extra_args)
    proc = start_process(cmd, env=sglang_env(backend), log_path=log_path, cwd=ROOT)
    return proc, SGLangServer("127.0.0.1", port, proc.pid, log_path)


@contextlib.contextmanager
def running_sglang(
    model_dir: Path,
    *,
    log_path: Path,
    lmcache_config: Path | None,
    backend: str | None,
    ready_timeout_s: float = READY_TIMEOUT_S,
    extra_args: Sequence[str] = (),
) -> Iterator[SGLangServer]:
    proc, server = start_sglang(model_dir, log_path=log_path, lmcache_config=lmcache_config, backend=backend, extra_args=extra_args)
    try:
        wait_healthy(server, proc, ready_timeout_s)
        yield server
    finally:
        stop(proc)


@contextlib.contextmanager
def work_directory(path: Path | None, prefix: str) -> Iterator[Path]:
    """``path`` (created if missing, kept), or a temporary directory removed afterwards."""
    if path is not None:
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        yield Path(tmp)


def _post(url: str, body: dict | None, timeout_s: float) -> bytes:
    data = json.dumps(body).encode() if body is not None else b"{}"
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout_s) as resp:
        return resp.read()


def generate(server: SGLangServer, input_ids: Sequence[int], *, max_new_tokens: int = 8, timeout_s: float = 180.0) -> Generation:
    """Greedy generation over SGLang's streaming ``/generate``; TTFT is the first streamed chunk."""
    body = {"input_ids": list(input_ids), "sampling_params": {"max_new_tokens": max_new_tokens, "temperature": 0.0}, "stream": True}
    req = urllib.request.Request(server.url + "/generate", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    start = time.perf_counter()
    ttft, last = None, None
    with urllib.request.urlopen(req, timeout=timeout_s) as resp:
        for raw in resp:
            line = raw.decode().strip()
            if not line.startswith("data:") or line == "data: [DONE]":
                continue
            if ttft is None:
                ttft = time.perf_counter() - start
            last = json.loads(line[len("data:") :])
    if last is None or ttft is None:
        raise RuntimeError(f"SGLang streamed no output for a {len(input_ids)}-token prompt")
    if "error" in last:
        raise RuntimeError(f"SGLang returned an error: {last['error']}")
    meta = last["meta_info"]
    details = meta.get("cached_tokens_details") or {}
    return Generation(
        output_ids=list(last["output_ids"]),
        ttft_s=ttft,
        e2e_s=time.perf_counter() - start,
        cached_tokens=int(meta.get("cached_tokens", 0)),
        storage_tokens=int(details.get("storage", 0)),
    )


def flush_cache(server: SGLangServer, timeout_s: float = 30.0) -> None:
    """Empty SGLang's own radix cache (not LMCache). SGLang refuses while requests run: retry."""
    deadline = time.monotonic() + timeout_s
    while True:
        with contextlib.suppress(urllib.error.HTTPError):
            _post(server.url + "/flush_cache", None, 10.0)
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"SGLang refused /flush_cache for {timeout_s:.0f} s")
        time.sleep(0.5)


def guard_counters(server: SGLangServer) -> dict[str, float]:
    """lmcache_ascend's transfer counters from SGLang's ``/metrics`` (needs ``--enable-metrics``)."""
    with urllib.request.urlopen(server.url + "/metrics", timeout=10) as resp:
        text = resp.read().decode()
    prefix, suffix = "lmcache_ascend_sglang_", "_total"
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(prefix) and not line.startswith("#"):
            name, _, value = line.partition(" ")
            out[name[len(prefix) :].removesuffix(suffix)] = float(value)
    if not out:
        raise RuntimeError("SGLang's /metrics has no lmcache_ascend counters: is LMCACHE_DEVICE_BACKEND=ascend_cpu set?")
    return out
