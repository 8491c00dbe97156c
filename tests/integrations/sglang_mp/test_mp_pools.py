"""SGLang 0.5.23's real KV pools through LMCache 0.5.6's real SGLang MP adapter:
lmcache_ascend's ops (the ``ascend_cpu`` backend) vs LMCache's own CPU ops, byte
for byte.

The tensors are registered exactly as SGLang's ``LMCacheUnifiedRadixCache`` does:
by constructing LMCache's ``UnifiedLMCacheMPConnector`` on the pool's real
allocator, so its own ``SGLangUnifiedKVAdapter.resolve_registered_groups()`` and
``_to_wire_block_tensor(...)`` (with the flags its ``__init__`` picks) run. Only
the network is replaced: the request client answers the chunk size, and the
transfer context records what ``register_kv_cache`` hands it (layout hints,
engine type, blocks per chunk). LMCache's engine-driven ``gather_paged_kv_to_cpu``
/ ``scatter_cpu_to_paged_kv`` then move the KV with those arguments, the ops
swapped as in ``tests/integrations/lmcache/test_mp_ops_parity.py``.

Checked: registration (views of SGLang's buffers; format 18 for MHA, 3 for MLA);
identical chunk bytes, equal to the rows read through SGLang's own pool API;
identical pools after a scatter into zeroed SGLang pools, with blocks out of
order and a skipped prefix, and rows not named left untouched. Pools the route
cannot carry: refused at registration by upstream (pinned), or, where upstream
registers them anyway, refused by the guard at start-up naming the pool (and by our
op with a clear error should a store get that far).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest
import torch
from lmcache.utils import EngineType
from lmcache.v1.gpu_connector.utils import normalize_kv_and_discover_format
from lmcache.v1.multiprocess.transfer_context import base as transfer_base

from lmcache_ascend.integrations.lmcache.sglang_mp_guard import check_registrable
from tests.integrations.lmcache.test_mp_ops_parity import _bind

CHUNK_TOKENS = 32  # the chunk size the "server" reports
NUM_CHUNKS = 3
MHA_GEOM = dict(head_num=3, head_dim=8, layer_num=2)
MLA_GEOM = dict(kv_lora_rank=16, qk_rope_head_dim=8, layer_num=3)
FP8 = torch.float8_e4m3fn
# id: (attention, dtype, page_size)
POOLS: dict[str, tuple[str, torch.dtype, int]] = {
    f"{arch}-{name}-ps{ps}": (arch, dtype, ps)
    for arch in ("MHA", "MLA")
    for name, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32))
    for ps in (1, 16)
}
POOLS["MHA-fp8-ps16"] = ("MHA", FP8, 16)  # stored as uint8 by SGLang


# ------------------------------------------------------------ LMCache stand-ins


@dataclass
class _Answer:
    value: int

    def result(self, timeout: float | None = None) -> int:
        return self.value


class _ChunkSizeClient:
    """The request client: only the chunk-size query is asked during ``__init__``."""

    def __init__(self, chunk: int) -> None:
        self.chunk = chunk

    def get_chunk_size(self) -> _Answer:
        return _Answer(self.chunk)


@dataclass
class _RecordingContext:
    """The transfer context: records ``register(...)`` instead of reaching a server."""

    calls: list[dict[str, Any]] = field(default_factory=list)

    def register(self, kv_caches: dict[str, torch.Tensor], model: str, world_size: int, blocks_in_chunk: int, timeout: float, **kw: Any) -> None:
        self.calls.append(dict(kv_caches=kv_caches, blocks_in_chunk=blocks_in_chunk, **kw))


@dataclass
class Registered:
    pool: Any
    kv_caches: dict[str, torch.Tensor]
    register_call: dict[str, Any]
    connector: Any = None

    def sglang_buffers(self) -> list[torch.Tensor]:
        """The pool's per-component buffers through SGLang's API, in LMCache's order."""
        layers = range(self.pool.start_layer, self.pool.start_layer + self.pool.layer_num)
        keys = [self.pool.get_key_buffer(i) for i in layers]
        if hasattr(self.pool, "kv_buffer"):  # MLA: one buffer a layer
            return keys
        return keys + [self.pool.get_value_buffer(i) for i in layers]


