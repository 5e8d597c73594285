"""Routed runs: several epochs (and strengths, and the base) in one denoiser call through ``Engine.render_routed``
and ``run_plan``'s ``mix``, each sample through its own adapter. Tiny real pipelines of both families; routed images
are compared with epoch-by-epoch renders."""

from __future__ import annotations

import threading
from dataclasses import replace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from lora_spectrum.errors import Cancelled, LoraLoadError
from lora_spectrum.loras.catalog import Catalog
from lora_spectrum.render.plan import calls, make_plan
from lora_spectrum.render.runs import run_plan
from lora_spectrum.render.sampling import Sampling
from tests.adapters.helpers import (
    assert_same_tensors,
    base_weights,
    diff,
    only_the_slot,
    other_rank,
    separate,
    te_state,
)
from tests.render.test_fuse_policy import record_for, verdicts  # noqa: F401 - the fixture, used by name
from tests.tiny import FAMILIES, copied_epochs, garbage, new_engine, pixels, request, with_guidance


def render_routed(engine, req, routes, **kwargs):
    """``Engine.render_routed`` with the routes grouped into calls as ``plan.calls`` groups a job (by the number of
    seeds), its results back in the routes' order."""
    batched = calls([(i, list(route[2])) for i, route in enumerate(routes)])
    out = engine.render_routed(req, [[routes[i] for i, _ in call] for call in batched], **kwargs)
    flat = {i: r for call, results in zip(batched, out, strict=True) for (i, _), r in zip(call, results, strict=True)}
    return [flat[i] for i in range(len(routes))]


@pytest.mark.parametrize("way", ["routed", "routed-peft"])
@pytest.mark.parametrize("family", FAMILIES)
def test_routed_render_matches_epoch_by_epoch_and_leaves_nothing_behind(family, way, demo_loras, tmp_path):
    """Epochs of one layout take the stacked way; a file of another layout among them, peft's mixed batch."""
    files = [str(p) for p in demo_loras[family]]
    reference = new_engine(family)
    req = request(family, steps=3)
    last = (files[-1], 0.5) if way == "routed" else (other_rank(family, tmp_path), 0.8)
    routes = [(None, 0.0, (1, 2)), (files[0], 1.0, (1, 2)), (files[-1], 1.0, (1, 2)), (*last, (1, 2))]
    expected = separate(reference, req, routes)
    engine = new_engine(family)
    engine.render(req, files[2], 0.7)  # an adapter active before: it must be active again after
    fresh = base_weights(engine.hotswap.denoiser)
    te_before = te_state(engine)
    active_before = pixels(engine.render(req, files[2], 0.7).images)
    results = render_routed(engine, req, routes)
    # 1. Each route's images are its own epoch's (within rounding of a different batch shape), not a neighbour's.
    for i, result in enumerate(results):
        got = pixels(result.images)
        assert got.shape == expected[i].shape
        assert diff(got, expected[i]) < 0.05, (i, diff(got, expected[i]))
        others = [diff(got, e) for j, e in enumerate(expected) if j != i and e.shape == got.shape]
        assert all(o > 1.0 for o in others), (i, others)
    assert results[1].swap.kind == way
    # 2. Nothing stays: no temporary adapter, the base weights and the text encoders bit for bit, the adapter
    #    that was active renders exactly as before.
    assert only_the_slot(engine)
    assert_same_tensors(base_weights(engine.hotswap.denoiser), fresh)
    for a, b in zip(te_state(engine), te_before, strict=True):
        assert_same_tensors(a, b)
    assert engine.hotswap.get_active_adapter() == (files[2], 0.7)
    assert np.array_equal(pixels(engine.render(req, files[2], 0.7).images), active_before)


@pytest.mark.parametrize("family", FAMILIES)
def test_the_base_renders_exactly_after_routing(family, demo_loras):
    files = [str(p) for p in demo_loras[family]]
    req = request(family)
    base = pixels(new_engine(family).render(req).images)
    engine = new_engine(family)
    render_routed(engine, req, [(files[1], 1.0, (1,)), (files[3], 1.3, (2,))])
    assert engine.hotswap.get_active_adapter() == (None, 0.0)
    assert np.array_equal(pixels(engine.render(req).images), base)


