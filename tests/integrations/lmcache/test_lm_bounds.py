"""``lm_bounds``: a hung ``lm://`` server costs the configured timeout, then a miss.

A real ``lmcache server`` behind the fault proxy, which stalls it (the server
accepts and never answers: hung, not dead). The engine is a real LMCache 0.5.6
engine with ``local_cpu=False``, so every hit comes from the server.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from lmcache_ascend.integrations.lmcache import lm_bounds, remote_tier
from testkit.remote_servers import HOST, FaultProxy, LMServer
from tests.integrations.lmcache.conftest import ASCEND_KV_TUPLES, KV_DTYPE, EngineFactory, active_buffers, paged_engine, wait_until
from tests.kernels.reference import Geom, make_paged

GEOM = Geom(num_layers=2, num_blocks=64, block_size=16, num_heads=2, head_size=8)
CHUNK = 64
TOKENS = torch.arange(2 * CHUNK, dtype=torch.long) * 5 + 3
TIMEOUT_S = 1.0


@pytest.fixture
def lm_server(tmp_path: Path) -> Iterator[LMServer]:
    with LMServer(tmp_path / "lm.log") as server:
        yield server


def engine_on(engines: EngineFactory, port: int) -> Any:
    return paged_engine(
        engines, GEOM, CHUNK, local_cpu=False, max_local_cpu_size=0.01, remote_url=f"lm://{HOST}:{port}",
        remote_serde="naive", blocking_timeout_secs=5, extra_config={lm_bounds.TIMEOUT_KEY: TIMEOUT_S},
    )


def lookup_returns(engine: Any, limit_s: float) -> int:
    """``engine.lookup(TOKENS)`` from another thread; fails the test if it has not returned after ``limit_s``."""
    result: list[int] = []
    worker = threading.Thread(target=lambda: result.append(engine.lookup(TOKENS)), daemon=True)
    worker.start()
    worker.join(limit_s)
    assert result, f"lookup still blocked after {limit_s:.0f} s (bound: {TIMEOUT_S} s)"
    return result[0]


def test_upstream_lm_socket_has_no_timeout(remote_engines: EngineFactory, lm_server: LMServer) -> None:
    """Pins upstream: LMCache 0.5.6 connects lm:// with a blocking socket (why lm_bounds exists)."""
    from lmcache.v1.storage_backend.remote_backend import RemoteBackend

    engine = engine_on(remote_engines, lm_server.port)
    backend = engine.storage_manager.storage_backends["RemoteBackend"]
    init = getattr(RemoteBackend.init_connection, "__wrapped__", RemoteBackend.init_connection)
    backend.connection = None
    init(backend)  # upstream's own connect
    assert lm_bounds.lm_socket(backend.connection).gettimeout() is None


def test_stalled_server_costs_the_timeout_then_a_miss_and_hits_return(remote_engines: EngineFactory, lm_server: LMServer) -> None:
    lm_bounds.bound_lm_connections()
    with FaultProxy(lm_server.port) as proxy:
        engine = engine_on(remote_engines, proxy.port)
        backend = engine.storage_manager.storage_backends["RemoteBackend"]
        assert lm_bounds.lm_socket(backend.connection).gettimeout() == TIMEOUT_S
        cache = make_paged(ASCEND_KV_TUPLES.fmt, GEOM, KV_DTYPE, torch.Generator().manual_seed(4))
        slots = torch.arange(len(TOKENS), dtype=torch.long)
        engine.store(TOKENS, kvcaches=cache.data, slot_mapping=slots)
        wait_until(lambda: active_buffers(engine) == 0, what="every put sent")
        assert lookup_returns(engine, 30) == len(TOKENS)

        proxy.stall()
        for _ in range(3):  # the first times out; later ones find the connection closed
            assert lookup_returns(engine, 10 * TIMEOUT_S + 5) == 0
        watch = remote_tier.RemoteConnectionWatch(reconnect_interval_s=0.0)
        assert watch.check(engine) == 1 and backend.connection is None  # the closed socket is dropped

        proxy.resume()
        watch.check(engine)  # starts the reconnect
        wait_until(lambda: backend.connection is not None, what="reconnected")
        wait_until(lambda: engine.lookup(TOKENS) == len(TOKENS), what="hits back")
        dst = torch.arange(len(TOKENS), 2 * len(TOKENS), dtype=torch.long)
        assert int(engine.retrieve(TOKENS, kvcaches=cache.data, slot_mapping=dst).sum()) == len(TOKENS)
        for layer in cache.data:  # exactly the stored bytes, in the new slots
            for plane in layer:
                flat = plane.reshape(GEOM.num_slots, -1)
                assert torch.equal(flat[dst].view(torch.int16), flat[slots].view(torch.int16))


def test_timeout_setting_is_checked() -> None:
    from types import SimpleNamespace

    assert lm_bounds.timeout_s(SimpleNamespace(extra_config=None, blocking_timeout_secs=7)) == 7.0
    for bad in (0, -1, "5", True):
        with pytest.raises(ValueError, match="lm_timeout_s"):
            lm_bounds.timeout_s(SimpleNamespace(extra_config={lm_bounds.TIMEOUT_KEY: bad}, blocking_timeout_secs=7))
