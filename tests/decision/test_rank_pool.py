"""The rank pool: the base and epochs of one prompt over seeds rendered in a background thread through run_plan,
pairs offered as soon as both sides are drawn, a second pool served from the render cache, stop() cancelling."""

from __future__ import annotations

import io
import shutil

import pytest
from PIL import Image

from lora_spectrum.decision.rank_pool import BASE_KEY, RankPool
from lora_spectrum.loras.catalog import Catalog
from lora_spectrum.render.render_cache import RenderCache
from tests.tiny import new_engine
from tests.tiny import request as tiny_request


@pytest.fixture
def setup(demo_loras, tmp_path):
    folder = tmp_path / "loras"
    folder.mkdir()
    for p in demo_loras["sdxl"][:3]:
        shutil.copy(p, folder)
    catalog = Catalog(folder)
    catalog.scan()
    _, entries = catalog.choose_series()
    return new_engine("sdxl"), catalog, entries, RenderCache(tmp_path / "cache")


def test_the_pool_renders_in_the_background_and_offers_every_pair(setup):
    engine, catalog, entries, cache = setup
    pool = RankPool(engine, catalog, [None, *entries], "a red circle", [1, 2], tiny_request("sdxl").sampling, cache)
    assert pool.total == 8 and not pool.ready()
    pool.start()
    assert pool.wait(120) and pool.error is None and not pool.failed
    ready = pool.ready()
    keys = {BASE_KEY, *(catalog.sha256(e) for e in entries)}
    assert {k for k, _ in ready} == keys and {s for _, s in ready} == {1, 2}
    assert len(pool.pairs()) == 6 and all(a < b for a, b in pool.pairs())
    a, b = pool.pairs()[0]
    assert pool.seeds_for(a, b) == [1, 2]
    one = ready[(catalog.sha256(entries[0]), 1)]
    assert one.file == entries[0].name and one.label == entries[0].label and one.png.startswith(b"\x89PNG")
    # Shown blind: the pixels of the cell, without its parameters text (which names the LoRA and its epoch).
    cell_png = cache.get(next(iter(_keys(cache))))
    assert "parameters" in Image.open(io.BytesIO(cell_png)).info
    assert all(not Image.open(io.BytesIO(r.png)).info for r in ready.values())
    # A second pool on the same prompt and seeds is served from the cache: nothing swapped, same bytes.
    swaps = len(engine.hotswap.history)
    again = RankPool(engine, catalog, [None, *entries], "a red circle", [1, 2], tiny_request("sdxl").sampling, cache)
    again.start()
    assert again.wait(60)
    assert len(engine.hotswap.history) == swaps
    assert {k: r.png for k, r in again.ready().items()} == {k: r.png for k, r in ready.items()}


def _keys(cache):
    return [p.stem for p in cache.folder.glob("*/*.png")]


def test_stop_cancels_and_keeps_what_finished(setup):
    engine, catalog, entries, cache = setup
    pool = RankPool(engine, catalog, [None, *entries], "a blue square", [1, 2, 3], tiny_request("sdxl").sampling,
                    cache)
    pool.stop()  # cancelled before it starts: nothing renders, nothing fails
    pool.start()
    assert pool.wait(60)
    assert pool.ready() == {} and pool.failed == [] and pool.pairs() == []
