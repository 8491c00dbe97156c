"""Bad input: every op raises ValueError/TypeError naming the argument, before any byte moves."""

from __future__ import annotations

from typing import Any, Callable

import pytest
import torch

from lmcache_ascend import ops
from tests.kernels.helpers import shape_desc
from tests.kernels.reference import (
    Geom,
    PagedCache,
    assert_tensor_equal,
    buffer_shape,
    make_blocks_first,
    make_paged,
    object_shape,
    random_slots,
    random_tensor,
)

G = Geom(num_layers=2, num_blocks=6, block_size=4, num_heads=2, head_size=4)
T = 10
Kw = dict[str, Any]


def expect_error(exc: type[Exception] | tuple[type[Exception], ...], name: str, state: list[torch.Tensor], call: Callable[[], None]) -> None:
    """``call`` raises ``exc`` whose message starts with the argument's name (the
    package's convention), and leaves every tensor in ``state`` unchanged."""
    before = [t.clone() for t in state]
    with pytest.raises(exc) as info:
        call()
    assert str(info.value).startswith(name), f"message {str(info.value)!r} does not start with {name!r}"
    for i, (t, b) in enumerate(zip(state, before)):
        assert_tensor_equal(t, b, f"state[{i}] after the error")


def _with(**changes: Any) -> Callable[[Kw, PagedCache], None]:
    def apply(kw: Kw, cache: PagedCache) -> None:
        kw.update(changes)

    return apply


def _slots(values: list[int]) -> Callable[[Kw, PagedCache], None]:
    def apply(kw: Kw, cache: PagedCache) -> None:
        s = kw["slot_mapping"].clone()
        s[: len(values)] = torch.tensor(values)
        kw["slot_mapping"] = s

    return apply


def _map(key: str, fn: Callable[[Any, PagedCache], Any]) -> Callable[[Kw, PagedCache], None]:
    def apply(kw: Kw, cache: PagedCache) -> None:
        kw[key] = fn(kw[key], cache)

    return apply


def _strided_like(t: torch.Tensor) -> torch.Tensor:
    wide = torch.zeros(*t.shape[:-1], 2 * t.shape[-1], dtype=t.dtype)
    return wide[..., ::2]


def _null_ptr(p: torch.Tensor, _: PagedCache) -> torch.Tensor:
    q = p.clone()
    q[1] = 0
    return q


def _high_ptr(p: torch.Tensor, _: PagedCache) -> torch.Tensor:
    """A uint64 table whose last address is >= 2**63 (read as int64 it is negative)."""
    q = p.clone()
    q[-1] = -(2**62)
    return q.to(torch.uint64)


