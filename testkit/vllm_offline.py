"""Offline vLLM runs with (or without) the connector: shared by the example, the
end-to-end tests and the benchmarks, so all of them start vLLM the same way.

:func:`start_llm` applies the LMCache settings (environment variables, which
vLLM's spawned worker processes inherit) before importing vLLM, and turns vLLM's
own prefix cache off so every reused token must come from LMCache.
:func:`run_prompt` sends one token-id prompt and reports time to first token,
tokens served by LMCache, the greedy tokens and their log-probabilities.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from lmcache_ascend.integrations.vllm.block_tail import TAILS_KEY
from testkit.vllm_settings import blend_env, kv_transfer_config, lmcache_env, mp_kv_transfer_config_dict


@dataclass(frozen=True)
class LLMOptions:
    model_dir: Path
    max_model_len: int = 4096
    connector: bool = True
    layerwise: bool = False
    disk_dir: Path | None = None
    cpu_gib: float = 2.0
    kv_cache_gib: int = 1
    block_size: int | None = None
    # LMCache multi-process mode instead of the in-process connector: the
    # ``lmcache server`` port, and LMCache's device backend in vLLM's processes
    # (``"ascend_cpu"`` for lmcache_ascend's ops, None for LMCache's default).
    mp_port: int | None = None
    device_backend: str | None = None
    # False: LMCache keeps nothing (its CPU tier only stages), so every prompt is
    # computed in full, through the same connector path (a baseline).
    lmcache_store: bool = True
    # CacheBlend: None = off, else standard (False) or hole mode (True); CPU tier only.
    blend_hole_mode: bool | None = None
    blend_ratio: float = 0.15
    dtype: str = "bfloat16"
    # Host KV: store and look up a prompt's last partial chunk up to its last
    # whole block (``block_tail.py``); False keeps whole chunks only.
    block_tails: bool = True
    # Peers for benchmarks (``connector=False``): vLLM's own prefix cache, and
    # vLLM's own disk ``ExampleConnector`` storing under this directory.
    prefix_caching: bool = False
    example_storage: Path | None = None
    # Which configuration form names the connector (settings.CONNECTOR_FORMS).
    connector_form: str = "v1_dynamic"
    # vLLM's hybrid KV cache manager (one KV group per attention kind); False
    # passes --disable-hybrid-kv-cache-manager (every layer keeps full KV).
    hybrid_kv_manager: bool = True
    # LMCACHE_* settings applied over the defaults above (the caller's win): a
    # remote tier, a CPU tier off, a tighter timeout.
    lmcache_overrides: dict[str, str] | None = None

    def __post_init__(self) -> None:
        if self.example_storage is not None and (self.connector or self.mp_port is not None):
            raise ValueError("example_storage: vLLM's ExampleConnector replaces ours; set connector=False")
        if self.blend_hole_mode is not None and (self.disk_dir is not None or self.mp_port is not None or not self.connector):
            raise ValueError("blend_hole_mode: CacheBlend runs on the in-process connector with the CPU tier only (no disk_dir)")


@dataclass(frozen=True)
class PromptResult:
    ttft_s: float
    from_lmcache: int
    token_ids: list[int]
    logprobs: list[float]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def start_llm(opts: LLMOptions) -> Any:
    """A vLLM CPU ``LLM`` for ``opts`` (call under ``if __name__ == "__main__"``)."""
    # LMCache picks its device backend at import, in each of vLLM's processes.
    os.environ.pop("LMCACHE_DEVICE_BACKEND", None)
    if opts.device_backend:
        os.environ["LMCACHE_DEVICE_BACKEND"] = opts.device_backend
    if opts.connector and opts.mp_port is None:
        os.environ.update(lmcache_env(disk_dir=opts.disk_dir, layerwise=opts.layerwise, cpu_gib=opts.cpu_gib))
        if opts.blend_hole_mode is not None:
            os.environ.update(blend_env(hole_mode=opts.blend_hole_mode, recompute_ratio=opts.blend_ratio))
        if not opts.lmcache_store:
            os.environ["LMCACHE_LOCAL_CPU"] = "False"
    if opts.lmcache_overrides:
        os.environ.update(opts.lmcache_overrides)
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(opts.kv_cache_gib))
    from vllm import LLM
    from vllm.config import KVTransferConfig

    kwargs: dict[str, Any] = {}
    if opts.mp_port is not None:
        kwargs["kv_transfer_config"] = KVTransferConfig(**mp_kv_transfer_config_dict(opts.mp_port))
    elif opts.connector:
        kwargs["kv_transfer_config"] = kv_transfer_config(None if opts.block_tails else {TAILS_KEY: False}, opts.connector_form)
    elif opts.example_storage is not None:
        kwargs["kv_transfer_config"] = KVTransferConfig(
            kv_connector="ExampleConnector", kv_role="kv_both", kv_connector_extra_config={"shared_storage_path": str(opts.example_storage)}
        )
    if opts.block_size is not None:
        kwargs["block_size"] = opts.block_size
    if not opts.hybrid_kv_manager:
        kwargs["disable_hybrid_kv_cache_manager"] = True
    return LLM(
        model=str(opts.model_dir),
        dtype=opts.dtype,
        max_model_len=opts.max_model_len,
        enable_prefix_caching=opts.prefix_caching,
        enforce_eager=True,
        disable_log_stats=False,
        **kwargs,
    )


def stop_llm(llm: Any) -> None:
    """Shut vLLM's engine processes down now (the connector's shutdown runs there),
    rather than at interpreter exit, after whatever the caller printed last."""
    engine_core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
    if engine_core is not None:
        engine_core.shutdown()


def run_prompt(llm: Any, token_ids: list[int], max_tokens: int = 16) -> PromptResult:
    from vllm import SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, logprobs=0)
    start = time.perf_counter()
    out = llm.generate([{"prompt_token_ids": token_ids}], params, use_tqdm=False)[0]
    wall = time.perf_counter() - start
    completion = out.outputs[0]
    logprobs = [float(step[tok].logprob) for step, tok in zip(completion.logprobs or [], completion.token_ids)]
    ttft = out.metrics.first_token_latency if out.metrics is not None else wall
    return PromptResult(ttft_s=float(ttft), from_lmcache=int(out.num_cached_tokens or 0), token_ids=list(completion.token_ids), logprobs=logprobs)
