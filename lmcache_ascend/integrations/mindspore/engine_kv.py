"""The engine's MindSpore paged KV, described for the kernel core.

vllm-mindspore registers its KV per layer as a tuple of MindSpore tensors:

- ``(K, V)``, each ``[num_blocks, block_size, num_kv_heads, head_size]``
  (upstream format 16, ``NL_X_TWO_X_NB_BS_NH_HS``, the vllm-ascend layout);
- ``(latent,)`` for MLA models, ``[num_blocks, block_size, 1, head_size]``;
  the size-1 axis does not move any byte, so it is described as
  ``[num_blocks, block_size, head_size]`` (format 3, ``NL_X_NB_BS_HS``).
  A bare ``[num_blocks, block_size, head_size]`` tensor per layer is taken too;
- ``(latent, rope)`` for MLA with ``ms_custom_ops`` (RingMLA, the usual
  DeepSeek set-up on Ascend): ``[num_blocks, block_size, 1, kv_lora_rank]`` and
  ``[num_blocks, block_size, 1, qk_rope_head_dim]``, the plane tuple of format
  17 (``NL_X_NP_X_NB_BS_ONE_HS``), whose memory objects are the PyTorch
  flavour's ``KV_MLA_FMT`` rows ``latent | rope``. A 2-tuple is told from
  ``(K, V)`` by its planes' widths; equal widths with one head are ``(K, V)``.

:func:`describe_kv` turns that structure into a :class:`MindSporeKV` (layout,
pointer table); :class:`MindSporeKVCache` redoes it only when the engine's
buffers change. Only host-resident KV is accepted: the bytes are moved by the
host C++ core. Pointers come from ``data_ptr()``, which waits for the work
pending on each tensor; callers synchronize MindSpore first as well
(:func:`synchronize`), because writes through a pointer bypass MindSpore's
own dependency tracking.

Bad structures raise ``TypeError`` / ``ValueError`` naming ``kvcaches``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from lmcache_ascend.core.detection import KVCacheLayout, LayoutFacts, detect_kv_layout
from lmcache_ascend.core.last_built import LastBuilt
from lmcache_ascend.core.kv_format import KVFormat
from lmcache_ascend.core.tensor_desc import TensorDesc, describe

KV_FORMATS = (KVFormat.NL_X_TWO_X_NB_BS_NH_HS, KVFormat.NL_X_NB_BS_HS, KVFormat.NL_X_NP_X_NB_BS_ONE_HS)


def synchronize() -> None:
    """Wait for all pending MindSpore work (``mindspore.hal.synchronize``)."""
    import mindspore

    mindspore.hal.synchronize()


@dataclass(frozen=True)
class MindSporeKV(LayoutFacts):
    """One engine's KV: detected layout and its buffers' base addresses."""

    layout: KVCacheLayout
    ptrs: np.ndarray  # int64, pointer-table order (K0, V0, K1, V1, ... or one per layer)
    tensors: tuple[Any, ...]  # the engine's tensors, kept referenced while in use

    def layer_ptrs(self, layer: int) -> np.ndarray:
        """Pointer table of one layer (``[K, V]``, ``[latent]`` or ``[latent, rope]``)."""
        per_layer = len(self.ptrs) // self.num_layers
        return self.ptrs[layer * per_layer : (layer + 1) * per_layer]


def _squeeze_heads(d: TensorDesc, where: str) -> TensorDesc:
    """``[NB, BS, 1, HS]`` -> ``[NB, BS, HS]`` (the same bytes)."""
    if d.ndim == 3:
        return d
    if d.ndim != 4 or d.shape[2] != 1:
        raise ValueError(
            f"kvcaches{where} is an MLA latent of shape {list(d.shape)}; "
            "expected [num_blocks, block_size, 1, head_size]"
        )
    return replace(d, shape=(d.shape[0], d.shape[1], d.shape[3]), strides=(d.strides[0], d.strides[1], d.strides[3]))


def _layer_tree(layer: Any, index: int) -> TensorDesc | list[TensorDesc]:
    where = f"[{index}]"
    if not isinstance(layer, (list, tuple)):
        return _squeeze_heads(describe(layer), where)
    if len(layer) == 2:
        return [describe(layer[0]), describe(layer[1])]
    if len(layer) == 1:
        return _squeeze_heads(describe(layer[0]), where + "[0]")
    raise ValueError(f"kvcaches{where} holds {len(layer)} tensors; expected (K, V), (latent,) or (latent, rope)")


def describe_kv(kvcaches: Sequence[Any]) -> MindSporeKV:
    """Detect the layout of vllm-mindspore's per-layer KV (see the module docstring)."""
    if not isinstance(kvcaches, (list, tuple)) or not kvcaches:
        raise ValueError("kvcaches must be a non-empty list of per-layer (K, V) or (latent,) tuples")
    try:
        tree = [_layer_tree(layer, i) for i, layer in enumerate(kvcaches)]
    except TypeError as exc:
        raise TypeError(f"kvcaches: {exc}") from None
    kinds = {isinstance(node, list) for node in tree}
    if len(kinds) > 1:
        raise ValueError("kvcaches mixes 2-tuples ((K, V) or (latent, rope)) and (latent,) layers")
    try:
        layout = detect_kv_layout(tree, "vllm")
    except ValueError as exc:
        raise ValueError(f"kvcaches: {exc}") from None
    if layout.fmt not in KV_FORMATS:
        raise ValueError(
            f"kvcaches has layout {layout.fmt.name}; MindSpore KV must be (K, V), (latent,) or (latent, rope) tuples"
        )
    if layout.device != "cpu":
        raise ValueError(
            f"kvcaches is on {layout.device}: this release moves host-resident MindSpore KV only "
            "(MindSpore on Ascend is not supported yet)"
        )
    tensors = tuple(t for layer in kvcaches for t in (layer if isinstance(layer, (list, tuple)) else (layer,)))
    return MindSporeKV(layout, np.array(layout.buffer_ptrs, dtype=np.int64), tensors)


def _buffer_key(kvcaches: Sequence[Any]) -> tuple[Any, ...] | None:
    """Identity of the engine's buffers (address and shape of each), None if unusable."""
    if not isinstance(kvcaches, (list, tuple)):
        return None
    key: list[Any] = []
    for layer in kvcaches:
        for t in layer if isinstance(layer, (list, tuple)) else (layer,):
            ptr = getattr(t, "data_ptr", None)
            if not callable(ptr):
                return None
            key.append((int(ptr()), tuple(getattr(t, "shape", ()))))
    return tuple(key)


class MindSporeKVCache:
    """Describes the engine KV once per distinct set of buffers."""

    def __init__(self) -> None:
        self._last: LastBuilt[MindSporeKV] = LastBuilt()

    def get(self, kvcaches: Sequence[Any]) -> MindSporeKV:
        return self._last.get(_buffer_key(kvcaches), lambda: describe_kv(kvcaches))
