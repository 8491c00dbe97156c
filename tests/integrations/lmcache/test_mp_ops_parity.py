"""Every op LMCache's multi-process path calls on a CPU host, ours vs LMCache's torch
baseline, with the call shapes that path uses (facts: LMCache 0.5.6 MP mode):

- engine-driven (vLLM worker): ``multi_layer_block_kv_transfer`` with per-layer
  paged tensors, chunk tensors ``[NL, chunk, NH * CS]``, block ids as a list;
- engine-driven (SGLang 0.5.23 worker): the same op through LMCache's
  ``gather_paged_kv_to_cpu`` / ``scatter_cpu_to_paged_kv`` on SGLang's
  "unified" flat list, one tensor per K or V component: ``[NB, BS, NH, HS]``
  (format 18) or, for MLA, ``[NB, BS, HS]`` (format 3);
- LMCache-driven (server): the same op with a pointer tensor for the paged
  layers and pointers for 1 to 4 temporary chunk buffers;
- host pool: ``alloc_pinned_ptr`` / ``free_pinned_ptr``; ``lmcache_memcpy_async``.

Stored chunks must be byte-identical, and loads must leave identical caches.
"""

from __future__ import annotations

import ctypes

import pytest
import torch
from lmcache.lmcache_native import PageBufferShapeDesc
from lmcache.utils import EngineType
from lmcache.v1.gpu_connector.utils import make_page_buffer_shape_desc, normalize_kv_and_discover_format
from lmcache.v1.multiprocess.transfer_context import base as transfer_base
from lmcache.v1.platform import torch_ops as baseline
from lmcache.v1.platform.devices.cpu.device_ops import CpuDeviceOps

import lmcache_ascend.ops as ops
from lmcache_ascend.integrations.lmcache.device_plugin import AscendCpuDeviceOps

NL, NB, NH, BS, HS = 3, 12, 2, 32, 8
CS = 2 * HS
CHUNK = 64
D2H, H2D = 1, 0
FMT_CPU = 12  # vLLM CPU: per layer [NB, NH, BS, 2 * HS]


def _desc() -> PageBufferShapeDesc:
    d = PageBufferShapeDesc()
    d.kv_size, d.nl, d.nb, d.bs, d.nh, d.hs = 1, NL, NB, BS, NH, CS
    d.element_size, d.block_stride_elems, d.dtype = 2, 0, torch.bfloat16
    return d


def _paged(gen: torch.Generator) -> list[torch.Tensor]:
    return [torch.randn(NB, NH, BS, CS, generator=gen).to(torch.bfloat16) for _ in range(NL)]


def _chunks(n: int) -> list[torch.Tensor]:
    return [torch.zeros(NL, CHUNK, NH * CS, dtype=torch.bfloat16) for _ in range(n)]


BLOCKS = [7, 2, 9, 0, 11, 4]  # three chunks of two blocks


@pytest.mark.parametrize("skip", [0, 1, 3])
def test_engine_driven_tensor_path(gen: torch.Generator, skip: int) -> None:
    paged = _paged(gen)
    ours, theirs = _chunks(3), _chunks(3)
    ops.multi_layer_block_kv_transfer(paged, ours, list(BLOCKS), "cpu", D2H, _desc(), CHUNK, FMT_CPU, skip)
    baseline.multi_layer_block_kv_transfer(paged, theirs, list(BLOCKS), torch.device("cpu"), D2H, _desc(), CHUNK, FMT_CPU, skip)
    for a, b in zip(ours, theirs):
        assert torch.equal(a.view(torch.uint8), b.view(torch.uint8))
    assert any(c.abs().sum() > 0 for c in ours)

    back_ours, back_theirs = [torch.zeros_like(t) for t in paged], [torch.zeros_like(t) for t in paged]
    ops.multi_layer_block_kv_transfer(back_ours, theirs, list(BLOCKS), "cpu", H2D, _desc(), CHUNK, FMT_CPU, skip)
    baseline.multi_layer_block_kv_transfer(back_theirs, ours, list(BLOCKS), torch.device("cpu"), H2D, _desc(), CHUNK, FMT_CPU, skip)
    for a, b in zip(back_ours, back_theirs):
        assert torch.equal(a, b)


