"""Facts about SGLang 0.5.3 and LMCache 0.5.6 the SGLang adapter relies on.

Each test fails, naming the fact, when an upgrade changes it; the hook
(``integrations/sglang/hook.py``) must then be revisited.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import textwrap
from typing import Any

import pytest
import torch

pytest.importorskip("sglang")

from sglang.srt.managers.scheduler import Scheduler  # noqa: E402
from sglang.srt.mem_cache.radix_cache import RadixCache  # noqa: E402
from sglang.srt.mem_cache.storage.lmcache import lmc_radix_cache  # noqa: E402

from lmcache_ascend.core.devices import get_device  # noqa: E402
from lmcache_ascend.integrations.sglang import hook  # noqa: E402
from lmcache_ascend.integrations.sglang.lmcache_connector import SGLangLMCacheConnector  # noqa: E402

UPSTREAM = lmc_radix_cache.LMCRadixCache


def tree(obj: Any) -> ast.AST:
    return ast.parse(textwrap.dedent(inspect.getsource(obj)))


def self_attributes_assigned(function: Any) -> set[str]:
    return {
        node.attr
        for node in ast.walk(tree(function))
        if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store) and isinstance(node.value, ast.Name) and node.value.id == "self"
    }


def methods_called_on(cls: type, attribute: str) -> set[str]:
    """Names ``m`` in ``self.<attribute>.m(...)`` anywhere in ``cls``."""
    found = set()
    for node in ast.walk(tree(cls)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner = node.func.value
            if isinstance(owner, ast.Attribute) and owner.attr == attribute and isinstance(owner.value, ast.Name) and owner.value.id == "self":
                found.add(node.func.attr)
    return found


def test_scheduler_imports_lmc_radix_cache_lazily_and_passes_known_keywords() -> None:
    body = tree(Scheduler.init_memory_pool_and_cache)
    imports = [n for n in ast.walk(body) if isinstance(n, ast.ImportFrom) and n.module == hook.TARGET_MODULE]
    assert [alias.name for n in imports for alias in n.names] == [hook.TARGET_NAME], "the scheduler no longer imports LMCRadixCache lazily"
    calls = [n for n in ast.walk(body) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == hook.TARGET_NAME]
    assert len(calls) == 1 and not calls[0].args
    assert {k.arg for k in calls[0].keywords} <= set(hook.EXPECTED_PARAMETERS)


def test_upstream_state_is_all_rebuilt_by_our_constructor() -> None:
    from lmcache_ascend.integrations.sglang.radix_cache import AscendLMCRadixCache

    upstream = self_attributes_assigned(UPSTREAM.__init__)
    assert upstream == {"lmcache_connector", "load_stream", "store_stream", "layer_done_executor", "_in_flight_nodes", "_node_lock"}
    assert upstream <= self_attributes_assigned(AscendLMCRadixCache.__init__)


def test_radix_cache_calls_only_connector_methods_we_have() -> None:
    called = methods_called_on(UPSTREAM, "lmcache_connector")
    assert called == {"chunk_size", "start_load_kv", "store_kv"}
    assert all(callable(getattr(SGLangLMCacheConnector, name)) for name in called)


def test_streams_are_only_entered_with_torch_cuda_stream_and_synchronized() -> None:
    """Outside its constructor, LMCRadixCache uses its streams in exactly two ways."""
    uses = set()
    for name, method in inspect.getmembers(UPSTREAM, inspect.isfunction):
        if method.__qualname__.split(".")[0] != "LMCRadixCache" or name == "__init__":
            continue
        for node in ast.walk(tree(method)):
            for child in ast.iter_child_nodes(node):
                if not (isinstance(child, ast.Attribute) and child.attr in ("load_stream", "store_stream")):
                    continue
                if isinstance(node, ast.Call):
                    uses.add(("argument of", ast.unparse(node.func)))
                elif isinstance(node, ast.Attribute):
                    uses.add(("method", node.attr))
                else:
                    uses.add(("other", ast.unparse(node)))
    assert uses == {("argument of", "torch.cuda.stream"), ("method", "synchronize")}


def test_torch_cuda_stream_is_a_no_op_without_cuda() -> None:
    assert not torch.cuda.is_available()
    stream = get_device("cpu").new_stream()
    with torch.cuda.stream(stream):  # what LMCRadixCache.match_prefix / cache_finished_req do
        pass
    stream.synchronize()  # what LMCRadixCache.evict does


def test_radix_cache_constructor_takes_what_we_pass() -> None:
    params = inspect.signature(RadixCache.__init__).parameters
    for name in ("req_to_token_pool", "token_to_kv_pool_allocator", "page_size", "disable", "enable_kv_cache_events", "eviction_policy"):
        assert name in params, name
    assert UPSTREAM.__mro__[1] is RadixCache


def test_lmcache_sglang_metadata_carry_the_fields_we_read() -> None:
    from lmcache.integration.sglang.sglang_adapter import LoadMetadata, StoreMetadata

    assert {"token_ids", "slot_mapping", "offset"} <= {f.name for f in dataclasses.fields(LoadMetadata)}
    assert {"token_ids", "kv_indices", "offset"} <= {f.name for f in dataclasses.fields(StoreMetadata)}


def test_lmcache_engine_name_and_layerwise_check() -> None:
    from lmcache.integration.sglang.utils import ENGINE_NAME
    from lmcache.v1.gpu_connector.utils import assert_layerwise_gpu_connector

    from lmcache_ascend.integrations.sglang.device_connectors import SGLangLayerwiseKVConnector

    assert ENGINE_NAME == "sglang-instance"
    assert_layerwise_gpu_connector(SGLangLayerwiseKVConnector(num_layers=1, hidden_dim=8, use_mla=False, device="cpu"))


def test_upstream_connector_cannot_serve_this_lmcache() -> None:
    """Why the hook exists: SGLang 0.5.3 builds LMCache 0.5.6's connector without its
    required ``config_file``, and LMCache's SGLang engine set-up only knows CUDA."""
    from lmcache.integration.sglang.sglang_adapter import LMCacheLayerwiseConnector

    params = inspect.signature(LMCacheLayerwiseConnector.__init__).parameters
    assert params["config_file"].default is inspect.Parameter.empty
    radix_init = tree(UPSTREAM.__init__)
    keywords = {k.arg for n in ast.walk(radix_init) if isinstance(n, ast.Call) and ast.unparse(n.func) == "LMCacheLayerwiseConnector" for k in n.keywords}
    assert "config_file" not in keywords
    assert "torch.cuda.Stream" in {ast.unparse(n.func) for n in ast.walk(radix_init) if isinstance(n, ast.Call)}
