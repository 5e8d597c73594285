"""Reading a file into a ``PreparedAdapter`` (``adapters/reading.py``): it touches no model, drops text-encoder
keys, reads diffusers/peft files like their kohya twins, and refuses what it cannot load, naming a key."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from lora_spectrum.errors import LoraLoadError
from lora_spectrum.loras.catalog import Catalog
from tests.adapters.helpers import assert_same_tensors, new_reader, read, te_state, weights_now
from tests.tiny import FAMILIES, new_engine, pixels, request


@pytest.mark.parametrize("family", FAMILIES)
def test_reading_touches_no_model(family, demo_loras):
    """Step 1 of a swap: read, convert and check, with the denoiser exactly as it was and no peft adapter in it;
    the result is what the swapper installs."""
    reader, denoiser = new_reader(family)
    before, modules = weights_now(denoiser), [type(m) for m in denoiser.modules()]
    for path in demo_loras[family][:3]:  # the first teaches the fast path, the others take it
        prepared = read(reader, path)
        assert prepared.path == str(path) and prepared.nbytes > 0
    assert_same_tensors(weights_now(denoiser), before)
    assert [type(m) for m in denoiser.modules()] == modules and not getattr(denoiser, "peft_config", None)
    swapped = new_engine(family).hotswap.load_adapter(demo_loras[family][2])[0]
    assert prepared.signature == swapped.signature and prepared.network_alphas == swapped.network_alphas
    assert_same_tensors(prepared.tensors, swapped.tensors)


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
    prepared = engine.hotswap.store.prepare(with_te)
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


def test_malformed_loha_and_lokr_files_are_refused_at_swap_naming_a_key(tmp_path):
    """LoHa and LoKr files load (tests/adapters/test_weight_deltas.py); broken ones are refused in one sentence
    naming the file and the module, before anything changes."""
    family = "sdxl"
    engine = new_engine(family)
    stem = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q"
    files = {"loha_1.safetensors": ({f"{stem}.hada_w1_a": torch.randn(64, 4), f"{stem}.hada_w1_b": torch.randn(4, 64),
                                     f"{stem}.hada_w2_a": torch.randn(64, 4), f"{stem}.alpha": torch.tensor(4.0)},
                                    "lacks hada_w2_b"),
             "lokr_1.safetensors": ({f"{stem}.lokr_w1": torch.randn(8, 8), f"{stem}.lokr_w2": torch.randn(8, 4),
                                     f"{stem}.alpha": torch.tensor(4.0)}, "do not make a (64, 64) weight")}
    for name, (sd, words) in files.items():
        save_file(sd, str(tmp_path / name))
        with pytest.raises(LoraLoadError) as info, engine.lock:
            engine.hotswap.activate(tmp_path / name, 1.0)
        message = str(info.value)
        assert name in message and stem in message and words in message and len(message) <= 600, message
    assert engine.hotswap.get_active_adapter() == (None, 0.0)
