"""An in-process CacheBlend stack: real LMCache engine, paged KV, blend connector, blenders.

What a serving engine's worker holds, without the engine: a real LMCache 0.5.6
``LMCacheEngine`` (``enable_blending``, ``use_layerwise``, local CPU tier,
LMCache's own ``SegmentTokenDatabase``), lmcache_ascend's
:class:`~lmcache_ascend.integrations.lmcache.blend_connector.BlendBufferConnector`
over a paged KV cache in vLLM's flash layout (format 1) or vllm-ascend's
``(K, V)`` tuples (format 16), and a :class:`SegmentBlender` over a
transformers Llama. Used by the tests, ``examples/blend_hole_mode.py`` and
``benchmarks/blend.py``.

Every request uses the same slots (a seeded permutation of whole blocks), as
vLLM would reuse freed blocks; :meth:`LocalBlendStack.store` saves a prompt's
segments from the paged cache through ``LMCacheEngine.store_layer``.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from lmcache_ascend.blend.blender import BlendResult, SegmentBlender
from lmcache_ascend.blend.model import HFLlamaLayers
from lmcache_ascend.blend.settings import HOLE_MODE_KEY
from testkit.blend_workload import SPECIAL_STR
from lmcache_ascend.integrations.lmcache.blend_connector import BlendBufferConnector

LAYOUTS = ("flash", "ascend")  # format 1 [2, NB, BS, H, d] per layer; format 16 (K, V) tuples


@dataclass(frozen=True)
class StackOptions:
    recompute_ratio: float = 0.15
    check_layer: int = 1
    hole_mode: bool = False
    layout: str = "flash"
    block_size: int = 16
    max_tokens: int = 4096
    chunk_size: int = 256
    cpu_gib: float = 1.0
    seed: int = 0


def load_model(model_dir: Path, dtype: torch.dtype = torch.bfloat16) -> Any:
    """A transformers causal LM in eval mode with eager attention: the blender's
    layer steps are the eager ones, so this model's own forward is the exact
    full-recompute reference."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, attn_implementation="eager").eval()


def full_recompute(model: Any, tokens: Sequence[int]) -> tuple[torch.Tensor, Any]:
    """Final-norm hidden states ``[n, D]`` and the KV cache of the model's own forward."""
    ids = torch.tensor([list(tokens)], dtype=torch.long, device=model.device)
    with torch.inference_mode():
        out = model(ids, output_hidden_states=True, use_cache=True)
    return out.hidden_states[-1][0], out.past_key_values


def _broadcast(tensor: torch.Tensor, src: int) -> torch.Tensor:
    return tensor


def _broadcast_object(obj: Any, src: int) -> Any:
    return obj