def test_fused_mode_is_put_back_after_routing(demo_loras):
    family = "sdxl"
    files = [str(p) for p in demo_loras[family]]
    req = request(family)
    engine = new_engine(family, fuse=True)
    before = pixels(engine.render(req, files[4], 0.8).images)
    assert engine.hotswap.is_fused()
    results = render_routed(engine, req, [(files[0], 1.0, (1, 2)), (files[4], 0.8, (1, 2))])
    unfused = pixels(new_engine(family).render(req, files[4], 0.8).images)
    assert diff(pixels(results[1].images), unfused) < 0.05, "routed samples add their deltas unfused"
    assert engine.hotswap.is_fused() and engine.hotswap.get_active_adapter() == (files[4], 0.8)
    assert np.array_equal(pixels(engine.render(req, files[4], 0.8).images), before)


@pytest.mark.parametrize("family", FAMILIES)
def test_a_bad_file_fails_only_its_own_route(family, demo_loras, tmp_path):
    files = [str(p) for p in demo_loras[family]]
    bad = tmp_path / "broken_7.safetensors"
    bad.write_bytes(garbage(2048))
    req = request(family)
    routes = [(files[0], 1.0, (1, 2)), (str(bad), 1.0, (1, 2)), (files[-1], 1.0, (1, 2))]
    engine = new_engine(family)
    results = render_routed(engine, req, routes)
    assert isinstance(results[1], LoraLoadError) and "broken_7.safetensors" in str(results[1])
    expected = separate(new_engine(family), req, [routes[0], routes[2]])
    assert diff(pixels(results[0].images), expected[0]) < 0.05
    assert diff(pixels(results[2].images), expected[1]) < 0.05
    with pytest.raises(LoraLoadError, match="broken_7"), engine.lock, engine.hotswap.routed([(str(bad), 1.0)], 1):
        pass
    assert only_the_slot(engine), "no temporary adapter stays"
    assert engine.hotswap.get_active_adapter() == (None, 0.0)


def test_a_file_that_adapts_an_unbatched_layer_renders_on_its_own(demo_loras, tmp_path):
    """Z-Image embeds every caption's tokens in one call: a LoRA there cannot be routed, so it renders alone."""
    family = "z-image"
    files = [str(p) for p in demo_loras[family]]
    sd = load_file(files[-1])
    layer = new_engine(family).hotswap.denoiser.cap_embedder[1]
    gen = torch.Generator().manual_seed(3)
    sd["diffusion_model.cap_embedder.1.lora_down.weight"] = torch.randn(4, layer.in_features, generator=gen)
    sd["diffusion_model.cap_embedder.1.lora_up.weight"] = torch.randn(layer.out_features, 4, generator=gen)
    sd["diffusion_model.cap_embedder.1.alpha"] = torch.tensor(4.0)
    odd = tmp_path / "captions_9.safetensors"
    save_file(sd, str(odd))
    engine = new_engine(family)
    prepared, _ = engine.hotswap.load_adapter(str(odd))
    assert "cap_embedder" in engine.hotswap.unroutable(prepared)
    req = request(family)
    routes = [(files[0], 1.0, (1, 2)), (str(odd), 1.0, (1, 2)), (files[-1], 1.0, (1, 2))]
    results = render_routed(engine, req, routes)
    expected = separate(new_engine(family), req, routes)
    assert np.array_equal(pixels(results[1].images), expected[1]), "rendered alone, exactly as a plain render"
    assert results[1].swap.kind != "routed" and results[0].swap.kind == "routed"
    for i in (0, 2):
        assert diff(pixels(results[i].images), expected[i]) < 0.05


def test_run_plan_with_mix_gives_the_grid_of_epoch_by_epoch(demo_loras, tmp_path):
    family = "sdxl"
    catalog, entries = copied_epochs(demo_loras, family, 3, tmp_path / "loras")
    engine = new_engine(family)
    sampling = Sampling("", 2, 5.0, 64, 64, "Euler")
    plan = make_plan(engine.defaults, [None, *entries], [1, 2], [1.0, 0.5], ["a red circle", "a blue square"],
                     sampling)
    plain = run_plan(new_engine(family), plan, catalog)
    seen = []
    mixed = run_plan(engine, plan, catalog, mix=3, on_progress=lambda d, t, c: seen.append(d))
    assert seen == list(range(1, len(plain) + 1)), "every cell reported once, in order"
    assert [(c.label, c.seed, c.strength) for c in mixed] == [(c.label, c.seed, c.strength) for c in plain]
    for a, b in zip(plain, mixed, strict=True):
        assert a.error is None and b.error is None
        assert diff(np.asarray(a.image)[None], np.asarray(b.image)[None]) < 0.05, (b.label, b.seed, b.strength)
    # Per prompt, 7 groups (the base, 3 epochs x 2 strengths) in calls of 3, 3 and 1: 4 routed calls in all.
    assert sum(1 for r in engine.hotswap.history if r.kind == "routed") == 4
    assert sum(c.routed for c in mixed) == 2 * 6 * 2 and not any(c.routed for c in plain)


