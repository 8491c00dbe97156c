"""The SGLang MP-connector guard on LMCache 0.5.6's real ``UnifiedLMCacheMPConnector``.

The class is LMCache's own (patched on a subclass here, so the test process
keeps the upstream class intact); only its request client and transfer context
are test doubles: a server that answers, hangs, or is gone. The end-to-end
version, with real SGLang and ``lmcache server`` processes, is
``tests/e2e/sglang/test_sglang_server.py``.
"""

from __future__ import annotations

import inspect
import logging
import subprocess
import sys
import time
import types
from collections.abc import Callable, Iterator
from typing import Any

import pytest

upstream = pytest.importorskip("lmcache.integration.sglang.unified_lmcache_mp_connector")

from lmcache_ascend.integrations.lmcache import sglang_mp_guard as guard  # noqa: E402

Upstream = upstream.UnifiedLMCacheMPConnector


class Future:
    """A request future: answered with ``value``, never answered (``hang``), or failed (``error``)."""

    def __init__(self, value: Any = None, *, hang: bool = False, error: Exception | None = None) -> None:
        self.value, self.hang, self.error = value, hang, error

    def query(self) -> bool:
        return not self.hang

    def result(self, timeout: float | None = None) -> Any:
        if self.hang:
            raise TimeoutError("not answered")
        if self.error is not None:
            raise self.error
        return self.value


class Client:
    def __init__(self) -> None:
        self.alive = True
        self.hang_lookups = False
        self.lookups = 0

    def ping(self, instance_id: int) -> Future:
        return Future(True) if self.alive else Future(error=ConnectionError("gone"))

    def lookup(self, key: Any, world_size: int) -> Future:
        self.lookups += 1
        return Future(hang=self.hang_lookups or not self.alive, value=None)

    def get_chunk_size(self) -> Future:
        return Future(256) if self.alive else Future(hang=True)


@pytest.fixture
def patched_cls() -> type:
    cls = type("GuardedConnector", (Upstream,), {})
    module = types.SimpleNamespace(UnifiedLMCacheMPConnector=cls, LMCacheLookupOperation=upstream.LMCacheLookupOperation)
    assert guard.apply(module) is True
    assert guard.apply(module) is False  # idempotent
    return cls


