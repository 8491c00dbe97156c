"""How the connector puts lmcache_ascend's blender where LMCache's vLLM adapter looks for one.

Pins what the wiring relies on in LMCache 0.5.6 (fails loudly if it changes):
``LMCBlenderBuilder.get_or_create`` returns an instance already registered
under the name, and the adapter's worker side keeps it as ``blender``. Then,
with vLLM's real connector factory in-process: the worker connector installs a
hole-mode ``VLLMBlender`` over the model vLLM loaded, the engine's lookup
counts hits after holes, failed blends reach vLLM as load errors, and shutdown
or a failed start leaves nothing registered.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch
from lmcache.v1.compute.blend.utils import LMCBlenderBuilder
from lmcache.v1.compute.models.utils import VLLMModelTracker
from vllm.distributed.kv_transfer import kv_transfer_state

from lmcache_ascend.blend.vllm_model import VLLMLlamaLayers
from lmcache_ascend.integrations.lmcache.plugin import ENGINE_NAME
from lmcache_ascend.integrations.vllm import blend
from tests.integrations.vllm.conftest import MakeConnectors


def test_pin_blender_builder_returns_a_registered_instance(monkeypatch: pytest.MonkeyPatch) -> None:
    sentinel = object()
    monkeypatch.setattr(LMCBlenderBuilder, "_blenders", {ENGINE_NAME: sentinel})
    monkeypatch.setattr(VLLMModelTracker, "_vllm_models", {})  # would raise if the builder looked for a model
    assert LMCBlenderBuilder.get_or_create(ENGINE_NAME, None, None, None) is sentinel


@pytest.fixture
def blending_env(lmcache_env: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    lmcache_env.setenv("LMCACHE_USE_LAYERWISE", "True")
    lmcache_env.setenv("LMCACHE_ENABLE_BLENDING", "True")
    lmcache_env.setenv("LMCACHE_EXTRA_CONFIG", json.dumps({"blend_hole_mode": True}))
    lmcache_env.setattr(LMCBlenderBuilder, "_blenders", {})
    return lmcache_env


def test_worker_connector_installs_the_blender(
    blending_env: pytest.MonkeyPatch, make_connectors: MakeConnectors, vllm_llama: Any
) -> None:
    blending_env.setattr(VLLMModelTracker, "_vllm_models", {ENGINE_NAME: vllm_llama})
    worker = make_connectors().worker
    installed = blend.installed()
    assert installed is not None and installed.hole_mode
    assert worker._lmcache_engine.blender is installed  # LMCache's adapter took ours
    assert installed.blender.model.model is vllm_llama
    assert getattr(worker.lmcache_engine.lookup, "hole_mode", False)
    installed._failed_blocks.update({3, 4})
    assert {3, 4} <= worker.get_block_ids_with_load_errors()
    assert not worker.get_block_ids_with_load_errors() & {3, 4}
    kv_transfer_state.ensure_kv_transfer_shutdown()
    assert blend.installed() is None


def test_no_model_is_a_clear_error_and_leaves_nothing(
    blending_env: pytest.MonkeyPatch, make_connectors: MakeConnectors
) -> None:
    blending_env.setattr(VLLMModelTracker, "_vllm_models", {})
    with pytest.raises(RuntimeError, match="CacheBlend: no vLLM model found"):
        make_connectors()
    assert blend.installed() is None  # lmcache_env checks that no engine is left either


def test_the_model_of_the_calling_worker_is_found(vllm_llama: Any) -> None:
    class Runner:
        model = vllm_llama

    class Worker:
        model_runner = Runner()

        def initialize_from_config(self) -> Any:
            return blend.find_vllm_model()

    assert Worker().initialize_from_config() is vllm_llama
    layers = VLLMLlamaLayers(vllm_llama)
    assert (layers.num_layers, layers.kv_row, layers.dtype) == (4, 128, torch.float32)