@pytest.fixture
def register(sglang_cpu: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """``register(pool, mla)``: LMCache's ``UnifiedLMCacheMPConnector`` built on ``pool``."""
    from lmcache.integration.sglang.unified_lmcache_mp_connector import UnifiedLMCacheMPConnector
    from lmcache.v1.multiprocess import transfer_context
    from lmcache.v1.multiprocess.transport.factory import RequestClientFactory
    from sglang.srt.configs.model_config import AttentionArch
    from sglang.srt.mem_cache.allocator.paged import PagedTokenToKVPoolAllocator
    from sglang.srt.mem_cache.allocator.token import TokenToKVPoolAllocator
    from sglang.srt.mem_cache.memory_pool import ReqToTokenPool
    from sglang.srt.mem_cache.unified_cache.components import ComponentType

    config = tmp_path / "lmcache.yaml"
    config.write_text("mp_host: 127.0.0.1\nmp_port: 1\n")  # never dialled
    monkeypatch.setattr(RequestClientFactory, "create", staticmethod(lambda url, **kw: _ChunkSizeClient(CHUNK_TOKENS)))

    def build(pool: Any, mla: bool) -> Registered:
        ctx = _RecordingContext()
        monkeypatch.setattr(transfer_context, "create_transfer_context", lambda *a, **kw: ctx)
        ps = pool.page_size
        allocator = (
            TokenToKVPoolAllocator(pool.size, pool.dtype, "cpu", pool, need_sort=False)
            if ps == 1
            else PagedTokenToKVPoolAllocator(pool.size, ps, pool.dtype, "cpu", pool, need_sort=False)
        )
        arch = "DeepseekV2ForCausalLM" if mla else "LlamaForCausalLM"
        model_config = SimpleNamespace(
            attention_arch=AttentionArch.MLA if mla else AttentionArch.MHA,
            hf_config=SimpleNamespace(architectures=[arch]),
            model_path="org/tiny-model",
        )
        connector = UnifiedLMCacheMPConnector(  # the arguments LMCacheUnifiedRadixCache passes
            config_file=str(config), model_config=model_config, tp_size=1, tp_rank=0, tp_group=None,
            page_size=ps, token_to_kv_pool_allocator=allocator,
            req_to_token_pool=ReqToTokenPool(size=2, max_context_len=64, device="cpu", enable_memory_saver=False),
            tree_components=(ComponentType.FULL,), mamba_component=None, sliding_window_size=None,
        )  # fmt: skip
        assert len(ctx.calls) == 1
        return Registered(pool, connector._kv_caches, ctx.calls[0], connector)

    return build


def make_pool(arch: str, dtype: torch.dtype, page_size: int, gen: torch.Generator | None = None) -> Any:
    """A real SGLang pool: 8 pages of 16 tokens, or 128 one-token pages; random if ``gen``."""
    from sglang.srt.mem_cache.memory_pool import MHATokenToKVPool, MLATokenToKVPool

    size = 112 if page_size == 16 else 127  # + one padding page: 128 rows
    common = dict(size=size, page_size=page_size, dtype=dtype, device="cpu", enable_memory_saver=False)
    pool = MHATokenToKVPool(**common, **MHA_GEOM) if arch == "MHA" else MLATokenToKVPool(**common, **MLA_GEOM)
    if gen is not None:
        for buf in pool.kv_buffer if arch == "MLA" else [*pool.k_buffer, *pool.v_buffer]:
            if buf.dtype == torch.uint8:
                buf.copy_(torch.randint(0, 256, buf.shape, generator=gen, dtype=torch.int64).to(torch.uint8))
            else:
                buf.copy_(torch.randn(buf.shape, generator=gen).to(buf.dtype))
    return pool


def as_rows(buf: torch.Tensor, page_size: int) -> torch.Tensor:
    """``[pages, page_size, row bytes]`` view of one SGLang buffer."""
    return buf.view(torch.uint8).reshape(buf.shape[0] // page_size, page_size, -1)


def _format(reg: Registered) -> int:
    fmt, _ = normalize_kv_and_discover_format(
        list(reg.kv_caches.values()), reg.register_call["engine_type"], layout_hints=reg.register_call["layout_hints"]
    )
    return int(fmt)


# ------------------------------------------------------------------ tests


@pytest.mark.parametrize("pool_id", list(POOLS))
def test_registration_is_lmcaches_view_of_the_sglang_pool(register: Any, pool_id: str) -> None:
    """What ``register_kv_cache`` receives: zero-copy block views of SGLang's own
    buffers (K layers, then V layers), unified hints, SGLang engine type, blocks per
    chunk from the server's chunk size; LMCache detects format 18 (MHA) or 3 (MLA)."""
    arch, dtype, ps = POOLS[pool_id]
    reg = register(make_pool(arch, dtype, ps), arch == "MLA")
    call = reg.register_call
    assert call["kv_caches"] is reg.kv_caches
    assert call["layout_hints"] == {"kv_list_layout": "unified"}
    assert call["engine_type"] is EngineType.SGLANG and call["blocks_in_chunk"] == CHUNK_TOKENS // ps
    buffers = reg.sglang_buffers()
    assert list(reg.kv_caches) == [f"kv_{i}" for i in range(len(buffers))]
    for wire, buf in zip(reg.kv_caches.values(), buffers, strict=True):
        assert wire.data_ptr() == buf.data_ptr() and wire.shape[:2] == (128 // ps, ps)
        assert wire.shape[2:] == (buf.shape[1:] if arch == "MHA" else (buf.shape[1] * buf.shape[2],))
    assert _format(reg) == (18 if arch == "MHA" else 3)
    check_registrable(reg.connector)  # one kind of tensor: the guard lets it register


def _gather_scatter(register: Any, which: str, src: Registered, arch: str, dtype: torch.dtype, ps: int, block_ids: list[int], skip_tokens: int) -> tuple[list[torch.Tensor], Registered]:
    """LMCache's engine-driven store of ``block_ids`` from ``src``, then its load into a
    zeroed SGLang pool, with the ops ``which`` names and the registered arguments."""
    call = src.register_call
    kw = dict(layout_hints=call["layout_hints"], engine_type=call["engine_type"])
    with pytest.MonkeyPatch.context() as m:
        _bind(m, which)
        chunks = transfer_base.gather_paged_kv_to_cpu(src.kv_caches, block_ids, call["blocks_in_chunk"], **kw)
        target = register(make_pool(arch, dtype, ps), arch == "MLA")
        transfer_base.scatter_cpu_to_paged_kv(target.kv_caches, block_ids, chunks, call["blocks_in_chunk"], skip_tokens, **kw)
    return chunks, target


@pytest.mark.parametrize("skip", ["none", "one-block", "past-first-chunk"])
@pytest.mark.parametrize("pool_id", list(POOLS))
def test_store_and_load_ours_equal_lmcache(register: Any, gen: torch.Generator, pool_id: str, skip: str) -> None:
    """Identical chunk bytes and identical loaded pools, ours vs LMCache's CPU ops;
    both equal what SGLang's pool API holds for the named blocks, and a load writes
    only the named blocks past the skipped prefix."""
    arch, dtype, ps = POOLS[pool_id]
    src = register(make_pool(arch, dtype, ps, gen), arch == "MLA")
    per_chunk = src.register_call["blocks_in_chunk"]
    pages = 128 // ps
    block_ids = [1 + int(i) for i in torch.randperm(pages - 1, generator=gen)[: NUM_CHUNKS * per_chunk]]
    assert block_ids != sorted(block_ids)
    skip_blocks = {"none": 0, "one-block": 1, "past-first-chunk": per_chunk + 1}[skip]

    (chunks, target), (base_chunks, base_target) = (
        _gather_scatter(register, which, src, arch, dtype, ps, block_ids, skip_blocks * ps) for which in ("ours", "lmcache")
    )
    buffers = src.sglang_buffers()
    assert len(chunks) == len(base_chunks) == NUM_CHUNKS
    for c, (ours, theirs) in enumerate(zip(chunks, base_chunks, strict=True)):
        assert ours.shape == theirs.shape and ours.shape[:2] == (len(buffers), CHUNK_TOKENS)
        assert torch.equal(ours.view(torch.uint8), theirs.view(torch.uint8))
        named = block_ids[c * per_chunk : (c + 1) * per_chunk]
        expect = torch.stack([as_rows(b, ps)[named].reshape(CHUNK_TOKENS, -1) for b in buffers])
        assert torch.equal(ours.view(torch.uint8).reshape(expect.shape), expect)

    loaded = block_ids[skip_blocks:]
    untouched = [b for b in range(pages) if b not in loaded]  # padding page 0, skipped, unnamed
    assert 0 in untouched and (skip_blocks == 0 or block_ids[0] in untouched)
    for ours, theirs, orig in zip(target.sglang_buffers(), base_target.sglang_buffers(), buffers, strict=True):
        assert torch.equal(ours.view(torch.uint8), theirs.view(torch.uint8))
        assert torch.equal(as_rows(ours, ps)[loaded], as_rows(orig, ps)[loaded])
        assert not as_rows(ours, ps)[untouched].any()


# ------------------------------------------------------- pools the route refuses


def test_hnd_mha_pool_is_refused_at_registration(register: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Pin (upstream): SGLang's HND layout (``SGLANG_USE_HND_KVCACHE=1``) is refused
    when the connector is built, naming the supported pool kind."""
    monkeypatch.setenv("SGLANG_USE_HND_KVCACHE", "1")
    pool = make_pool("MHA", torch.bfloat16, 16)
    assert pool.kv_cache_layout == "hnd"
    with pytest.raises(NotImplementedError, match=r"^LMCacheUnifiedRadixCache currently supports NHD MHA pools only$"):
        register(pool, False)


def test_k_only_pool_is_refused_naming_the_pool(register: Any) -> None:
    """Pin (upstream): a pool without V buffers is refused by its class name."""
    from sglang.srt.mem_cache.memory_pool import MHATokenToKOnlyPool

    pool = MHATokenToKOnlyPool(size=112, page_size=16, dtype=torch.bfloat16, device="cpu", enable_memory_saver=False, **MHA_GEOM)
    with pytest.raises(NotImplementedError, match=r"^Unsupported SGLang KV pool for LMCache MP: MHATokenToKOnlyPool$"):
        register(pool, False)


def test_empty_mla_pool_is_refused(register: Any) -> None:
    """Pin (upstream): an MLA pool with no layers is refused."""
    from sglang.srt.mem_cache.memory_pool import MLATokenToKVPool

    pool = MLATokenToKVPool(size=112, page_size=16, dtype=torch.bfloat16, device="cpu", enable_memory_saver=False, **{**MLA_GEOM, "layer_num": 0})
    with pytest.raises(NotImplementedError, match=r"^LMCache cannot register an empty MLA pool$"):
        register(pool, True)


def _first_store(reg: Registered, which: str) -> None:
    call = reg.register_call
    with pytest.MonkeyPatch.context() as m:
        _bind(m, which)
        transfer_base.gather_paged_kv_to_cpu(
            reg.kv_caches, [1, 2] * call["blocks_in_chunk"], call["blocks_in_chunk"],
            layout_hints=call["layout_hints"], engine_type=call["engine_type"],
        )  # fmt: skip


def test_mha_pool_with_other_v_head_dim_is_refused_naming_the_pool(register: Any) -> None:
    """K rows of 8 and V rows of 4 per head. LMCache's connector registers it and its
    torch path fails obscurely at the first store; our op refuses clearly, naming the
    tensor whose shape differs; our guard refuses it before registration, naming the pool."""
    from sglang.srt.mem_cache.memory_pool import MHATokenToKVPool

    pool = MHATokenToKVPool(size=112, page_size=16, dtype=torch.bfloat16, device="cpu", enable_memory_saver=False, **{**MHA_GEOM, "v_head_dim": 4})
    reg = register(pool, False)
    assert _format(reg) == 18
    with pytest.raises(ValueError, match=r"paged_buffer_ptrs_tensor\[2\] has shape \[8, 16, 3, 4\], expected \[8, 16, 3, 8\]"):
        _first_store(reg, "ours")
    with pytest.raises(RuntimeError, match="must match the size"):
        _first_store(reg, "lmcache")
    # In SGLang's scheduler the ascend_cpu backend's guard refuses it at start-up, naming the pool.
    with pytest.raises(ValueError, match=r"SGLang's MHATokenToKVPool cannot use LMCache on host memory.*2 kinds \(\[16, 3, 4\] bfloat16; \[16, 3, 8\] bfloat16\)"):
        check_registrable(reg.connector)


def test_dsa_pool_is_refused_naming_the_pool(register: Any) -> None:
    """A DSA pool adds its 2-D indexer buffers as ``[NB, 1, 1, bytes]`` next to the MLA
    ones; LMCache detects format 3 from the first tensor, registers it, and its torch
    path fails obscurely at the first store; our op refuses clearly, naming the indexer
    tensor; our guard refuses it before registration, naming the pool."""
    from sglang.srt.mem_cache.memory_pool import DSATokenToKVPool
    from sglang.srt.runtime_context import get_parallel

    dsa_chunk = 128  # DSA pages hold 64 tokens; the chunk must be a multiple
    with get_parallel().override(attn_dcp_size=1):
        pool = DSATokenToKVPool(
            size=128, page_size=64, kv_lora_rank=16, dtype=torch.bfloat16, qk_rope_head_dim=8, layer_num=2,
            device="cpu", index_head_dim=128, enable_memory_saver=False, kv_cache_dim=24,
        )  # fmt: skip
    with pytest.MonkeyPatch.context() as m:
        from lmcache.v1.multiprocess.transport.factory import RequestClientFactory

        m.setattr(RequestClientFactory, "create", staticmethod(lambda url, **kw: _ChunkSizeClient(dsa_chunk)))
        reg = register(pool, True)
    shapes = [tuple(t.shape) for t in reg.kv_caches.values()]
    assert shapes == [(3, 64, 24), (3, 64, 24), (3, 1, 1, 8448), (3, 1, 1, 8448)]
    assert _format(reg) == 3
    with pytest.raises(ValueError, match=r"paged_buffer_ptrs_tensor\[2\] has shape \[3, 1, 1, 8448\], expected \[3, 64, 24\]"):
        _first_store(reg, "ours")
    with pytest.raises(RuntimeError, match="same scalar type"):
        _first_store(reg, "lmcache")
    with pytest.raises(ValueError, match=r"SGLang's DSATokenToKVPool cannot use LMCache on host memory"):
        check_registrable(reg.connector)
