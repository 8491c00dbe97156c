"""Fixtures for the MindSpore adapter tests.

The tests themselves need real MindSpore (``.venv-ms``, ``scripts/ms_env.sh``)
and skip without it; ``test_vllm_wiring.py`` needs vLLM instead and runs in the
main environment. Real LMCache engines come from the LMCache integration
fixtures (an isolated ``LMCacheEngineBuilder`` registry per test).
"""

from __future__ import annotations

from tests.integrations.lmcache.conftest import engines, isolated_builder, pool  # noqa: F401  (fixtures)