@pytest.fixture
def fast(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LMCACHE_ASCEND_MP_PING_INTERVAL", "0.05")
    monkeypatch.setenv("LMCACHE_ASCEND_MP_LOOKUP_TIMEOUT", "0.3")


@pytest.fixture
def conn(patched_cls: type, fast: None) -> Iterator[Any]:
    c = patched_cls.__new__(patched_cls)
    c.__dict__.update(
        _lookup_leader=True, tp_size=1, pp_size=1, chunk_size=256, kv_world_size=1, num_kv_readers=1, model_name="m",
        _store_submitted_tokens={}, _lookups={}, _active_sessions=set(), _mq_timeout=10.0, server_url="tcp://127.0.0.1:9",
        instance_id=7, _req_client=Client(), _heartbeat_thread=object(), _transfer_ctx=None, _registered=True,
    )  # fmt: skip
    c.registrations = 0

    def register_kv_cache() -> None:
        c.registrations += 1
        c._registered = True

    c.register_kv_cache = register_kv_cache
    yield c
    state = c.__dict__.get(guard._STATE)
    if state is not None:
        state.stop.set()


def until(check: Callable[[], bool], timeout_s: float = 5.0) -> None:
    end = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < end, "condition not reached in time"
        time.sleep(0.02)


def lookup(conn: Any, rid: str = "r") -> Any:
    return conn.submit_lookup(rid, list(range(600)), local_hit_tokens=0, cache_salt="")


def test_upstream_methods_the_guard_wraps_are_still_there() -> None:
    for name in guard.PATCHED:
        assert callable(getattr(Upstream, name, None)), f"LMCache's connector lost {name}"
    assert list(inspect.signature(Upstream.submit_lookup).parameters) == ["self", "request_id", "token_ids", "local_hit_tokens", "cache_salt"]
    fields = {f for f in upstream.LMCacheLookupOperation.__dataclass_fields__}
    assert {"submission_future", "completion_future", "total_hit_tokens", "locks_held"} <= fields


def test_upstream_answers_an_unsubmitted_lookup_with_zero_hits(conn: Any) -> None:
    """What the guard relies on to turn a hung lookup into a miss, on the unpatched method."""
    op = upstream.LMCacheLookupOperation(request_id="r", token_ids=list(range(600)), local_hit_tokens=0, cache_salt="")
    assert Upstream.poll_lookup(conn, op) == 0 and op.locks_held is False


def test_hung_lookup_becomes_a_miss_after_the_timeout(conn: Any) -> None:
    conn._req_client.hang_lookups = True
    before = guard.COUNTERS.snapshot()["lookups_timed_out"]
    op = lookup(conn)
    assert conn.poll_lookup(op) is None  # still waiting, as upstream
    time.sleep(0.35)
    assert conn.poll_lookup(op) == 0
    assert guard.COUNTERS.snapshot()["lookups_timed_out"] == before + 1


def test_answered_lookup_is_left_to_upstream(conn: Any) -> None:
    op = lookup(conn)
    op.submission_future, op.completion_future = Future(True), Future(2)
    assert conn.poll_lookup(op) == 512


def test_unreachable_server_misses_and_skips_at_once(conn: Any) -> None:
    lookup(conn, "warm")  # starts the health watch
    conn._req_client.alive = False
    until(lambda: not conn.__dict__[guard._STATE].healthy)
    before = guard.COUNTERS.snapshot()
    calls = conn._req_client.lookups
    op = lookup(conn, "while-gone")
    assert op.total_hit_tokens == 0 and conn._req_client.lookups == calls  # no RPC
    assert conn._lookups["while-gone"] is op
    assert conn.submit_store("while-gone", list(range(512)), [], device_indices_start=0, cache_salt="") is None
    after = guard.COUNTERS.snapshot()
    assert after["lookups_skipped"] == before["lookups_skipped"] + 1
    assert after["stores_skipped"] == before["stores_skipped"] + 1


def test_server_back_means_reregistration_in_the_caller_thread(conn: Any, caplog: pytest.LogCaptureFixture) -> None:
    lookup(conn, "warm")
    conn._req_client.alive = False
    until(lambda: not conn.__dict__[guard._STATE].healthy)
    conn._req_client.alive = True
    until(lambda: conn.__dict__[guard._STATE].healthy)
    assert conn.registrations == 0  # the health thread never touches the transfer context
    with caplog.at_level(logging.WARNING, logger=guard.__name__):
        lookup(conn, "after")
    assert conn.registrations == 1
    assert any("re-registered" in r.getMessage() for r in caplog.records)


def test_failed_store_is_counted_logged_and_triggers_reregistration(conn: Any, caplog: pytest.LogCaptureFixture) -> None:
    store = upstream.LMCacheStoreOperation("req-42", 0, 256, Future(error=RuntimeError("scatter failed")))
    before = guard.COUNTERS.snapshot()["stores_failed"]
    with caplog.at_level(logging.ERROR, logger=guard.__name__):
        assert conn.complete_store(store, synchronize=False) is False
        assert conn.complete_store(store, synchronize=False) is False  # settled: not counted twice
    assert guard.COUNTERS.snapshot()["stores_failed"] == before + 1
    assert any("req-42" in r.getMessage() and r.levelno == logging.ERROR for r in caplog.records)
    lookup(conn)
    assert conn.registrations == 1


def test_unreachable_server_at_start_is_a_clear_error(conn: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LMCACHE_ASCEND_MP_CONNECT_TIMEOUT", "0.1")
    conn._req_client.alive = False
    with pytest.raises(RuntimeError, match=r"tcp://127\.0\.0\.1:9 did not answer within 0\.1 s.*mp_host/mp_port"):
        conn._get_chunk_size()
    conn._req_client.alive = True
    assert conn._get_chunk_size() == 256


@pytest.mark.parametrize(("value", "message"), [("abc", "number of seconds"), ("0", "> 0"), ("-1", "> 0")])
def test_settings_refuse_bad_values_naming_the_variable(value: str, message: str) -> None:
    with pytest.raises(ValueError, match=f"LMCACHE_ASCEND_MP_LOOKUP_TIMEOUT.*{message}"):
        guard.GuardSettings.from_env({"LMCACHE_ASCEND_MP_LOOKUP_TIMEOUT": value})


def test_settings_defaults_and_overrides() -> None:
    assert guard.GuardSettings.from_env({}) == guard.GuardSettings()
    got = guard.GuardSettings.from_env({"LMCACHE_ASCEND_MP_CONNECT_TIMEOUT": "3", "LMCACHE_ASCEND_MP_PING_INTERVAL": " "})
    assert got.connect_timeout_s == 3.0 and got.ping_interval_s == guard.GuardSettings().ping_interval_s


@pytest.mark.parametrize(("backend", "patched"), [("ascend_cpu", True), ("", False)])
def test_selecting_the_backend_patches_the_connector_on_import(backend: str, patched: bool) -> None:
    """The way it happens in SGLang's scheduler: LMCache loads its device plugin, then the connector module."""
    code = (
        "import os, sys\n"
        f"os.environ['LMCACHE_DEVICE_BACKEND'] = {backend!r}\n"
        "import lmcache.v1.platform\n"
        "from lmcache.integration.sglang import unified_lmcache_mp_connector as m\n"
        "print(getattr(m.UnifiedLMCacheMPConnector.submit_lookup, '_lmcache_ascend_guarded', False))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip().splitlines()[-1] == str(patched), out.stderr[-2000:]


def test_host_pool_with_two_kinds_of_tensor_is_refused_before_registering(patched_cls: type) -> None:
    import torch

    c = patched_cls.__new__(patched_cls)
    pool_cls = type("DSATokenToKVPool", (), {})
    allocator = types.SimpleNamespace(get_kvcache=lambda: pool_cls())
    c.__dict__.update(
        _engine_group_info_specs=[{"layer_indices": (0,)}, {"layer_indices": (1,)}],
        _kv_caches={"kv_0": torch.zeros(4, 16, 24), "kv_1": torch.zeros(4, 1, 1, 8, dtype=torch.uint8)},
        _sglang_kv_adapter=types.SimpleNamespace(token_to_kv_pool_allocator=allocator),
    )
    with pytest.raises(ValueError, match=r"DSATokenToKVPool cannot use LMCache on host memory.*2 kinds \(\[1, 1, 8\] uint8; \[16, 24\] float32\)"):
        c.register_kv_cache()  # refused before upstream's registration (which would need a server)
    c._engine_group_info_specs = c._engine_group_info_specs[:1]
    guard.check_registrable(c)  # one kind: accepted
