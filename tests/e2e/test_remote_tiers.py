"""LMCache's remote tiers with real servers on loopback, shared by two vLLM engine processes.

The first engine stores a prompt's chunks in the remote server; a second,
separate engine process (nothing shared but the server) serves the same prompt
from it: a full hit, token for token the first engine's output. The Redis case
and Redis Cluster cases run by default; ``lm://`` (LMCache's own server) is marked slow.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from testkit.remote_servers import LMServer, RedisServer, redis_command
from tests.e2e.remote_helpers import CHUNK, PROMPT_A, PROMPT_B, PROMPT_C, SessionMaker, one, warm
from tests.redis_topologies import RedisClusterSet


def second_engine_hits_what_the_first_stored(make_session: SessionMaker, url: str) -> None:
    with make_session(remote_url=url) as first:
        cold = one(first, PROMPT_A)
        assert cold["from_lmcache"] == 0
        first.settle()
        state = first.worker()
        assert state["remote_put_failures"] == 0 and state["healthy"], state
    assert first.close() == 0  # shut down cleanly (LMCache's close of redis:// alone would hang)

    with make_session(remote_url=url) as second:
        warm(second, PROMPT_A, cold)
        state = second.settle()
        assert state["remote_get_failures"] == 0 and state["allocator_consistent"] is not False, state


def test_redis_second_engine_hits_what_the_first_stored(make_session: SessionMaker, redis: RedisServer) -> None:
    second_engine_hits_what_the_first_stored(make_session, redis.url)
    # Two keys per chunk (metadata, bytes); the second engine added none.
    assert redis_command(redis.port, "DBSIZE") == f":{2 * (len(PROMPT_A) // CHUNK)}".encode()


@pytest.mark.slow
def test_lm_server_second_engine_hits_what_the_first_stored(make_session: SessionMaker, tmp_path: Path) -> None:
    with LMServer(tmp_path / "lm.log") as server:
        second_engine_hits_what_the_first_stored(make_session, server.url)


def test_redis_cluster_second_engine_hits_what_the_first_stored(make_session: SessionMaker, cluster: RedisClusterSet) -> None:
    """Two engine processes share a 3 + 3 Redis Cluster through LMCache's redis-cluster:// URL:
    the chunk keys of three prompts land on all three primaries, the second engine gets a full
    hit on each with the first engine's greedy tokens, and stores nothing new."""
    prompts = (PROMPT_A, PROMPT_B, PROMPT_C)
    with make_session(remote_url=cluster.url) as first:
        colds = [one(first, p) for p in prompts]
        assert all(c["from_lmcache"] == 0 for c in colds)
        state = first.settle()
        assert state["remote_put_failures"] == 0 and state["healthy"], state
    assert first.close() == 0
    per_primary = cluster.keys_per_primary()
    assert len(per_primary) == 3 and all(n > 0 for n in per_primary.values()), per_primary
    # Two keys per chunk (metadata, bytes), spread over the primaries by hash slot.
    assert sum(per_primary.values()) == 2 * sum(len(p) // CHUNK for p in prompts), per_primary

    with make_session(remote_url=cluster.url) as second:
        for prompt, cold in zip(prompts, colds, strict=True):
            warm(second, prompt, cold)
        state = second.settle()
        assert state["remote_get_failures"] == 0 and state["allocator_consistent"] is not False, state
    assert cluster.keys_per_primary() == per_primary  # the second engine stored nothing
