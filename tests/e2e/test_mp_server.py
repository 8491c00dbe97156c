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


@pytest.mark.slow  # one more server and engine; the hooks' names are pinned in the default run
def test_mp_timeline_sees_every_phase_of_a_real_warm_request(tmp_path: Path) -> None:
    """``benchmarks/mp_timeline.py`` against a real server and engine: every hook fires, the phases add up."""
    import json
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    cmd = [
        sys.executable, str(root / "benchmarks" / "mp_timeline.py"), "--setups", "ascend_cpu", "--model-dir", str(tmp_path / "model"),
        "--prefix-tokens", "1025", "--prompts", "1", "--warm-passes", "1", "--rounds", "1", "--json", "--plot", str(tmp_path / "t.png"),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=root)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["missing_hooks"] == []
    phases = result["phases_ms"]["ascend_cpu"]
    assert all(phases[p] > 0 for p in ("lookup", "prepare", "copy", "commit", "forward")), phases
    parts = sum(v for k, v in phases.items() if k != "total")
    assert abs(parts - phases["total"]) < 1e-6 * max(1.0, phases["total"]), phases  # one sample: medians add up exactly
