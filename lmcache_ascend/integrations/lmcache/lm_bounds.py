"""Bounded ``lm://`` operations: a hung server costs a timeout, then a miss.

LMCache 0.5.6's ``lm://`` connector (``LMCServerConnector``) talks to the
server over one blocking TCP socket, from coroutines on the remote backend's
event loop: ``exists`` (every lookup, through ``RemoteBackend.contains``),
``get`` and ``put`` ``sendall`` a request and ``recv`` the answer with no
timeout, and ``contains`` waits on the result with none either. A server that
accepts and never answers (hung, not dead) blocks every lookup, and with it the
scheduler, for as long as it hangs.

:func:`bound_lm_connections` patches two places:

- ``RemoteBackend.init_connection`` (first connect and every reconnect): an
  ``lm://`` connection's socket gets a timeout, ``extra_config
  ["lmcache_ascend.lm_timeout_s"]`` or else LMCache's ``blocking_timeout_secs``.
  A stalled read or write then raises ``TimeoutError`` after that long; the
  engine's ``contains`` turns it into a miss, a get into a recompute.
- ``LMCServerConnector.exists`` / ``get`` / ``put``: after a timeout the
  answer may still arrive later and would be read as the answer to the next
  request, so the socket is closed at once: later operations fail fast instead
  of reading another request's bytes. ``remote_tier.RemoteConnectionWatch`` drops a
  connection whose socket is closed and re-creates it in the background, so
  hits return when the server does.

Installed by the worker side of the vLLM connector, next to the other guards;
idempotent. ``tests/integrations/lmcache/test_lm_bounds.py`` pins the cause
(upstream's own ``init_connection`` leaves the ``lm://`` socket without a
timeout) and checks the bound, the miss, no wrong bytes after recovery, and the
reconnect.
"""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable
from typing import Any

from lmcache.logging import init_logger

from lmcache_ascend.upstream.patching import wrap_method

logger = init_logger(__name__)

TIMEOUT_KEY = "lmcache_ascend.lm_timeout_s"
_BOUNDED = "_lmcache_ascend_bounded"


def bound_lm_connections() -> bool:
    """Install both patches (see the module docstring); True if anything was patched now."""
    from lmcache.v1.storage_backend.connector.lm_connector import LMCServerConnector
    from lmcache.v1.storage_backend.remote_backend import RemoteBackend

    patched = _wrap(RemoteBackend, "init_connection", _timed_init)
    for name in ("exists", "get", "put"):
        patched = _wrap(LMCServerConnector, name, _closing_on_timeout) or patched
    return patched


def timeout_s(config: Any) -> float:
    """The bound for one ``lm://`` socket operation, from the LMCache config."""
    extra = getattr(config, "extra_config", None) or {}
    raw = extra.get(TIMEOUT_KEY, getattr(config, "blocking_timeout_secs", 10))
    if isinstance(raw, bool) or not isinstance(raw, (int, float)) or raw <= 0:
        raise ValueError(f"extra_config[{TIMEOUT_KEY!r}] must be a number of seconds > 0, got {raw!r}")
    return float(raw)


def unwrapped(connection: Any) -> Any:
    """The connector inside LMCache's instrumentation / audit wrappers."""
    inner = connection.getWrappedConnector() if hasattr(connection, "getWrappedConnector") else connection
    return getattr(inner, "real_connector", inner)


def lm_socket(connection: Any) -> socket.socket | None:
    """The TCP socket of an ``lm://`` connection (inside LMCache's wrappers), else None."""
    from lmcache.v1.storage_backend.connector.lm_connector import LMCServerConnector

    inner = unwrapped(connection)
    return inner.client_socket if isinstance(inner, LMCServerConnector) else None


def _wrap(cls: type, name: str, wrapper: Callable[[Any], Any]) -> bool:
    return wrap_method(cls, name, wrapper, _BOUNDED)


def _timed_init(original: Callable[..., None]) -> Callable[..., None]:
    def init_connection(self: Any) -> None:
        original(self)
        sock = lm_socket(self.connection) if self.connection is not None else None
        if sock is not None:
            sock.settimeout(timeout_s(self.config))

    return init_connection


def _closing_on_timeout(original: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    async def operation(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return await original(self, *args, **kwargs)
        except TimeoutError:
            logger.warning(
                "lmcache_ascend: lm:// server did not answer within %.1f s; closing the connection",
                self.client_socket.gettimeout() or 0.0,
            )
            self.client_socket.close()  # a late answer must never be read as the next one's
            raise

    return operation
