"""Fixtures shared by the kernel tests."""

from __future__ import annotations

import pytest

from lmcache_ascend.kernels import host


@pytest.fixture
def streaming(monkeypatch: pytest.MonkeyPatch) -> None:
    """The host core with non-temporal stores forced on (transfers below 4 MiB use ordinary ones)."""
    monkeypatch.setenv("LMCACHE_ASCEND_KERNEL_BACKEND", "host")
    monkeypatch.setenv(host.STREAMING_ENV, "on")
