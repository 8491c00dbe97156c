"""The host core's settings (``kernels/host.py``, ``kernels/dispatch.py``): read from the
environment on every call, parsed once per distinct value.

A parse is remembered by the raw string, so these pin that a changed setting still
takes effect on the next call and that a bad one is refused on every call, not once.
"""

from __future__ import annotations

import pytest

from lmcache_ascend.kernels import dispatch, host


def test_thread_count_follows_the_environment_between_calls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(host.THREAD_POOL_ENV, raising=False)
    monkeypatch.setenv(host.NUM_THREADS_ENV, "3")
    assert host.num_threads() == 3
    monkeypatch.setenv(host.NUM_THREADS_ENV, "5")
    assert host.num_threads() == 5
    monkeypatch.delenv(host.NUM_THREADS_ENV)
    assert host.num_threads() == min(host._kvcore.hardware_threads(), 16)


@pytest.mark.parametrize("value", ["0", "-2", "four", ""])
def test_bad_thread_count_is_refused_on_every_call(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv(host.NUM_THREADS_ENV, value)
    for _ in range(2):
        with pytest.raises(ValueError, match=host.NUM_THREADS_ENV):
            host.num_threads()


def test_backend_follows_the_environment_between_calls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(dispatch.BACKEND_ENV, "torch")
    assert dispatch.use_host(True, lambda: "unused") is False
    monkeypatch.setenv(dispatch.BACKEND_ENV, " Host ")
    assert dispatch.use_host(True, lambda: "unused") is True
    with pytest.raises(ValueError, match="LMCACHE_ASCEND_KERNEL_BACKEND=host but the object is on npu:0"):
        dispatch.use_host(False, lambda: "the object is on npu:0")
    monkeypatch.delenv(dispatch.BACKEND_ENV)
    assert dispatch.use_host(True, lambda: "unused") is True
    assert dispatch.use_host(False, lambda: "unused") is False


def test_bad_backend_is_refused_on_every_call(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(dispatch.BACKEND_ENV, "gpu")
    for _ in range(2):
        with pytest.raises(ValueError, match=dispatch.BACKEND_ENV):
            dispatch.backend_setting()


def test_streaming_follows_the_environment_between_calls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(host.STREAMING_ENV, "off")
    assert host.use_streaming(host.STREAMING_MIN_BYTES) is False
    monkeypatch.setenv(host.STREAMING_ENV, "on")
    assert host.use_streaming(1) is True
    monkeypatch.setenv(host.STREAMING_ENV, "never")
    for _ in range(2):
        with pytest.raises(ValueError, match=host.STREAMING_ENV):
            host.use_streaming(1)


@pytest.mark.parametrize("value,threshold", [("on", 0), (" Off ", 2**63 - 1), ("auto", host.STREAMING_MIN_BYTES), (None, host.STREAMING_MIN_BYTES)])
def test_block_op_settings_agree_with_use_streaming(monkeypatch: pytest.MonkeyPatch, value: str | None, threshold: int) -> None:
    """``copy_settings`` is the block ops' one read of the three settings: the threshold
    the core applies must decide as ``use_streaming`` does, on both sides of it."""
    monkeypatch.setenv(host.NUM_THREADS_ENV, "3")
    monkeypatch.delenv(host.THREAD_POOL_ENV, raising=False)
    if value is None:
        monkeypatch.delenv(host.STREAMING_ENV, raising=False)
    else:
        monkeypatch.setenv(host.STREAMING_ENV, value)
    assert host.copy_settings() == (3, threshold)
    # "off": no transfer reaches the threshold (2**63 - 1 bytes)
    for nbytes in (threshold, threshold - 1) if threshold < 2**63 - 1 else (2**62,):
        if nbytes >= 0:
            assert host.use_streaming(nbytes) is (nbytes >= threshold)
    monkeypatch.setenv(host.NUM_THREADS_ENV, "2")
    assert host.copy_settings()[0] == 2


@pytest.mark.parametrize("env", [host.NUM_THREADS_ENV, host.THREAD_POOL_ENV, host.STREAMING_ENV])
def test_block_op_settings_refuse_a_bad_value_on_every_call(monkeypatch: pytest.MonkeyPatch, env: str) -> None:
    monkeypatch.setenv(env, "bogus")
    for _ in range(2):
        with pytest.raises(ValueError, match=env):
            host.copy_settings()
