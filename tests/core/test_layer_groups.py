"""Layer-group builder on mixed models."""

from __future__ import annotations

import pytest
import torch

from lmcache_ascend.core import KVFormat, build_layer_groups

NB, BS = 8, 16
NHD = {"kv_layout": "NHD"}


def mha(heads: int = 4, head_size: int = 8, dtype: torch.dtype = torch.bfloat16, block_size: int = BS) -> torch.Tensor:
    return torch.zeros(2, NB, block_size, heads, head_size, dtype=dtype)


def mla(width: int = 64) -> torch.Tensor:
    return torch.zeros(NB, BS, width, dtype=torch.bfloat16)


def test_uniform_model_is_one_group() -> None:
    kv = [mha() for _ in range(6)]
    (group,) = build_layer_groups(kv, "vllm", NHD)
    assert group.layer_indices == tuple(range(6))
    assert group.layout.fmt == KVFormat.NL_X_TWO_NB_BS_NH_HS
    assert group.layout.buffer_ptrs == [t.data_ptr() for t in kv]


def test_mixed_mha_mla_heads_dtype_and_block_size() -> None:
    kv = [
        mha(),  # 0
        mla(),  # 1
        mha(heads=2),  # 2: different head count (e.g. a sliding-window layer)
        mha(),  # 3
        mla(),  # 4
        mha(dtype=torch.float16),  # 5
        mha(block_size=32),  # 6
        mha(heads=2),  # 7
    ]
    groups = build_layer_groups(kv, "vllm", NHD)
    assert [g.layer_indices for g in groups] == [(0, 3), (1, 4), (2, 7), (5,), (6,)]
    first, latent, narrow, half, wide = groups
    assert (first.identity.kv_size, first.identity.num_heads, first.identity.dtype) == (2, 4, "bfloat16")
    assert latent.identity.fmt == KVFormat.NL_X_NB_BS_HS and latent.identity.kv_size == 1
    assert narrow.identity.num_heads == 2
    assert half.identity.dtype == "float16"
    assert wide.identity.block_size == 32
    for g in groups:
        assert g.layout.geometry.num_layers == g.num_layers
        assert g.layout.buffer_ptrs == [kv[i].data_ptr() for i in g.layer_indices]


def test_engine_groups_keep_layers_apart() -> None:
    kv = [mha() for _ in range(4)]
    groups = build_layer_groups(kv, "vllm", NHD, engine_groups=[0, 1, 0, 1])
    assert [g.layer_indices for g in groups] == [(0, 2), (1, 3)]
    assert [g.identity.engine_group for g in groups] == [0, 1]


def test_engine_groups_length_is_checked() -> None:
    with pytest.raises(ValueError, match="engine_groups has 3 entries for 4 layers"):
        build_layer_groups([mha() for _ in range(4)], "vllm", NHD, engine_groups=[0, 0, 1])


def test_tuple_layers_and_sglang_structures() -> None:
    tuples = [(torch.zeros(NB, BS, 4, 8), torch.zeros(NB, BS, 4, 8)) for _ in range(3)]
    (group,) = build_layer_groups(tuples, "vllm")
    assert group.layout.fmt == KVFormat.NL_X_TWO_X_NB_BS_NH_HS
    assert len(group.layout.buffers) == 6
    sgl = [[torch.zeros(NB * BS, 4, 8) for _ in range(3)] for _ in range(2)]
    (group,) = build_layer_groups(sgl, "sglang")
    assert group.layout.fmt == KVFormat.TWO_X_NL_X_NBBS_NH_HS and group.layer_indices == (0, 1, 2)


def test_unknown_layer_names_the_problem() -> None:
    with pytest.raises(ValueError, match="unrecognised vllm KV cache structure"):
        build_layer_groups([mha(), torch.zeros(7, 7)], "vllm", NHD)