SLOT_CASES: dict[str, tuple[type[Exception], str, Callable[[Kw, PagedCache], None]]] = {
    "slot-equal-to-num-slots": (ValueError, "slot_mapping", _slots([0, G.num_slots])),
    "slot-huge": (ValueError, "slot_mapping", _slots([2**40])),
    "slot-mapping-too-short": (ValueError, "slot_mapping", _map("slot_mapping", lambda s, _: s[:-1])),
    "slot-mapping-float": (TypeError, "slot_mapping", _map("slot_mapping", lambda s, _: s.float())),
    "slot-mapping-int16": (TypeError, "slot_mapping", _map("slot_mapping", lambda s, _: s.short())),
    "slot-mapping-2d": (ValueError, "slot_mapping", _map("slot_mapping", lambda s, _: s.view(2, -1))),
    "slot-mapping-list": (TypeError, "slot_mapping", _map("slot_mapping", lambda s, _: s.tolist())),
    "short-pointer-table": (ValueError, "key_value_ptrs", _map("key_value_ptrs", lambda p, _: p[:1])),
    "null-pointer": (ValueError, "key_value_ptrs", _map("key_value_ptrs", _null_ptr)),
    "uint64-pointer-past-2-63": (ValueError, "key_value_ptrs", _map("key_value_ptrs", _high_ptr)),
    "pointers-as-dict": (TypeError, "key_value_ptrs", _with(key_value_ptrs={})),
    "too-few-layer-tensors": (ValueError, "key_value_ptrs", _map("key_value_ptrs", lambda p, c: c.buffers()[:1])),
    "layer-tensor-wrong-shape": (
        ValueError, "key_value_ptrs",
        _map("key_value_ptrs", lambda p, c: [c.buffers()[0], torch.zeros(buffer_shape(6, Geom(2, 5, 4, 2, 4)), dtype=torch.float16)]),
    ),
    "layer-tensor-wrong-dtype": (
        TypeError, "key_value", _map("key_value_ptrs", lambda p, c: [c.buffers()[0], c.buffers()[1].float()])
    ),
    "layer-tensor-noncontiguous": (
        ValueError, "key_value_ptrs", _map("key_value_ptrs", lambda p, c: [c.buffers()[0], _strided_like(c.buffers()[1])])
    ),
    "key-value-3d": (ValueError, "key_value", _map("key_value", lambda o, _: o[0])),
    "key-value-3-planes": (ValueError, "key_value", _map("key_value", lambda o, _: torch.zeros(3, *o.shape[1:], dtype=o.dtype))),
    "key-value-row-vs-tensors": (
        ValueError, "key_value",
        lambda kw, c: kw.update(key_value_ptrs=c.buffers(), key_value=torch.zeros(2, G.num_layers, T, 12, dtype=torch.float16)),
    ),
    "key-value-dtype-vs-tensors": (
        TypeError, "key_value", lambda kw, c: kw.update(key_value_ptrs=c.buffers(), key_value=kw["key_value"].float())
    ),
    "key-value-noncontiguous": (ValueError, "key_value", _map("key_value", lambda o, _: _strided_like(o))),
    "key-value-not-a-tensor": (TypeError, "key_value", _map("key_value", lambda o, _: o.tolist())),
    "unknown-format-99": (ValueError, "engine_kv_format", _with(engine_kv_format=99)),
    "unsupported-upstream-format-14": (ValueError, "engine_kv_format", _with(engine_kv_format=14)),
    "format-as-string": (TypeError, "engine_kv_format", _with(engine_kv_format="6")),
    "direction-5": (ValueError, "direction", _with(direction=5)),
    "direction-minus-1": (ValueError, "direction", _with(direction=-1)),
    "direction-float": (TypeError, "direction", _with(direction=1.0)),
    "hnd-without-head-size": (ValueError, "head_size", _with(head_size=0)),
    "head-size-not-dividing-row": (ValueError, "head_size", _with(head_size=3)),
    "block-size-not-dividing-buffer": (ValueError, "block_size", _with(block_size=5)),
    "hnd-without-block-size": (ValueError, "block_size", _with(block_size=0)),
    "negative-skip": (ValueError, "skip_prefix_n_tokens", _with(skip_prefix_n_tokens=-1)),
    "page-buffer-size-zero": (ValueError, "page_buffer_size", _with(page_buffer_size=0)),
    "block-stride-on-non-blocks-first-format": (ValueError, "block_stride_elems", _with(block_stride_elems=1024)),
    "negative-block-stride": (ValueError, "block_stride_elems", _with(block_stride_elems=-1)),
}


@pytest.mark.parametrize("direction", [0, 1], ids=["load", "store"])
@pytest.mark.parametrize("case", list(SLOT_CASES), ids=list(SLOT_CASES))
def test_multi_layer_kv_transfer_rejects(backend: str, case: str, direction: int, gen: torch.Generator) -> None:
    exc, name, mutate = SLOT_CASES[case]
    cache = make_paged(6, G, torch.float16, gen)
    obj = random_tensor(object_shape(6, G, T), torch.float16, gen)
    kw: Kw = dict(
        key_value=obj, key_value_ptrs=cache.pointers(), slot_mapping=random_slots(T, G.num_slots, gen, 2),
        paged_memory_device=torch.device("cpu"), page_buffer_size=G.num_slots, direction=direction,
        engine_kv_format=6, block_size=G.block_size, head_size=G.head_size, skip_prefix_n_tokens=0, block_stride_elems=0,
    )
    ops.multi_layer_kv_transfer(**{**kw, "key_value": obj.clone()})  # the unmodified call is valid
    mutate(kw, cache)
    expect_error(exc, name, cache.storage() + [obj], lambda: ops.multi_layer_kv_transfer(**kw))