@pytest.mark.parametrize("objects", [1, 2, 3])
def test_lmcache_driven_pointer_path(gen: torch.Generator, objects: int) -> None:
    paged = _paged(gen)
    ptrs = torch.tensor([t.data_ptr() for t in paged], dtype=torch.int64)
    blocks = torch.tensor(BLOCKS[: 2 * objects], dtype=torch.int64)
    ours, theirs = _chunks(objects), _chunks(objects)
    ops.multi_layer_block_kv_transfer(ptrs, [c.data_ptr() for c in ours], blocks, "cpu", D2H, _desc(), CHUNK, FMT_CPU, 0)
    baseline.multi_layer_block_kv_transfer(ptrs, [c.data_ptr() for c in theirs], blocks, torch.device("cpu"), D2H, _desc(), CHUNK, FMT_CPU, 0)
    for a, b in zip(ours, theirs):
        assert torch.equal(a.view(torch.uint8), b.view(torch.uint8))

    target_ours, target_theirs = _paged(gen), None
    target_theirs = [t.clone() for t in target_ours]
    t_ptrs_ours = torch.tensor([t.data_ptr() for t in target_ours], dtype=torch.int64)
    t_ptrs_theirs = torch.tensor([t.data_ptr() for t in target_theirs], dtype=torch.int64)
    ops.multi_layer_block_kv_transfer(t_ptrs_ours, [c.data_ptr() for c in ours], blocks, "cpu", H2D, _desc(), CHUNK, FMT_CPU, 1)
    baseline.multi_layer_block_kv_transfer(t_ptrs_theirs, [c.data_ptr() for c in theirs], blocks, torch.device("cpu"), H2D, _desc(), CHUNK, FMT_CPU, 1)
    for a, b in zip(target_ours, target_theirs):
        assert torch.equal(a, b)


def test_host_pool_allocation_like_lmcache_uses_it() -> None:
    size = 3 * 4096 + 123
    ptr = ops.alloc_pinned_ptr(size, 0)
    try:
        assert ptr % 4096 == 0
        view = (ctypes.c_uint8 * size).from_address(ptr)
        assert bytes(view) == bytes(size)  # zero-filled, every page touched
        view[size - 1] = 7
    finally:
        ops.free_pinned_ptr(ptr)
    with pytest.raises(ValueError, match="ptr"):
        ops.free_pinned_ptr(ptr)


def test_memcpy_async_pointer_mode_matches_baseline(gen: torch.Generator) -> None:
    src = torch.randint(0, 255, (10_000,), dtype=torch.uint8, generator=gen)
    ours, theirs = torch.zeros_like(src), torch.zeros_like(src)
    ops.lmcache_memcpy_async(ours.data_ptr() + 16, src.data_ptr(), 5000, D2H, 0, 4096)
    ops.lmcache_memcpy_async(ours, src, 300, H2D, 0, 4096)
    baseline._copy_bytes_with_tensor(theirs.data_ptr() + 16, src.data_ptr(), 5000)
    theirs[:300] = src[:300]
    assert torch.equal(ours, theirs)


# ------------------------------------------------ SGLang unified (formats 18 and 3)

UNIFIED = {"kv_list_layout": "unified"}
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
# (NL model layers, NB, BS, NH, HS); the pool registers 2 * NL tensors for MHA, NL for MLA.
GEOMS = {"L2-NH4": (2, 9, 4, 4, 8), "L3-NH1": (3, 7, 8, 1, 16), "L1-NH3-BS1": (1, 12, 1, 3, 5)}


def _unified_pool(mla: bool, geom: tuple[int, int, int, int, int], dtype: torch.dtype, gen: torch.Generator) -> list[torch.Tensor]:
    nl, nb, bs, nh, hs = geom
    shape = (nb, bs, hs) if mla else (nb, bs, nh, hs)
    count = nl if mla else 2 * nl  # all K components, then all V components
    return [torch.randn(shape, generator=gen).to(dtype) for _ in range(count)]


