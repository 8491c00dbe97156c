"""Make SGLang's ``--enable-lmcache`` use lmcache_ascend on NPU and CPU KV pools.

This is the project's only patch of upstream code. SGLang has no plug-in point
for its prefix cache: with ``--enable-lmcache`` its scheduler imports
``LMCRadixCache`` from ``sglang.srt.mem_cache.storage.lmcache.lmc_radix_cache``
(when it builds its caches) and constructs it; that class only works on CUDA.
:func:`install` replaces that one module attribute with
:class:`.AscendLMCRadixCache`, a subclass that behaves as the original on CUDA
pools. Nothing else of SGLang or LMCache is replaced.

It must run in SGLang's scheduler processes, before they build their caches.
SGLang starts them with the ``spawn`` method, which re-imports the parent's
main module in each child; so call :func:`install` at module level of the
script that starts SGLang, or launch the server with
``python -m lmcache_ascend.integrations.sglang.launch_server`` (same arguments
as ``python -m sglang.launch_server``).

Supported: exactly the tested SGLang versions (0.5.3; :data:`TESTED_VERSIONS`).
Every other version is refused with ``RuntimeError``: SGLang 0.5.4-0.5.20
changed the constructor, and 0.5.21+ replaced this cache with
``LMCacheUnifiedRadixCache``, which talks to ``lmcache server`` and needs no
hook (lmcache_ascend is the server's device backend there; see the README's
SGLang section). The upstream facts this relies on are pinned by
``tests/integrations/sglang/test_upstream_pins.py``.
"""

from __future__ import annotations

import importlib
import inspect
from importlib import metadata
from typing import Any

from lmcache.logging import init_logger

from lmcache_ascend.upstream.patching import replace_attribute

logger = init_logger(__name__)

TARGET_MODULE = "sglang.srt.mem_cache.storage.lmcache.lmc_radix_cache"
TARGET_NAME = "LMCRadixCache"
TESTED_VERSIONS = ("0.5.3",)
# The constructor arguments SGLang 0.5.3's scheduler passes (by keyword).
EXPECTED_PARAMETERS = (
    "req_to_token_pool",
    "token_to_kv_pool_allocator",
    "page_size",
    "disable",
    "enable_kv_cache_events",
    "model_config",
    "tp_size",
    "rank",
    "tp_group",
    "eviction_policy",
)

MP_ROUTE = (
    "SGLang 0.5.21+ needs no hook: start `lmcache server` with LMCACHE_DEVICE_BACKEND=ascend_cpu and run "
    "`python -m sglang.launch_server ... --enable-lmcache --lmcache-config-file F` (README, SGLang section)."
)

_originals: dict[str, Any] = {}


def sglang_version() -> str:
    try:
        return metadata.version("sglang")
    except metadata.PackageNotFoundError:
        return "not installed"


def _target_module() -> Any:
    try:
        return importlib.import_module(TARGET_MODULE)
    except ModuleNotFoundError as exc:
        raise RuntimeError(
            f"SGLang {sglang_version()} has no {TARGET_MODULE} ({exc}); this hook is for SGLang's in-process "
            f"LMCache radix cache (tested: {', '.join(TESTED_VERSIONS)}). {MP_ROUTE}"
        ) from exc


def check_supported(cls: type) -> None:
    """Raise ``RuntimeError`` unless ``cls`` has the constructor this hook replaces."""
    params = tuple(p for p in inspect.signature(cls.__init__).parameters if p != "self")
    if params != EXPECTED_PARAMETERS:
        raise RuntimeError(
            f"SGLang {sglang_version()}'s {TARGET_NAME}({', '.join(params)}) is not the constructor "
            f"lmcache_ascend replaces ({', '.join(EXPECTED_PARAMETERS)}); tested SGLang: {', '.join(TESTED_VERSIONS)}"
        )


def install() -> None:
    """Replace SGLang's ``LMCRadixCache`` with :class:`.AscendLMCRadixCache` (idempotent)."""
    if sglang_version() not in TESTED_VERSIONS:
        raise RuntimeError(f"lmcache_ascend's in-process SGLang hook supports SGLang {', '.join(TESTED_VERSIONS)}, not {sglang_version()}. {MP_ROUTE}")
    module = _target_module()
    if TARGET_NAME in _originals:
        return
    original = getattr(module, TARGET_NAME)
    check_supported(original)
    from lmcache_ascend.integrations.sglang.radix_cache import AscendLMCRadixCache

    if AscendLMCRadixCache.__mro__[1] is not original:
        raise RuntimeError(f"{TARGET_MODULE}.{TARGET_NAME} was replaced by someone else before lmcache_ascend")
    _originals[TARGET_NAME] = original
    replace_attribute(module, TARGET_NAME, AscendLMCRadixCache)
    logger.info("lmcache_ascend: SGLang --enable-lmcache uses AscendLMCRadixCache on NPU and CPU KV pools")


def uninstall() -> None:
    """Put SGLang's own ``LMCRadixCache`` back."""
    original = _originals.pop(TARGET_NAME, None)
    if original is not None:
        replace_attribute(importlib.import_module(TARGET_MODULE), TARGET_NAME, original)


def installed() -> bool:
    return TARGET_NAME in _originals
