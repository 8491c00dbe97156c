"""Ready-made settings for running vLLM with the connector (examples, tests, benchmarks).

:func:`kv_transfer_config` is the ``KVTransferConfig`` users put in an offline
script (the server flag takes the same three keys as JSON);
:func:`lmcache_env` is the LMCache configuration as ``LMCACHE_*`` environment
variables, which vLLM's spawned worker processes inherit; :func:`blend_env`
adds CacheBlend (hole mode optional) on top of it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

CONNECTOR = "LMCacheAscendConnectorV1Dynamic"
CONNECTOR_MODULE = "lmcache_ascend.integration.vllm.lmcache_ascend_connector_v1"
MP_CONNECTOR = "LMCacheMPConnector"  # vLLM's connector for LMCache's multi-process mode
# The configuration forms that name this package's connector: (kv_connector,
# kv_connector_module_path or None). "v1_dynamic" is the one this project
# documents first; "vllm_ascend" is the bare name vllm-ascend registers
# (served through vllm_ascend_hook.py).
CONNECTOR_FORMS: dict[str, tuple[str, str | None]] = {
    "v1_dynamic": (CONNECTOR, CONNECTOR_MODULE),
    "ascend": ("LMCacheAscendConnector", "lmcache_ascend.integration.vllm.lmcache_ascend_connector"),
    "vllm_ascend": ("LMCacheAscendConnector", None),
}


def kv_transfer_config_dict(extra: dict[str, Any] | None = None, form: str = "v1_dynamic") -> dict[str, Any]:
    """The ``--kv-transfer-config`` JSON object, in configuration form ``form`` (see CONNECTOR_FORMS)."""
    if form not in CONNECTOR_FORMS:
        raise ValueError(f"form must be one of {sorted(CONNECTOR_FORMS)}, got {form!r}")
    name, module = CONNECTOR_FORMS[form]
    cfg: dict[str, Any] = {"kv_connector": name, "kv_role": "kv_both"}
    if module is not None:
        cfg["kv_connector_module_path"] = module
    if extra:
        cfg["kv_connector_extra_config"] = dict(extra)
    return cfg


def kv_transfer_config(extra: dict[str, Any] | None = None, form: str = "v1_dynamic") -> Any:
    from vllm.config import KVTransferConfig

    return KVTransferConfig(**kv_transfer_config_dict(extra, form))


def mp_kv_transfer_config_dict(port: int, host: str = "127.0.0.1", transfer_mode: str = "engine_driven") -> dict[str, Any]:
    """``--kv-transfer-config`` for LMCache's multi-process mode (an ``lmcache server``)."""
    return {
        "kv_connector": MP_CONNECTOR,
        "kv_role": "kv_both",
        "kv_connector_extra_config": {
            "lmcache.mp.host": f"tcp://{host}",
            "lmcache.mp.port": int(port),
            "lmcache.mp.mp_transfer_mode": transfer_mode,
            "lmcache.mp.mq_timeout": 120.0,
        },
    }


def lmcache_env(
    *,
    chunk_size: int = 256,
    cpu_gib: float = 2.0,
    disk_dir: str | Path | None = None,
    disk_gib: float = 4.0,
    layerwise: bool = False,
    remote_url: str | None = None,
) -> dict[str, str]:
    """LMCache settings for the embedded default: local CPU tier, optional disk and remote tiers."""
    env = {
        "LMCACHE_CHUNK_SIZE": str(chunk_size),
        "LMCACHE_LOCAL_CPU": "True",
        "LMCACHE_MAX_LOCAL_CPU_SIZE": str(cpu_gib),
        "LMCACHE_USE_LAYERWISE": str(bool(layerwise)),
        "LMCACHE_SAVE_UNFULL_CHUNK": "False",
        "LMCACHE_PRE_CACHING_HASH_ALGORITHM": "sha256_cbor",
        "LMCACHE_TRACK_USAGE": "false",
    }
    if disk_dir is not None:
        env["LMCACHE_LOCAL_DISK"] = f"file://{Path(disk_dir).resolve()}"
        env["LMCACHE_MAX_LOCAL_DISK_SIZE"] = str(disk_gib)
    if remote_url is not None:
        env["LMCACHE_REMOTE_URL"] = remote_url
    return env



def blend_env(
    *, hole_mode: bool, recompute_ratio: float = 0.15, check_layer: int = 1, special_str: str | None = None
) -> dict[str, str]:
    """CacheBlend settings (over :func:`lmcache_env` with ``layerwise=True``, CPU tier only).

    Segments keep their original positions in memory-object metadata, which the
    local disk and remote tiers do not store, so blending uses the CPU tier.
    """
    from lmcache_ascend.blend.settings import HOLE_MODE_KEY, SPECIAL_STR, BlendSettings

    BlendSettings(recompute_ratio=recompute_ratio, check_layer=check_layer, hole_mode=hole_mode)  # validates
    return {
        "LMCACHE_USE_LAYERWISE": "True",
        "LMCACHE_ENABLE_BLENDING": "True",
        "LMCACHE_BLEND_SPECIAL_STR": SPECIAL_STR if special_str is None else special_str,
        "LMCACHE_BLEND_RECOMPUTE_RATIOS": str(float(recompute_ratio)),
        "LMCACHE_BLEND_CHECK_LAYERS": str(int(check_layer)),
        "LMCACHE_EXTRA_CONFIG": json.dumps({HOLE_MODE_KEY: bool(hole_mode)}),
    }
