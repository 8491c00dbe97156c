"""RingMLA: vllm-mindspore's ``(latent, rope)`` KV (MLA with ``ms_custom_ops``), exactly.

Per layer vllm-mindspore allocates ``[num_blocks, block_size, 1, kv_lora_rank]``
and ``[num_blocks, block_size, 1, qk_rope_head_dim]`` (DeepSeek: 512 and 64),
separate MindSpore tensors of one dtype. The memory object is the PyTorch
flavour's format-17 ``KV_MLA_FMT`` ``[1, L, T, 576]``: each row ``latent | rope``.
Expectations come from numpy indexing on 16-bit patterns; the cross-flavour
checks run the PyTorch flavour's op on the same bytes.
"""

from __future__ import annotations

import numpy as np
import pytest

ms = pytest.importorskip("mindspore")
torch = pytest.importorskip("torch")

from lmcache_ascend import ops  # noqa: E402
from lmcache_ascend.core.kv_format import KVFormat  # noqa: E402
from lmcache_ascend.integrations.mindspore import transfer  # noqa: E402
from lmcache_ascend.integrations.mindspore.engine_kv import describe_kv  # noqa: E402
from tests.integrations.mindspore.helpers import DTYPES, SENTINEL, object_bits  # noqa: E402

LATENT, ROPE = 512, 64  # kv_lora_rank, qk_rope_head_dim
NL, NB, BS = 2, 12, 16
NS = NB * BS
T = 37  # a partial chunk: not a multiple of the block size
STORE, LOAD = 1, 0


def ring_mla(dtype: str, rng: np.random.Generator) -> list[tuple[ms.Tensor, ms.Tensor]]:
    def plane(width: int) -> ms.Tensor:
        values = rng.standard_normal((NB, BS, 1, width)).astype(np.float32)
        return ms.Tensor(values).astype(DTYPES[dtype][0])  # cast by MindSpore: no bf16 zeros on CPU

    return [(plane(LATENT), plane(ROPE)) for _ in range(NL)]


def rows(layers: list[tuple[ms.Tensor, ms.Tensor]]) -> np.ndarray:
    """``[L, NS, 576]`` uint16: each slot's ``latent | rope`` (numpy only)."""
    return np.stack(
        [np.concatenate([t.asnumpy().view(np.uint16).reshape(NS, -1) for t in layer], axis=1) for layer in layers]
    )


def slots(rng: np.random.Generator) -> np.ndarray:
    s = rng.permutation(NS)[:T].astype(np.int64)
    s[[2, 20]] = -1  # tokens the engine does not hold
    return s


def sentinel(dtype: str) -> torch.Tensor:
    return torch.full((1, NL, T, LATENT + ROPE), SENTINEL, dtype=torch.int32).to(torch.int16).view(DTYPES[dtype][1])


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_ring_mla_is_format_17(dtype: str) -> None:
    kv = describe_kv(ring_mla(dtype, np.random.default_rng(0)))
    assert kv.fmt == KVFormat.NL_X_NP_X_NB_BS_ONE_HS
    assert (kv.use_mla, kv.hidden_dim, kv.num_layers, kv.num_slots) == (True, LATENT + ROPE, NL, NS)


@pytest.mark.parametrize("skip", [0, 5])
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_store_and_load_exactly(dtype: str, skip: int) -> None:
    rng = np.random.default_rng(1)
    layers = ring_mla(dtype, rng)
    s = slots(rng)
    bits = rows(layers)
    obj = sentinel(dtype)
    transfer.multi_layer(describe_kv(layers), obj, s, STORE, skip_prefix=skip)
    want = object_bits(sentinel(dtype))
    for t, slot in enumerate(s):
        if slot >= 0 and t >= skip:
            want[0, :, t] = bits[:, slot]
    np.testing.assert_array_equal(object_bits(obj), want)

    target = ring_mla(dtype, rng)
    before = rows(target)
    transfer.multi_layer(describe_kv(target), obj, s, LOAD, skip_prefix=skip)
    expected = before.copy()
    for t, slot in enumerate(s):
        if slot >= 0 and t >= skip:
            expected[:, slot] = bits[:, slot]
    np.testing.assert_array_equal(rows(target), expected)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_objects_are_the_pytorch_flavours_and_load_across(dtype: str) -> None:
    """The same KV bytes as torch plane tuples: ops.multi_layer_kv_transfer (format 17) gives the same object."""
    rng = np.random.default_rng(2)
    layers = ring_mla(dtype, rng)
    s = slots(rng)
    torch_layers = [
        tuple(torch.from_numpy(t.asnumpy().view(np.int16).copy()).view(DTYPES[dtype][1]) for t in layer) for layer in layers
    ]
    ours, theirs = sentinel(dtype), sentinel(dtype)
    transfer.multi_layer(describe_kv(layers), ours, s, STORE)
    ops.multi_layer_kv_transfer(
        theirs, torch_layers, torch.from_numpy(s), torch.device("cpu"), NS, STORE, ops.EngineKVFormat(17), BS, LATENT + ROPE
    )
    np.testing.assert_array_equal(object_bits(ours), object_bits(theirs))

    # A torch-stored object loads into MindSpore KV, and the MindSpore object into torch KV.
    target = ring_mla(dtype, rng)
    transfer.multi_layer(describe_kv(target), theirs, s, LOAD)
    live = s[s >= 0]
    np.testing.assert_array_equal(rows(target)[:, live], rows(layers)[:, live])
    torch_target = [tuple(torch.zeros_like(t) for t in layer) for layer in torch_layers]
    ops.multi_layer_kv_transfer(
        ours, torch_target, torch.from_numpy(s), torch.device("cpu"), NS, LOAD, ops.EngineKVFormat(17), BS, LATENT + ROPE
    )
    for got, want in zip(torch_target, torch_layers):
        for g, w in zip(got, want):
            assert torch.equal(g.reshape(NS, -1)[live].view(torch.int16), w.reshape(NS, -1)[live].view(torch.int16))


def test_object_of_the_wrong_width_is_refused() -> None:
    layers = ring_mla("float16", np.random.default_rng(3))
    obj = torch.zeros(1, NL, T, LATENT, dtype=torch.float16)
    with pytest.raises(ValueError, match=r"memory_obj has shape \[1, 2, 37, 512\], expected \[1, 2, 37, 576\]"):
        transfer.multi_layer(describe_kv(layers), obj, slots(np.random.default_rng(3)), STORE)
