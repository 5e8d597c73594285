"""The adapter ``Slot`` through its public methods, on tiny real denoisers: install (a new slot for a new layout,
re-pointed in place for the same), fit, strength (0 adds nothing; a compiled slot writes its strengths in place),
named adapters loaded and dropped beside it, and removal giving the original modules back."""

from __future__ import annotations

import dataclasses
import threading

import pytest
import torch

from lora_spectrum.adapters import Slot
from lora_spectrum.adapters.fusing import peft_scaling
from lora_spectrum.bases.families import get_family
from lora_spectrum.errors import LoraLoadError
from tests.adapters.helpers import assert_same_tensors, base_weights, fresh_base_weights, new_reader, other_rank, read
from tests.tiny import FAMILIES, new_engine, request


def new_slot(family: str, compiled: bool = False):
    reader, denoiser = new_reader(family)
    return Slot(denoiser, get_family(family), compiled), reader


def adapters_in(slot: Slot) -> list[str]:
    return list(getattr(slot.denoiser, "peft_config", {}))


def layer_delta(slot: Slot, x: torch.Tensor, layer=None) -> torch.Tensor:
    """What the slot's first layer (or ``layer``) adds to its base layer's output for input ``x``."""
    layer = layer or slot.layers[0]
    with torch.no_grad():
        return layer(x) - layer.get_base_layer()(x)


def linear_layer(slot: Slot):
    return next(m for m in slot.layers if isinstance(m.get_base_layer(), torch.nn.Linear))


@pytest.mark.parametrize("family", FAMILIES)
def test_install_builds_a_slot_for_a_new_layout_and_repoints_it_in_place_for_the_same(family, demo_loras,
                                                                                       tmp_path):
    slot, reader = new_slot(family)
    first, second = (read(reader, p) for p in demo_loras[family][:2])
    assert not slot.built and slot.installed is None
    # 1. The first file: a slot built through diffusers, whose parameters are the file's own tensors (no copy).
    assert slot.install(first) is True
    assert slot.built and adapters_in(slot) == [slot.adapter_name] and slot.installed is first
    assert slot.layers and len(slot.layers) == len(slot.layer_names)
    params = dict(slot.params)
    assert all(params[k].data.data_ptr() == t.data_ptr() for k, t in first.tensors.items())
    # 2. Same layout: the same parameters, re-pointed at the next file's tensors; nothing rebuilt.
    name, serial = slot.adapter_name, slot.serial
    assert slot.install(second) is False
    assert slot.adapter_name == name and slot.serial == serial + 1 and slot.installed is second
    assert all(slot.params[k] is params[k] for k in params), "the very parameter objects a graph traced"
    assert all(slot.params[k].data.data_ptr() == t.data_ptr() for k, t in second.tensors.items())
    # 3. ``rebind`` alone re-points too.
    slot.rebind(first)
    assert all(slot.params[k].data.data_ptr() == t.data_ptr() for k, t in first.tensors.items())
    # 4. Another layout: a new slot, and the old one deleted (one adapter in the model, never two).
    odd = read(reader, other_rank(family, tmp_path))
    assert slot.install(odd) is True
    assert slot.adapter_name != name and adapters_in(slot) == [slot.adapter_name]
    # 5. ``fit`` installs only when the layout differs.
    serial = slot.serial
    slot.fit(odd)
    assert slot.serial == serial and slot.installed is odd
    slot.fit(first)
    assert slot.signature == first.signature and adapters_in(slot) == [slot.adapter_name]


@pytest.mark.parametrize("family", FAMILIES)
def test_strength_scales_what_the_layers_add_and_zero_adds_nothing(family, demo_loras):
    slot, reader = new_slot(family)
    slot.set_strength(1.0)  # an empty slot: nothing to set, nothing raised
    slot.install(read(reader, demo_loras[family][3]))
    layer = linear_layer(slot)
    x = torch.randn(2, layer.get_base_layer().in_features, generator=torch.Generator().manual_seed(0))
    slot.set_strength(0.5)
    half = layer_delta(slot, x, layer)
    slot.set_strength(1.0)
    whole = layer_delta(slot, x, layer)
    assert whole.abs().max() > 0 and torch.allclose(whole, 2 * half, atol=1e-6)
    slot.set_strength(0.0)
    assert torch.equal(layer_delta(slot, x, layer), torch.zeros_like(whole)), "bypassed: the base layer's output"
    assert all(m.disable_adapters for m in slot.layers)


