"""Harness: an HTTP server process on loopback, started in its own process group and always stopped.

Shared by the SGLang harness (``tests/e2e/sglang/servers.py``) and the
``vllm serve`` harness (``tests/e2e/vllm_serve.py``): start a command with its
output in a log file, wait (bounded) until a URL answers 200, stop the whole
process group (SIGTERM, grace period, then SIGKILL). Nothing in the package
imports it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

STOP_GRACE_S = 20.0


def lmcache_process_env(base: dict[str, str], backend: str | None, paths: Sequence[str]) -> dict[str, str]:
    """``base`` for a server that loads LMCache: its device backend (``LMCACHE_DEVICE_BACKEND``,
    removed when None), ``paths`` first on ``PYTHONPATH``, no banner, no usage reporting."""
    env = dict(base)
    env.pop("LMCACHE_DEVICE_BACKEND", None)
    if backend:
        env["LMCACHE_DEVICE_BACKEND"] = backend
    env["PYTHONPATH"] = os.pathsep.join(p for p in (*paths, env.get("PYTHONPATH", "")) if p)
    env.setdefault("LMCACHE_DISABLE_BANNER", "1")
    env.setdefault("LMCACHE_TRACK_USAGE", "false")
    return env


def start_process(cmd: Sequence[str], *, env: dict[str, str], log_path: Path, cwd: Path) -> subprocess.Popen:
    """``cmd`` in a new session (its own process group), stdout and stderr to ``log_path``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as log:
        return subprocess.Popen(list(cmd), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True, cwd=cwd)


def wait_http_ok(url: str, proc: subprocess.Popen, *, timeout_s: float, name: str, log_path: Path) -> None:
    """Poll ``url`` until it answers 200; RuntimeError if ``proc`` exits first, TimeoutError after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode} before serving; log: {log_path}\n{log_tail(log_path)}")
        with contextlib.suppress(urllib.error.URLError, OSError):
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        time.sleep(1.0)
    raise TimeoutError(f"{name} not serving after {timeout_s:.0f} s; log: {log_path}\n{log_tail(log_path)}")


def log_tail(path: Path, lines: int = 25) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return ""


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def stop(proc: subprocess.Popen, grace_s: float = STOP_GRACE_S) -> None:
    """SIGTERM the process group; SIGKILL what lingers after ``grace_s``.

    The whole group gets the grace period, not only the launcher: a child
    (scheduler, engine core) killed while it shuts down leaves shared-memory
    files behind.
    """
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while _group_alive(proc.pid) and time.monotonic() < deadline:
        proc.poll()  # reap the launcher so the group can empty
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=grace_s)
