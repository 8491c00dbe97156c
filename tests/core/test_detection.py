"""KV format detection from tensor descriptions, cross-checked with upstream's detector."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from lmcache.utils import EngineType
from lmcache.v1.gpu_connector.kv_format import detect_format

from lmcache_ascend.core import KVFormat, TensorDesc, describe, detect_kv_layout, physical_view

NL, NB, BS, NH, HS = 3, 6, 16, 4, 8


def _layers(shape: tuple[int, ...], dtype: torch.dtype = torch.bfloat16) -> list[torch.Tensor]:
    return [torch.zeros(shape, dtype=dtype) for _ in range(NL)]


VLLM_CASES = [
    ("flash NHD", lambda: _layers((2, NB, BS, NH, HS)), "NHD", KVFormat.NL_X_TWO_NB_BS_NH_HS),
    ("flash HND", lambda: _layers((2, NB, NH, BS, HS)), "HND", KVFormat.NL_X_TWO_NB_NH_BS_HS),
    ("flashinfer NHD", lambda: _layers((NB, 2, BS, NH, HS)), "NHD", KVFormat.NL_X_NB_TWO_BS_NH_HS),
    ("flashinfer HND", lambda: _layers((NB, 2, NH, BS, HS)), "HND", KVFormat.NL_X_NB_TWO_NH_BS_HS),
    ("MLA", lambda: _layers((NB, BS, 576)), "NHD", KVFormat.NL_X_NB_BS_HS),
    ("vLLM CPU", lambda: _layers((NB, NH, BS, 2 * HS)), "HND", KVFormat.NL_X_NB_NH_BS_CS),
    ("fused NHD", lambda: _layers((NB, BS, NH, 2 * HS)), "NHD", KVFormat.NL_X_NB_BS_NH_CS),
    ("K,V tuples", lambda: [[torch.zeros(NB, BS, NH, HS), torch.zeros(NB, BS, NH, HS)] for _ in range(NL)], "NHD", KVFormat.NL_X_TWO_X_NB_BS_NH_HS),
    ("cross-layer NHD", lambda: torch.zeros(NB, NL, 2, BS, NH, HS), "NHD", KVFormat.NB_NL_TWO_BS_NH_HS),
]


@pytest.mark.parametrize("name,make,layout,expected", VLLM_CASES, ids=[c[0] for c in VLLM_CASES])
def test_vllm_formats_match_upstream_detector(name, make, layout, expected) -> None:
    kv = make()
    ours = detect_kv_layout(kv, "vllm", {"kv_layout": layout})
    theirs, _ = detect_format(kv, EngineType.VLLM, {"kv_layout": layout})
    assert ours.fmt == expected
    assert int(theirs) == int(expected)


@pytest.mark.parametrize("name,make,layout,expected", VLLM_CASES, ids=[c[0] for c in VLLM_CASES])
def test_vllm_geometry(name, make, layout, expected) -> None:
    g = detect_kv_layout(make(), "vllm", {"kv_layout": layout}).geometry
    assert (g.num_layers, g.num_blocks, g.block_size) == (NL, NB, BS)
    if expected != KVFormat.NL_X_NB_BS_HS:
        assert (g.num_heads, g.head_size) == (NH, HS)


def test_host_caches_default_to_hnd_like_upstream() -> None:
    kv = _layers((2, NB, BS, NH, HS))
    ours = detect_kv_layout(kv, "vllm")
    theirs, _ = detect_format(kv, EngineType.VLLM)
    assert ours.fmt == KVFormat.NL_X_TWO_NB_NH_BS_HS == int(theirs)


def test_hnd_cache_exposed_as_nhd_view_is_read_physically() -> None:
    # vLLM allocates HND and hands out an NHD-shaped permuted view.
    physical = [torch.zeros(2, NB, NH, BS, HS) for _ in range(NL)]
    views = [t.permute(0, 1, 3, 2, 4) for t in physical]
    layout = detect_kv_layout(views, "vllm", {"kv_layout": "HND"})
    assert layout.fmt == KVFormat.NL_X_TWO_NB_NH_BS_HS
    assert layout.buffer_ptrs == [t.data_ptr() for t in physical]
    assert physical_view(describe(views[0])).shape == (2, NB, NH, BS, HS)


UNIFIED = {"kv_list_layout": "unified"}
SGLANG_CASES = [
    ("MHA", lambda: [_layers((NB * BS, NH, HS)), _layers((NB * BS, NH, HS))], {}, KVFormat.TWO_X_NL_X_NBBS_NH_HS),
    ("MHA paged", lambda: [_layers((NB, BS, NH, HS)), _layers((NB, BS, NH, HS))], {}, KVFormat.TWO_X_NL_X_NB_BS_NH_HS),
    ("MLA", lambda: _layers((NB * BS, 1, 576)), {}, KVFormat.NL_X_NBBS_ONE_HS),
    # MP registration: one flat list, all K components then all V components.
    ("unified MHA", lambda: _layers((NB, BS, NH, HS)) + _layers((NB, BS, NH, HS)), UNIFIED, KVFormat.NL_X_NB_BS_NH_HS),
    ("unified MHA NH=1", lambda: _layers((NB, BS, 1, HS)) * 2, UNIFIED, KVFormat.NL_X_NB_BS_NH_HS),
    ("unified MLA", lambda: _layers((NB, BS, 576)), UNIFIED, KVFormat.NL_X_NB_BS_HS),
]


@pytest.mark.parametrize("name,make,hints,expected", SGLANG_CASES, ids=[c[0] for c in SGLANG_CASES])
def test_sglang_formats_match_upstream_detector(name, make, hints, expected) -> None:
    kv = make()
    assert detect_kv_layout(kv, "sglang", hints).fmt == expected
    theirs, _ = detect_format(kv, EngineType.SGLANG, hints)
    assert int(theirs) == int(expected)


def test_sglang_unified_geometry_counts_components() -> None:
    kv = _layers((NB, BS, NH, HS)) + _layers((NB, BS, NH, HS))
    layout = detect_kv_layout(kv, "sglang", UNIFIED)
    g = layout.geometry
    assert (g.num_layers, g.num_blocks, g.block_size, g.num_heads, g.head_size) == (2 * NL, NB, BS, NH, HS)
    assert (layout.kv_size, layout.hidden_dim) == (1, NH * HS)
    assert layout.buffer_ptrs == [t.data_ptr() for t in kv]
    with pytest.raises(ValueError, match="unrecognised sglang"):
        detect_kv_layout([kv], "sglang", UNIFIED)  # nested: not the flat unified list


def test_sglang_npu_k_all_v_all_becomes_per_layer_buffers() -> None:
    k_all = torch.zeros(NL, NB, BS, NH, HS, dtype=torch.float16)
    v_all = torch.zeros(NL, NB, BS, NH, HS, dtype=torch.float16)
    layout = detect_kv_layout([k_all, v_all], "sglang")
    assert layout.fmt == KVFormat.TWO_X_NL_X_NB_BS_NH_HS
    expected = [k_all[i].data_ptr() for i in range(NL)] + [v_all[i].data_ptr() for i in range(NL)]
    assert layout.buffer_ptrs == expected


def test_numpy_arrays_are_described_too() -> None:
    arrays = [np.zeros((2, NB, BS, NH, HS), dtype=np.float16) for _ in range(NL)]
    layout = detect_kv_layout(arrays, "vllm", {"kv_layout": "NHD"})
    assert layout.fmt == KVFormat.NL_X_TWO_NB_BS_NH_HS and layout.dtype == "float16"


@pytest.mark.parametrize(
    "kv,match",
    [
        ([], "empty"),
        ([torch.zeros(3, NB, BS, NH, HS)], "unrecognised vllm KV cache structure"),
        ([torch.zeros(2, NB, BS, NH, HS), torch.zeros(2, NB, BS, NH, 2 * HS)], "buffer 1 has shape"),
        ([torch.zeros(2, NB, BS, NH, HS), torch.zeros(2, NB, BS, NH, HS, dtype=torch.float16)], "buffer 1 is float16"),
        ([torch.zeros(2, NB, BS, NH, 2 * HS)[..., :HS]], "not dense"),
    ],
    ids=["empty", "unknown", "mixed-shape", "mixed-dtype", "strided"],
)
def test_bad_structures_raise_value_error(kv, match) -> None:
    with pytest.raises(ValueError, match=match):
        detect_kv_layout(kv, "vllm", {"kv_layout": "NHD"})


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="engine must be one of"):
        detect_kv_layout(_layers((2, NB, BS, NH, HS)), "trtllm")
    with pytest.raises(ValueError, match="kv_layout"):
        detect_kv_layout(_layers((2, NB, BS, NH, HS)), "vllm", {"kv_layout": "NDH"})
    with pytest.raises(TypeError, match="expected a torch.Tensor"):
        detect_kv_layout([[1, 2]], "vllm")


def test_tensor_desc_of_strided_view() -> None:
    t = torch.zeros(4, 6, dtype=torch.float32)[:, 1:5]
    d = describe(t)
    assert d == TensorDesc(ptr=t.data_ptr(), shape=(4, 4), strides=(6, 1), dtype="float32", itemsize=4)
    assert not d.is_contiguous and d.span_bytes() == (3 * 6 + 3 + 1) * 4
