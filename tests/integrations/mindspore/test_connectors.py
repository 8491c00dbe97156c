"""The MindSpore device connectors inside real LMCache 0.5.6 engines.

KV is real MindSpore tensors in vllm-mindspore's layouts; a request of 600
tokens (two full 256-token chunks and a partial one) is stored from one set of
blocks and retrieved into other blocks of fresh KV, and every slot of the
result is compared bit for bit with the numpy reference: moved tokens equal
the source, every other slot still holds its sentinel. Layerwise engines are
driven the way LMCache's vLLM adapter drives ``store_layer`` / ``retrieve_layer``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

ms = pytest.importorskip("mindspore")
torch = pytest.importorskip("torch")

from lmcache_ascend.integrations.mindspore.connectors import (  # noqa: E402
    MindSporeLayerwiseConnector,
    MindSporePagedConnector,
)
from tests.integrations.lmcache.conftest import EngineFactory, make_metadata  # noqa: E402
from tests.integrations.mindspore.helpers import (  # noqa: E402
    DTYPES,
    Geom,
    block_slots,
    filled_kv,
    kv_bits,
    kv_values,
    random_kv,
    values_of_bits,
)

CHUNK = 256
NUM_TOKENS = 600
FULL = 512  # tokens in full chunks
GEOMS = {
    "kv": Geom(num_layers=2, num_blocks=80, block_size=16, num_heads=2, head_size=8),
    "mla": Geom(num_layers=2, num_blocks=80, block_size=16, num_heads=1, head_size=24, mla=True),
}


def metadata(geom: Geom, dtype: str) -> Any:
    return make_metadata(
        num_layers=geom.num_layers,
        num_heads=1 if geom.mla else geom.num_heads,
        head_size=geom.head_size,
        chunk_size=CHUNK,
        dtype=DTYPES[dtype][1],
        use_mla=geom.mla,
    )


def ms_engine(engines: EngineFactory, geom: Geom, dtype: str, *, layerwise: bool = False, **config: Any) -> Any:
    meta = metadata(geom, dtype)
    cls = MindSporeLayerwiseConnector if layerwise else MindSporePagedConnector
    return engines.build(cls.from_metadata(meta, device="cpu"), meta, use_layerwise=layerwise, **config)


def tokens_of(n: int, seed: int = 0) -> torch.Tensor:
    return (torch.arange(n, dtype=torch.long) * 7 + 11 + seed) % 32000


def two_mappings(geom: Geom, seed: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Slot mappings of one request on two disjoint block tables."""
    need = -(-NUM_TOKENS // geom.block_size)
    perm = np.random.default_rng(seed).permutation(geom.num_blocks)
    return block_slots(perm[:need], NUM_TOKENS, geom.block_size), block_slots(perm[need : 2 * need], NUM_TOKENS, geom.block_size)


def moved(src_bits: np.ndarray, dst_before: np.ndarray, old: np.ndarray, new: np.ndarray, tokens: range) -> np.ndarray:
    """Expected destination: ``dst_before`` with tokens ``tokens`` copied from ``old`` to ``new`` slots."""
    want = dst_before.copy()
    for t in tokens:
        if new[t] >= 0:
            want[:, :, new[t]] = src_bits[:, :, old[t]]
    return want


def assert_kv(layers: Any, want: np.ndarray, dtype: str) -> None:
    assert np.array_equal(kv_bits(layers), want)
    assert np.array_equal(kv_values(layers), values_of_bits(want, dtype))  # as MindSpore ops read it


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("layout", ["kv", "mla"])
@pytest.mark.parametrize("unfull", [False, True], ids=["full_chunks", "with_partial_chunk"])
def test_store_then_retrieve_into_other_blocks(engines: EngineFactory, dtype: str, layout: str, unfull: bool) -> None:
    geom = GEOMS[layout]
    engine = ms_engine(engines, geom, dtype, save_unfull_chunk=unfull)
    src = random_kv(geom, dtype, np.random.default_rng(1))
    src_bits = kv_bits(src)
    old, new = two_mappings(geom)
    tokens = tokens_of(NUM_TOKENS)
    saved = NUM_TOKENS if unfull else FULL

    engine.store(tokens, kvcaches=src, slot_mapping=torch.from_numpy(old), req_id="store")
    assert engine.lookup(tokens) == saved
    assert np.array_equal(kv_bits(src), src_bits)

    dst = filled_kv(geom, dtype)
    dst_before = kv_bits(dst)
    mask = engine.retrieve(tokens, torch.ones(NUM_TOKENS, dtype=torch.bool), kvcaches=dst, slot_mapping=torch.from_numpy(new), req_id="load")

    assert torch.equal(mask, torch.arange(NUM_TOKENS) < saved)
    assert_kv(dst, moved(src_bits, dst_before, old, new, range(saved)), dtype)


@pytest.mark.parametrize("layout", ["kv", "mla"])
def test_retrieve_leaves_engine_cached_tokens_and_negative_slots_alone(engines: EngineFactory, layout: str) -> None:
    """As LMCache's vLLM adapter calls it: chunk 0 masked off, vllm_cached_tokens=288,
    and tokens whose slot is -1 (not allocated) skipped."""
    geom = GEOMS[layout]
    engine = ms_engine(engines, geom, "bfloat16", save_unfull_chunk=True)
    src = random_kv(geom, "bfloat16", np.random.default_rng(2))
    src_bits = kv_bits(src)
    old, new = two_mappings(geom)
    tokens = tokens_of(NUM_TOKENS)
    engine.store(tokens, kvcaches=src, slot_mapping=torch.from_numpy(old))

    new = new.copy()
    new[[300, 301, 555, 599]] = -1
    dst = filled_kv(geom, "bfloat16")
    dst_before = kv_bits(dst)
    cached = 288
    mask = torch.ones(NUM_TOKENS, dtype=torch.bool)
    mask[:CHUNK] = False
    got = engine.retrieve(tokens, mask, kvcaches=dst, slot_mapping=torch.from_numpy(new), vllm_cached_tokens=cached)

    assert torch.equal(got, torch.arange(NUM_TOKENS) >= CHUNK)
    assert_kv(dst, moved(src_bits, dst_before, old, new, range(cached, NUM_TOKENS)), "bfloat16")


def test_unknown_tokens_retrieve_nothing_and_write_nothing(engines: EngineFactory) -> None:
    geom = GEOMS["kv"]
    engine = ms_engine(engines, geom, "float16")
    old, new = two_mappings(geom)
    engine.store(tokens_of(NUM_TOKENS), kvcaches=random_kv(geom, "float16", np.random.default_rng(3)), slot_mapping=torch.from_numpy(old))
    dst = filled_kv(geom, "float16")
    before = kv_bits(dst)
    mask = engine.retrieve(tokens_of(NUM_TOKENS, seed=1), kvcaches=dst, slot_mapping=torch.from_numpy(new))
    assert not mask.any()
    assert np.array_equal(kv_bits(dst), before)


def test_connector_refuses_kv_that_does_not_match_the_metadata(engines: EngineFactory) -> None:
    geom = GEOMS["kv"]
    conn = MindSporePagedConnector.from_metadata(metadata(geom, "bfloat16"), device="cpu")
    wrong = random_kv(Geom(num_layers=3, num_blocks=80), "bfloat16", np.random.default_rng(4))
    with pytest.raises(ValueError, match="kvcaches holds 3 layers, LMCache metadata 2"):
        conn._engine_kv({"kvcaches": wrong})
    mla = random_kv(GEOMS["mla"], "bfloat16", np.random.default_rng(4))
    with pytest.raises(ValueError, match="use_mla=False"):
        conn._engine_kv({"kvcaches": mla})


# ------------------------------------------------------------------ layerwise


def adapter_store(engine: Any, tokens: torch.Tensor, kv: Any, slots: np.ndarray, num_layers: int) -> None:
    """save_kv_layer x L (the first creates store_layer, each calls next), then wait_for_save."""
    mask = torch.ones(len(tokens), dtype=torch.bool)
    storer = engine.store_layer(tokens.tolist(), mask=mask, kvcaches=kv, slot_mapping=torch.from_numpy(slots), offset=0, sync=True, req_id="r0")
    for _ in range(num_layers + 1):
        next(storer)
    with pytest.raises(StopIteration):
        next(storer)


def adapter_retrieve(engine: Any, tokens: torch.Tensor, kv: Any, slots: np.ndarray, num_layers: int, cached: int = 0) -> torch.Tensor:
    """start_load_kv (next twice), then wait_for_layer_load per layer; the last yields the mask."""
    mask = torch.ones(len(tokens), dtype=torch.bool)
    mask[: cached // CHUNK * CHUNK] = False
    retriever = engine.retrieve_layer(tokens, mask, kvcaches=kv, slot_mapping=torch.from_numpy(slots), vllm_cached_tokens=cached, sync=True)
    next(retriever)
    assert next(retriever) is None
    results = [next(retriever) for _ in range(num_layers)]
    with pytest.raises(StopIteration):
        next(retriever)
    return results[-1]


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("layout", ["kv", "mla"])
@pytest.mark.parametrize("cached", [0, 288])
def test_layerwise_store_then_retrieve(engines: EngineFactory, dtype: str, layout: str, cached: int) -> None:
    geom = GEOMS[layout]
    engine = ms_engine(engines, geom, dtype, layerwise=True)
    src = random_kv(geom, dtype, np.random.default_rng(6))
    src_bits = kv_bits(src)
    old, new = two_mappings(geom)
    tokens = tokens_of(NUM_TOKENS)
    adapter_store(engine, tokens, src, old, geom.num_layers)

    dst = filled_kv(geom, dtype)
    dst_before = kv_bits(dst)
    new_slots = torch.from_numpy(new.copy())
    mask = adapter_retrieve(engine, tokens, dst, new, geom.num_layers, cached=cached)

    assert torch.equal(mask, (torch.arange(NUM_TOKENS) < FULL) & (torch.arange(NUM_TOKENS) >= cached // CHUNK * CHUNK))
    assert_kv(dst, moved(src_bits, dst_before, old, new, range(cached, FULL)), dtype)
    assert torch.equal(new_slots, torch.from_numpy(new))  # the engine's slot mapping is not modified


def test_blending_is_refused_for_mindspore_kv() -> None:
    from lmcache.v1.config import LMCacheEngineConfig

    from lmcache_ascend.integrations.mindspore.connectors import create_device_connector

    cfg = LMCacheEngineConfig.from_defaults(use_layerwise=True, enable_blending=True)
    with pytest.raises(ValueError, match="^enable_blending: CacheBlend runs on PyTorch KV caches only"):
        create_device_connector(cfg, make_metadata(num_layers=2, num_heads=2, head_size=8), "cpu")


class MsadapterMemoryObj:
    """A memory object as LMCache allocates it under msadapter: its tensor is a
    MindSpore tensor (msadapter's torch.Tensor is MindSpore's Tensor class with
    torch-like methods), allocated by MindSpore; metadata as LMCache's."""

    def __init__(self, tensor: Any, fmt: Any) -> None:
        self.tensor = tensor
        self.metadata = type("Metadata", (), {"fmt": fmt})()


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("layout", ["kv", "mla"])
def test_memory_objects_and_slots_that_are_mindspore_tensors(dtype: str, layout: str) -> None:
    """Byte-identical with torch memory objects, both directions, slot -1 and a partial chunk included."""
    from lmcache.v1.memory_management import MemoryFormat

    geom = GEOMS[layout]
    conn = MindSporePagedConnector.from_metadata(metadata(geom, dtype), device="cpu")
    fmt = MemoryFormat.KV_MLA_FMT if geom.mla else MemoryFormat.KV_2LTD
    src = random_kv(geom, dtype, np.random.default_rng(7))
    old, new = two_mappings(geom)
    old[[5, 300]] = -1
    starts, ends = [0, CHUNK, 2 * CHUNK], [CHUNK, 2 * CHUNK, NUM_TOKENS]
    shapes = [(geom.planes, geom.num_layers, e - s, geom.row) for s, e in zip(starts, ends)]

    def ms_objects() -> list[MsadapterMemoryObj]:
        zeros = [np.zeros(shape, dtype=np.float32) for shape in shapes]
        return [MsadapterMemoryObj(ms.Tensor(z).astype(DTYPES[dtype][0]), fmt) for z in zeros]

    ms_objs = ms_objects()
    torch_objs = [MsadapterMemoryObj(torch.zeros(shape, dtype=DTYPES[dtype][1]), fmt) for shape in shapes]
    conn.batched_from_gpu(ms_objs, starts, ends, kvcaches=src, slot_mapping=ms.Tensor(old))
    conn.batched_from_gpu(torch_objs, starts, ends, kvcaches=src, slot_mapping=torch.from_numpy(old))
    for m, t in zip(ms_objs, torch_objs):
        assert np.array_equal(m.tensor.asnumpy().view(np.uint16), t.tensor.view(torch.int16).numpy().view(np.uint16))

    dst = filled_kv(geom, dtype)
    dst_before = kv_bits(dst)
    new[old < 0] = -1  # rows never stored are not loaded either
    conn.batched_to_gpu(ms_objs, starts, ends, kvcaches=dst, slot_mapping=ms.Tensor(new))
    assert_kv(dst, moved(kv_bits(src), dst_before, old, new, range(NUM_TOKENS)), dtype)