def test_z_image_with_guidance_and_uneven_seeds(demo_loras):
    """Guidance on doubles every denoiser batch (two copies); routes with another number of seeds get a call of
    their own (here alone: a plain render)."""
    family = "z-image"
    files = [str(p) for p in demo_loras[family]]
    req = with_guidance(request(family, steps=3), 2.0)
    routes = [(None, 0.0, (1, 2)), (files[0], 1.0, (1, 2)), (files[-1], 1.0, (3,))]
    expected = separate(new_engine(family), req, routes)
    results = render_routed(new_engine(family), req, routes)
    assert [r.swap.kind for r in results][:2] == ["routed", "routed"]
    assert not results[2].swap.kind.startswith("routed")
    assert np.array_equal(pixels(results[2].images), expected[2])
    for i in (0, 1):
        assert diff(pixels(results[i].images), expected[i]) < 0.05, i
        assert diff(pixels(results[i].images), expected[1 - i]) > 1.0, i


def test_a_cancel_inside_a_routed_call_puts_everything_back(demo_loras):
    family = "sdxl"
    files = [str(p) for p in demo_loras[family]]
    req = request(family, steps=4)
    engine = new_engine(family)
    before = pixels(engine.render(req, files[2], 0.7).images)
    fresh = base_weights(engine.hotswap.denoiser)
    cancel = threading.Event()
    results = render_routed(engine, req, [(files[0], 1.0, (1, 2)), (files[-1], 1.0, (1, 2))], cancel=cancel,
                                   on_step=lambda i, n, label: cancel.set())
    assert all(isinstance(r, Cancelled) for r in results)
    assert engine.hotswap.history[-1].kind == "routed", "the cancel came inside the routed call"
    assert only_the_slot(engine) and engine.hotswap.get_active_adapter() == (files[2], 0.7)
    assert_same_tensors(base_weights(engine.hotswap.denoiser), fresh)
    assert np.array_equal(pixels(engine.render(req, files[2], 0.7).images), before)


@pytest.mark.parametrize("family", FAMILIES)
def test_a_slot_of_another_layout_is_reinstalled_after_routing(family, demo_loras, tmp_path):
    """Stacking borrows the slot for the epochs' layout; the file the slot held before comes back, exactly."""
    files = [str(p) for p in demo_loras[family]]
    odd = other_rank(family, tmp_path)
    req = request(family)
    engine = new_engine(family)
    before = pixels(engine.render(req, odd, 0.6).images)
    results = render_routed(engine, req, [(files[0], 1.0, (1, 2)), (files[-1], 1.0, (1, 2))])
    assert all(r.swap.kind == "routed" for r in results)
    assert engine.hotswap.get_active_adapter() == (odd, 0.6) and only_the_slot(engine)
    assert np.array_equal(pixels(engine.render(req, odd, 0.6).images), before)


def test_a_cancel_in_a_routed_run_keeps_finished_calls_and_reports_every_cell(demo_loras, tmp_path):
    family = "sdxl"
    folder = tmp_path / "loras"
    folder.mkdir()
    for p in demo_loras[family]:
        (folder / p.name).write_bytes(p.read_bytes())
    catalog = Catalog(folder)
    entries = [e for e in catalog.scan() if e.state == "ready"]
    engine = new_engine(family)
    plan = make_plan(engine.defaults, entries, [1, 2], [1.0], ["a red circle"], Sampling("", 2, 5.0, 64, 64, "Euler"))
    cancel, seen = threading.Event(), []

    def cancel_after_first_call(done, total, cell):
        seen.append(done)
        cancel.set()

    cells = run_plan(engine, plan, catalog, mix=2, on_progress=cancel_after_first_call, cancel=cancel)
    assert seen == list(range(1, len(cells) + 1)), "every cell reported once"
    done = [c for c in cells if c.image is not None]
    assert len(done) == 4 and all(c.routed for c in done), "the first call (2 epochs x 2 seeds) is kept"
    assert all(c.error == "cancelled" for c in cells if c.image is None)
    assert only_the_slot(engine) and engine.hotswap.get_active_adapter() == (None, 0.0)


