"""Faults under a real vLLM CPU engine: serving continues, outputs stay right, hits come back.

For each fault the engine keeps answering (no exception reaches vLLM: a
failed lookup or load is recomputed), every output equals the fault-free
output token for token, ``from_lmcache`` is a whole-chunk prefix of the prompt
(a load cut short keeps only the chunks before the failure: nothing
double-counted), and once the fault is gone later requests hit again. Every wait is bounded (EngineSession kills a silent engine).

- remote server killed in the middle of a batch of loads, then restarted
  (Redis), and killed between requests, then restarted (``lm://``, whose
  reconnect needs ``remote_tier.RemoteConnectionWatch``);
- a Redis Cluster primary and a Sentinel primary killed in the middle of a batch, a replica
  promoted;
- remote server slow (a delaying proxy) and stalled (a proxy holding all data,
  bounded by redis-py's ``socket_timeout`` in the URL);
- local disk tier unwritable (its directory cannot be created, also as root)
  and full (``RLIMIT_FSIZE`` in the worker: every chunk write fails).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from testkit.remote_servers import HOST, FaultProxy, LMServer, RedisServer, redis_command
from tests.e2e.remote_helpers import CHUNK, FULL_HIT, PROMPT_A, PROMPT_B, PROMPT_C, SessionMaker, one, until_hit, warm
from tests.redis_topologies import RedisClusterSet, RedisSentinelSet

pytestmark = pytest.mark.slow


def batch_with_a_kill(session, prompt: list[int], proxy: FaultProxy, kill) -> list[dict]:  # type: ignore[no-untyped-def]
    """Six loads of ``prompt`` in one batch; the server dies while the engine runs it.

    The proxy slows every transfer down so the batch is still loading when the
    kill comes; the kill always happens (the timer is joined, not cancelled).
    """
    proxy.set_delay(0.05)
    try:
        results, _, _ = batch_with_a_timed_kill(session, [prompt] * 6, kill, after_s=0.5)
    finally:
        proxy.set_delay(0)
    return results


def check_outputs(results: list[dict], cold: dict) -> None:
    """Right tokens; loaded tokens a whole-chunk prefix (a load cut short keeps the chunks before it)."""
    for r in results:
        assert r["token_ids"] == cold["token_ids"], r
        assert r["from_lmcache"] == FULL_HIT or r["from_lmcache"] % CHUNK == 0, r


def test_redis_killed_mid_run_and_restarted(make_session: SessionMaker, redis: RedisServer) -> None:
    with FaultProxy(redis.port) as proxy, make_session(remote_url=f"redis://{HOST}:{proxy.port}") as s:
        cold_a, cold_b = one(s, PROMPT_A), one(s, PROMPT_B)
        s.settle()
        warm(s, PROMPT_A, cold_a)

        check_outputs(batch_with_a_kill(s, PROMPT_A, proxy, redis.kill), cold_a)
        assert not redis.is_running()
        down = one(s, PROMPT_A)
        assert down["from_lmcache"] == 0 and down["token_ids"] == cold_a["token_ids"]

        redis.start()  # same port, empty
        assert until_hit(s, PROMPT_B, cold_b, attempts=4) >= 2  # stored again first, then hit
        s.settle()
        assert redis_command(redis.port, "DBSIZE") == f":{2 * len(PROMPT_B) // CHUNK}".encode()  # no duplicates
        assert s.worker()["healthy"]
    assert s.close() == 0


def test_lm_server_killed_and_restarted(make_session: SessionMaker, tmp_path: Path) -> None:
    # Killed between requests: see docs/reliability.md for a kill during a
    # batch of lm:// loads, after which the reconnect was once not seen.
    with LMServer(tmp_path / "lm.log") as server, FaultProxy(server.port) as proxy:
        with make_session(remote_url=f"lm://{HOST}:{proxy.port}") as s:
            cold_a = one(s, PROMPT_A)
            s.settle()
            warm(s, PROMPT_A, cold_a)

            server.kill()
            for _ in range(2):
                down = one(s, PROMPT_A)
                assert down["from_lmcache"] == 0 and down["token_ids"] == cold_a["token_ids"]

            # LMCache's server cannot rebind its port at once: a new port behind the same URL.
            server.restart(new_port=True)
            proxy.retarget(server.port)
            assert until_hit(s, PROMPT_A, cold_a, attempts=6, pause_s=1.5) >= 2
            assert s.worker()["healthy"]
        assert s.close() == 0


def test_slow_and_stalled_redis(make_session: SessionMaker, redis: RedisServer) -> None:
    with FaultProxy(redis.port) as proxy:
        # redis-py reads socket_timeout from the URL: a stalled server costs
        # each lookup or load at most 3 s instead of hanging LMCache.
        url = f"redis://{HOST}:{proxy.port}?socket_timeout=3&socket_connect_timeout=3"
        with make_session(remote_url=url) as s:
            cold_a, cold_b = one(s, PROMPT_A), one(s, PROMPT_B)
            s.settle()

            proxy.set_delay(0.02)  # every read and write of every connection, both ways
            warm(s, PROMPT_A, cold_a)
            proxy.set_delay(0)

            proxy.stall()
            stalled = [one(s, PROMPT_B), one(s, PROMPT_C)]
            assert [r["from_lmcache"] for r in stalled] == [0, 0]
            assert stalled[0]["token_ids"] == cold_b["token_ids"]
            proxy.resume()
            proxy.cut()  # connections that timed out mid-reply are unusable; redis-py opens new ones

            assert until_hit(s, PROMPT_B, cold_b, attempts=4) >= 1
        assert s.close() == 0


def test_disk_tier_that_cannot_be_created(make_session: SessionMaker, tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a regular file: no directory can be made under it, not even by root")
    with make_session(disk_dir=blocker / "disk") as s:
        first, second = one(s, PROMPT_A), one(s, PROMPT_A)
        assert second["token_ids"] == first["token_ids"]
        assert second["from_lmcache"] in (0, FULL_HIT)
    assert s.close() == 0


def test_disk_full_then_freed(make_session: SessionMaker, tmp_path: Path) -> None:
    disk = tmp_path / "disk"
    with make_session(disk_dir=disk) as s:
        cold_a = one(s, PROMPT_A)
        s.settle()
        warm(s, PROMPT_A, cold_a)

        s.limit_file_size(4096)  # far below one chunk file: every new chunk write fails
        cold_b = one(s, PROMPT_B)
        s.settle()
        again = one(s, PROMPT_B)
        assert again["token_ids"] == cold_b["token_ids"]
        assert again["from_lmcache"] in (0, FULL_HIT)
        warm(s, PROMPT_A, cold_a)  # what was stored before still serves

        s.limit_file_size(None)
        assert until_hit(s, PROMPT_C, one(s, PROMPT_C), attempts=3) >= 1
        assert s.worker()["healthy"]
    assert s.close() == 0


def batch_with_a_timed_kill(session, prompts: list[list[int]], kill, after_s: float) -> tuple[list[dict], float, float]:  # type: ignore[no-untyped-def]
    """One batch of ``prompts``; ``kill`` runs ``after_s`` into it (joined, never cancelled).
    Returns the results, when the kill happened and when the batch returned."""
    killed_at: list[float] = []

    def fire() -> None:
        kill()
        killed_at.append(time.monotonic())

    timer = threading.Timer(after_s, fire)
    timer.start()
    try:
        results = session.generate(prompts, max_tokens=8)
        returned_at = time.monotonic()
    finally:
        timer.join()
    return results, killed_at[0], returned_at


def serve_through_a_failover(make_session: SessionMaker, url: str, replicate: Callable[[], None], arm: Callable[[], tuple[Callable[[], None], Callable[[], None]]]) -> None:
    """Three prompts stored, replicated and warm; then a batch of 24 warm requests during which
    the primary is SIGKILLed: no request fails, every output equals the fault-free one, every
    ``from_lmcache`` is a whole-chunk prefix, and once a replica is promoted every prompt is a
    full hit again. ``arm()`` (called right before the batch) returns the kill and a wait for
    the promotion."""
    prompts = [PROMPT_A, PROMPT_B, PROMPT_C]
    with make_session(remote_url=url) as s:
        colds = [one(s, p) for p in prompts]
        s.settle()
        replicate()
        for p, c in zip(prompts, colds, strict=True):
            warm(s, p, c)
        kill, promoted = arm()
        results, killed_at, returned_at = batch_with_a_timed_kill(s, prompts * 8, kill, after_s=0.05)
        assert killed_at < returned_at, "the kill came after the batch: nothing was in flight"
        for r, c in zip(results, colds * 8, strict=True):
            check_outputs([r], c)

        promoted()
        for p, c in zip(prompts, colds, strict=True):
            until_hit(s, p, c, attempts=4, pause_s=1.0)
        state = s.settle()
        assert state["allocator_consistent"] is not False, state
    assert s.close() == 0


def test_redis_cluster_primary_killed_mid_batch(make_session: SessionMaker, cluster: RedisClusterSet) -> None:
    """The cluster primary holding most keys is the one killed."""

    def arm() -> tuple[Callable[[], None], Callable[[], None]]:
        victim = max(cluster.primaries(), key=lambda n: cluster.keys_per_primary()[n.port])

        def promoted() -> None:
            assert not victim.is_running()
            cluster.wait_healthy()

        return victim.kill, promoted

    serve_through_a_failover(make_session, cluster.url, cluster.replicate, arm)


def test_redis_sentinel_primary_killed_mid_batch(make_session: SessionMaker, sentinel: RedisSentinelSet) -> None:
    """Reads go to the replica meanwhile; Sentinel promotes it."""

    def arm() -> tuple[Callable[[], None], Callable[[], None]]:
        old = sentinel.primary_port()

        def promoted() -> None:
            assert sentinel.wait_failover(old) == sentinel.replica.port

        return sentinel.primary.kill, promoted

    serve_through_a_failover(make_session, sentinel.url, sentinel.replicate, arm)
