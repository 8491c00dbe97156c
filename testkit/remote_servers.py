"""Remote stores for LMCache's remote tier, started on loopback, plus a fault-injecting proxy.

Shared by the tests, the examples and the docs, so each remote tier is started
the same way everywhere:

- :class:`RedisServer`: Debian's ``redis-server`` (``remote_url: redis://host:port``),
  persistence off, data in memory only.
- :class:`LMServer`: LMCache 0.5.6's own remote server,
  ``python -m lmcache.v1.server <host> <port> cpu`` (``remote_url: lm://host:port``),
  a dict of chunks in memory.
- :class:`FaultProxy`: a TCP proxy of our own between LMCache and a server; it
  can add a delay to every forwarded piece of data, stall (hold all data until
  resumed) and cut every open connection, to make a server look slow, hung or
  gone without touching it, and be pointed at a server restarted on another
  port (LMCache's server cannot rebind its old port at once).

Contract of the servers (:class:`LoopbackServer`):

- ``start()`` picks a free loopback port on first start (kept on restarts, so
  a client's ``remote_url`` stays valid), launches the server in its own
  process group with output to ``log_path``, and returns once the server
  answers its protocol's probe, or raises ``TimeoutError`` / ``RuntimeError``
  (exited early) after stopping it.
- ``stop()`` (SIGTERM, SIGKILL after a grace period) and ``kill()`` (SIGKILL at
  once: a crash) are idempotent; ``pause()`` / ``resume()`` send
  SIGSTOP / SIGCONT (a hung server: connections stay open, nothing answers).
- used as a context manager the server is started on entry and always stopped
  on exit, also when the body raises; a paused server is resumed first.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import TracebackType

from testkit.mp_server import free_port

HOST = "127.0.0.1"
READY_TIMEOUT_S = 60.0
STOP_GRACE_S = 10.0
_PROBE_TIMEOUT_S = 2.0


def _positive(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if value <= 0:
        raise ValueError(f"{name} must be > 0, got {value}")
    return float(value)


class LoopbackServer:
    """A server process on 127.0.0.1 (subclasses give the command and the probe)."""

    scheme = ""

    def __init__(self, log_path: Path, *, port: int | None = None, ready_timeout_s: float = READY_TIMEOUT_S) -> None:
        if not isinstance(log_path, (str, Path)):
            raise TypeError(f"log_path must be a path, got {type(log_path).__name__}")
        if port is not None and (isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536):
            raise ValueError(f"port must be an int in 1..65535 or None, got {port!r}")
        self.log_path = Path(log_path)
        self.ready_timeout_s = _positive("ready_timeout_s", ready_timeout_s)
        self.port = port
        self._proc: subprocess.Popen[bytes] | None = None
        self._paused = False
        self._log_mark = 0
        self.starts = 0

    # -- for subclasses
    def command(self, port: int) -> list[str]:
        raise NotImplementedError

    def probe(self, port: int) -> bool:
        """True once the server answers on ``port``."""
        raise NotImplementedError

    def environment(self) -> dict[str, str]:
        return dict(os.environ)

    # -- lifecycle
    @property
    def url(self) -> str:
        if self.port is None:
            raise RuntimeError("the server has not been started yet")
        return f"{self.scheme}{HOST}:{self.port}"

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> LoopbackServer:
        if self.is_running():
            raise RuntimeError(f"{type(self).__name__} is already running (pid {self.pid})")
        if self.port is None:
            self.port = free_port()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self._log_mark = log.tell()
            self._proc = subprocess.Popen(
                self.command(self.port), stdout=log, stderr=subprocess.STDOUT, env=self.environment(), start_new_session=True
            )
        self._paused = False
        self.starts += 1
        try:
            self._wait_ready()
        except BaseException:
            self.kill()
            raise
        return self

    def _wait_ready(self) -> None:
        assert self._proc is not None and self.port is not None
        deadline = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"{type(self).__name__} exited with {self._proc.returncode} before it was ready; see {self.log_path}")
            with contextlib.suppress(OSError):
                if self.probe(self.port):
                    return
            time.sleep(0.1)
        raise TimeoutError(f"{type(self).__name__} not ready after {self.ready_timeout_s:.0f} s on port {self.port}")

    def _signal(self, sig: signal.Signals) -> None:
        if self.is_running():
            assert self._proc is not None
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._proc.pid, sig)

    def pause(self) -> None:
        """SIGSTOP: the server keeps its sockets but answers nothing until :meth:`resume`."""
        self._signal(signal.SIGSTOP)
        self._paused = True

    def resume(self) -> None:
        self._signal(signal.SIGCONT)
        self._paused = False

    def kill(self) -> None:
        """SIGKILL the server's process group (a crash); returns once it is gone."""
        if self._proc is None:
            return
        self._signal(signal.SIGKILL)
        self._proc.wait(timeout=STOP_GRACE_S)
        self._paused = False

    def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        """SIGTERM, then SIGKILL if the server has not exited after ``grace_s``."""
        if self._proc is None:
            return
        if self._paused:
            self.resume()
        self._signal(signal.SIGTERM)
        try:
            self._proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            self.kill()

    def log_since_start(self) -> str:
        """What the server wrote to its log since its latest start."""
        with open(self.log_path, "rb") as f:
            f.seek(self._log_mark)
            return f.read().decode(errors="replace")

    def restart(self, *, new_port: bool = False) -> LoopbackServer:
        """Kill (if running) and start again, on the same port unless ``new_port``; stored data is lost."""
        self.kill()
        if new_port:
            self.port = None
        return self.start()

    def __enter__(self) -> LoopbackServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