def test_a_batch_wider_than_the_lru_reads_each_file_once(demo_loras):
    family = "sdxl"
    files = [str(p) for p in demo_loras[family]]
    engine = new_engine(family, resident=2)
    reads = []
    real_prepare = engine.hotswap.store.prepare
    engine.hotswap.store.prepare = lambda path: reads.append(str(path)) or real_prepare(path)  # counts, then the real one
    routes = [(f, 1.0, (1,)) for f in files] + [(files[0], 1.0, (2, 3))]  # the last one renders alone
    results = render_routed(engine, request(family), routes)
    assert all(not isinstance(r, Exception) for r in results)
    assert sorted(reads) == sorted(files), "each file read once, though only 2 stay resident"


def test_a_wide_batch_that_runs_out_of_memory_renders_its_routes_one_by_one(demo_loras):
    """Memory grows with epochs per batch: a routed call that runs out falls back to one route at a time."""
    family = "sdxl"
    files = [str(p) for p in demo_loras[family]]
    req = request(family)
    routes = [(files[0], 1.0, (1, 2)), (files[-1], 1.0, (1, 2))]
    expected = separate(new_engine(family), req, routes)
    engine = new_engine(family)

    def wide_batches_fail(module, args, kwargs):  # more rows than one route's 2 seeds x 2 (guidance) hold
        if args[0].shape[0] > 4:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    handle = engine.hotswap.denoiser.register_forward_pre_hook(wide_batches_fail, with_kwargs=True)
    try:
        results = render_routed(engine, req, routes)
    finally:
        handle.remove()
    assert all(not isinstance(r, Exception) for r in results), results
    assert not any(r.swap.kind.startswith("routed") for r in results)
    for got, want in zip(results, expected, strict=True):
        assert np.array_equal(pixels(got.images), want)
    assert engine.hotswap.history[-3].kind == "routed", "the routed call was tried first"


def test_each_route_renders_its_own_seeds_and_fuse_auto_chooses_for_them(demo_loras, verdicts):  # noqa: F811
    """A routed batch's seeds are its routes' (the request's are not used), for the images and for every choice
    made per route: under ``fuse: auto`` a route rendered alone is merged exactly as ``render`` of its own seeds
    would be, not as a request of no seeds (which would never pay for a merge)."""
    family = "sdxl"
    files = [str(p) for p in demo_loras[family]]
    record_for(family, verdicts, unfused_forward_s=10.0, merge_s=1e-6)  # a merge pays for any image at all
    req = replace(request(family, steps=3), seeds=())  # as a plan's batches carry it: the routes hold the seeds
    alone = (files[1], 0.9, (1, 2))
    shared = [(files[0], 1.0, (3,)), (files[2], 0.8, (4,))]
    engine = new_engine(family, fuse="auto")
    [[by_itself], together] = engine.render_routed(req, [[alone], shared])
    # 1. Alone in its call: as ``render`` of its own seeds, merged because two images make the merge pay.
    reference = new_engine(family, fuse="auto").render(replace(req, seeds=alone[2]), alone[0], alone[1])
    assert reference.swap.fused, "the rule merges for two images"
    assert by_itself.swap.fused and by_itself.swap.kind != "routed"
    assert np.array_equal(pixels(by_itself.images), pixels(reference.images))
    # 2. Sharing a call: each route's images are its own seeds' (unfused, as routed samples always are).
    expected = separate(new_engine(family), req, shared)
    assert [r.swap.kind for r in together] == ["routed", "routed"]
    for got, want in zip(together, expected, strict=True):
        assert diff(pixels(got.images), want) < 0.05
    assert diff(pixels(together[0].images), expected[1]) > 1.0, "seed 3 is not seed 4"


def test_progress_reports_each_step_with_what_renders(demo_loras, tmp_path):
    """One ``on_step(step, steps, label)`` from the engine to the caller of ``run_plan``: the label names the
    columns of the batch that is rendering."""
    family = "sdxl"
    catalog, entries = copied_epochs(demo_loras, family, 2, tmp_path / "loras")
    engine = new_engine(family)
    plan = make_plan(engine.defaults, [None, *entries], [1], [1.0], ["a red circle"],
                     Sampling("", 2, 5.0, 64, 64, "Euler"))
    seen = []
    cells = run_plan(engine, plan, catalog, mix=3, on_step=lambda step, steps, label: seen.append((step, steps, label)))
    assert all(c.image is not None and c.routed for c in cells)
    label = " + ".join(c.label for c in cells)
    assert seen == [(1, 2, label), (2, 2, label)], seen

