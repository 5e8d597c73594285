"""Routed batches (``adapters/routing.py``) called directly: explicit blocks of samples, each through its own
adapter, the stacked way and peft's, and what routing rests on (a batch-first input in every routed layer)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from lora_spectrum.errors import RenderError
from tests.adapters.helpers import assert_same_tensors, base_weights, diff, only_the_slot, separate
from tests.tiny import FAMILIES, new_engine, pixels, request, with_guidance


@pytest.mark.parametrize("family", FAMILIES)
def test_every_layer_but_the_listed_ones_sees_one_row_per_sample(family):
    """What routing rests on: a layer's input has the batch as its first dimension. Checked in a real forward
    of three samples, for every Linear and Conv2d of the denoiser, against ``Family.unbatched_layers``."""
    engine = new_engine(family)
    seen: dict[str, set[int]] = {}
    hooks = [m.register_forward_pre_hook(lambda m, args, name=name: seen.setdefault(name, set()).add(args[0].shape[0]))
             for name, m in engine.hotswap.denoiser.named_modules() if isinstance(m, torch.nn.Linear | torch.nn.Conv2d)]
    engine.render(with_guidance(request(family, seeds=(1, 2, 3), steps=1), 0.0))
    for h in hooks:
        h.remove()
    unbatched = {name for name, rows in seen.items() if rows != {3}}
    listed = {name for name in seen if name.split(".", 1)[0] in engine.family.unbatched_layers}
    assert seen and unbatched == listed


@pytest.mark.parametrize("way", ["auto", "peft"])
def test_explicit_blocks_are_routed_as_given(way, demo_loras):
    """Blocks are not regrouped: two equal blocks in a row stay two blocks of ``samples`` samples each (so the
    stacked way still applies), and the peft way repeats each block's adapter for its samples."""
    family = "sdxl"
    files = [str(p) for p in demo_loras[family]]
    seeds = (1, 2)
    blocks = [(files[0], 1.0), (files[0], 1.0), (None, 0.0), (files[-1], 0.8)]
    req = request(family)
    expected = separate(new_engine(family), req, [(path, strength, seeds) for path, strength in blocks])
    engine = new_engine(family)
    fresh = base_weights(engine.hotswap.denoiser)
    with engine.lock, engine.hotswap.routed(blocks, len(seeds), way=way) as swap:
        images = engine._render_locked(dataclasses.replace(req, seeds=seeds * len(blocks)))
    assert swap.kind == ("routed" if way == "auto" else "routed-peft")
    assert swap.name == "2 adapter(s) routed"
    got = [pixels(images[i * len(seeds):(i + 1) * len(seeds)]) for i in range(len(blocks))]
    for i, want in enumerate(expected):
        assert diff(got[i], want) < 0.05, (i, diff(got[i], want))
    assert diff(got[3], expected[0]) > 1.0 and diff(got[2], expected[3]) > 1.0, "each block its own adapter"
    assert only_the_slot(engine) and engine.hotswap.get_active_adapter() == (None, 0.0)
    assert_same_tensors(base_weights(engine.hotswap.denoiser), fresh)


def test_an_empty_routing_is_refused_before_anything_changes(demo_loras):
    family = "sdxl"
    path = str(demo_loras[family][0])
    engine = new_engine(family)
    before = pixels(engine.render(request(family), path, 0.7).images)
    generation = engine.hotswap.generation
    for blocks, samples in (([], 2), ([(path, 1.0)], 0)):
        with pytest.raises(RenderError, match="at least one block of at least one sample"), engine.lock, \
                engine.hotswap.routed(blocks, samples):
            pass
    assert engine.hotswap.generation == generation and engine.hotswap.get_active_adapter() == (path, 0.7)
    assert np.array_equal(pixels(engine.render(request(family), path, 0.7).images), before)
