"""Keep SGLang serving while its ``lmcache server`` is unreachable, and count every failed transfer.

Who calls it: the ``ascend_cpu`` device backend (``integrations/lmcache/
device_plugin.py``) calls :func:`install` when LMCache loads it, which happens
in every process that imports LMCache with ``LMCACHE_DEVICE_BACKEND=ascend_cpu``
(SGLang's scheduler included). Nothing changes in a process that never imports
``lmcache.integration.sglang.unified_lmcache_mp_connector`` (SGLang >= 0.5.21's
``--enable-lmcache`` route, LMCache 0.5.6's ``UnifiedLMCacheMPConnector``).

What upstream does on its own, measured with SGLang 0.5.23 and LMCache 0.5.6:

- a lookup whose server is gone never completes: every request with a whole
  chunk waits until its client gives up (SGLang never answers it);
- the first RPC of a server that is not there waits ``mq_timeout`` (300 s);
- a restarted server has lost the worker's registration: every store and load
  fails from then on ("non-GPU context not registered"), logged, not counted.

What the patched class does instead (methods wrapped in place on the class,
each name in :data:`PATCHED`, pinned by ``tests/integrations/lmcache/
test_sglang_mp_guard.py``):

- start-up: the first RPC (chunk size) waits at most ``connect_timeout_s``,
  then fails with an error naming the server address and the config keys;
- start-up: a host (CPU) pool whose tensors differ in shape or dtype (DSA
  indexers next to MLA latents, V heads narrower than K) is refused naming the
  SGLang pool class (:func:`check_registrable`); LMCache's engine-driven
  transfer moves one group of like tensors and would refuse it anyway, with
  a message that names neither the pool nor the tensors;
- a health thread pings the server every ``ping_interval_s``. While a ping
  fails, lookups return a miss at once and stores are skipped: SGLang
  recomputes, no request waits. A lookup in flight longer than
  ``lookup_timeout_s`` becomes a miss the same way (a hung server);
- once pings succeed again, and after any failed store or load, the
  scheduler re-registers SGLang's KV with the server (in the scheduler
  thread, before its next lookup or store), so hits resume after a restart;
- every failed store or load and every lookup turned into a miss is counted
  (:class:`GuardCounters`, Prometheus counters ``lmcache_ascend_sglang_*_total``
  on SGLang's ``/metrics`` with ``--enable-metrics``) and logged with the
  request id at ERROR (failures) or WARNING (server gone).

Settings come from the environment (:class:`GuardSettings`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from lmcache_ascend.upstream.patching import patch_on_import, wrap_method

logger = logging.getLogger(__name__)

TARGET_MODULE = "lmcache.integration.sglang.unified_lmcache_mp_connector"
TARGET_CLASS = "UnifiedLMCacheMPConnector"
PATCHED = ("_get_chunk_size", "register_kv_cache", "submit_lookup", "poll_lookup", "submit_store", "complete_load", "complete_store", "close")
_MARK = "_lmcache_ascend_guarded"
_STATE = "_lmcache_ascend_guard"


@dataclass(frozen=True)
class GuardSettings:
    connect_timeout_s: float = 20.0
    lookup_timeout_s: float = 5.0
    ping_interval_s: float = 1.0

    ENV = {
        "connect_timeout_s": "LMCACHE_ASCEND_MP_CONNECT_TIMEOUT",
        "lookup_timeout_s": "LMCACHE_ASCEND_MP_LOOKUP_TIMEOUT",
        "ping_interval_s": "LMCACHE_ASCEND_MP_PING_INTERVAL",
    }

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> GuardSettings:
        env = os.environ if env is None else env
        values: dict[str, float] = {}
        for name, var in cls.ENV.items():
            raw = env.get(var)
            if raw is None or raw.strip() == "":
                continue
            try:
                value = float(raw)
            except ValueError:
                raise ValueError(f"{var} must be a number of seconds, got {raw!r}") from None
            if not value > 0:
                raise ValueError(f"{var} must be > 0 seconds, got {raw!r}")
            values[name] = value
        return cls(**values)


class GuardCounters:
    """Per-process totals; mirrored to Prometheus counters when prometheus_client imports."""

    NAMES = ("stores_failed", "loads_failed", "lookups_timed_out", "lookups_skipped", "stores_skipped", "reregistrations")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values = dict.fromkeys(self.NAMES, 0)
        self._prom = self._prometheus()

    def _prometheus(self) -> dict[str, Any]:
        try:
            from prometheus_client import Counter
        except ImportError:
            return {}
        docs = {
            "stores_failed": "LMCache stores that failed (KV not saved)",
            "loads_failed": "LMCache loads that failed (SGLang recomputed)",
            "lookups_timed_out": "LMCache lookups turned into a miss after the lookup timeout",
            "lookups_skipped": "LMCache lookups answered as a miss while the server was unreachable",
            "stores_skipped": "LMCache stores skipped while the server was unreachable",
            "reregistrations": "KV re-registrations with the LMCache server",
        }
        out: dict[str, Any] = {}
        for name in self.NAMES:
            with contextlib.suppress(ValueError):  # already registered in this process
                out[name] = Counter(f"lmcache_ascend_sglang_{name}", docs[name])
        return out

    def add(self, name: str) -> int:
        with self._lock:
            self._values[name] += 1
            total = self._values[name]
        if name in self._prom:
            self._prom[name].inc()
        return total

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._values)


COUNTERS = GuardCounters()


@dataclass
class _Guard:
    """Per-connector state. The health thread only sets flags; the scheduler thread acts on them."""

    settings: GuardSettings
    healthy: bool = True
    needs_register: bool = False
    lookup_started: dict[str, float] = field(default_factory=dict)
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    def start(self, conn: Any) -> None:
        self.thread = threading.Thread(target=self._watch, args=(conn,), name="lmcache-ascend-mp-health", daemon=True)
        self.thread.start()

    def _watch(self, conn: Any) -> None:
        interval = self.settings.ping_interval_s
        while not self.stop.wait(interval):
            try:
                ok = bool(conn._req_client.ping(conn.instance_id).result(timeout=max(interval, 0.5)))
            except Exception:  # noqa: BLE001 - any failure to answer means "unreachable"
                ok = False
            if ok and not self.healthy:
                logger.warning("lmcache server %s answers again: re-registering KV, LMCache hits resume", conn.server_url)
                self.needs_register = True
            elif not ok and self.healthy:
                logger.warning("lmcache server %s is unreachable: SGLang recomputes without LMCache until it is back", conn.server_url)
            self.healthy = ok


def _guard(conn: Any) -> _Guard:
    state = conn.__dict__.get(_STATE)
    if state is None:
        state = _Guard(GuardSettings.from_env())
        conn.__dict__[_STATE] = state
        state.start(conn)
    return state


def _ready(conn: Any, guard: _Guard) -> bool:
    """Re-register first if needed (scheduler thread); True when the server can be used now."""
    if guard.healthy and guard.needs_register:
        guard.needs_register = False
        try:
            _reregister(conn)
        except Exception:  # noqa: BLE001 - keep serving without LMCache; retried on the next operation
            logger.exception("re-registering KV with lmcache server %s failed; retrying later", conn.server_url)
            guard.needs_register = True
            return False
        logger.warning("KV re-registered with lmcache server %s (total %d)", conn.server_url, COUNTERS.add("reregistrations"))
    return guard.healthy and not guard.needs_register


def _reregister(conn: Any) -> None:
    old = conn._transfer_ctx
    conn._transfer_ctx, conn._registered = None, False
    if old is not None:
        with contextlib.suppress(Exception):
            old.close()
    conn.register_kv_cache()


def apply(module: ModuleType) -> bool:
    """Patch ``module.UnifiedLMCacheMPConnector`` in place; False if it was already patched."""
    cls = getattr(module, TARGET_CLASS)
    lookup_op = module.LMCacheLookupOperation
    wraps: dict[str, Callable[[Callable[..., Any]], Callable[..., Any]]] = {
        "_get_chunk_size": lambda orig: _get_chunk_size,
        "register_kv_cache": _register_kv_cache,
        "submit_lookup": lambda orig: _submit_lookup(orig, lookup_op),
        "poll_lookup": _poll_lookup,
        "submit_store": _submit_store,
        "complete_load": lambda orig: _count_failure(orig, "loads_failed", "load"),
        "complete_store": lambda orig: _count_failure(orig, "stores_failed", "store"),
        "close": _close,
    }
    patched = [wrap_method(cls, name, make, _MARK) for name, make in wraps.items()]
    return any(patched)


def _get_chunk_size(self: Any) -> int:
    timeout = min(float(self._mq_timeout), GuardSettings.from_env().connect_timeout_s)
    try:
        return int(self._req_client.get_chunk_size().result(timeout=timeout))
    except Exception as exc:
        raise RuntimeError(
            f"lmcache server {self.server_url} did not answer within {timeout:g} s: start `lmcache server` there "
            f"first, or fix mp_host/mp_port in --lmcache-config-file ({GuardSettings.ENV['connect_timeout_s']} sets this wait)"
        ) from exc


def check_registrable(conn: Any) -> None:
    """Refuse, naming the SGLang pool, host KV that LMCache's engine-driven transfer cannot move.

    ``_engine_group_info_specs`` has one entry per group of like tensors (shape
    after the block axis, dtype): engine-driven transfer moves exactly one.
    """
    specs = conn._engine_group_info_specs
    tensors = list(conn._kv_caches.values())
    if len(specs) <= 1 or not tensors or tensors[0].device.type != "cpu":
        return
    pool = conn._sglang_kv_adapter.token_to_kv_pool_allocator.get_kvcache()
    kinds = sorted({f"{list(t.shape[1:])} {str(t.dtype).removeprefix('torch.')}" for t in tensors})
    raise ValueError(
        f"SGLang's {type(pool).__name__} cannot use LMCache on host memory: its KV tensors come in "
        f"{len(specs)} kinds ({'; '.join(kinds)}) and LMCache's engine-driven transfer moves one kind "
        "per pool. Start SGLang without --enable-lmcache for this model."
    )


def _register_kv_cache(orig: Callable[..., Any]) -> Callable[..., Any]:
    def register_kv_cache(self: Any) -> None:
        check_registrable(self)
        orig(self)

    return register_kv_cache


def _submit_lookup(orig: Callable[..., Any], lookup_op: type) -> Callable[..., Any]:
    def submit_lookup(self: Any, request_id: str, token_ids: list[int], *, local_hit_tokens: int, cache_salt: str) -> Any:
        guard = _guard(self)
        if not _ready(self, guard):
            COUNTERS.add("lookups_skipped")
            # What upstream builds for a prompt shorter than a chunk: a finished miss, no RPC.
            op = lookup_op(request_id=request_id, token_ids=list(token_ids), local_hit_tokens=int(local_hit_tokens), cache_salt=cache_salt)
            op.total_hit_tokens = 0
            self._lookups[request_id] = op
            return op
        op = orig(self, request_id, token_ids, local_hit_tokens=local_hit_tokens, cache_salt=cache_salt)
        if op.total_hit_tokens is None:
            guard.lookup_started[request_id] = time.monotonic()
        return op

    return submit_lookup


def _poll_lookup(orig: Callable[..., Any]) -> Callable[..., Any]:
    def poll_lookup(self: Any, operation: Any) -> Any:
        guard = _guard(self)
        started = guard.lookup_started.get(operation.request_id)
        if operation.total_hit_tokens is None and started is not None and self.is_lookup_leader:
            waited = time.monotonic() - started
            if not guard.healthy or waited > guard.settings.lookup_timeout_s:
                # Upstream answers a lookup that was never submitted with 0 hits
                # (and tells the other TP ranks the same): drop its futures.
                operation.submission_future = operation.completion_future = None
                total = COUNTERS.add("lookups_timed_out")
                logger.warning(
                    "LMCache lookup for %s unanswered after %.1f s: served as a miss (total %d)", operation.request_id, waited, total
                )
        result = orig(self, operation)
        if result is not None:
            guard.lookup_started.pop(operation.request_id, None)
        return result

    return poll_lookup


def _submit_store(orig: Callable[..., Any]) -> Callable[..., Any]:
    def submit_store(self: Any, request_id: str, *args: Any, **kwargs: Any) -> Any:
        if not _ready(self, _guard(self)):
            COUNTERS.add("stores_skipped")
            return None  # SGLang releases the tree lock and moves on; a later store retries
        return orig(self, request_id, *args, **kwargs)

    return submit_store


def _count_failure(orig: Callable[..., Any], counter: str, what: str) -> Callable[..., Any]:
    def complete(self: Any, operation: Any, *args: Any, **kwargs: Any) -> bool:
        known = operation.result is not None
        ok = orig(self, operation, *args, **kwargs)
        if not ok and not known:
            total = COUNTERS.add(counter)
            logger.error("LMCache %s failed for request %s (%s total: %d)", what, operation.request_id, counter, total)
            _guard(self).needs_register = True
        return ok

    return complete


def _close(orig: Callable[..., Any]) -> Callable[..., Any]:
    def close(self: Any) -> None:
        state = self.__dict__.get(_STATE)
        if state is not None:
            state.stop.set()
        orig(self)

    return close


def install() -> None:
    """Patch the connector now if its module is loaded, else as soon as it is imported
    (it is imported after LMCache's device plugins)."""
    patch_on_import(TARGET_MODULE, apply)
