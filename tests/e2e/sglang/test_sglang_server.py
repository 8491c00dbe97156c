"""A real SGLang 0.5.23 server with ``--enable-lmcache`` through a real ``lmcache server``.

Both processes run LMCache's ``ascend_cpu`` device backend (lmcache_ascend's ops);
KV travels through the server's shared-memory pool. The model is the small
random Llama; decoding is greedy; every SGLang without-LMCache output comes
from the session's baseline server. After each healthy scenario, the SGLang
log must report no failed LMCache transfer (``sglang_log_clean``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

import pytest

from lmcache_ascend.integrations.lmcache import ASCEND_CPU_BACKEND as BACKEND_NAME
from testkit.mp_server import free_port, running_server
from lmcache_ascend.integrations.lmcache.sglang_mp_guard import GuardSettings
from tests.e2e.sglang import servers
from tests.e2e.sglang.conftest import CHUNK, MAX_NEW_TOKENS, PROMPT_TOKENS, PROMPTS

WHOLE_CHUNKS = PROMPT_TOKENS // CHUNK
METRICS = ("--enable-metrics",)  # SGLang's /metrics, where lmcache_ascend's counters appear


def whole_chunks_but_one(tokens: int) -> bool:
    return (WHOLE_CHUNKS - 1) * CHUNK <= tokens <= WHOLE_CHUNKS * CHUNK


def test_flush_then_same_prompt_and_restart_load_from_lmcache(
    sglang_model: Path, expected_outputs: dict[str, list[int]], tmp_path: Path, shm_name: str, sglang_log_clean: list[Path]
) -> None:
    ports = (free_port(), free_port())
    with running_server(backend=BACKEND_NAME, log_path=tmp_path / "lmcache.log", shm_name=shm_name, port=ports[0], http_port=ports[1]) as lmc:
        config = servers.write_lmcache_config(tmp_path / "lmcache.yaml", lmc.port)
        log = tmp_path / "sglang-1.log"
        sglang_log_clean.append(log)
        with servers.running_sglang(sglang_model, log_path=log, lmcache_config=config, backend=BACKEND_NAME, extra_args=METRICS) as sg:
            cold = servers.generate(sg, PROMPTS.full, max_new_tokens=MAX_NEW_TOKENS)
            servers.flush_cache(sg)
            warm = servers.generate(sg, PROMPTS.full, max_new_tokens=MAX_NEW_TOKENS)
            # A prompt sharing only its first half: the shared whole chunks hit.
            servers.flush_cache(sg)
            half = servers.generate(sg, PROMPTS.half_shared, max_new_tokens=MAX_NEW_TOKENS)
            counters = servers.guard_counters(sg)
        assert not any(counters.values()), f"failed or skipped LMCache transfers: {counters}"
        assert "mode=SHM" in log.read_text(), "KV must travel through the server's shared memory, not pickled"
        assert cold.storage_tokens == 0
        assert whole_chunks_but_one(warm.storage_tokens), warm
        assert cold.output_ids == warm.output_ids == expected_outputs["full"]
        shared_chunks = (PROMPT_TOKENS // 2) // CHUNK
        assert half.storage_tokens == shared_chunks * CHUNK, half
        assert half.output_ids == expected_outputs["half_shared"]

        # A restarted SGLang process gets hits from the same server.
        log = tmp_path / "sglang-2.log"
        sglang_log_clean.append(log)
        with servers.running_sglang(sglang_model, log_path=log, lmcache_config=config, backend=BACKEND_NAME) as sg:
            again = servers.generate(sg, PROMPTS.full, max_new_tokens=MAX_NEW_TOKENS)
        assert whole_chunks_but_one(again.storage_tokens), again
        assert again.output_ids == expected_outputs["full"]


def test_lmcache_server_killed_then_back(sglang_model: Path, expected_outputs: dict[str, list[int]], tmp_path: Path, shm_name: str) -> None:
    """SGLang keeps answering (recomputing) while the server is gone; hits resume once it is back."""
    ports = (free_port(), free_port())
    config = servers.write_lmcache_config(tmp_path / "lmcache.yaml", ports[0])
    log = tmp_path / "sglang.log"
    server_args = {"backend": BACKEND_NAME, "shm_name": shm_name, "port": ports[0], "http_port": ports[1]}
    with contextlib.ExitStack() as stack:
        lmc = stack.enter_context(running_server(log_path=tmp_path / "lmcache-1.log", **server_args))
        sg = stack.enter_context(servers.running_sglang(sglang_model, log_path=log, lmcache_config=config, backend=BACKEND_NAME, extra_args=METRICS))
        servers.generate(sg, PROMPTS.full, max_new_tokens=MAX_NEW_TOKENS)
        os.killpg(lmc.pid, signal.SIGKILL)  # its context's stop() is then a no-op
        # A prompt LMCache holds (its load can no longer happen) and a new one: both answered, recomputed.
        servers.flush_cache(sg)
        start = time.monotonic()
        gone = [servers.generate(sg, ids, max_new_tokens=MAX_NEW_TOKENS, timeout_s=60) for ids in (PROMPTS.full, PROMPTS.other)]
        waited = time.monotonic() - start
        while_gone = servers.guard_counters(sg)
        with running_server(log_path=tmp_path / "lmcache-2.log", **server_args):
            back = _until_hit(sg, PROMPTS.after_restart, deadline_s=90)
            after = servers.guard_counters(sg)
    assert [g.output_ids for g in gone] == [expected_outputs["full"], expected_outputs["other"]]
    assert all(g.storage_tokens == 0 for g in gone)
    assert waited < 60, f"two requests without a server took {waited:.0f} s"
    assert whole_chunks_but_one(back.storage_tokens), back
    assert back.output_ids == expected_outputs["after_restart"]
    text = log.read_text(errors="replace")
    assert "is unreachable" in text and "re-registered" in text
    # Counted where an operator looks (SGLang's /metrics): the misses while gone, the re-registration.
    assert while_gone["lookups_timed_out"] + while_gone["lookups_skipped"] >= 2, while_gone
    assert while_gone["stores_skipped"] >= 1, while_gone
    assert after["reregistrations"] >= 1, after


def _until_hit(sg: servers.SGLangServer, ids: list[int], deadline_s: float) -> servers.Generation:
    """Store ``ids`` and load them back after a flush, until LMCache serves them (the server just came back)."""
    end = time.monotonic() + deadline_s
    while True:
        servers.generate(sg, ids, max_new_tokens=MAX_NEW_TOKENS, timeout_s=60)
        servers.flush_cache(sg)
        result = servers.generate(sg, ids, max_new_tokens=MAX_NEW_TOKENS, timeout_s=60)
        if result.storage_tokens > 0 or time.monotonic() > end:
            return result
        servers.flush_cache(sg)
        time.sleep(1.0)


@pytest.mark.parametrize(
    ("name", "yaml_text", "message"),
    [
        ("unreachable", "mp_host: 127.0.0.1\nmp_port: {port}\n", "did not answer within 5 s"),
        ("malformed", "mp_host: [127.0.0.1\nmp_port: {port}\n", "malformed.yaml"),
    ],
)
def test_bad_lmcache_config_fails_at_start(
    sglang_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, yaml_text: str, message: str
) -> None:
    """SGLang exits with an error naming the problem instead of waiting for a server (upstream: 300 s per RPC)."""
    monkeypatch.setenv(GuardSettings.ENV["connect_timeout_s"], "5")
    config = tmp_path / f"{name}.yaml"
    config.write_text(yaml_text.format(port=free_port()))
    log = tmp_path / "sglang.log"
    proc, server = servers.start_sglang(sglang_model, log_path=log, lmcache_config=config, backend=BACKEND_NAME)
    try:
        with pytest.raises(RuntimeError, match="exited"):
            servers.wait_healthy(server, proc, timeout_s=240)
    finally:
        servers.stop(proc)
    assert message in log.read_text(errors="replace"), servers.log_tail(log, 40)
