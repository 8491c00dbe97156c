"""MindSpore paged KV for the tests, with an independent numpy picture of its bytes.

Only modules that ran ``pytest.importorskip("mindspore")`` import this one.

KV is built the way vllm-mindspore holds it: per layer a ``(K, V)`` tuple of
``[num_blocks, block_size, num_kv_heads, head_size]`` MindSpore tensors, or
``(latent,)`` of ``[num_blocks, block_size, 1, head_size]`` for MLA. Values are
random normals cast by MindSpore to bf16 / fp16 (finite, so comparisons through
MindSpore ops are exact too). Expected memory objects are computed with plain
numpy indexing on 16-bit patterns, never with the code under test.
"""

from __future__ import annotations

from dataclasses import dataclass

import mindspore as ms
import numpy as np
import torch

DTYPES: dict[str, tuple[ms.Type, torch.dtype]] = {
    "bfloat16": (ms.bfloat16, torch.bfloat16),
    "float16": (ms.float16, torch.float16),
}
SENTINEL = 0x7A5A  # a 16-bit pattern random data never makes exactly everywhere


@dataclass(frozen=True)
class Geom:
    num_layers: int = 2
    num_blocks: int = 48
    block_size: int = 16
    num_heads: int = 2
    head_size: int = 8
    mla: bool = False

    @property
    def planes(self) -> int:
        return 1 if self.mla else 2

    @property
    def row(self) -> int:
        """Elements per token of one plane (H of the memory object)."""
        return self.head_size if self.mla else self.num_heads * self.head_size

    @property
    def num_slots(self) -> int:
        return self.num_blocks * self.block_size

    @property
    def tensor_shape(self) -> tuple[int, int, int, int]:
        heads = 1 if self.mla else self.num_heads
        return (self.num_blocks, self.block_size, heads, self.head_size)


KVLayers = list[tuple[ms.Tensor, ...]]


def _from_float32(values: np.ndarray, dtype: str) -> ms.Tensor:
    # Cast by MindSpore (mint.zeros & co. have no bf16 CPU kernel in 2.7.1).
    return ms.Tensor(values.astype(np.float32)).astype(DTYPES[dtype][0])


def random_kv(geom: Geom, dtype: str, rng: np.random.Generator) -> KVLayers:
    return [
        tuple(_from_float32(rng.standard_normal(geom.tensor_shape), dtype) for _ in range(geom.planes))
        for _ in range(geom.num_layers)
    ]


def filled_kv(geom: Geom, dtype: str, pattern: int = SENTINEL) -> KVLayers:
    """KV whose every element holds the 16-bit ``pattern``."""
    np_dtype = ms.dtype_to_nptype(DTYPES[dtype][0])
    bits = np.full(geom.tensor_shape, pattern, dtype=np.uint16)
    return [tuple(ms.Tensor(bits.view(np_dtype)) for _ in range(geom.planes)) for _ in range(geom.num_layers)]


def kv_bits(layers: KVLayers) -> np.ndarray:
    """A copy of the KV's bytes as ``[L, planes, num_slots, row]`` uint16 (slot-major)."""
    out = []
    for layer in layers:
        planes = []
        for t in layer:
            a = t.asnumpy().view(np.uint16)
            planes.append(a.reshape(a.shape[0] * a.shape[1], -1).copy())
        out.append(np.stack(planes))
    return np.stack(out)


def kv_values(layers: KVLayers) -> np.ndarray:
    """The KV read by a MindSpore op (a cast), ``[L, planes, num_slots, row]`` float32."""
    out = []
    for layer in layers:
        planes = []
        for t in layer:
            a = t.astype(ms.float32).asnumpy()
            planes.append(a.reshape(a.shape[0] * a.shape[1], -1))
        out.append(np.stack(planes))
    return np.stack(out)


def values_of_bits(bits: np.ndarray, dtype: str) -> np.ndarray:
    """float32 values of 16-bit patterns (numpy only)."""
    if dtype == "float16":
        return bits.view(np.float16).astype(np.float32)
    return (bits.astype(np.uint32) << 16).view(np.float32)


def torch_kv(bits: np.ndarray, geom: Geom, dtype: str) -> list[tuple[torch.Tensor, ...]]:
    """The same KV as torch tensors (what the PyTorch flavour sees on vllm-ascend)."""
    tdtype = DTYPES[dtype][1]
    return [
        tuple(torch.from_numpy(bits[layer, p].reshape(geom.tensor_shape).view(np.int16).copy()).view(tdtype) for p in range(geom.planes))
        for layer in range(geom.num_layers)
    ]


def torch_kv_bits(layers: list[tuple[torch.Tensor, ...]]) -> np.ndarray:
    return np.stack(
        [np.stack([t.view(torch.int16).numpy().view(np.uint16).reshape(t.shape[0] * t.shape[1], -1) for t in layer]) for layer in layers]
    )


def object_bits(tensor: torch.Tensor) -> np.ndarray:
    """A memory object's bytes as uint16 of its own shape."""
    return tensor.contiguous().view(torch.int16).numpy().view(np.uint16).copy()


def expected_object(bits: np.ndarray, slots: np.ndarray, before: np.ndarray, skip: int = 0) -> np.ndarray:
    """Store reference: ``[planes, L, T, row]``; tokens with slot < 0 or < skip keep ``before``."""
    want = before.copy()
    for t, slot in enumerate(slots):
        if slot >= 0 and t >= skip:
            want[:, :, t] = bits[:, :, slot].transpose(1, 0, 2)
    return want


def expected_kv(before: np.ndarray, obj: np.ndarray, slots: np.ndarray, skip: int = 0) -> np.ndarray:
    """Load reference: ``[L, planes, num_slots, row]`` with object rows written at their slots."""
    want = before.copy()
    for t, slot in enumerate(slots):
        if slot >= 0 and t >= skip:
            want[:, :, slot] = obj[:, :, t].transpose(1, 0, 2)
    return want


def block_slots(block_ids: np.ndarray, num_tokens: int, block_size: int) -> np.ndarray:
    """vLLM's slot mapping for a request on ``block_ids``: block * block_size + offset."""
    per_token = np.repeat(block_ids, block_size)[:num_tokens]
    return per_token * block_size + np.arange(num_tokens) % block_size
