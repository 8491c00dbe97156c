"""Shared pytest fixtures."""

from __future__ import annotations

import shutil
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

BACKEND_ENV = "LMCACHE_ASCEND_KERNEL_BACKEND"


def _refuse(name: str):
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"{name} ran although another kernel backend was forced")

    return refuse


@pytest.fixture(params=["host", "torch"])
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Run the test once on the host C++ core and once on the device-generic torch path.

    The backend that must not run is replaced by a function that fails, so a
    test cannot silently exercise the wrong one.
    """
    from lmcache_ascend.kernels import host, torch_path

    name: str = request.param
    monkeypatch.setenv(BACKEND_ENV, name)
    if name == "host":
        monkeypatch.setattr(torch_path, "run_planes", _refuse("torch_path.run_planes"))
    else:
        monkeypatch.setattr(host, "run_planes", _refuse("host.run_planes"))
    yield name


@pytest.fixture
def gen() -> torch.Generator:
    """A seeded generator: every test sees the same random data on every run."""
    g = torch.Generator()
    g.manual_seed(20261123)
    return g


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[Any]:
    """Debian's redis-server on a free loopback port (``.url``), stopped afterwards; skips without it."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")  # named in the run's summary, see NOT_RUN_HINTS
    from testkit.remote_servers import RedisServer

    with RedisServer(tmp_path / "redis.log") as server:
        yield server


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Any]:
    """A 3 + 3 Redis Cluster on loopback (``tests.redis_topologies``); skips without redis-server,
    named in the run's "not run" summary like ``redis``."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    from tests.redis_topologies import RedisClusterSet, running

    yield from running(RedisClusterSet(tmp_path / "cluster"))


@pytest.fixture
def sentinel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Primary + replica + 3 sentinels on loopback, with LMCache's Sentinel settings in the
    environment; skips without redis-server, like ``redis``."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    from tests.redis_topologies import SERVICE, RedisSentinelSet, running

    monkeypatch.setenv("REDIS_SERVICE_NAME", SERVICE)
    monkeypatch.setenv("REDIS_TIMEOUT", "1")
    yield from running(RedisSentinelSet(tmp_path / "sentinel"))


# Skip reasons that mean "this machine cannot run these tests", and what runs
# them: printed as one section at the end of the run, so a missing component is
# never a silent skip among the -ra lines.
NOT_RUN_HINTS = {
    "redis-server is not installed": "remote-tier tests need Redis: apt-get install redis-server (Debian/Ubuntu)",
    "could not import 'mindspore'": "MindSpore flavour tests run in their own environment: bash scripts/ms_env.sh test",
    "needs SGLang 0.5.23": "SGLang 0.5.23 tests run in its own environment: bash scripts/sglang_env.sh test",
    "could not import 'sglang'": "SGLang 0.5.3 tests run in the main environment: bash scripts/dev.sh test",
    "could not import 'vllm'": "vLLM tests run in the main environment: bash scripts/dev.sh test",
}


def pytest_terminal_summary(terminalreporter: Any) -> None:
    counts: Counter[str] = Counter()
    for report in terminalreporter.stats.get("skipped", []):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        for needle, hint in NOT_RUN_HINTS.items():
            if needle in reason:
                counts[hint] += 1
    if counts:
        terminalreporter.write_sep("=", "not run on this machine")
        for hint, n in counts.most_common():
            terminalreporter.write_line(f"{n:5d} skipped: {hint}")
