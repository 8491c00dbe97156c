"""Loaded by Python at start-up when ``benchmarks/mp_timeline.py`` puts this folder on ``PYTHONPATH``.

Installs :mod:`trace_hooks` when ``$LMCACHE_ASCEND_TRACE_DIR`` is set; does nothing otherwise.
"""

import os

if os.environ.get("LMCACHE_ASCEND_TRACE_DIR"):
    import trace_hooks

    trace_hooks.install()
