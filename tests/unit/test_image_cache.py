"""The image tar cache on real files: least recently used out past the cap, never a
pinned tar or the one just added; temp files of a crash gone at start; ids never
paths."""

from __future__ import annotations

import os

from treescale.services.image_cache import ImageCache, id_hex


def _put(cache: ImageCache, hex_id: str, size: int, age: float) -> None:
    temp = cache.temp_path()
    temp.write_bytes(b"x" * size)
    cache.add(hex_id, temp, "sha256:" + hex_id)
    past = 1_000_000 + age
    os.utime(cache.tar(hex_id), (past, past))


def test_least_recently_used_go_first_but_never_pinned(tmp_path):
    cache = ImageCache(str(tmp_path / "c"), max_bytes=300)
    a, b, c, d = ("a" * 64, "b" * 64, "c" * 64, "d" * 64)
    _put(cache, a, 100, 1)
    _put(cache, b, 100, 2)
    _put(cache, c, 100, 3)
    assert cache.lookup(a) is not None  # a used now: b is the oldest
    with cache.pinned(b):
        _put(cache, d, 100, 4)  # over the cap: b pinned, so c goes
        assert cache.lookup(c) is None and cache.lookup(b) is not None
    assert cache.evict() == []  # at the cap again: nothing more to drop
    assert sorted(p.stem for p in cache.dir.glob("*.tar")) == sorted([a, b, d])
    assert cache.lookup(d) == (cache.tar(d), "sha256:" + d, 100)


def test_a_crash_leaves_no_temp_file_behind(tmp_path):
    cache = ImageCache(str(tmp_path / "c"), 1 << 20)
    cache.temp_path().write_bytes(b"half")
    assert cache.partials()
    assert ImageCache(str(tmp_path / "c"), 1 << 20).partials() == []


def test_ids_are_never_paths():
    assert id_hex("sha256:" + "0" * 64) == "0" * 64
    for bad in ("../x", "sha256:../../etc", "sha256:" + "G" * 64, "0" * 64, None, 5):
        assert id_hex(bad) is None
