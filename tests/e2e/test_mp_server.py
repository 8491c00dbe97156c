"""LMCache multi-process mode: a real ``lmcache server`` on 127.0.0.1 and vLLM CPU with
``LMCacheMPConnector``, both on the ``ascend_cpu`` device backend (lmcache_ascend's ops).

The server is started and stopped by ``running_server`` (stopped even when the
test fails). vLLM's first forward is a cold warm-up prompt: LMCache's MP
connector does not request AMX state, and vLLM CPU's first short forward needs it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from lmcache_ascend.integrations.lmcache import ASCEND_CPU_BACKEND as BACKEND_NAME
from testkit.mp_server import running_server
from testkit.tiny_model import prompt_token_ids

PROMPT = prompt_token_ids(1024)
WARMUP = prompt_token_ids(300, offset=77)


@pytest.mark.parametrize("backend", [BACKEND_NAME, None], ids=["ascend_cpu", "lmcache_default"])
def test_mp_server_serves_warm_request(model_dir: Path, run_vllm, tmp_path: Path, backend: str | None) -> None:
    with running_server(backend=backend, log_path=tmp_path / "server.log", shm_name=f"lmc_ascend_{tmp_path.name}") as srv:
        _, cold, warm = run_vllm(model_dir=model_dir, mp_port=srv.port, device_backend=backend, prompts=[WARMUP, PROMPT, PROMPT])
    log = (tmp_path / "server.log").read_text(errors="replace")
    assert cold["from_lmcache"] == 0
    assert warm["from_lmcache"] == len(PROMPT) - 1
    assert warm["token_ids"] == cold["token_ids"]
    assert "Stored" in log and "Retrieved" in log, log[-3000:]


def test_server_is_stopped_when_the_body_fails(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="boom"):
        with running_server(backend=BACKEND_NAME, log_path=tmp_path / "server.log") as srv:
            pid = srv.pid
            raise RuntimeError("boom")
    assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text().lower()
