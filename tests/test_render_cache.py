"""The render cache on its own: writers of one key from several sessions never collide."""

from __future__ import annotations

import threading

from lora_spectrum.render_cache import RenderCache


def test_cache_writers_of_one_key_do_not_collide(tmp_path):
    """Every session of the app has its own RenderCache on the one folder; two renders of the same cell meet."""
    errors = []

    def write(i):
        cache = RenderCache(tmp_path / "cache", max_mb=0.001)  # tiny: every put also prunes
        try:
            for n in range(40):
                cache.put("ab" + "0" * 62, bytes([i, n]) * 400)
                cache.put(f"ab{i:02d}{n:02d}" + "1" * 58, b"x" * 800)
        except Exception as exc:  # noqa: BLE001 - surfaced by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert not list((tmp_path / "cache").glob("*/*.tmp")), "temporary files left behind"