class RedisServer(LoopbackServer):
    """Debian's ``redis-server`` on loopback, no persistence (``redis://``)."""

    scheme = "redis://"

    def __init__(self, log_path: Path, *, port: int | None = None, max_memory_mb: int = 1024, ready_timeout_s: float = READY_TIMEOUT_S) -> None:
        super().__init__(log_path, port=port, ready_timeout_s=ready_timeout_s)
        if isinstance(max_memory_mb, bool) or not isinstance(max_memory_mb, int) or max_memory_mb <= 0:
            raise ValueError(f"max_memory_mb must be a positive int, got {max_memory_mb!r}")
        self.max_memory_mb = max_memory_mb
        self.executable = shutil.which("redis-server")

    def command(self, port: int) -> list[str]:
        if self.executable is None:
            raise FileNotFoundError("redis-server is not installed (Debian: apt-get install -y redis-server)")
        return [
            self.executable,
            "--bind", HOST, "--port", str(port), "--protected-mode", "no",
            "--save", "", "--appendonly", "no", "--dir", str(self.log_path.parent),
            "--maxmemory", f"{self.max_memory_mb}mb", "--maxmemory-policy", "allkeys-lru",
        ]  # fmt: skip

    def probe(self, port: int) -> bool:
        return redis_command(port, "PING") == b"+PONG"


def redis_command(port: int, *words: str, timeout_s: float = _PROBE_TIMEOUT_S) -> bytes:
    """Send one inline command to a Redis server; its first reply line, without CRLF."""
    if not words:
        raise ValueError("words must name a command")
    with socket.create_connection((HOST, port), timeout=timeout_s) as sock:
        sock.sendall((" ".join(words) + "\r\n").encode())
        reply = b""
        while not reply.endswith(b"\r\n"):
            part = sock.recv(4096)
            if not part:
                break
            reply += part
    return reply.split(b"\r\n", 1)[0]


