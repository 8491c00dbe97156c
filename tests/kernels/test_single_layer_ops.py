"""Single-layer ops against the reference: ``single_layer_kv_transfer``,
``single_layer_kv_transfer_sgl``, ``load_and_reshape_flash`` and
``reshape_and_cache_back_flash``."""

from __future__ import annotations

from typing import Callable

import pytest
import torch

from lmcache_ascend import ops
from tests.kernels.helpers import DIRECTIONS, DTYPE_IDS
from tests.kernels.reference import (
    FORMAT_NAMES,
    MLA_FORMATS,
    PER_LAYER_FORMATS,
    SINGLE_PLANE_FORMATS,
    Geom,
    PagedCache,
    assert_cache_equal,
    assert_tensor_equal,
    buffer_shape,
    layer_cache,
    random_slots,
    random_tensor,
    ref_transfer,
    single_layer_object_view,
)

G = Geom(num_layers=1, num_blocks=12, block_size=8, num_heads=2, head_size=10)
DTYPES = (torch.bfloat16, torch.float32)


def _layer_tensor(fmt: int, dtype: torch.dtype, gen: torch.Generator) -> object:
    shape = buffer_shape(fmt, G)
    if fmt == 16:
        return (random_tensor(shape, dtype, gen), random_tensor(shape, dtype, gen))
    return random_tensor(shape, dtype, gen)


def _lmc(fmt: int, num_tokens: int, token_major: bool, dtype: torch.dtype, gen: torch.Generator) -> torch.Tensor:
    if fmt in MLA_FORMATS:
        return random_tensor((num_tokens, G.head_size), dtype, gen)
    row = G.num_heads * G.head_size
    if fmt in SINGLE_PLANE_FORMATS:
        return random_tensor((num_tokens, row), dtype, gen)
    return random_tensor((num_tokens, 2, row) if token_major else (2, num_tokens, row), dtype, gen)


def _check(
    cache: PagedCache,
    lmc: torch.Tensor,
    object_view: Callable[[torch.Tensor], torch.Tensor],
    slots: torch.Tensor,
    direction: int,
    run: Callable[[], None],
) -> None:
    want_cache, want_lmc = cache.clone(), lmc.clone()
    ref_transfer(want_cache, object_view(want_lmc), slots, direction)
    run()
    assert_cache_equal(cache, want_cache)
    assert_tensor_equal(lmc, want_lmc, "lmc tensor")


SINGLE_CASES = [
    (f, tm) for f in sorted(PER_LAYER_FORMATS) for tm in ((False,) if f in SINGLE_PLANE_FORMATS else (False, True))
]


@pytest.mark.parametrize("direction", list(DIRECTIONS.values()), ids=list(DIRECTIONS))
@pytest.mark.parametrize("dtype", DTYPES, ids=[DTYPE_IDS[d] for d in DTYPES])
@pytest.mark.parametrize(
    "fmt,token_major", SINGLE_CASES, ids=[f"{f}-{FORMAT_NAMES[f]}-{'token_major' if tm else 'kv_major'}" for f, tm in SINGLE_CASES]
)
def test_single_layer_kv_transfer(backend: str, fmt: int, token_major: bool, dtype: torch.dtype, direction: int, gen: torch.Generator) -> None:
    layer = _layer_tensor(fmt, dtype, gen)
    cache = layer_cache(fmt, G, layer)
    lmc = _lmc(fmt, 45, token_major, dtype, gen)
    slots = random_slots(45, G.num_slots, gen, 6)
    single_plane = fmt in SINGLE_PLANE_FORMATS

    def run() -> None:
        ops.single_layer_kv_transfer(lmc, cache.data[0], slots, direction, ops.EngineKVFormat(fmt), token_major)

    _check(cache, lmc, lambda t: single_layer_object_view(t, single_plane, token_major), slots, direction, run)


@pytest.mark.parametrize("direction", list(DIRECTIONS.values()), ids=list(DIRECTIONS))
@pytest.mark.parametrize("token_major", [False, True], ids=["kv_major", "token_major"])
@pytest.mark.parametrize("fmt", [9, 4], ids=["paged-NB_BS_NH_HS", "flat-PBS_NH_HS"])
def test_single_layer_kv_transfer_sgl(backend: str, fmt: int, token_major: bool, direction: int, gen: torch.Generator) -> None:
    shape = buffer_shape(fmt, G)
    k, v = random_tensor(shape, torch.float16, gen), random_tensor(shape, torch.float16, gen)
    cache = layer_cache(fmt, G, (k, v))
    lmc = _lmc(fmt, 30, token_major, torch.float16, gen)
    slots = random_slots(30, G.num_slots, gen, 4)

    def run() -> None:
        ops.single_layer_kv_transfer_sgl(lmc, k, v, slots, direction, token_major)

    _check(cache, lmc, lambda t: single_layer_object_view(t, False, token_major), slots, direction, run)


@pytest.mark.parametrize("num_tokens,holes", [(0, 0), (1, 0), (40, 7)], ids=["T0", "T1", "T40-holes"])
@pytest.mark.parametrize("op", ["load_and_reshape_flash", "reshape_and_cache_back_flash"])
def test_flash_ops(backend: str, op: str, num_tokens: int, holes: int, gen: torch.Generator) -> None:
    """load_and_reshape_flash: paged -> layer ``layer_idx`` of the object; the other is the inverse."""
    num_layers, layer_idx = 3, 1
    shape = buffer_shape(16, G)
    k, v = random_tensor(shape, torch.bfloat16, gen), random_tensor(shape, torch.bfloat16, gen)
    cache = layer_cache(16, G, (k, v))
    key_value = random_tensor((2, num_layers, num_tokens, G.num_heads * G.head_size), torch.bfloat16, gen)
    slots = random_slots(num_tokens, G.num_slots, gen, holes)
    direction = 1 if op == "load_and_reshape_flash" else 0

    def run() -> None:
        getattr(ops, op)(key_value, k, v, slots, layer_idx)

    _check(cache, key_value, lambda t: t[:, layer_idx : layer_idx + 1], slots, direction, run)


@pytest.mark.parametrize("fmt", [1, 7, 12, 16], ids=[FORMAT_NAMES[f] for f in (1, 7, 12, 16)])
def test_single_layer_round_trip_matches_multi_layer(backend: str, fmt: int, gen: torch.Generator) -> None:
    """A layerwise store (token-major ``KV_T2D``) equals the same layer of a multi-layer store."""
    layer = _layer_tensor(fmt, torch.float16, gen)
    cache = layer_cache(fmt, G, layer)
    slots = random_slots(20, G.num_slots, gen, 2)
    t2d = torch.zeros(20, 2, G.num_heads * G.head_size, dtype=torch.float16)
    ops.single_layer_kv_transfer(t2d, cache.data[0], slots, 1, ops.EngineKVFormat(fmt), True)
    ltd = torch.zeros(2, 1, 20, G.num_heads * G.head_size, dtype=torch.float16)
    ops.multi_layer_kv_transfer(
        ltd, cache.pointers(), slots, torch.device("cpu"), G.num_slots, 1, ops.EngineKVFormat(fmt), G.block_size, G.head_size
    )
    assert torch.equal(t2d.permute(1, 0, 2), ltd[:, 0])
    assert t2d[slots >= 0].any()
