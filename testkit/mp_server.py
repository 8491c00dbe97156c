"""Start and stop an ``lmcache server`` (LMCache's multi-process mode) on loopback.

:func:`running_server` is a context manager: it launches ``lmcache server`` in
its own process group with the chosen device backend (``ascend_cpu`` for
lmcache_ascend's ops, ``None`` for LMCache's default CPU backend), waits until
``GET /healthcheck`` answers, yields the addresses, and always stops it
(SIGTERM, then SIGKILL after a grace period), even when the body raises.

The server runs engine-driven transfers over a shared-memory L1 pool (vLLM's
CPU worker copies KV straight into the server's pool; ``--shm-name``) and
accepts LMCache-driven ones too (``--supported-transfer-mode auto``). Metrics
are off: the Prometheus exporter they need is not part of LMCache's minimal
dependencies.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

READY_TIMEOUT_S = 120.0
STOP_GRACE_S = 15.0
SHM_DIR = "/dev/shm"
SHM_POOL_PREFIX = "lmcache_l1_pool_"  # LMCache 0.5.6 names its L1 pool segment so (--shm-name NAME)


@dataclass(frozen=True)
class MPServer:
    host: str
    port: int
    http_port: int
    pid: int
    log_path: Path

    @property
    def health_url(self) -> str:
        return f"http://{self.host}:{self.http_port}/healthcheck"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def lmcache_executable() -> str:
    """The `lmcache` CLI of the running interpreter's environment, else the one on PATH.

    A venv's scripts are not on PATH when its python is called by full path
    (CI does that), so the interpreter's own bin directory is searched first.
    """
    beside = Path(sys.executable).parent / "lmcache"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    exe = shutil.which("lmcache")
    if exe is None:
        raise FileNotFoundError("the `lmcache` command is not beside the interpreter nor on PATH; install lmcache==0.5.6")
    return exe


def server_command(port: int, http_port: int, *, chunk_size: int = 256, l1_gb: float = 1.0, shm_name: str | None = None) -> list[str]:
    exe = lmcache_executable()
    cmd = [
        exe, "server",
        "--host", "127.0.0.1", "--port", str(port),
        "--http-host", "127.0.0.1", "--http-port", str(http_port),
        "--chunk-size", str(chunk_size),
        "--l1-size-gb", str(l1_gb), "--eviction-policy", "LRU",
        "--supported-transfer-mode", "auto",
        "--disable-metrics",
    ]  # fmt: skip
    if shm_name:
        cmd += ["--shm-name", shm_name]
    return cmd


def server_env(backend: str | None, base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment selecting LMCache's device backend (None: LMCache's default)."""
    env = dict(os.environ if base is None else base)
    env.pop("LMCACHE_DEVICE_BACKEND", None)
    if backend:
        env["LMCACHE_DEVICE_BACKEND"] = backend
    env.setdefault("LMCACHE_DISABLE_BANNER", "1")
    env.setdefault("LMCACHE_TRACK_USAGE", "false")
    return env


def wait_healthy(url: str, proc: subprocess.Popen, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"lmcache server exited with {proc.returncode} before becoming healthy")
        with contextlib.suppress(urllib.error.URLError, OSError, ValueError):
            with urllib.request.urlopen(url, timeout=2) as resp:
                if json.loads(resp.read()).get("status") == "healthy":
                    return
        time.sleep(0.5)
    raise TimeoutError(f"lmcache server not healthy after {timeout_s:.0f} s ({url})")


def stop(proc: subprocess.Popen, grace_s: float = STOP_GRACE_S) -> None:
    """SIGTERM the server's process group; SIGKILL it if it does not exit in time."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=grace_s)


@contextlib.contextmanager
def running_server(
    *,
    backend: str | None,
    log_path: Path,
    chunk_size: int = 256,
    l1_gb: float = 1.0,
    shm_name: str | None = None,
    ready_timeout_s: float = READY_TIMEOUT_S,
    port: int | None = None,
    http_port: int | None = None,
) -> Iterator[MPServer]:
    """Ports default to free ones; pass them to restart a server where clients expect it."""
    port, http_port = port or free_port(), http_port or free_port()
    cmd = server_command(port, http_port, chunk_size=chunk_size, l1_gb=l1_gb, shm_name=shm_name)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=server_env(backend), start_new_session=True)
    server = MPServer("127.0.0.1", port, http_port, proc.pid, log_path)
    try:
        wait_healthy(server.health_url, proc, ready_timeout_s)
        yield server
    finally:
        stop(proc)
        if shm_name:
            # The server unlinks its L1 pool on a clean exit; a SIGKILL (a fault
            # test, or the grace period running out) leaves the whole pool in /dev/shm.
            Path(SHM_DIR, f"{SHM_POOL_PREFIX}{shm_name}").unlink(missing_ok=True)