def _lmcache_shape_desc(pool: list[torch.Tensor]) -> tuple[int, PageBufferShapeDesc]:
    """Format and ``shape_desc`` exactly as LMCache's gather/scatter derive them."""
    fmt, normalized = normalize_kv_and_discover_format(pool, EngineType.SGLANG, layout_hints=UNIFIED)
    nb, bs = pool[0].shape[:2]
    return int(fmt), make_page_buffer_shape_desc(normalized, fmt, 0, len(pool), nb, bs)


def test_lmcache_detects_the_unified_formats(gen: torch.Generator) -> None:
    """The facts the tests below build on: 18 for MHA (kv_size 1, real heads), 3 for MLA."""
    fmt, desc = _lmcache_shape_desc(_unified_pool(False, GEOMS["L2-NH4"], torch.bfloat16, gen))
    assert (fmt, desc.kv_size, desc.nl, desc.nh, desc.hs) == (18, 1, 4, 4, 8)
    fmt, desc = _lmcache_shape_desc(_unified_pool(True, GEOMS["L2-NH4"], torch.bfloat16, gen))
    assert (fmt, desc.kv_size, desc.nl, desc.nh, desc.hs) == (3, 1, 2, 1, 8)


# (block ids, skip_prefix_n_blocks) with 2 blocks per chunk: arbitrary order, a
# partly filled last chunk, a skip into the second chunk, no blocks at all.
BLOCK_CASES = {"skip3-partial": ([6, 1, 4, 0, 5], 3), "one": ([2], 0), "empty": ([], 0)}


@pytest.mark.parametrize("case", list(BLOCK_CASES))
@pytest.mark.parametrize("paged_form", ["tensors", "pointers"])
@pytest.mark.parametrize("geom", list(GEOMS))
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("mla", [False, True], ids=["MHA-18", "MLA-3"])
def test_unified_block_transfer_matches_baseline(mla: bool, dtype: str, geom: str, paged_form: str, case: str, gen: torch.Generator) -> None:
    """Store then load with ``shape_desc`` from ``make_page_buffer_shape_desc``: the
    engine-driven call (tensors) and the server's (pointer tables, int objects)."""
    pool = _unified_pool(mla, GEOMS[geom], DTYPES[dtype], gen)
    fmt, desc = _lmcache_shape_desc(pool)
    blocks, skip = BLOCK_CASES[case]
    chunk = 2 * pool[0].shape[1]
    rows = desc.nh * desc.hs
    ours = [torch.randn(len(pool), chunk, rows, generator=gen).to(DTYPES[dtype]) for _ in range(3)]
    theirs = [c.clone() for c in ours]

    def paged(tensors: list[torch.Tensor]) -> object:
        return tensors if paged_form == "tensors" else torch.tensor([t.data_ptr() for t in tensors], dtype=torch.int64)

    def objects(chunks: list[torch.Tensor]) -> list:
        return chunks if paged_form == "tensors" else [c.data_ptr() for c in chunks]

    ops.multi_layer_block_kv_transfer(paged(pool), objects(ours), list(blocks), "cpu", D2H, desc, chunk, fmt, skip)
    baseline.multi_layer_block_kv_transfer(paged(pool), objects(theirs), list(blocks), torch.device("cpu"), D2H, desc, chunk, fmt, skip)
    for a, b in zip(ours, theirs):
        assert torch.equal(a.view(torch.uint8), b.view(torch.uint8))

    back_ours = [torch.randn(t.shape, generator=gen).to(t.dtype) for t in pool]
    back_theirs = [t.clone() for t in back_ours]
    ops.multi_layer_block_kv_transfer(paged(back_ours), objects(ours), list(blocks), "cpu", H2D, desc, chunk, fmt, skip)
    baseline.multi_layer_block_kv_transfer(
        paged(back_theirs), objects(theirs), list(blocks), torch.device("cpu"), H2D, desc, chunk, fmt, skip
    )
    for a, b in zip(back_ours, back_theirs):
        assert torch.equal(a.view(torch.uint8), b.view(torch.uint8))
    if blocks[skip:]:  # guard against a comparison of two untouched states
        moved = blocks[skip]
        assert torch.equal(back_ours[-1][moved], pool[-1][moved])


