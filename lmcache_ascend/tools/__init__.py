"""Command-line helpers shipped with the package (``python -m lmcache_ascend.tools.<name>``)."""
