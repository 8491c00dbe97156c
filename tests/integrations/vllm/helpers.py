"""Typed helpers that drive the connector the way vLLM 0.32 does, in-process.

Everything is vLLM's or LMCache's real code path except the model forward:
the worker step runs inside vLLM's own ``set_forward_context`` and
``KVConnectorModelRunnerMixin.maybe_get_kv_connector_output`` (the model
runner's connector wrapper), and each "attention layer" is a no-op function
wrapped by vLLM's real ``maybe_transfer_kv_layer`` decorator, so the per-layer
hooks fire in forward order exactly as in a real forward.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from vllm.config import VllmConfig
from vllm.distributed.kv_transfer.kv_connector.v1.base import KVConnectorMetadata
from vllm.engine.arg_utils import EngineArgs
from vllm.forward_context import set_forward_context
from vllm.model_executor.layers.attention.kv_transfer_utils import maybe_transfer_kv_layer
from vllm.sampling_params import SamplingParams
from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend, CPUAttentionMetadata
from vllm.v1.attention.backends.utils import get_supported_kv_cache_layouts, resolve_kv_cache_layout
from vllm.v1.core.kv_cache_manager import KVCacheBlocks
from vllm.v1.core.kv_cache_utils import KVCacheBlock, get_kv_cache_configs
from vllm.v1.core.sched.output import CachedRequestData, NewRequestData, SchedulerOutput
from vllm.v1.kv_cache_interface import FullAttentionSpec, KVCacheConfig, KVCacheLayout
from vllm.v1.outputs import KVConnectorOutput
from vllm.v1.request import Request
from vllm.v1.worker.kv_connector_model_runner_mixin import KVConnectorModelRunnerMixin
from vllm.v1.worker.utils import allocate_kv_cache

from testkit import vllm_settings as settings

CHUNK = 256  # LMCACHE_CHUNK_SIZE used by every test here
BLOCK = 128  # vLLM CPU block size used unless a test says otherwise
NUM_BLOCKS = 24


def vllm_config(
    model_dir: Path, *, block_size: int = BLOCK, extra: dict[str, Any] | None = None, dtype: str = "bfloat16"
) -> VllmConfig:
    """vLLM's real engine config for the tiny model with our connector, layout resolved.

    The KV cache layout is resolved the way the engine core does it (from the
    CPU attention backend's supported layouts) before any worker code runs.
    """
    args = EngineArgs(
        model=str(model_dir),
        dtype=dtype,
        max_model_len=2048,
        enable_prefix_caching=False,
        block_size=block_size,
        kv_transfer_config=settings.kv_transfer_config(extra),
    )
    config = args.create_engine_config()
    layouts = [layout.name for layout in get_supported_kv_cache_layouts([CPUAttentionBackend])]
    resolve_kv_cache_layout(config, [layouts])
    return config


def layer_names(config: VllmConfig) -> list[str]:
    num_layers = config.model_config.get_num_layers(config.parallel_config)
    return [f"model.layers.{i}.self_attn.attn" for i in range(num_layers)]


def kv_cache_config(config: VllmConfig, num_blocks: int = NUM_BLOCKS) -> KVCacheConfig:
    """vLLM's KVCacheConfig: ``num_blocks`` blocks (at least one max-length request's) per layer."""
    model = config.model_config
    spec = FullAttentionSpec(
        block_size=config.cache_config.block_size,
        num_kv_heads=model.get_num_kv_heads(config.parallel_config),
        head_size=model.get_head_size(),
        dtype=model.dtype,
    )
    names = layer_names(config)
    num_blocks = max(num_blocks, -(-config.model_config.max_model_len // spec.block_size) + 1)  # + null block
    memory = num_blocks * len(names) * spec.page_size_bytes
    return get_kv_cache_configs(config, [{name: spec for name in names}], [memory])[0]


def allocate_caches(kv_config: KVCacheConfig, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """The per-layer KV views vLLM CPU allocates (``[blocks, kv_heads, block, 2*head]``), filled randomly."""
    caches = allocate_kv_cache(kv_config, torch.device("cpu"), KVCacheLayout.LBHNC)
    for tensor in caches.values():
        tensor.copy_(torch.randn(tensor.shape, generator=gen).to(tensor.dtype))
    return caches


def snapshot_blocks(caches: dict[str, torch.Tensor], block_ids: list[int]) -> dict[str, torch.Tensor]:
    return {name: tensor[block_ids].clone() for name, tensor in caches.items()}


def blocks_of(caches: dict[str, torch.Tensor], block_ids: list[int]) -> dict[str, torch.Tensor]:
    return {name: tensor[block_ids] for name, tensor in caches.items()}


def zero_blocks(caches: dict[str, torch.Tensor], block_ids: list[int]) -> None:
    """What vLLM's runner does to newly allocated blocks before any load."""
    for tensor in caches.values():
        tensor[block_ids] = 0


