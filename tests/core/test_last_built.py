"""``core/last_built.py``: the value of the last key is reused, a new key rebuilds, a None key is
never kept, and concurrent callers always get the value built for their own key."""

from __future__ import annotations

import threading

from lmcache_ascend.core.last_built import LastBuilt


def test_same_key_reuses_new_key_rebuilds_none_is_not_kept() -> None:
    builds: list[str] = []
    cache: LastBuilt[str] = LastBuilt()

    def build(v: str) -> str:
        builds.append(v)
        return v

    assert cache.get(("a",), lambda: build("A")) == "A"
    assert cache.get(("a",), lambda: build("A2")) == "A"
    assert cache.get(("b",), lambda: build("B")) == "B"
    assert cache.get(("a",), lambda: build("A3")) == "A3"  # one entry: "a" was replaced by "b"
    assert cache.get(None, lambda: build("N1")) == "N1"
    assert cache.get(None, lambda: build("N2")) == "N2"
    assert cache.get(("a",), lambda: build("A4")) == "A3"  # None keys did not replace it
    assert builds == ["A", "B", "A3", "N1", "N2"]


def test_threads_never_get_a_value_built_for_another_key() -> None:
    cache: LastBuilt[int] = LastBuilt()
    wrong: list[tuple[int, int]] = []

    def worker(k: int) -> None:
        for _ in range(2000):
            got = cache.get(k, lambda: k)
            if got != k:
                wrong.append((k, got))

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not wrong
