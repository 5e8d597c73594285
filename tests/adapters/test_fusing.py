"""Fused mode (``adapters/fusing.py``): merged renders close to unfused ones, the base back bit-exact by pointing at
the base weights kept by reference, reused buffers, failures that restore the base, LoCon convolutions, bf16 on
the CPU, and the ``fuse`` setting."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from lora_spectrum import demo
from lora_spectrum.adapters import fusing
from lora_spectrum.errors import BaseLoadError, ConfigError, LoraLoadError
from lora_spectrum.render.fuse_policy import resolve_fuse
from lora_spectrum.settings import load_settings
from tests.adapters.helpers import assert_same_tensors, bad_files, base_weights, fresh_base_weights, weights_now
from tests.tiny import FAMILIES, new_engine, pixels, request


@pytest.mark.parametrize("family", FAMILIES)
def test_fused_render_is_close_to_unfused_and_the_base_comes_back_bit_exact(family, demo_loras):
    paths = demo_loras[family]
    a, b, x = str(paths[0]), str(paths[2]), str(paths[4])
    unfused_engine = new_engine(family)
    unfused = pixels(unfused_engine.render(request(family), x, 0.8).images).astype(int)
    base = pixels(unfused_engine.render(request(family)).images)
    engine = new_engine(family, fuse=True)
    assert engine.fuse and engine.hotswap.fused_extra_bytes() == 0, "the merge buffers are made lazily"
    for p in (a, b):
        engine.render(request(family), p, 1.0)
    result = engine.render(request(family), x, 0.8)
    assert result.swap.fused and engine.hotswap.is_fused() and engine.hotswap.fuse_note == ""
    fused = pixels(result.images).astype(int)
    # Other arithmetic (W0 + dW, rounded once), so close to unfused rather than identical; far from the base.
    to_unfused, to_base = np.abs(fused - unfused), np.abs(fused - base.astype(int))
    assert to_unfused.max() <= 2 and to_unfused.mean() < 0.02 * to_base.mean(), (to_unfused.max(), to_base.mean())
    # One buffer per targeted weight, no more (float32 here: no scratch).
    targeted = {n for n in engine.hotswap.slot.layer_names}
    base_weight = engine.hotswap.fuser.base_weight
    expected = sum(base_weight(n).numel() * base_weight(n).element_size() for n in targeted)
    assert engine.hotswap.fused_extra_bytes() == expected > 0
    # Back to the base by pointing at it: bit-identical weights and pixels.
    engine.render(request(family), None)
    assert not engine.hotswap.is_fused()
    assert_same_tensors(base_weights(engine.hotswap.denoiser), fresh_base_weights(family))
    assert np.array_equal(pixels(engine.render(request(family)).images), base)
    engine.hotswap.unload()
    assert_same_tensors(engine.hotswap.denoiser.state_dict(), fresh_base_weights(family))
    assert engine.hotswap.fused_extra_bytes() == 0


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
        # Merged from the base weights every time, never on top of the previous merge.
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
    for name, words in bad_files(family, engine.hotswap.denoiser, good, tmp_path).items():
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
    assert len(calls) == 3, "the merge stopped at the failing layer"
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
    assert engine.hotswap.fused_extra_bytes() == 0 and not engine.hotswap.is_fused()
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
    assert any(isinstance(layer.get_base_layer(), torch.nn.Conv2d) for layer in engine.hotswap.slot.layers)
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
    assert resolve_fuse("auto", cpu) == "auto" and resolve_fuse("auto", cuda) == "auto"  # decided by measuring
    assert resolve_fuse("auto", cuda, "sequential") == "off"
    assert resolve_fuse("on", cpu) == "on" and resolve_fuse(True, cpu) == "on" and resolve_fuse("off", cuda) == "off"
    with pytest.raises(BaseLoadError, match="offload: sequential"):
        resolve_fuse("on", cuda, "sequential")
    assert resolve_fuse("auto", cuda, "group") == "off"
    with pytest.raises(BaseLoadError, match="offload: group"):
        resolve_fuse("on", cuda, "group")
    with pytest.raises(BaseLoadError, match="unknown fuse setting"):
        resolve_fuse("maybe", cpu)
    engine = new_engine("sdxl", fuse="auto")
    assert engine.fuse_mode == "auto" and engine.fuse is False, "unfused until measured"


@pytest.mark.parametrize("family", FAMILIES)
def test_200_fused_swaps_reuse_one_buffer_a_layer_and_never_write_the_base(family, demo_loras):
    paths = demo_loras[family]
    engine = new_engine(family, resident=2, fuse=True)  # two resident: warm and cold swaps mixed
    hotswap = engine.hotswap
    with engine.lock:
        hotswap.activate(paths[0], 1.0)
    fuser = hotswap.fuser
    base = {n: (t.data_ptr(), t.clone()) for n, t in fuser.pristine.items()}
    buffers = {n: t.data_ptr() for n, t in fuser.buffers.items()}
    extra = hotswap.fused_extra_bytes()
    rng = np.random.default_rng(0)
    with engine.lock:
        for _ in range(200):
            path = paths[int(rng.integers(len(paths)))]
            hotswap.activate(path, float(rng.choice([0.0, 0.5, 1.0, 1.2])))
        assert hotswap.is_fused() or hotswap.strength == 0.0
        assert {n: t.data_ptr() for n, t in fuser.buffers.items()} == buffers, "the buffers were reused"
        assert hotswap.fused_extra_bytes() == extra, "no growth"
        for name, (ptr, clone) in base.items():
            assert fuser.pristine[name].data_ptr() == ptr and torch.equal(fuser.pristine[name], clone)
        hotswap.use_base()
    for name, (ptr, _) in base.items():
        assert fuser._parameter(name).data_ptr() == ptr, "restored by pointing at the base weight"
    assert_same_tensors(base_weights(hotswap.denoiser), fresh_base_weights(family))


@pytest.mark.parametrize("family", FAMILIES)
def test_bf16_weights_on_the_cpu_are_merged_in_float32_and_rounded_once(family, demo_loras):
    pipe = demo.build_tiny(family, seed=0).to(torch.bfloat16)
    from lora_spectrum.adapters import HotSwapper
    from lora_spectrum.bases.families import get_family

    hotswap = HotSwapper(pipe, get_family(family), fuse=True)
    hotswap.activate(demo_loras[family][4], 0.8)
    adapter, fuser = hotswap.slot.adapter_name, hotswap.fuser
    assert not fusing.native_merge(torch.device("cpu"), torch.bfloat16) and fuser._scratch
    shapes = set()
    for name, layer in zip(hotswap.slot.layer_names, hotswap.slot.layers, strict=True):
        w0 = fuser.base_weight(name)
        shapes.add(tuple(w0.shape))
        up = layer.lora_B[adapter].weight.float().flatten(1)
        down = layer.lora_A[adapter].weight.float().flatten(1)
        want = torch.add(w0.float(), (up @ down).view(w0.shape), alpha=0.8 * fusing.peft_scaling(layer, adapter))
        got = layer.get_base_layer().weight
        assert got.dtype == torch.bfloat16 and got.data_ptr() == fuser.buffers[name].data_ptr()
        # Rounded once: at most 1 ulp from the float32 result rounded (or float32 noise, where terms cancel to ~0).
        ulp = (want.abs() * 2.0 ** -7).clamp_min(1e-6)
        assert ((got.float() - want.bfloat16().float()).abs() <= ulp).all(), name
    assert len(fuser._scratch) == len(shapes), "one float32 scratch per shape, shared"
    hotswap.use_base()
    assert_same_tensors(base_weights(hotswap.denoiser),
                        base_weights(get_family(family).denoiser(demo.build_tiny(family, seed=0).to(torch.bfloat16))))


def test_channels_last_convolutions_are_merged_into_contiguous_buffers():
    """A base loaded channels_last (a common speed-up for UNets) must merge like any other: the buffer is made
    contiguous, the merge exact, the base weight untouched and still channels_last."""
    from peft import LoraConfig, inject_adapter_in_model

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(8, 16, 3, padding=1)).to(memory_format=torch.channels_last)
    w0 = model[0].weight.data
    assert not w0.is_contiguous() and w0.is_contiguous(memory_format=torch.channels_last)
    before = w0.clone()
    model = inject_adapter_in_model(LoraConfig(r=4, lora_alpha=4, target_modules=["0"], init_lora_weights=False),
                                    model)
    layer = model.get_submodule("0")
    fuser = fusing.Fuser(model)
    fuser.merge("x.safetensors", "default", [("0", layer)], 0.5, key=("x", 0.5))
    down, up = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    expected = before + 0.5 * (up.flatten(1) @ down.flatten(1)).view_as(before)
    merged = layer.get_base_layer().weight.data
    assert merged.is_contiguous() and torch.allclose(merged, expected, atol=1e-6)
    fuser.restore_all()
    assert layer.get_base_layer().weight.data_ptr() == w0.data_ptr() and torch.equal(w0, before)
