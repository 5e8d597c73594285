"""Reading the next epoch ahead (``adapters/prefetch.py``) on tiny real pipelines of both families: invisible to
the pictures, on the swap's critical path only a re-point, a bad or changed file failing (or re-read for) its own
swap only, and at most one adapter held beyond the LRU."""

from __future__ import annotations

import gc
import os
import shutil
import weakref
from dataclasses import replace

import numpy as np
import pytest
from safetensors.torch import save_file

from lora_spectrum import demo
from lora_spectrum.adapters import reading
from lora_spectrum.loras.catalog import Catalog
from lora_spectrum.render.plan import make_plan
from lora_spectrum.render.runs import run_plan
from tests.tiny import FAMILIES, new_engine, pixels
from tests.tiny import request as tiny_request


def request(family: str, seeds=(1, 2)):
    req = tiny_request(family, seeds)
    return replace(req, sampling=req.sampling.override(guidance=0.0))


def grid(engine, folder, seeds=(1, 2), strengths=(1.0,), mix: int = 1):
    """Every epoch of ``folder`` plus the base column through ``run_plan``, as the app and ``grid`` run it."""
    catalog = Catalog(folder)
    catalog.scan()
    req = request(engine.family.name, seeds)
    plan = make_plan(engine.defaults, [None, *catalog.entries], list(seeds), strengths, [req.prompt], req.sampling)
    return run_plan(engine, plan, catalog, mix=mix)


def by_cell(cells):
    return {(c.file, c.seed, c.strength): c for c in cells}


@pytest.mark.parametrize("family", FAMILIES)
def test_prefetch_is_invisible_to_the_pictures_and_takes_reads_off_the_swaps(family, demo_loras, tmp_path):
    folder = tmp_path / "loras"
    folder.mkdir()
    for p in demo_loras[family][:4]:
        shutil.copy(p, folder / p.name)
    without = by_cell(grid(new_engine(family, prefetch=False), folder, seeds=(1,), strengths=(0.7, 1.0)))
    engine = new_engine(family)
    mine = by_cell(grid(engine, folder, seeds=(1,), strengths=(0.7, 1.0)))
    assert mine.keys() == without.keys()
    for key, cell in mine.items():
        assert cell.error is None, (key, cell.error)
        assert np.array_equal(np.asarray(cell.image), np.asarray(without[key].image)), key
    # Each epoch was read in the background while the column before it rendered (the first: the base column;
    # its swap builds the adapter slot, so it counts as a rebuild).
    kinds = [r.kind for r in engine.hotswap.history]
    assert kinds == ["base", "rebuild", "strength"] + ["prefetched", "strength"] * 3, kinds
    assert engine.hotswap.store.prefetcher.hits == 4 and engine.hotswap.store.prefetcher.failures == 0


def test_routed_jobs_read_the_next_jobs_file_ahead(demo_loras, tmp_path):
    family = "sdxl"
    folder = tmp_path / "loras"
    folder.mkdir()
    for p in demo_loras[family][:4]:
        shutil.copy(p, folder / p.name)
    plain = by_cell(grid(new_engine(family, prefetch=False), folder, seeds=(1,), mix=2))
    engine = new_engine(family)
    mixed = by_cell(grid(engine, folder, seeds=(1,), mix=2))
    for key, cell in mixed.items():
        assert np.array_equal(np.asarray(cell.image), np.asarray(plain[key].image)), key
    # Jobs (base, 1), (2, 3), (4): epochs 2 and 4 were each read while the job before them rendered.
    assert engine.hotswap.store.prefetcher.hits == 2


@pytest.mark.parametrize("family", FAMILIES)
def test_a_bad_file_read_ahead_fails_only_its_own_cells_with_the_usual_message(family, demo_loras, tmp_path):
    folder = tmp_path / "loras"
    folder.mkdir()
    paths = [folder / p.name for p in demo_loras[family][:3]]
    for src, dst in zip(demo_loras[family][:3], paths, strict=True):
        shutil.copy(src, dst)
    catalog = Catalog(folder)
    catalog.scan()
    # Epoch 2 is cut short after the scan: its read ahead (while epoch 1 renders) fails.
    data = paths[1].read_bytes()
    req = request(family)
    plan = make_plan(new_engine(family).defaults, catalog.entries, [1, 2], [1.0], [req.prompt], req.sampling)
    paths[1].write_bytes(data[: len(data) // 2])
    results = {}
    for prefetch in (True, False):
        engine = new_engine(family, prefetch=prefetch)
        results[prefetch] = (by_cell(run_plan(engine, plan, None)), engine)
    cells, engine = results[True]
    plain, _ = results[False]
    assert engine.hotswap.store.prefetcher.failures == 1
    for key, cell in cells.items():
        if key[0] == paths[1].name:
            assert cell.image is None and cell.error == plain[key].error, (cell.error, plain[key].error)
            assert paths[1].name in cell.error and "truncated" in cell.error
        else:
            assert cell.error is None
            assert np.array_equal(np.asarray(cell.image), np.asarray(plain[key].image)), key


def test_a_file_replaced_after_its_read_ahead_is_read_again(demo_loras, tmp_path):
    family = "sdxl"
    engine = new_engine(family)
    target = tmp_path / "run-000002.safetensors"
    shutil.copy(demo_loras[family][1], target)
    engine.hotswap.store.prefetch(str(target))
    assert engine.hotswap.store.prefetcher.pending() == str(target)
    # Replaced under the same name before its turn (a trainer overwriting its last save).
    save_file(demo.make_lora_state_dict(engine.hotswap.denoiser, family, seed=9), str(target))
    os.utime(target, ns=(1, 1))
    swapped = pixels(engine.render(request(family), str(target)).images)
    assert engine.hotswap.store.last_source == "cold" and engine.hotswap.store.prefetcher.hits == 0
    assert np.array_equal(swapped, pixels(new_engine(family).render(request(family), str(target)).images))


@pytest.mark.parametrize("family", FAMILIES)
def test_memory_stays_bounded_over_200_prefetched_swaps(family, demo_loras, monkeypatch):
    made: list[weakref.ref] = []
    real_init = reading.PreparedAdapter.__init__

    def tracked(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        made.append(weakref.ref(self))

    def alive(collect: bool = False) -> int:  # prepared adapters hold no cycles: freed without a collection
        if collect:
            gc.collect()
        return sum(r() is not None for r in made)

    monkeypatch.setattr(reading.PreparedAdapter, "__init__", tracked)  # counts, changes nothing
    resident = 2
    engine = new_engine(family, resident=resident)
    files = [str(p) for p in demo_loras[family]]
    most, kinds = 0, set()
    with engine.lock:
        for i in range(200):
            engine.hotswap.activate(files[i % len(files)], 1.0)  # takes the file read ahead last time
            kinds.add(engine.hotswap.history[-1].kind)
            engine.prefetch(files[(i + 1) % len(files)])  # as Engine.render does while the swapped file renders
            most = max(most, alive())
    assert kinds == {"rebuild", "prefetched"}  # the first swap builds the slot; every later one was read ahead
    assert most <= resident + 1, f"{most} adapters alive; at most {resident} resident + 1 read ahead"
    engine.hotswap.unload()
    assert alive(collect=True) == 0