@pytest.mark.parametrize("fmt", [12, 13])
def test_block_stride_smaller_than_a_block(fmt: int, gen: torch.Generator) -> None:
    cache = make_blocks_first(fmt, G, torch.float16, gen)
    obj = random_tensor(object_shape(fmt, G, T), torch.float16, gen)
    slots = random_slots(T, G.num_slots, gen)
    expect_error(ValueError, "block_stride_elems", cache.storage() + [obj], lambda: ops.multi_layer_kv_transfer(
        obj, cache.pointers(), slots, "cpu", G.num_slots, 1, fmt, G.block_size, G.head_size, 0, 7,
    ))


def test_unilateral_short_pointer_table(gen: torch.Generator) -> None:
    cache = make_paged(4, G, torch.bfloat16, gen)
    obj = random_tensor(object_shape(4, G, T), torch.bfloat16, gen)
    slots = random_slots(T, G.num_slots, gen)
    expect_error(ValueError, "key_value_ptrs", cache.storage() + [obj], lambda: ops.multi_layer_kv_transfer_unilateral(
        obj, cache.pointers()[:3], slots, "cpu", G.num_slots, 0, 4,
    ))


CHUNK = 8


class NotADesc:
    kv_size = 2
    nl = 2


class _DescFields:
    """A PageBufferShapeDesc look-alike whose fields may hold any type (the C++ struct's are ints)."""

    def __init__(self, **changes: Any) -> None:
        d = shape_desc(1, 2, G, torch.float16, 2)
        for f in ("kv_size", "nl", "nb", "bs", "nh", "hs", "element_size", "block_stride_elems", "dtype"):
            setattr(self, f, changes.get(f, getattr(d, f)))


def _desc(**changes: Any) -> Any:
    d = shape_desc(1, 2, G, torch.float16, 2)
    for k, v in changes.items():
        setattr(d, k, v)
    return d


BLOCK_CASES: dict[str, tuple[type[Exception], str, Kw]] = {
    "block-id-equal-to-nb": (ValueError, "block_ids", dict(block_ids=torch.tensor([0, G.num_blocks]))),
    "negative-block-id": (ValueError, "block_ids", dict(block_ids=torch.tensor([1, -1]))),
    "block-ids-float": (TypeError, "block_ids", dict(block_ids=torch.tensor([0.0, 1.0]))),
    "shape-desc-dict": (TypeError, "shape_desc", dict(shape_desc={"kv_size": 2})),
    "shape-desc-missing-fields": (TypeError, "shape_desc", dict(shape_desc=NotADesc())),
    "shape-desc-nb-zero": (ValueError, "shape_desc.nb", dict(shape_desc=_desc(nb=0))),
    "shape-desc-negative-block-stride": (ValueError, "shape_desc.block_stride_elems", dict(shape_desc=_desc(block_stride_elems=-1))),
    "shape-desc-float-field": (TypeError, "shape_desc.hs", dict(shape_desc=_DescFields(hs=8.0))),
    "shape-desc-bool-field": (TypeError, "shape_desc.kv_size", dict(shape_desc=_DescFields(kv_size=True))),
    "shape-desc-kv-size-1-for-mha": (ValueError, "shape_desc.kv_size", dict(shape_desc=_desc(kv_size=1))),
    "shape-desc-dtype-vs-element-size": (ValueError, "shape_desc.dtype", dict(shape_desc=_desc(dtype=torch.float32))),
    "chunk-not-multiple-of-bs": (ValueError, "lmcache_chunk_size", dict(lmcache_chunk_size=6)),
    "chunk-zero": (ValueError, "lmcache_chunk_size", dict(lmcache_chunk_size=0)),
    "negative-skip": (ValueError, "skip_prefix_n_blocks", dict(skip_prefix_n_blocks=-1)),
    "direction-5": (ValueError, "direction", dict(direction=5)),
    "format-99": (ValueError, "engine_kv_format", dict(engine_kv_format=99)),
    "too-few-objects": (ValueError, "lmcache_objects_ptrs", dict(block_ids=torch.tensor([0, 1, 2, 3, 4]))),
    "null-object-pointer": (ValueError, "lmcache_objects_ptrs", dict(lmcache_objects_ptrs=[0])),
    "objects-not-a-list": (TypeError, "lmcache_objects_ptrs", dict(lmcache_objects_ptrs=12345)),
    "object-tensor-too-small": (ValueError, "lmcache_objects_ptrs", dict(lmcache_objects_ptrs=[torch.zeros(10, dtype=torch.float16)])),
}


