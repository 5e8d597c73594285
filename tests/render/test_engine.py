"""The engine: one resident pipeline, its lock (threads get exactly their own epochs), prompt embeddings computed
once, bases loaded from folders and from safetensors only, and a short soak of swaps and renders."""

from __future__ import annotations

import pickle
import threading
from dataclasses import replace

import numpy as np
import pytest

from lora_spectrum import demo
from lora_spectrum.bases.families import get_family as engine_family
from lora_spectrum.errors import BaseLoadError
from lora_spectrum.render.engine import Engine, EngineConfig
from lora_spectrum.settings import Settings
from tests.tiny import FAMILIES, Boom, new_engine, pixels, request


@pytest.mark.parametrize("family", FAMILIES)
def test_threads_rendering_different_epochs_match_serial_renders(family, demo_loras):
    paths = [str(p) for p in demo_loras[family][:4]]
    serial_engine = new_engine(family)
    serial = {p: pixels(serial_engine.render(request(family), p).images) for p in paths}
    engine = new_engine(family, max_queued=8)
    results, errors = {}, []

    def work(p):
        try:
            for _ in range(2):
                results[p] = pixels(engine.render(request(family), p).images)
        except Exception as exc:  # noqa: BLE001 - surfaced by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(p,)) for p in paths]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for p in paths:
        assert np.array_equal(results[p], serial[p]), p


@pytest.mark.parametrize("family", FAMILIES)
def test_prompt_is_encoded_once_per_plan(family, demo_loras):
    engine = new_engine(family)
    for p in demo_loras[family][:5]:
        engine.render(request(family, seeds=(1, 2)), str(p))
    assert engine.prompt_encodings == 1
    forwards = engine.text_encoder_forwards
    engine.render(request(family, prompt="a blue square"), None)
    assert engine.prompt_encodings == 2 and engine.text_encoder_forwards > forwards


@pytest.mark.parametrize("family", FAMILIES)
def test_a_base_loads_from_a_diffusers_folder_and_swaps(family, demo_loras, tmp_path):
    """The family is read from model_index.json; the folder renders what the in-memory pipeline renders."""
    demo.build_tiny(family, seed=0, workdir=tmp_path / "tok").save_pretrained(tmp_path / "base")
    engine = Engine.load(str(tmp_path / "base"), family="auto", device="cpu", max_sequence_length=32)
    assert engine.family.name == family
    epoch = str(demo_loras[family][-1])
    got = pixels(engine.render(request(family), epoch, 1.0).images)
    assert np.array_equal(got, pixels(new_engine(family).render(request(family), epoch, 1.0).images))


def test_the_z_image_base_model_loads_with_its_own_defaults_and_renders_with_guidance(demo_loras, tmp_path):
    """A folder named like Tongyi-MAI/Z-Image (not Turbo) gets the base model's defaults: CFG and more steps."""
    demo.build_tiny("z-image", seed=0, workdir=tmp_path / "tok").save_pretrained(tmp_path / "Z-Image")
    engine = Engine.load(str(tmp_path / "Z-Image"), family="auto", device="cpu", max_sequence_length=32)
    assert (engine.family.variant, engine.defaults.sampling.steps, engine.defaults.sampling.guidance) == \
        ("base", 28, 4.0)
    req = request("z-image")
    req = replace(req, sampling=replace(engine.defaults.sampling, steps=2, width=32, height=32))
    assert engine._uses_cfg(req.sampling.guidance), "classifier-free guidance: two samples per image"
    assert len(engine.render(req, str(demo_loras["z-image"][-1])).images) == len(req.seeds)