def scramble_blocks(caches: dict[str, torch.Tensor], block_ids: list[int], gen: torch.Generator) -> None:
    """Blocks freed and reused by other requests: their old content is gone."""
    for tensor in caches.values():
        shape = tensor[block_ids].shape
        tensor[block_ids] = torch.randn(shape, generator=gen).to(tensor.dtype)


def same_blocks(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[name], b[name]) for name in a)


def all_zero(caches: dict[str, torch.Tensor], block_ids: list[int]) -> bool:
    return all(torch.count_nonzero(tensor[block_ids]).item() == 0 for tensor in caches.values())


def make_request(req_id: str, token_ids: list[int]) -> Request:
    return Request(req_id, list(token_ids), SamplingParams(max_tokens=1), None)


def kv_blocks(block_ids: list[int]) -> KVCacheBlocks:
    return KVCacheBlocks(([KVCacheBlock(block_id) for block_id in block_ids],))


def new_request_output(
    request: Request, block_ids: list[int], *, finished: set[str] | None = None
) -> SchedulerOutput:
    """The SchedulerOutput of a step that schedules ``request`` for the first time.

    ``request.num_computed_tokens`` must already hold the local + external hit,
    as the scheduler sets it before building ``NewRequestData``.
    """
    num_new = request.num_tokens - request.num_computed_tokens
    return SchedulerOutput(
        scheduled_new_reqs=[NewRequestData.from_request(request, (list(block_ids),))],
        scheduled_cached_reqs=CachedRequestData.make_empty(),
        num_scheduled_tokens={request.request_id: num_new},
        total_num_scheduled_tokens=num_new,
        scheduled_spec_decode_tokens={},
        scheduled_encoder_inputs={},
        num_common_prefix_blocks=[0],
        finished_req_ids=set(finished or ()),
        free_encoder_mm_hashes=[],
        has_sync_kv_loads=request.num_computed_tokens > 0,
    )


def schedule_new(
    scheduler: Any, request: Request, block_ids: list[int], external: int, num_local: int = 0
) -> SchedulerOutput:
    """The scheduler-side calls after ``get_num_new_matched_tokens``, in vLLM's order.

    ``external`` is what ``get_num_new_matched_tokens(request, num_local)``
    returned: ``update_state_after_alloc`` → (vLLM sets ``num_computed_tokens``)
    → ``build_connector_meta``, whose result vLLM puts on the SchedulerOutput.
    """
    scheduler.update_state_after_alloc(request, kv_blocks(block_ids), external)
    request.num_computed_tokens = num_local + external
    output = new_request_output(request, block_ids)
    output.kv_connector_metadata = scheduler.build_connector_meta(output)
    return output


@dataclass
class LayerStub:
    """What ``get_attention_context`` reads from an attention layer: its ``kv_cache``."""

    kv_cache: torch.Tensor


@maybe_transfer_kv_layer
def attention_layer(layer_name: str) -> None:
    """A forward through one attention layer: vLLM's decorator runs the connector hooks."""


def cpu_attn_metadata(request: Request, block_ids: list[int], block_size: int) -> CPUAttentionMetadata:
    """Minimal CPU attention metadata of a one-request prefill step."""
    computed = request.num_computed_tokens
    total = request.num_tokens
    positions = torch.arange(computed, total)
    table = torch.tensor([block_ids], dtype=torch.int32)
    slots = table[0, positions // block_size].long() * block_size + positions % block_size
    return CPUAttentionMetadata(
        num_actual_tokens=total - computed,
        max_query_len=total - computed,
        query_start_loc=torch.tensor([0, total - computed], dtype=torch.int32),
        max_seq_len=total,
        seq_lens=torch.tensor([total], dtype=torch.int32),
        block_table=table,
        slot_mapping=slots,
        scheduler_metadata=None,
    )


def install_layers(config: VllmConfig, caches: dict[str, torch.Tensor]) -> None:
    """Register the layers in the forward context the way Attention layers do at model build."""
    static = config.compilation_config.static_forward_context
    for name, tensor in caches.items():
        static[name] = LayerStub(kv_cache=tensor)


def run_worker_step(
    config: VllmConfig, output: SchedulerOutput, attn_metadata: CPUAttentionMetadata | None
) -> KVConnectorOutput:
    """One model-runner step on the worker: connector wrapper around a forward of every layer.

    With ``attn_metadata=None`` this is the body of ``kv_connector_no_forward``
    (a step that schedules no tokens): no layer runs.
    """
    layers = config.compilation_config.static_forward_context
    names = list(layers)
    for name in names if output.new_block_ids_to_zero else ():  # the runner's _update_states
        layers[name].kv_cache[output.new_block_ids_to_zero] = 0
    metadata = None if attn_metadata is None else {name: attn_metadata for name in names}
    with set_forward_context(metadata, config):
        with KVConnectorModelRunnerMixin.maybe_get_kv_connector_output(output) as connector_output:
            if metadata is not None:
                for name in names:
                    attention_layer(name)
    assert connector_output is not None
    return connector_output


def connector_metadata(output: SchedulerOutput) -> KVConnectorMetadata:
    assert output.kv_connector_metadata is not None
    return output.kv_connector_metadata