@pytest.mark.parametrize("case", list(BLOCK_CASES), ids=list(BLOCK_CASES))
def test_multi_layer_block_kv_transfer_rejects(backend: str, case: str, gen: torch.Generator) -> None:
    exc, name, changes = BLOCK_CASES[case]
    cache = make_paged(1, G, torch.float16, gen)
    obj = random_tensor((2, G.num_layers, CHUNK, G.num_heads * G.head_size), torch.float16, gen)
    kw: Kw = dict(
        paged_buffer_ptrs_tensor=cache.pointers(), lmcache_objects_ptrs=[obj.data_ptr()], block_ids=torch.tensor([2, 5]),
        device="cpu", direction=0, shape_desc=_desc(), lmcache_chunk_size=CHUNK, engine_kv_format=1, skip_prefix_n_blocks=0,
    )
    kw.update(changes)
    expect_error(exc, name, cache.storage() + [obj], lambda: ops.multi_layer_block_kv_transfer(**kw))


def _single_kv_desc(**changes: Any) -> Any:
    d = shape_desc(18, 1, G, torch.float16, 2)
    for k, v in changes.items():
        setattr(d, k, v)
    return d


# Format 18 (one K or V tensor [NB, BS, NH, HS] each): the paged tensors are
# authoritative, so a shape_desc that disagrees with them is refused.
SINGLE_KV_CASES: dict[str, tuple[type[Exception], str, Kw]] = {
    "nh-fewer-than-tensors": (ValueError, "paged_buffer_ptrs_tensor[0]", dict(shape_desc=_single_kv_desc(nh=1))),
    "nh-more-than-tensors": (ValueError, "paged_buffer_ptrs_tensor[0]", dict(shape_desc=_single_kv_desc(nh=G.num_heads + 1))),
    "hs-vs-tensors": (ValueError, "paged_buffer_ptrs_tensor[0]", dict(shape_desc=_single_kv_desc(hs=G.head_size * 2))),
    "kv-size-2": (ValueError, "shape_desc.kv_size", dict(shape_desc=_single_kv_desc(kv_size=2))),
    "element-size-vs-tensors": (TypeError, "paged_buffer_ptrs_tensor", dict(shape_desc=_single_kv_desc(element_size=4, dtype=None))),
    "element-size-vs-dtype": (ValueError, "shape_desc.dtype", dict(shape_desc=_single_kv_desc(element_size=4))),
    "dtype-vs-tensors": (TypeError, "paged_buffer_ptrs_tensor[0]", dict(shape_desc=_single_kv_desc(dtype=torch.bfloat16))),
    "one-component-missing": (ValueError, "paged_buffer_ptrs_tensor", dict(paged_buffer_ptrs_tensor="drop-last")),
    "object-half-a-chunk": (ValueError, "lmcache_objects_ptrs[0]", dict(lmcache_objects_ptrs="short-object")),
}