def test_a_base_is_loaded_from_safetensors_only(tmp_path):
    """Pickle-based base weights are refused with the reason, never handed to torch.load (docs/SECURITY.md)."""
    pipe = demo.build_tiny("sdxl", workdir=tmp_path / "tok")
    pipe.save_pretrained(str(tmp_path / "bin-base"), safe_serialization=False)  # UNet and VAE as .bin pickles
    with pytest.raises(BaseLoadError, match="safetensors"):
        Engine.load(str(tmp_path / "bin-base"), family="sdxl", device="cpu")
    marker = tmp_path / "UNPICKLED"
    Boom.marker = str(marker)
    (tmp_path / "model.ckpt").write_bytes(pickle.dumps(Boom()))
    with pytest.raises(BaseLoadError, match="only .safetensors checkpoints"):
        Engine.load(str(tmp_path / "model.ckpt"), family="sdxl", device="cpu")
    assert not marker.exists()


def test_short_soak_keeps_the_base_and_memory(tmp_path):
    """The short variant of ``scripts/soak.py``: the same checks except timing (measured there, not here)."""
    from scripts.soak import soak

    report = soak(swaps=60, epochs=6, render_every=10, workdir=tmp_path, check_timing=False, threads=None)
    assert report.base_weights_identical and report.base_render_identical
    assert report.rss_ok, f"RSS {report.rss_start_mb:.1f} -> {report.rss_end_mb:.1f} MB, adapter {report.adapter_mb}"
    assert report.resident_adapters <= report.resident_limit
    assert report.swap_kinds.get("cold") and report.swap_kinds.get("warm") and report.swap_kinds.get("base")
    assert report.ok, report.failures


def test_swaps_under_diffusers_group_offload_hooks_render_as_without(demo_loras):
    """``offload: group`` is diffusers' group offload (CUDA only in ``Engine.load``). Its hooks move every
    block's weights at each forward; here they move them between CPU and CPU, so that what is checked on any
    machine is that swaps (which re-point the slot's parameters) and the hooks agree."""
    import torch

    family = "sdxl"  # the hooks are diffusers' own, the same for both families' models
    pipe = demo.build_tiny(family, seed=0)
    cpu = torch.device("cpu")
    pipe.enable_group_offload(onload_device=cpu, offload_device=cpu, offload_type="block_level",
                              num_blocks_per_group=1)
    engine = Engine(pipe, engine_family(family), f"tiny-{family}", offload="group", max_sequence_length=32,
                    fuse="auto")
    assert engine.fuse_mode == "off", "merged weights would not survive the hooks"
    plain = new_engine(family)
    files = [str(p) for p in demo_loras[family]]
    for path in [files[0], files[2], None, files[1], files[2]]:
        got = pixels(engine.render(request(family), path).images)
        assert np.array_equal(got, pixels(plain.render(request(family), path).images)), path
    assert {"rebuild", "cold", "warm", "base"} <= {r.kind for r in engine.hotswap.history}


def test_one_config_builds_the_engine_from_the_settings_or_by_name():
    """Every knob is an ``EngineConfig`` field: taken from the settings in one place, and given to ``Engine`` as a
    config or field by field, with the same engine either way."""
    settings = replace(Settings(), resident_adapters=3, max_queued_renders=5, fuse="off", compile="off",
                       prefetch=False, hf_cache="/somewhere", empty_cache_after_swap=True)
    config = EngineConfig.from_settings(settings)
    assert (config.resident_adapters, config.max_queued, config.fuse, config.prefetch, config.cache_dir,
            config.empty_cache_after_swap, config.compile) == (3, 5, "off", False, "/somewhere", True, "off")
    kept = config.keeping("resident_adapters", "prefetch", family="x")
    assert (kept.resident_adapters, kept.prefetch, kept.family, kept.max_queued) == (3, False, "x", 2)
    family = "sdxl"
    by_config = Engine(demo.build_tiny(family, seed=0), engine_family(family), "tiny",
                       replace(config, max_sequence_length=32))
    by_name = new_engine(family, resident=3, max_queued=5, prefetch=False, empty_cache_after_swap=True)
    for engine in (by_config, by_name):
        assert (engine.hotswap.store.resident, engine.admission.limit, engine.prefetch_enabled,
                engine.hotswap.empty_cache, engine.fuse_mode, engine.max_sequence_length) == (3, 5, False, True,
                                                                                         "off", 32)

