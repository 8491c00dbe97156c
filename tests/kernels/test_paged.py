"""``kernels/paged.py``: the checked-tensor cache behind ``resolve_buffers``.

Serving passes the same KV cache list for every chunk, so a list whose tensors
passed the checks is not checked again. These tests pin what must still be
noticed: a replaced layer, a storage swapped in place, a freed cache; and that
the cache neither keeps caches alive nor grows without bound.
"""

from __future__ import annotations

import gc
import weakref

import pytest
import torch

from lmcache_ascend import ops
from lmcache_ascend.kernels import paged
from tests.kernels.reference import Geom, make_paged, object_shape, random_slots, random_tensor, ref_transfer

G = Geom(num_layers=3, num_blocks=8, block_size=4, num_heads=2, head_size=8)
FMT = 1  # NL_X_TWO_NB_BS_NH_HS: one [2, NB, BS, NH, HS] tensor per layer
STORE = 1


def store(layers: list[torch.Tensor], slots: torch.Tensor) -> torch.Tensor:
    obj = torch.zeros(object_shape(FMT, G, slots.numel()), dtype=torch.float16)
    ops.multi_layer_kv_transfer(
        obj, layers, slots, torch.device("cpu"), G.num_slots, STORE, ops.EngineKVFormat(FMT), G.block_size, G.head_size
    )
    return obj


def expected(layers: list[torch.Tensor], slots: torch.Tensor) -> torch.Tensor:
    cache = make_paged(FMT, G, torch.float16, torch.Generator().manual_seed(0))
    cache.data = [t.clone() for t in layers]
    obj = torch.zeros(object_shape(FMT, G, slots.numel()), dtype=torch.float16)
    ref_transfer(cache, obj, slots, STORE)
    return obj


@pytest.fixture
def layers() -> list[torch.Tensor]:
    data = make_paged(FMT, G, torch.float16, torch.Generator().manual_seed(1)).data
    assert isinstance(data, list)
    return data


@pytest.fixture
def slots() -> torch.Tensor:
    return random_slots(10, G.num_slots, torch.Generator().manual_seed(2), num_invalid=2)


@pytest.fixture
def checks(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the full checks ``resolve_buffers`` runs."""
    calls: list[int] = []
    real = paged._check_tensors

    def counting(tensors, *args, **kwargs):
        calls.append(len(tensors))
        return real(tensors, *args, **kwargs)

    monkeypatch.setattr(paged, "_check_tensors", counting)
    return calls


def test_same_list_is_checked_once_and_copies_exactly(layers, slots, checks) -> None:
    first, second = store(layers, slots), store(layers, slots)
    assert checks == [G.num_layers]
    torch.testing.assert_close(first, expected(layers, slots), rtol=0, atol=0)
    torch.testing.assert_close(second, first, rtol=0, atol=0)


def test_replaced_layer_is_checked_again(layers, slots, checks) -> None:
    store(layers, slots)
    layers[1] = random_tensor(tuple(layers[1].shape), torch.float16, torch.Generator().manual_seed(3))
    torch.testing.assert_close(store(layers, slots), expected(layers, slots), rtol=0, atol=0)
    assert len(checks) == 2
    layers[2] = layers[2][:, :-1]  # a smaller view at the very same address
    with pytest.raises(ValueError, match=r"key_value_ptrs\[2\]"):
        store(layers, slots)


def test_storage_swapped_in_place_is_read_from_its_new_address(layers, slots, checks) -> None:
    store(layers, slots)
    fresh = random_tensor(tuple(layers[0].shape), torch.float16, torch.Generator().manual_seed(4))
    layers[0].set_(fresh.untyped_storage(), 0, fresh.shape, fresh.stride())  # same object, new memory
    torch.testing.assert_close(store(layers, slots), expected(layers, slots), rtol=0, atol=0)
    assert len(checks) == 2


def test_cache_holds_tensors_weakly_and_stays_bounded(slots) -> None:
    gen = torch.Generator().manual_seed(5)
    data = make_paged(FMT, G, torch.float16, gen).data
    assert isinstance(data, list)
    store(data, slots)
    ref = weakref.ref(data[0])
    del data
    gc.collect()
    assert ref() is None, "the checked-tensor cache kept a freed KV cache alive"
    lists = [make_paged(FMT, G, torch.float16, gen).data for _ in range(3 * paged._CHECKED_MAX)]
    for layer_list in lists:
        store(layer_list, slots)  # type: ignore[arg-type]
    assert len(paged._CHECKED) <= paged._CHECKED_MAX


def test_freed_layer_replaced_by_none_is_refused_by_name(layers, slots, checks) -> None:
    """The cached entry's reference to the freed layer reads None, as the new entry is: still not a hit."""
    store(layers, slots)
    layers[1] = None  # type: ignore[call-overload]
    gc.collect()
    with pytest.raises(TypeError, match=r"key_value_ptrs\[1\] must be a torch.Tensor, got NoneType"):
        store(layers, slots)
    assert len(checks) == 2
