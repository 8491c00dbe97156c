"""Version of lmcache-ascend and of the upstream LMCache it is written against."""

__version__ = "0.1.0"
LMCACHE_UPSTREAM_VERSION = "0.5.6"