class LocalBlendStack:
    def __init__(self, model_dir: Path, model: Any, options: StackOptions = StackOptions()) -> None:
        from lmcache.v1.cache_engine import LMCacheEngineBuilder
        from lmcache.v1.config import LMCacheEngineConfig
        from lmcache.v1.metadata import LMCacheMetadata

        if options.layout not in LAYOUTS:
            raise ValueError(f"options.layout must be one of {LAYOUTS}, got {options.layout!r}")
        layers = HFLlamaLayers(model)
        self.layers = layers
        self.options = options
        shape = (layers.num_layers, 2, options.chunk_size, layers.num_kv_heads, layers.head_dim)
        metadata = LMCacheMetadata(
            model_name=str(model_dir),  # SegmentTokenDatabase loads the tokenizer from here
            world_size=1,
            local_world_size=1,
            worker_id=0,
            local_worker_id=0,
            kv_dtype=layers.dtype,
            kv_shape=shape,
            use_mla=False,
            role="worker",
            chunk_size=options.chunk_size,
        )
        config = LMCacheEngineConfig.from_defaults(
            chunk_size=options.chunk_size,
            local_cpu=True,
            max_local_cpu_size=options.cpu_gib,
            use_layerwise=True,
            enable_blending=True,
            blend_special_str=SPECIAL_STR,
            blend_recompute_ratios=[options.recompute_ratio],
            blend_check_layers=[options.check_layer],
            save_unfull_chunk=True,
            pre_caching_hash_algorithm="sha256_cbor",
            extra_config={HOLE_MODE_KEY: options.hole_mode},
        )
        hints = {"kv_layout": "NHD"}
        connector = BlendBufferConnector.from_metadata(metadata, device=layers.device, layout_hints=hints)
        self.instance_id = f"lmcache-ascend-blend-{uuid.uuid4().hex[:12]}"
        self.engine = LMCacheEngineBuilder.get_or_create(
            self.instance_id, config, metadata, connector, _broadcast, _broadcast_object
        )
        self.engine.post_init()
        self.kvcaches = self._paged_cache()
        self.slots = self._slot_order()
        self.blender = SegmentBlender(self.engine, layers, max_positions=options.max_tokens)

    def _paged_cache(self) -> list[Any]:
        o, m = self.options, self.layers
        blocks = -(-o.max_tokens // o.block_size)
        per_side = (blocks, o.block_size, m.num_kv_heads, m.head_dim)
        if o.layout == "flash":
            return [torch.zeros((2, *per_side), dtype=m.dtype, device=m.device) for _ in range(m.num_layers)]
        return [
            (torch.zeros(per_side, dtype=m.dtype, device=m.device), torch.zeros(per_side, dtype=m.dtype, device=m.device))
            for _ in range(m.num_layers)
        ]

    def _slot_order(self) -> torch.Tensor:
        o = self.options
        blocks = -(-o.max_tokens // o.block_size)
        gen = torch.Generator().manual_seed(o.seed)
        order = torch.randperm(blocks, generator=gen)
        return (order.repeat_interleave(o.block_size) * o.block_size + torch.arange(blocks * o.block_size) % o.block_size)[
            : o.max_tokens
        ].to(self.layers.device)

    def request_kwargs(self, num_tokens: int) -> dict[str, Any]:
        if num_tokens > self.options.max_tokens:
            raise ValueError(f"prompt of {num_tokens} tokens exceeds max_tokens {self.options.max_tokens}")
        return {"kvcaches": self.kvcaches, "slot_mapping": self.slots[:num_tokens], "sync": True}

    def blend(
        self, tokens: Sequence[int], *, hole_mode: bool | None = None, recompute_ratio: float | None = None, **extra: Any
    ) -> BlendResult:
        """Prefill ``tokens`` through the blender (mode and ratio from the config unless given)."""
        settings = self.blender.settings
        if hole_mode is not None:
            settings = replace(settings, hole_mode=hole_mode)
        if recompute_ratio is not None:
            settings = replace(settings, recompute_ratio=recompute_ratio)
        blender = self.blender if settings == self.blender.settings else self.blender.with_settings(settings)
        return blender.blend(list(tokens), **self.request_kwargs(len(tokens)), **extra)

    def store(self, tokens: Sequence[int]) -> None:
        """Save the prompt's segments that LMCache does not hold yet, from the paged cache."""
        for _ in self.engine.store_layer(list(tokens), mask=None, **self.request_kwargs(len(tokens))):
            pass

    def prefill_and_store(self, tokens: Sequence[int]) -> BlendResult:
        result = self.blend(tokens)
        self.store(tokens)
        return result

    def layer_kv(self, layer: int, num_tokens: int) -> torch.Tensor:
        """``[2, num_tokens, H]`` of the paged cache at this stack's slots (for checks)."""
        from lmcache_ascend.kernels.slot_ops import single_layer_kv_transfer

        out = torch.empty(2, num_tokens, self.layers.kv_row, dtype=self.layers.dtype, device=self.layers.device)
        paged = self.kvcaches[layer]
        fmt = 1 if self.options.layout == "flash" else 16
        single_layer_kv_transfer(out, paged, self.slots[:num_tokens], 1, fmt, token_major=False)
        return out

    def close(self) -> None:
        from lmcache.v1.cache_engine import LMCacheEngineBuilder

        LMCacheEngineBuilder.destroy(self.instance_id)
