"""The hook: what ``--enable-lmcache`` constructs, in this process and in spawned schedulers."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

pytest.importorskip("sglang")

from sglang.srt.mem_cache.storage.lmcache import lmc_radix_cache  # noqa: E402

from lmcache_ascend.integrations.sglang import hook  # noqa: E402

REPO = Path(__file__).resolve().parents[3]
UPSTREAM = lmc_radix_cache.LMCRadixCache


def scheduler_import() -> type:
    """What SGLang 0.5.3's scheduler does when ``--enable-lmcache`` is set."""
    namespace: dict[str, Any] = {}
    exec("from sglang.srt.mem_cache.storage.lmcache.lmc_radix_cache import LMCRadixCache", namespace)
    return namespace["LMCRadixCache"]


def test_install_replaces_what_the_scheduler_imports_and_uninstall_restores_it() -> None:
    assert scheduler_import() is UPSTREAM and not hook.installed()
    hook.install()
    try:
        from lmcache_ascend.integrations.sglang.radix_cache import AscendLMCRadixCache

        assert scheduler_import() is AscendLMCRadixCache
        assert AscendLMCRadixCache.__mro__[1] is UPSTREAM
        hook.install()  # idempotent
        assert scheduler_import() is AscendLMCRadixCache and hook.installed()
    finally:
        hook.uninstall()
    assert scheduler_import() is UPSTREAM and not hook.installed()


def test_other_sglang_constructors_are_refused() -> None:
    class NewerRadixCache:  # SGLang's later LMCRadixCache takes CacheInitParams
        def __init__(self, params: Any, model_config: Any = None, tp_size: int = 1, rank: int = 0, tp_group: Any = None) -> None:
            pass

    with pytest.raises(RuntimeError, match=r"LMCRadixCache\(params, model_config, tp_size, rank, tp_group\) is not the constructor.*tested SGLang: 0\.5\.3"):
        hook.check_supported(NewerRadixCache)
    hook.check_supported(UPSTREAM)


def test_sglang_without_the_module_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hook, "TARGET_MODULE", "sglang.srt.mem_cache.storage.lmcache.no_such_module")
    with pytest.raises(RuntimeError, match="needs no hook.*--enable-lmcache --lmcache-config-file"):
        hook.install()
    assert not hook.installed()


@pytest.mark.parametrize("version", ["0.5.4", "0.5.20", "0.5.23"])
def test_untested_sglang_versions_are_refused_with_the_route_to_use(monkeypatch: pytest.MonkeyPatch, version: str) -> None:
    monkeypatch.setattr(hook, "sglang_version", lambda: version)
    with pytest.raises(RuntimeError, match=rf"supports SGLang 0\.5\.3, not {version}\. SGLang 0\.5\.21\+ needs no hook"):
        hook.install()
    assert not hook.installed()


def test_cuda_devices_keep_upstream_construction(monkeypatch: pytest.MonkeyPatch, hooked: type) -> None:
    from lmcache_ascend.integrations.sglang import radix_cache

    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(UPSTREAM, "__init__", lambda self, **kwargs: calls.append(kwargs))

    def refuse(kvcache: Any) -> None:
        raise AssertionError("a CUDA pool must not reach lmcache_ascend's pool reader")

    monkeypatch.setattr(radix_cache, "describe_pool", refuse)
    allocator = SimpleNamespace(device="cuda:0")
    cache = hooked(req_to_token_pool="r", token_to_kv_pool_allocator=allocator, page_size=1, model_config="m", tp_size=2, rank=1, tp_group="g")
    assert calls == [
        dict(
            req_to_token_pool="r", token_to_kv_pool_allocator=allocator, page_size=1, disable=False, enable_kv_cache_events=False,
            eviction_policy="lru", model_config="m", tp_size=2, rank=1, tp_group="g",
        )
    ]
    assert not hasattr(cache, "lmcache_connector")


PROBE = textwrap.dedent(
    """
    import multiprocessing
    import sys

    if sys.argv[1] == "launcher":
        import lmcache_ascend.integrations.sglang.launch_server  # installs the hook at import


    def scheduler(queue):
        from sglang.srt.mem_cache.storage.lmcache.lmc_radix_cache import LMCRadixCache

        queue.put(LMCRadixCache.__module__ + "." + LMCRadixCache.__name__)


    if __name__ == "__main__":
        ctx = multiprocessing.get_context("spawn")  # what SGLang's engine uses
        queue = ctx.Queue()
        child = ctx.Process(target=scheduler, args=(queue,))
        child.start()
        print(queue.get())
        child.join()
        sys.exit(child.exitcode)
    """
)


@pytest.mark.parametrize(
    "mode, expected",
    [
        ("launcher", "lmcache_ascend.integrations.sglang.radix_cache.AscendLMCRadixCache"),
        ("plain", "sglang.srt.mem_cache.storage.lmcache.lmc_radix_cache.LMCRadixCache"),
    ],
)
def test_spawned_scheduler_processes_see_the_hook(tmp_path: Path, stub_path: Path, mode: str, expected: str) -> None:
    script = tmp_path / "start_sglang.py"
    script.write_text(PROBE)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(stub_path), str(REPO)]), LMCACHE_TRACK_USAGE="false")
    done = subprocess.run([sys.executable, str(script), mode], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == expected