def _bind(monkeypatch: pytest.MonkeyPatch, which: str) -> None:
    """Make LMCache's transfer context resolve the CPU ops to ours (the ``ascend_cpu``
    backend, bound as LMCache binds it) or to its own CPU backend (torch baseline)."""
    dev_ops: CpuDeviceOps = AscendCpuDeviceOps() if which == "ours" else CpuDeviceOps()
    dev_ops.ensure_native()
    assert (dev_ops.multi_layer_block_kv_transfer is ops.multi_layer_block_kv_transfer) == (which == "ours")
    monkeypatch.setattr(transfer_base, "resolve_device_ops", lambda device_type: dev_ops)


def _through_lmcache(
    monkeypatch: pytest.MonkeyPatch, which: str, pool: list[torch.Tensor], block_ids: list[int], skip_tokens: int
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Gather ``pool`` into chunks, then scatter them into a fresh pool, as SGLang's worker does."""
    _bind(monkeypatch, which)
    kv = {f"kv_{i}": t for i, t in enumerate(pool)}
    chunks = transfer_base.gather_paged_kv_to_cpu(kv, block_ids, 2, layout_hints=UNIFIED, engine_type=EngineType.SGLANG)
    target = [torch.zeros_like(t) for t in pool]
    transfer_base.scatter_cpu_to_paged_kv(
        {f"kv_{i}": t for i, t in enumerate(target)}, block_ids, chunks, 2, skip_tokens,
        layout_hints=UNIFIED, engine_type=EngineType.SGLANG,
    )
    return chunks, target


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("mla", [False, True], ids=["MHA-18", "MLA-3"])
def test_sglang_unified_gather_scatter_end_to_end(monkeypatch: pytest.MonkeyPatch, mla: bool, dtype: str, gen: torch.Generator) -> None:
    """LMCache's own engine-driven gather/scatter on SGLang's unified pool: identical
    chunk bytes and identical paged KV after the scatter, ours vs LMCache's default."""
    geom = GEOMS["L2-NH4"]
    pool = _unified_pool(mla, geom, DTYPES[dtype], gen)
    block_ids, skip_tokens = [7, 2, 5, 0, 8, 3], geom[2]  # three chunks; the scatter skips one block
    results: dict[str, tuple[list[torch.Tensor], list[torch.Tensor]]] = {}
    for which in ("ours", "lmcache"):
        with monkeypatch.context() as m:
            results[which] = _through_lmcache(m, which, pool, block_ids, skip_tokens)
    (chunks, target), (base_chunks, base_target) = results["ours"], results["lmcache"]
    assert len(chunks) == len(base_chunks) == 3
    rows = geom[4] if mla else geom[3] * geom[4]
    for c, b in zip(chunks, base_chunks):
        assert c.shape == b.shape == (len(pool), 2 * geom[2], rows)
        assert torch.equal(c.view(torch.uint8), b.view(torch.uint8))
    for t, b in zip(target, base_target):
        assert torch.equal(t.view(torch.uint8), b.view(torch.uint8))
    # Independent of either implementation: chunk 0 holds blocks 7 and 2 of every
    # component in list order, and the scatter restored every block but the skipped one.
    expect = torch.cat([torch.stack([t[7], t[2]]).reshape(2 * geom[2], rows) for t in pool]).reshape(len(pool), -1, rows)
    assert torch.equal(chunks[0], expect)
    untouched = [b for b in range(geom[1]) if b not in block_ids[1:]]  # the skipped block and unlisted ones
    for t, src in zip(target, pool):
        assert torch.equal(t[block_ids[1:]], src[block_ids[1:]]) and not t[untouched].any()
