"""Engine and hot-swap guarantees on tiny real pipelines of both families: exact swaps, no residue, text encoders
untouched, atomic failures, bounded memory, thread safety."""

from __future__ import annotations

import os
import random
import threading

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from lora_spectrum import demo
from lora_spectrum.adapters import fusing
from lora_spectrum.catalog import Catalog
from lora_spectrum.engine import resolve_fuse
from lora_spectrum.errors import BaseLoadError, ConfigError, LoraLoadError
from lora_spectrum.settings import load_settings
from tests.tiny import FAMILIES, garbage, new_engine, pixels, request


def base_weights(denoiser) -> dict[str, torch.Tensor]:
    """The base parameters with peft's wrapping undone in the names (``x.base_layer.weight`` -> ``x.weight``)."""
    return {k.replace(".base_layer", ""): v.detach().clone() for k, v in denoiser.state_dict().items()
            if "lora_" not in k}


def te_state(engine) -> list[dict[str, torch.Tensor]]:
    return [{k: v.detach().clone() for k, v in te.state_dict().items()} for te in engine.family.text_encoders(engine.pipe)]


def assert_same_tensors(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


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
    fresh = base_weights(demo.build_tiny(family, seed=0).unet if family == "sdxl"
                         else demo.build_tiny(family, seed=0).transformer)
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
    assert len(engine.hotswap.resident_names()) <= 3, "the LRU stays bounded"
    assert_same_tensors(base_weights(engine.hotswap.denoiser), fresh)
    fresh_base = pixels(new_engine(family).render(request(family)).images)
    assert np.array_equal(pixels(engine.render(request(family)).images), fresh_base)
    engine.hotswap.unload()
    assert not any("lora_" in k for k in engine.hotswap.denoiser.state_dict())
    assert_same_tensors(engine.hotswap.denoiser.state_dict(), fresh)


def test_text_encoder_keys_are_dropped_and_encoders_untouched(demo_loras, tmp_path):
    family = "sdxl"
    engine = new_engine(family)
    before = te_state(engine)
    plain = demo_loras[family][3]
    sd = load_file(str(plain))
    te = {"lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": torch.randn(4, 32),
          "lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight": torch.randn(32, 4) * 10,
          "lora_te1_text_model_encoder_layers_0_self_attn_q_proj.alpha": torch.tensor(4.0),
          "lora_te2_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": torch.randn(4, 32),
          "lora_te2_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight": torch.randn(32, 4) * 10,
          "lora_te2_text_model_encoder_layers_0_self_attn_q_proj.alpha": torch.tensor(4.0)}
    with_te = tmp_path / "withte_150.safetensors"
    save_file({**sd, **te}, str(with_te))
    prepared = engine.hotswap.prepare(with_te)
    assert prepared.dropped_text_encoder_keys == 4  # two modules x (A, B) after conversion
    img_te = pixels(engine.render(request(family), str(with_te)).images)
    img_plain = pixels(new_engine(family).render(request(family), str(plain)).images)
    assert np.array_equal(img_te, img_plain)
    for a, b in zip(before, te_state(engine), strict=True):
        assert_same_tensors(a, b)
    # Only-text-encoder files are refused, naming the cause.
    only_te = tmp_path / "onlyte_1.safetensors"
    save_file(te, str(only_te))
    with pytest.raises(LoraLoadError, match="only text-encoder keys"):
        engine.render(request(family), str(only_te))


def _bad_files(family, denoiser, good, tmp_path):
    """Files that must all fail to swap, each with the words its message must contain."""
    bad = {}
    data = good.read_bytes()
    (tmp_path / "truncated.safetensors").write_bytes(data[:-64])
    bad["truncated.safetensors"] = "not a valid safetensors"
    (tmp_path / "garbage.safetensors").write_bytes(garbage(2048))
    bad["garbage.safetensors"] = "not a valid safetensors"
    sd = load_file(str(good))
    nan = {k: (v.clone().fill_(float("nan")) if "up" in k else v) for k, v in sd.items()}
    save_file(nan, str(tmp_path / "nan.safetensors"))
    bad["nan.safetensors"] = "NaN or Inf"
    if family == "sdxl":
        # An SD1.5-style file: kohya names of layers this UNet does not have.
        wrong = {"lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight": torch.randn(4, 320),
                 "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_up.weight": torch.randn(320, 4)}
        words = "does not have"
    else:
        # An SDXL LoRA on Z-Image.
        wrong = demo.make_lora_state_dict(demo.build_tiny("sdxl").unet, "sdxl")
        words = "does not have"
    save_file(wrong, str(tmp_path / "wrongarch.safetensors"))
    bad["wrongarch.safetensors"] = words
    shape = {k: (torch.randn(v.shape[0], v.shape[1] + 3) if k.endswith("lora_down.weight") else v) for k, v in sd.items()}
    save_file(shape, str(tmp_path / "shape.safetensors"))
    bad["shape.safetensors"] = "mismatch"
    # A kohya DoRA file: diffusers would drop its magnitudes and load a different, plain LoRA without a word.
    dora = dict(sd)
    for k, v in sd.items():
        if k.endswith(".lora_up.weight"):
            dora[k.replace(".lora_up.weight", ".dora_scale")] = torch.ones(v.shape[0], 1)
    save_file(dora, str(tmp_path / "dora.safetensors"))
    bad["dora.safetensors"] = "kohya DoRA file"
    return bad


@pytest.mark.parametrize("family", FAMILIES)
def test_a_failed_swap_leaves_everything_as_it_was(family, demo_loras, tmp_path):
    engine = new_engine(family)
    good, active = demo_loras[family][0], demo_loras[family][4]
    before = pixels(engine.render(request(family), str(active), 0.7).images)
    state = engine.hotswap.get_active_adapter()
    bad = _bad_files(family, engine.hotswap.denoiser, good, tmp_path)
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


def test_prompt_is_encoded_once_per_plan(demo_loras):
    engine = new_engine("sdxl")
    for p in demo_loras["sdxl"][:5]:
        engine.render(request("sdxl", seeds=(1, 2)), str(p))
    assert engine.prompt_encodings == 1
    forwards = engine.text_encoder_forwards
    engine.render(request("sdxl", prompt="a blue square"), None)
    assert engine.prompt_encodings == 2 and engine.text_encoder_forwards > forwards


# ---------------------------------------------------------------------------------------------- fused mode
def weights_now(denoiser) -> dict[str, torch.Tensor]:
    """Every tensor of the denoiser as it stands (merged base weights and adapter tensors included)."""
    return {k: v.detach().clone() for k, v in denoiser.state_dict().items()}


def fresh_base_weights(family) -> dict[str, torch.Tensor]:
    return base_weights(demo.build_tiny(family, seed=0).unet if family == "sdxl"
                        else demo.build_tiny(family, seed=0).transformer)


@pytest.mark.parametrize("family", FAMILIES)
def test_fused_render_is_close_to_unfused_and_the_base_comes_back_bit_exact(family, demo_loras):
    paths = demo_loras[family]
    a, b, x = str(paths[0]), str(paths[2]), str(paths[4])
    unfused_engine = new_engine(family)
    unfused = pixels(unfused_engine.render(request(family), x, 0.8).images).astype(int)
    base = pixels(unfused_engine.render(request(family)).images)
    engine = new_engine(family, fuse=True)
    assert engine.fuse and engine.hotswap.fused_pristine_bytes() == 0, "the pristine copy is taken lazily"
    for p in (a, b):
        engine.render(request(family), p, 1.0)
    result = engine.render(request(family), x, 0.8)
    assert result.swap.fused and engine.hotswap.is_fused() and engine.hotswap.fuse_note == ""
    fused = pixels(result.images).astype(int)
    # Other arithmetic (W0 + dW, rounded once), so close to unfused rather than identical; far from the base.
    to_unfused, to_base = np.abs(fused - unfused), np.abs(fused - base.astype(int))
    assert to_unfused.max() <= 2 and to_unfused.mean() < 0.02 * to_base.mean(), (to_unfused.max(), to_base.mean())
    # One copy of the targeted weights, no more.
    targeted = {n for n in engine.hotswap._slot.layer_names}
    base_weight = engine.hotswap.fuser.base_weight
    expected = sum(base_weight(n).numel() * base_weight(n).element_size() for n in targeted)
    assert engine.hotswap.fused_pristine_bytes() == expected > 0
    # Back to the base by copying: bit-identical weights and pixels.
    engine.render(request(family), None)
    assert not engine.hotswap.is_fused()
    assert_same_tensors(base_weights(engine.hotswap.denoiser), fresh_base_weights(family))
    assert np.array_equal(pixels(engine.render(request(family)).images), base)
    engine.hotswap.unload()
    assert_same_tensors(engine.hotswap.denoiser.state_dict(), fresh_base_weights(family))
    assert engine.hotswap.fused_pristine_bytes() == 0


@pytest.mark.parametrize("family", FAMILIES)
def test_fused_strength_changes_restore_exactly(family, demo_loras):
    x = str(demo_loras[family][4])
    reference = new_engine(family, fuse=True)
    with reference.lock:
        reference.hotswap.activate(x, 0.5)
    at_half = weights_now(reference.hotswap.denoiser)
    engine = new_engine(family, fuse=True)
    with engine.lock:
        for strength in (1.0, 1.3, 0.5):
            engine.hotswap.activate(x, strength)
        assert engine.hotswap.history[-1].kind == "strength"
        # Merged from the pristine weights every time, never on top of the previous merge.
        assert_same_tensors(weights_now(engine.hotswap.denoiser), at_half)
        engine.hotswap.activate(x, 0.0)
        assert not engine.hotswap.is_fused()
        assert_same_tensors(base_weights(engine.hotswap.denoiser), fresh_base_weights(family))


@pytest.mark.parametrize("family", FAMILIES)
def test_a_failed_swap_in_fused_mode_leaves_the_fused_epoch_exactly(family, demo_loras, tmp_path):
    engine = new_engine(family, fuse=True)
    good, active = demo_loras[family][0], demo_loras[family][4]
    before = pixels(engine.render(request(family), str(active), 0.7).images)
    state, weights = engine.hotswap.get_active_adapter(), weights_now(engine.hotswap.denoiser)
    for name, words in _bad_files(family, engine.hotswap.denoiser, good, tmp_path).items():
        with pytest.raises(LoraLoadError, match=words):
            with engine.lock:
                engine.hotswap.activate(tmp_path / name, 1.0)
        assert engine.hotswap.get_active_adapter() == state
    assert engine.hotswap.is_fused()
    assert_same_tensors(weights_now(engine.hotswap.denoiser), weights)
    with engine.lock:
        assert np.array_equal(pixels(engine._render_locked(request(family))), before)


def test_a_merge_failing_midway_restores_the_base(demo_loras, monkeypatch):
    family = "sdxl"
    paths = demo_loras[family]
    engine = new_engine(family, fuse=True)
    with engine.lock:
        engine.hotswap.activate(paths[1], 1.0)
    merged = fusing._merged
    calls = []

    def fail_on_the_third_layer(*args):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("out of memory (simulated)")
        return merged(*args)

    monkeypatch.setattr(fusing, "_merged", fail_on_the_third_layer)
    with pytest.raises(LoraLoadError, match="base weights were restored"):
        with engine.lock:
            engine.hotswap.activate(paths[3], 1.0)
    assert engine.hotswap.get_active_adapter() == (None, 0.0)
    assert not engine.hotswap.is_fused()
    assert_same_tensors(base_weights(engine.hotswap.denoiser), fresh_base_weights(family))
    monkeypatch.setattr(fusing, "_merged", merged)
    fresh = pixels(new_engine(family, fuse=True).render(request(family), str(paths[3])).images)
    assert np.array_equal(pixels(engine.render(request(family), str(paths[3])).images), fresh)


@pytest.mark.parametrize("family", FAMILIES)
def test_switching_fuse_off_restores_and_renders_unfused(family, demo_loras):
    x = str(demo_loras[family][3])
    unfused = pixels(new_engine(family).render(request(family), x, 0.9).images)
    engine = new_engine(family, fuse=True)
    fused = pixels(engine.render(request(family), x, 0.9).images)
    generation = engine.hotswap.generation
    with engine.lock:
        engine.hotswap.set_fuse(False)
    assert engine.hotswap.generation > generation and engine.hotswap.get_active_adapter() == (x, 0.9)
    assert engine.hotswap.fused_pristine_bytes() == 0 and not engine.hotswap.is_fused()
    assert_same_tensors(base_weights(engine.hotswap.denoiser), fresh_base_weights(family))
    with engine.lock:
        assert np.array_equal(pixels(engine._render_locked(request(family))), unfused)
        engine.hotswap.set_fuse(True)
        assert np.array_equal(pixels(engine._render_locked(request(family))), fused)


def test_conv_layers_are_merged_like_peft_computes_them(demo_loras, tmp_path):
    """A kohya LoCon-style file (down: the layer's 3x3 kernel, up: 1x1) on resnet convolutions, plus attention."""
    family = "sdxl"
    sd = load_file(str(demo_loras[family][4]))
    gen = torch.Generator().manual_seed(3)
    unet = demo.build_tiny(family, seed=0).unet
    for name in ("down_blocks.0.resnets.0.conv1", "up_blocks.1.resnets.0.conv2"):
        conv = unet.get_submodule(name)
        key = "lora_unet_" + name.replace(".", "_")
        sd[f"{key}.lora_down.weight"] = torch.randn(4, conv.in_channels, 3, 3, generator=gen) * 0.3
        sd[f"{key}.lora_up.weight"] = torch.randn(conv.out_channels, 4, 1, 1, generator=gen) * 0.3
        sd[f"{key}.alpha"] = torch.tensor(4.0)
    locon = tmp_path / "locon_4.safetensors"
    save_file(sd, str(locon))
    unfused = pixels(new_engine(family).render(request(family), str(locon)).images).astype(int)
    attention_only = pixels(new_engine(family).render(request(family), str(demo_loras[family][4])).images)
    engine = new_engine(family, fuse=True)
    fused = pixels(engine.render(request(family), str(locon)).images).astype(int)
    assert engine.hotswap.is_fused() and engine.hotswap.fuse_note == ""
    assert any(isinstance(layer.get_base_layer(), torch.nn.Conv2d) for layer in engine.hotswap._slot.layers)
    to_unfused, to_attention = np.abs(fused - unfused), np.abs(fused - attention_only.astype(int))
    assert to_unfused.max() <= 2 and to_unfused.mean() < 0.05 * to_attention.mean()
    engine.render(request(family), None)
    assert_same_tensors(base_weights(engine.hotswap.denoiser), fresh_base_weights(family))


def test_fuse_setting_auto_on_off(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("fuse: on\n")
    assert load_settings(cfg).fuse == "on"  # YAML reads a bare on as true
    cfg.write_text("fuse: auto\n")
    assert load_settings(cfg).fuse == "auto"
    cfg.write_text("fuse: sometimes\n")
    with pytest.raises(ConfigError, match="fuse must be auto, on or off"):
        load_settings(cfg)
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_fuse("auto", cpu) is False and resolve_fuse("auto", cuda) is True
    assert resolve_fuse("auto", cuda, "sequential") is False
    assert resolve_fuse("on", cpu) is True and resolve_fuse("off", cuda) is False
    with pytest.raises(BaseLoadError, match="offload: sequential"):
        resolve_fuse("on", cuda, "sequential")
    assert new_engine("sdxl", fuse="auto").hotswap.fuse is False  # the tiny engines run on the CPU


# ---------------------------------------------------------------------------------------------- formats and bases
def test_a_z_image_base_loads_from_a_diffusers_folder_and_swaps(demo_loras, tmp_path):
    """The family is read from model_index.json; the folder renders what the in-memory pipeline renders."""
    from lora_spectrum.engine import Engine
    from lora_spectrum.families import detect_family

    demo.build_tiny("z-image", seed=0).save_pretrained(tmp_path / "base")
    assert detect_family(str(tmp_path / "base")) == "z-image"
    engine = Engine.load(str(tmp_path / "base"), family="auto", device="cpu", max_sequence_length=32)
    assert engine.family.name == "z-image"
    epoch = str(demo_loras["z-image"][-1])
    got = pixels(engine.render(request("z-image"), epoch, 1.0).images)
    assert np.array_equal(got, pixels(new_engine("z-image").render(request("z-image"), epoch, 1.0).images))


def test_a_diffusers_peft_format_file_renders_like_its_kohya_twin(demo_loras, tmp_path):
    """The same adapter saved with diffusers/peft key names (``unet.<module>.lora_A.weight``, no alphas: the demo's
    alpha equals its rank) swaps in and renders exactly like the kohya file."""
    family = "sdxl"
    kohya = str(demo_loras[family][3])
    engine = new_engine(family)
    prepared, _ = engine.hotswap.load_adapter(kohya)
    peft_file = tmp_path / "peft_150.safetensors"
    save_file({f"unet.{k}": v.contiguous() for k, v in prepared.tensors.items()}, str(peft_file))
    assert Catalog(tmp_path).scan()[0].format == "diffusers/peft"
    want = pixels(engine.render(request(family), kohya, 1.0).images)
    assert np.array_equal(pixels(new_engine(family).render(request(family), str(peft_file), 1.0).images), want)


def test_loha_and_lokr_files_are_refused_at_swap_naming_a_key(tmp_path):
    family = "sdxl"
    engine = new_engine(family)
    stem = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q"
    files = {"loha_1.safetensors": {f"{stem}.hada_w1_a": torch.randn(64, 4), f"{stem}.hada_w1_b": torch.randn(4, 64),
                                    f"{stem}.hada_w2_a": torch.randn(64, 4), f"{stem}.hada_w2_b": torch.randn(4, 64),
                                    f"{stem}.alpha": torch.tensor(4.0)},
             "lokr_1.safetensors": {f"{stem}.lokr_w1": torch.randn(8, 8), f"{stem}.lokr_w2": torch.randn(8, 8),
                                    f"{stem}.alpha": torch.tensor(4.0)}}
    for name, sd in files.items():
        save_file(sd, str(tmp_path / name))
        with pytest.raises(LoraLoadError) as info, engine.lock:
            engine.hotswap.activate(tmp_path / name, 1.0)
        assert name in str(info.value) and stem in str(info.value), str(info.value)
    assert engine.hotswap.get_active_adapter() == (None, 0.0)
