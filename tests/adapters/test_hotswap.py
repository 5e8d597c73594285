"""The slot and the LRU (``adapters/hotswap.py``) on tiny real pipelines of both families: exact swaps, no residue,
atomic failures, bounded memory, files read again when they change."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
from safetensors.torch import save_file

from lora_spectrum import demo
from lora_spectrum.errors import LoraLoadError
from tests.adapters.helpers import assert_same_tensors, bad_files, base_weights, fresh_base_weights
from tests.tiny import FAMILIES, new_engine, pixels, request


@pytest.mark.parametrize("family", FAMILIES)
def test_epoch_after_other_swaps_equals_fresh_pipeline(family, demo_loras):
    paths = demo_loras[family]
    a, b, x = paths[0], paths[2], paths[4]
    engine = new_engine(family)
    for p in (a, b):
        engine.render(request(family), str(p), 1.0)
    swapped = pixels(engine.render(request(family), str(x), 0.8).images)
    fresh = pixels(new_engine(family).render(request(family), str(x), 0.8).images)
    assert np.array_equal(swapped, fresh)
    base = pixels(new_engine(family).render(request(family)).images)
    assert not np.array_equal(swapped, base), "the LoRA must change the picture"


@pytest.mark.parametrize("family", FAMILIES)
def test_strength_zero_and_use_base_render_the_base_exactly(family, demo_loras):
    fresh_base = pixels(new_engine(family).render(request(family)).images)
    engine = new_engine(family)
    engine.render(request(family), str(demo_loras[family][-1]), 1.0)
    assert np.array_equal(pixels(engine.render(request(family), str(demo_loras[family][-1]), 0.0).images), fresh_base)
    assert np.array_equal(pixels(engine.render(request(family), None).images), fresh_base)
    assert engine.hotswap.get_active_adapter() == (None, 0.0)


@pytest.mark.parametrize("family", FAMILIES)
def test_base_weights_bit_identical_after_200_random_swaps(family, demo_loras, tmp_path):
    engine = new_engine(family, resident=3)
    fresh = fresh_base_weights(family)
    # A different-rank file in the mix forces the slot to be rebuilt now and then.
    other = tmp_path / "rank8_1.safetensors"
    save_file(demo.make_lora_state_dict(engine.hotswap.denoiser, family, rank=8, seed=5), str(other))
    files = [str(p) for p in demo_loras[family]] + [str(other)]
    rng = random.Random(0)
    gen = engine.hotswap.generation
    with engine.lock:
        for _ in range(200):
            choice = rng.random()
            if choice < 0.1:
                engine.hotswap.use_base()
            else:
                engine.hotswap.activate(rng.choice(files), rng.choice([0.0, 0.5, 1.0, 1.3]))
    assert engine.hotswap.generation == gen + 200, "every swap moves the generation counter"
    assert len(engine.hotswap.store.names()) <= 3, "the LRU stays bounded"
    assert_same_tensors(base_weights(engine.hotswap.denoiser), fresh)
    fresh_base = pixels(new_engine(family).render(request(family)).images)
    assert np.array_equal(pixels(engine.render(request(family)).images), fresh_base)
    engine.hotswap.unload()
    assert not any("lora_" in k for k in engine.hotswap.denoiser.state_dict())
    assert_same_tensors(engine.hotswap.denoiser.state_dict(), fresh)


@pytest.mark.parametrize("family", FAMILIES)
def test_a_failed_swap_leaves_everything_as_it_was(family, demo_loras, tmp_path):
    engine = new_engine(family)
    good, active = demo_loras[family][0], demo_loras[family][4]
    before = pixels(engine.render(request(family), str(active), 0.7).images)
    state = engine.hotswap.get_active_adapter()
    bad = bad_files(family, engine.hotswap.denoiser, good, tmp_path)
    removed = tmp_path / "removed_1.safetensors"
    bad[removed.name] = "not found"
    for name, words in bad.items():
        with pytest.raises(LoraLoadError) as info:
            with engine.lock:
                engine.hotswap.activate(tmp_path / name, 1.0)
        assert name in str(info.value) and words in str(info.value), str(info.value)
        assert engine.hotswap.get_active_adapter() == state
    # Same adapter, same strength, same pixels: rendering with the active adapter as it stands.
    with engine.lock:
        after = pixels(engine._render_locked(request(family)))
    assert np.array_equal(before, after)


def test_file_replaced_under_the_same_name_is_read_again(demo_loras, tmp_path):
    family = "sdxl"
    engine = new_engine(family)
    path = tmp_path / "jimeng_20.safetensors"
    path.write_bytes(demo_loras[family][0].read_bytes())
    first = pixels(engine.render(request(family), str(path)).images)
    path.write_bytes(demo_loras[family][-1].read_bytes())
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 1_000_000))
    second = pixels(engine.render(request(family), str(path)).images)
    expected = pixels(new_engine(family).render(request(family), str(demo_loras[family][-1])).images)
    assert not np.array_equal(first, second)
    assert np.array_equal(second, expected)
