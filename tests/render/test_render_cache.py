"""The render cache on its own: writers of one key from several sessions never collide; the key holds every
setting that moves pixels (``PixelSettings``)."""

from __future__ import annotations

import threading
from dataclasses import replace

import torch

from lora_spectrum.render.plan import make_plan, plan_cells
from lora_spectrum.render.render_cache import PixelSettings, RenderCache
from tests.tiny import new_engine, request


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


def test_the_key_changes_with_every_setting_that_moves_pixels():
    """Fused or not, compiled or not, CPU threads, batch, routing, dtype and device each round differently."""
    engine = new_engine("sdxl")
    req = request("sdxl")
    plan = make_plan(engine.defaults, [None], [1], prompts=[req.prompt], sampling=req.sampling)
    cell = plan_cells(plan)[0]
    how = PixelSettings.of(engine, fused=False, batch=1)
    assert how == PixelSettings("float32", "cpu", torch.get_num_threads(), False, False, 1, 0)
    key = RenderCache.key(engine, plan.sampling, cell, how)
    assert RenderCache.key(engine, plan.sampling, cell, PixelSettings.of(engine, fused=False, batch=1)) == key
    changed = [replace(how, fused=True), replace(how, compiled=True), replace(how, threads=how.threads + 1),
               replace(how, batch=2), replace(how, routed=2), replace(how, dtype="bfloat16"),
               replace(how, device="cuda", threads=None)]
    keys = {RenderCache.key(engine, plan.sampling, cell, h) for h in changed}
    assert key not in keys and len(keys) == len(changed)


def test_the_thread_count_is_read_when_the_cell_is_keyed():
    engine = new_engine("sdxl")
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(before + 1)
        assert PixelSettings.of(engine, fused=False, batch=1).threads == before + 1
    finally:
        torch.set_num_threads(before)
    assert PixelSettings.of(engine, fused=False, batch=1).threads == before
    # A routed call runs the denoiser eagerly: never "compiled", whatever the engine is.
    engine.compiled = True
    assert PixelSettings.of(engine, fused=False, batch=1).compiled
    assert not PixelSettings.of(engine, fused=False, batch=2, routed=2).compiled
