"""Fixtures for the SGLang adapter tests.

SGLang 0.5.3 is installed (``requirements/sglang.txt``), but its compiled
kernels (``sgl_kernel``) have no CPU build on PyPI. Its KV pools, allocator,
radix cache, scheduler request class and LMCache radix cache are pure Python
and only *import* ``sgl_kernel.kvcacheio`` (for the HiCache host pool). So,
before any SGLang import, this conftest puts a stand-in ``sgl_kernel`` package
on ``sys.modules`` (and writes one for subprocesses) whose functions raise: a
test that reached a real kernel would fail, not pass silently. Nothing else of
SGLang is replaced.

- ``lmcache_config``: writes an LMCache YAML config and points
  ``LMCACHE_CONFIG_FILE`` at it (the way SGLang 0.5.3 is configured), with a
  private ``LMCacheEngineBuilder`` registry so each test gets a fresh engine.
- ``model_dirs``: SGLang ``ModelConfig`` directories (a Llama for MHA, a
  DeepSeek-V2 for MLA): config files only, no weights.
- ``hooked``: the hook installed for the test, removed afterwards.
"""

from __future__ import annotations

import gc
import importlib.util
import sys
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

STUB_MODULES = ("sgl_kernel", "sgl_kernel.kvcacheio")
STUB_SOURCE = '''"""Test stand-in for sgl_kernel (no CPU build on PyPI): every function raises."""


def __getattr__(name):
    if name.startswith("__"):
        raise AttributeError(name)

    def unavailable(*args, **kwargs):
        raise RuntimeError(f"sgl_kernel.{name} is a test stand-in; no SGLang kernel may run here")

    return unavailable
'''


def _install_stub() -> None:
    if importlib.util.find_spec("sgl_kernel") is not None:
        return
    namespace: dict[str, Any] = {}
    exec(STUB_SOURCE, namespace)
    for name in STUB_MODULES:
        module = types.ModuleType(name)
        module.__getattr__ = namespace["__getattr__"]  # type: ignore[attr-defined]
        if name == "sgl_kernel":
            module.__path__ = []  # type: ignore[attr-defined]  (a package, for sgl_kernel.kvcacheio)
        sys.modules[name] = module
    sys.modules["sgl_kernel"].kvcacheio = sys.modules["sgl_kernel.kvcacheio"]  # type: ignore[attr-defined]


_install_stub()


@pytest.fixture(scope="session")
def stub_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding the ``sgl_kernel`` stand-in as files, for subprocesses' PYTHONPATH."""
    root = tmp_path_factory.mktemp("sgl_stub")
    package = root / "sgl_kernel"
    package.mkdir()
    (package / "__init__.py").write_text(STUB_SOURCE)
    (package / "kvcacheio.py").write_text(STUB_SOURCE)
    return root


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from transformers import DeepseekV2Config, LlamaConfig

    llama = tmp_path_factory.mktemp("tiny_llama")
    LlamaConfig(
        num_hidden_layers=3,
        hidden_size=64,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        vocab_size=1000,
        architectures=["LlamaForCausalLM"],
    ).save_pretrained(llama)
    deepseek = tmp_path_factory.mktemp("tiny_deepseek_v2")
    DeepseekV2Config(
        num_hidden_layers=2,
        hidden_size=64,
        num_attention_heads=4,
        kv_lora_rank=32,
        qk_rope_head_dim=8,
        qk_nope_head_dim=16,
        v_head_dim=16,
        q_lora_rank=None,
        vocab_size=1000,
        n_routed_experts=4,
        num_experts_per_tok=2,
        moe_intermediate_size=32,
        first_k_dense_replace=1,
        architectures=["DeepseekV2ForCausalLM"],
        rope_scaling={"rope_type": "yarn", "factor": 1.0, "original_max_position_embeddings": 4096, "mscale": 1.0, "mscale_all_dim": 1.0},
    ).save_pretrained(deepseek)
    return {"mha": llama, "mla": deepseek}


@pytest.fixture
def isolated_builder(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A private ``LMCacheEngineBuilder`` registry, emptied (engines closed) afterwards."""
    from lmcache.v1.cache_engine import LMCacheEngineBuilder

    for attr in ("_instances", "_cfgs", "_metadatas", "_stat_loggers"):
        monkeypatch.setattr(LMCacheEngineBuilder, attr, {})
    # LMCacheEngine.__init__ runs gc.collect(); freezing the long-lived heap keeps it short.
    gc.freeze()
    yield
    gc.unfreeze()
    for name in list(LMCacheEngineBuilder._instances):
        LMCacheEngineBuilder.destroy(name)


@pytest.fixture
def lmcache_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, isolated_builder: None) -> Callable[..., Path]:
    def write(**settings: Any) -> Path:
        values: dict[str, Any] = dict(chunk_size=16, local_cpu=True, max_local_cpu_size=0.05)
        values.update(settings)
        path = tmp_path / "lmcache.yaml"
        path.write_text("".join(f"{k}: {str(v).lower() if isinstance(v, bool) else v}\n" for k, v in values.items()))
        monkeypatch.setenv("LMCACHE_CONFIG_FILE", str(path))
        return path

    monkeypatch.setenv("LMCACHE_TRACK_USAGE", "false")
    return write


@pytest.fixture
def hooked() -> Iterator[type]:
    from lmcache_ascend.integrations.sglang import hook

    hook.install()
    from lmcache_ascend.integrations.sglang.radix_cache import AscendLMCRadixCache

    yield AscendLMCRadixCache
    hook.uninstall()