@pytest.mark.parametrize("case", list(SINGLE_KV_CASES), ids=list(SINGLE_KV_CASES))
def test_single_kv_block_transfer_rejects(backend: str, case: str, gen: torch.Generator) -> None:
    exc, name, changes = SINGLE_KV_CASES[case]
    cache = make_paged(18, G, torch.float16, gen)
    obj = random_tensor(object_shape(18, G, CHUNK), torch.float16, gen)
    valid: Kw = dict(
        paged_buffer_ptrs_tensor=cache.buffers(), lmcache_objects_ptrs=[obj], block_ids=torch.tensor([2, 5]),
        device="cpu", direction=0, shape_desc=_single_kv_desc(), lmcache_chunk_size=CHUNK, engine_kv_format=18,
        skip_prefix_n_blocks=0,
    )
    kw = {**valid, **changes}
    if kw["paged_buffer_ptrs_tensor"] == "drop-last":
        kw["paged_buffer_ptrs_tensor"] = cache.buffers()[:-1]
    if kw["lmcache_objects_ptrs"] == "short-object":
        kw["lmcache_objects_ptrs"] = [obj.reshape(-1)[: obj.numel() // 2]]  # dense, but half a chunk
    expect_error(exc, name, cache.storage() + [obj], lambda: ops.multi_layer_block_kv_transfer(**kw))
    # without the fault the call goes through: the error above is the fault's alone
    ops.multi_layer_block_kv_transfer(**valid)


def test_single_kv_slot_ops_reject_two_planes(gen: torch.Generator) -> None:
    """Format 18 objects have one plane; a KV_2LTD object is refused, naming it."""
    cache = make_paged(18, G, torch.float16, gen)
    obj = random_tensor((2, G.num_layers, T, G.num_heads * G.head_size), torch.float16, gen)
    slots = random_slots(T, G.num_slots, gen)
    for paged in (cache.pointers(), cache.buffers()):
        expect_error(ValueError, "key_value", cache.storage() + [obj], lambda: ops.multi_layer_kv_transfer(
            obj, paged, slots, "cpu", G.num_slots, 1, 18, G.block_size, G.head_size,
        ))
    lmc = random_tensor((2, T, G.num_heads * G.head_size), torch.float16, gen)
    expect_error(ValueError, "lmc_key_value_cache", cache.storage() + [lmc], lambda: ops.single_layer_kv_transfer(
        lmc, cache.buffers()[0], slots, 1, 18,
    ))


def test_block_op_short_paged_pointer_table(gen: torch.Generator) -> None:
    cache = make_paged(1, G, torch.float16, gen)
    obj = random_tensor((2, G.num_layers, CHUNK, G.num_heads * G.head_size), torch.float16, gen)
    expect_error(ValueError, "paged_buffer_ptrs_tensor", cache.storage() + [obj], lambda: ops.multi_layer_block_kv_transfer(
        cache.pointers()[:1], [obj.data_ptr()], torch.tensor([1]), "cpu", 1, _desc(), CHUNK, 1, 0,
    ))


def test_single_layer_rejects(gen: torch.Generator) -> None:
    one = Geom(1, G.num_blocks, G.block_size, G.num_heads, G.head_size)
    layer = make_paged(1, one, torch.float16, gen).buffers()[0]
    k, v = random_tensor(buffer_shape(16, G), torch.float16, gen), random_tensor(buffer_shape(16, G), torch.float16, gen)
    lmc = random_tensor((2, T, G.num_heads * G.head_size), torch.float16, gen)
    slots = random_slots(T, G.num_slots, gen)
    state = [layer, k, v, lmc]
    bad_slots = slots.clone()
    bad_slots[3] = G.num_slots
    expect_error(ValueError, "lmc_key_value_cache", state, lambda: ops.single_layer_kv_transfer(lmc[:, :-1], layer, slots, 0, 1))
    expect_error(ValueError, "lmc_key_value_cache", state, lambda: ops.single_layer_kv_transfer(lmc, layer, slots, 0, 1, True))
    expect_error(ValueError, "slot_mapping", state, lambda: ops.single_layer_kv_transfer(lmc, layer, bad_slots, 0, 1))
    expect_error(TypeError, "vllm_key_value_cache", state, lambda: ops.single_layer_kv_transfer(lmc, k, slots, 0, 16))
    expect_error(ValueError, "engine_kv_format", state, lambda: ops.single_layer_kv_transfer(lmc, layer, slots, 0, 0))
    expect_error(ValueError, "direction", state, lambda: ops.single_layer_kv_transfer(lmc, layer, slots, 2, 1))
    expect_error(ValueError, "sgl_value_cache", state, lambda: ops.single_layer_kv_transfer_sgl(lmc, k, v[:-1], slots, 0))
    expect_error(TypeError, "sgl_value_cache", state, lambda: ops.single_layer_kv_transfer_sgl(lmc, k, v.float(), slots, 0))


def test_flash_ops_reject(gen: torch.Generator) -> None:
    k, v = random_tensor(buffer_shape(16, G), torch.float16, gen), random_tensor(buffer_shape(16, G), torch.float16, gen)
    kv = random_tensor((2, 3, T, G.num_heads * G.head_size), torch.float16, gen)
    slots = random_slots(T, G.num_slots, gen)
    for op in (ops.load_and_reshape_flash, ops.reshape_and_cache_back_flash):
        expect_error(ValueError, "layer_idx", [k, v, kv], lambda: op(kv, k, v, slots, 3))
        expect_error(ValueError, "key_value", [k, v, kv], lambda: op(kv[:1], k, v, slots, 0))
        expect_error(ValueError, "value_cache", [k, v, kv], lambda: op(kv, k, v[:, :2], slots, 0))


def test_unknown_backend_setting(monkeypatch: pytest.MonkeyPatch, gen: torch.Generator) -> None:
    monkeypatch.setenv("LMCACHE_ASCEND_KERNEL_BACKEND", "cuda")
    cache = make_paged(1, G, torch.float16, gen)
    obj = random_tensor(object_shape(1, G, T), torch.float16, gen)
    slots = random_slots(T, G.num_slots, gen)
    expect_error(ValueError, "LMCACHE_ASCEND_KERNEL_BACKEND", cache.storage() + [obj], lambda: ops.multi_layer_kv_transfer(
        obj, cache.pointers(), slots, "cpu", G.num_slots, 0, 1, G.block_size, G.head_size,
    ))


BAD_DEVICES = ["bogus", None] + ([] if torch.cuda.is_available() else ["cuda"])


@pytest.mark.parametrize("device", BAD_DEVICES, ids=[str(d) for d in BAD_DEVICES])
def test_bad_paged_memory_device(device: object, gen: torch.Generator) -> None:
    """An unparsable or absent device is bad input like any other: ValueError/TypeError
    naming ``paged_memory_device`` (DESIGN.md, "What bad input gets")."""
    cache = make_paged(1, G, torch.float16, gen)
    obj = random_tensor(object_shape(1, G, T), torch.float16, gen)
    slots = random_slots(T, G.num_slots, gen)
    expect_error((ValueError, TypeError), "paged_memory_device", cache.storage() + [obj], lambda: ops.multi_layer_kv_transfer(
        obj, cache.pointers(), slots, device, G.num_slots, 1, 1, G.block_size, G.head_size,
    ))


@pytest.mark.parametrize("device", BAD_DEVICES, ids=[str(d) for d in BAD_DEVICES])
def test_bad_block_op_device(device: object, gen: torch.Generator) -> None:
    cache = make_paged(1, G, torch.float16, gen)
    obj = random_tensor((2, G.num_layers, CHUNK, G.num_heads * G.head_size), torch.float16, gen)
    expect_error((ValueError, TypeError), "device ", cache.storage() + [obj], lambda: ops.multi_layer_block_kv_transfer(
        cache.pointers(), [obj.data_ptr()], torch.tensor([1, 3]), device, 1, _desc(), CHUNK, 1, 0,
    ))
