"""Shared pytest fixtures."""

from __future__ import annotations

import shutil
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
        pytest.skip("redis-server is not installed")
    from lmcache_ascend.integrations.lmcache.remote_servers import RedisServer

    with RedisServer(tmp_path / "redis.log") as server:
        yield server
