"""SGLang's real KV pools, allocators and radix cache, driven as its scheduler drives them.

:class:`World` is one SGLang "process": a KV pool of SGLang's own classes
(``MHATokenToKVPool``, ``AscendTokenToKVPool``, ``MLATokenToKVPool``), its
allocator, a ``ReqToTokenPool``, and the radix cache ``--enable-lmcache``
builds: ``lmc_radix_cache.LMCRadixCache`` looked up on SGLang's module and
called with the keyword arguments SGLang 0.5.3's scheduler passes.

:meth:`World.serve` runs one request the way the scheduler does:
``Req.init_next_round_input`` (prefix match, LMCache fetch), lock, slot
allocation for the uncached tail, a forward pass that reads every layer through
the pool's ``get_key_buffer`` (which fires the layerwise hook) and writes the
new tokens' KV, then ``cache_finished_req`` (radix insert + LMCache store).

The "model" is :func:`token_kv`: the KV of position ``p`` depends only on the
tokens ``[0, p]``, so a prefix loaded from LMCache must equal, exactly, what a
forward pass would have written.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import torch

DTYPE = torch.bfloat16
POOL_SIZE = 384
OUTPUT_TOKEN = 999


@dataclass(frozen=True)
class PoolKind:
    name: str
    page_size: int
    mla: bool = False
    npu_layout: bool = False

    def __str__(self) -> str:
        return self.name


MHA = PoolKind("mha", 1)
MHA_PAGED = PoolKind("mha_paged", 4)
NPU = PoolKind("ascend_npu", 4, npu_layout=True)
MLA = PoolKind("mla", 1, mla=True)
POOL_KINDS = (MHA, MHA_PAGED, NPU, MLA)


def build_pool(kind: PoolKind, model_config: Any) -> Any:
    from sglang.srt.mem_cache.memory_pool import AscendTokenToKVPool, MHATokenToKVPool, MLATokenToKVPool

    common = dict(size=POOL_SIZE, page_size=kind.page_size, dtype=DTYPE, layer_num=model_config.num_hidden_layers, device="cpu", enable_memory_saver=False)
    if kind.mla:
        return MLATokenToKVPool(kv_lora_rank=model_config.kv_lora_rank, qk_rope_head_dim=model_config.qk_rope_head_dim, **common)
    cls = AscendTokenToKVPool if kind.npu_layout else MHATokenToKVPool
    return cls(head_num=model_config.get_num_kv_heads(1), head_dim=model_config.head_dim, **common)


def token_kv(tokens: list[int], layer: int, shape: tuple[int, ...]) -> torch.Tensor:
    """The KV (K and V stacked, or the MLA latent) of the last of ``tokens`` in ``layer``."""
    digest = hashlib.sha256(repr((tokens, layer)).encode()).digest()
    g = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))
    return torch.randn(shape, generator=g).to(DTYPE)


@dataclass
class World:
    kind: PoolKind
    model_config: Any
    pool: Any
    allocator: Any
    req_to_token: Any
    cache: Any
    served: list[Any] = field(default_factory=list)
    forward_layers: list[int] = field(default_factory=list)

    @property
    def num_layers(self) -> int:
        return self.model_config.num_hidden_layers

    # ------------------------------------------------------------ KV access

    def _views(self, layer: int) -> tuple[torch.Tensor, ...]:
        """Token-slot views ``[slots, ...]`` of one layer's buffers (without the layer hook)."""
        p = self.pool
        if self.kind.mla:
            return (p.kv_buffer[layer],)
        k, v = p.k_buffer[layer], p.v_buffer[layer]
        return (k.reshape(-1, *k.shape[-2:]), v.reshape(-1, *v.shape[-2:]))

    def kv_shape(self) -> tuple[int, ...]:
        return (len(self._views(0)), *self._views(0)[0].shape[1:])

    def read(self, layer: int, slots: torch.Tensor) -> torch.Tensor:
        """KV at ``slots`` of ``layer``: ``[tokens, planes, ...]``."""
        return torch.stack([view[slots.long()] for view in self._views(layer)], dim=1)

    def write(self, layer: int, slots: torch.Tensor, kv: torch.Tensor) -> None:
        for plane, view in enumerate(self._views(layer)):
            view[slots.long()] = kv[:, plane]

    def expected(self, tokens: list[int], positions: range, layer: int) -> torch.Tensor:
        return torch.stack([token_kv(tokens[: p + 1], layer, self.kv_shape()) for p in positions])

    def nonzero_slots(self) -> set[int]:
        found: set[int] = set()
        for layer in range(self.num_layers):
            for view in self._views(layer):
                found |= set(torch.nonzero(view.reshape(view.shape[0], -1).float().abs().sum(1)).flatten().tolist())
        return found

    # ------------------------------------------------------------ the scheduler's steps

    def match(self, tokens: list[int], rid: str) -> Any:
        from sglang.srt.managers.schedule_batch import Req
        from sglang.srt.sampling.sampling_params import SamplingParams

        req = Req(rid, "", list(tokens), SamplingParams(max_new_tokens=1))
        req.init_next_round_input(self.cache)
        self.cache.inc_lock_ref(req.last_node)
        return req

    def forward(self, req: Any) -> torch.Tensor:
        """Allocate and fill the uncached tail; return every prompt token's slot."""
        tokens = req.origin_input_ids
        prefix = torch.as_tensor(req.prefix_indices, dtype=torch.int64)
        start, page = len(prefix), self.kind.page_size
        need = len(tokens) - start
        new = self.allocator.alloc(-(-need // page) * page)[:need]
        slots = torch.cat([prefix, new])
        req.req_pool_idx = self.req_to_token.alloc(1)[0]
        self.req_to_token.write((req.req_pool_idx, slice(0, len(tokens))), slots.to(torch.int32))
        for layer in range(self.num_layers):
            self.pool.get_key_buffer(layer)  # what attention does first; fires the layer hook
            self.forward_layers.append(layer)
            self.write(layer, new, self.expected(tokens, range(start, len(tokens)), layer))
        return slots

    def finish(self, req: Any) -> None:
        req.output_ids = [OUTPUT_TOKEN]
        self.cache.cache_finished_req(req)

    def serve(self, tokens: list[int], rid: str) -> tuple[Any, torch.Tensor]:
        req = self.match(tokens, rid)
        slots = self.forward(req)
        self.finish(req)
        self.served.append(req)
        return req, slots


def make_world(kind: PoolKind, model_config: Any, gen: torch.Generator) -> World:
    """A fresh SGLang "process" whose radix cache comes from ``--enable-lmcache``'s import."""
    from sglang.srt.mem_cache.allocator import PagedTokenToKVPoolAllocator, TokenToKVPoolAllocator
    from sglang.srt.mem_cache.memory_pool import ReqToTokenPool
    from sglang.srt.mem_cache.storage.lmcache import lmc_radix_cache

    pool = build_pool(kind, model_config)
    if kind.page_size == 1:
        allocator = TokenToKVPoolAllocator(POOL_SIZE, DTYPE, "cpu", pool, need_sort=False)
    else:
        allocator = PagedTokenToKVPoolAllocator(POOL_SIZE, kind.page_size, DTYPE, "cpu", pool, need_sort=False)
    # Hand out slots in a random order, so slot mappings are not the identity.
    allocator.free_pages = allocator.free_pages[torch.randperm(len(allocator.free_pages), generator=gen)]
    req_to_token = ReqToTokenPool(size=8, max_context_len=256, device="cpu", enable_memory_saver=False)
    cache = lmc_radix_cache.LMCRadixCache(
        req_to_token_pool=req_to_token,
        token_to_kv_pool_allocator=allocator,
        page_size=kind.page_size,
        disable=False,
        model_config=model_config,
        tp_size=1,
        rank=0,
        tp_group=None,
        eviction_policy="lru",
    )
    return World(kind, model_config, pool, allocator, req_to_token, cache)


def model_config_for(kind: PoolKind, model_dirs: dict[str, Any]) -> Any:
    from sglang.srt.configs.model_config import ModelConfig

    return ModelConfig(model_path=str(model_dirs["mla" if kind.mla else "mha"]))


def prompt(count: int, seed: int) -> list[int]:
    return [(seed * 131 + 17 * i + 5) % 997 for i in range(count)]