@pytest.mark.parametrize("family", FAMILIES)
def test_a_compiled_slot_writes_strengths_into_the_same_tensors(family, demo_loras):
    """Compiled: every layer stays enabled and holds its strength in one 0-dim tensor, written in place, so that a
    compiled graph's guards keep passing whatever the strength (the base: 0)."""
    slot, reader = new_slot(family, compiled=True)
    slot.install(read(reader, demo_loras[family][1]))
    slot.set_strength(0.5)
    layer, name = slot.layers[0], slot.adapter_name
    held = layer.scaling[name]
    assert isinstance(held, torch.Tensor) and held.dim() == 0
    base_scaling = float(held) / 0.5
    for strength in (1.3, 0.0, 0.7):
        slot.set_strength(strength)
        assert layer.scaling[name] is held and float(held) == pytest.approx(strength * base_scaling)
        assert not any(m.disable_adapters for m in slot.layers)
    assert base_scaling == pytest.approx(peft_scaling(layer, name)), "alpha / r at strength 1"


@pytest.mark.parametrize("family", FAMILIES)
def test_named_adapters_load_beside_the_slot_and_drop_without_a_trace(family, demo_loras):
    slot, reader = new_slot(family)
    held, extra = read(reader, demo_loras[family][0]), read(reader, demo_loras[family][4])
    slot.install(held)
    slot.load(extra, "beside")
    assert sorted(adapters_in(slot)) == sorted([slot.adapter_name, "beside"])
    assert all("beside" in m.lora_A for m in slot.layers)
    slot.drop("beside")
    slot.drop("beside")  # dropping what is not there: nothing
    assert adapters_in(slot) == [slot.adapter_name]
    assert not any("beside" in m.lora_A for m in slot.layers)
    slot.select()  # every layer on the slot's own adapter again
    assert all(m.active_adapters == [slot.adapter_name] for m in slot.layers)
    # A file none of whose keys name a layer of this denoiser: refused, and nothing of it stays.
    stray = dataclasses.replace(extra, tensors={f"nowhere.{k}": v for k, v in extra.tensors.items()})
    with pytest.raises(LoraLoadError):
        slot.load(stray, "stray")
    assert adapters_in(slot) == [slot.adapter_name]


@pytest.mark.parametrize("family", FAMILIES)
def test_remove_gives_back_the_original_modules(family, demo_loras):
    slot, reader = new_slot(family)
    slot.install(read(reader, demo_loras[family][2]))
    slot.set_strength(1.0)
    slot.remove()
    assert not slot.built and slot.installed is None and not adapters_in(slot)
    assert not any("lora_" in name for name, _ in slot.denoiser.named_parameters())
    assert_same_tensors(base_weights(slot.denoiser), fresh_base_weights(family))
    slot.install(read(reader, demo_loras[family][2]))  # and it can be built again
    assert slot.built and adapters_in(slot) == [slot.adapter_name]


def test_the_engine_lock_is_the_one_lock_over_adapter_state(demo_loras):
    """Swaps and routed batches wait for ``Engine.lock`` before they touch the slot; the swapper has no lock of
    its own that could let one in while a render holds the engine."""
    family = "sdxl"
    files = [str(p) for p in demo_loras[family]]
    engine = new_engine(family)
    assert not hasattr(engine.hotswap, "_lock")
    generation = engine.hotswap.generation
    calls = [lambda: engine.render(request(family), files[0]),
             lambda: engine.render_routed(request(family), [[(files[1], 1.0, (1,)), (files[2], 1.0, (2,))]])]
    with engine.lock:
        threads = [threading.Thread(target=call) for call in calls]
        for t in threads:
            t.start()
        threads[0].join(0.5)
        assert all(t.is_alive() for t in threads) and engine.hotswap.generation == generation
        assert engine.hotswap.get_active_adapter() == (None, 0.0) and not engine.hotswap.slot.built
    for t in threads:
        t.join()
    assert engine.hotswap.generation > generation
