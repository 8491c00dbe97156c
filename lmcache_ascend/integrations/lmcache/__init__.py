"""LMCache device connectors on the lmcache_ascend kernels, and their plug-in point."""