class LMServer(LoopbackServer):
    """LMCache 0.5.6's remote server, ``python -m lmcache.v1.server`` (``lm://``).

    It binds without ``SO_REUSEADDR``: after a kill its port stays taken while
    the kernel winds down the old connections (about a minute). Restart it with
    ``restart(new_port=True)`` behind a :class:`FaultProxy` (``retarget``) so
    clients keep their ``remote_url``.
    """

    scheme = "lm://"

    def command(self, port: int) -> list[str]:
        return [sys.executable, "-m", "lmcache.v1.server", HOST, str(port), "cpu"]

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env.setdefault("LMCACHE_TRACK_USAGE", "false")
        env.setdefault("PYTHONUNBUFFERED", "1")
        return env

    def probe(self, port: int) -> bool:
        # The server listens before it logs "Server started": a connection
        # accepted and closed cleanly is enough (it reads a header, gets EOF).
        with socket.create_connection((HOST, port), timeout=_PROBE_TIMEOUT_S):
            pass
        return "Server started" in self.log_since_start()


class FaultProxy:
    """A TCP proxy 127.0.0.1:``port`` -> ``target_port`` that can delay, stall and cut.

    ``delay_s`` is slept before forwarding each piece of data read (both
    directions); :meth:`stall` holds all data until :meth:`resume`;
    :meth:`cut` closes every open connection (new ones are still accepted).
    Always :meth:`close` it (or use it as a context manager).
    """

    def __init__(self, target_port: int, *, delay_s: float = 0.0) -> None:
        if isinstance(target_port, bool) or not isinstance(target_port, int) or not 0 < target_port < 65536:
            raise ValueError(f"target_port must be an int in 1..65535, got {target_port!r}")
        self.target_port = target_port
        self.delay_s = 0.0
        self.set_delay(delay_s)
        self._flowing = threading.Event()
        self._flowing.set()
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._conns: list[socket.socket] = []
        self.connections = 0
        self._listener = socket.create_server((HOST, 0))
        self.port = int(self._listener.getsockname()[1])
        self._acceptor = threading.Thread(target=self._accept_loop, name="fault-proxy-accept", daemon=True)
        self._acceptor.start()

    def set_delay(self, delay_s: float) -> None:
        if isinstance(delay_s, bool) or not isinstance(delay_s, (int, float)) or delay_s < 0:
            raise ValueError(f"delay_s must be a number >= 0, got {delay_s!r}")
        self.delay_s = float(delay_s)

    def retarget(self, target_port: int) -> None:
        """Send new connections to ``target_port`` (open ones keep their server)."""
        if isinstance(target_port, bool) or not isinstance(target_port, int) or not 0 < target_port < 65536:
            raise ValueError(f"target_port must be an int in 1..65535, got {target_port!r}")
        self.target_port = target_port

    def stall(self) -> None:
        self._flowing.clear()

    def resume(self) -> None:
        self._flowing.set()

    def cut(self) -> int:
        """Close every open connection; returns how many sockets (two per connection) were closed."""
        with self._lock:
            conns, self._conns = self._conns, []
        for s in conns:
            _close(s)
        return len(conns)

    def close(self) -> None:
        self._closed.set()
        self._flowing.set()
        _close(self._listener)
        self.cut()
        self._acceptor.join(timeout=5)

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def _accept_loop(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection((HOST, self.target_port), timeout=_PROBE_TIMEOUT_S)
            except OSError:
                _close(client)  # server down: the client sees a closed connection
                continue
            upstream.settimeout(None)
            with self._lock:
                self._conns += [client, upstream]
                self.connections += 1
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), name="fault-proxy-pump", daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(1 << 16)
                if not data:
                    break
                self._flowing.wait()
                if self.delay_s:
                    time.sleep(self.delay_s)
                if self._closed.is_set():
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            self._forget(src, dst)
            _close(src)
            _close(dst)

    def _forget(self, *socks: socket.socket) -> None:
        """Drop finished connections, so :meth:`cut` counts only open ones."""
        with self._lock:
            self._conns = [s for s in self._conns if s not in socks]


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()
