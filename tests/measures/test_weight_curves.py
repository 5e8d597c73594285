"""Weight space (lora_spectrum.measures.weight_curves): low-rank maths, every key layout, layer groups, the curves
of the demo epochs and the weight cache."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from lora_spectrum import demo
from lora_spectrum.measures import weight_curves as curves
from lora_spectrum.measures.insight import series_insight
from tests.measures.files import scanned

EVEN_EPOCHS = (20, 40, 60, 80, 100)


# ---------------------------------------------------------------------------------------------- low-rank maths
def test_norms_and_inner_products_match_the_dense_update():
    rng = np.random.default_rng(0)
    f = curves.LowRank(down=rng.normal(size=(3, 20)), up=rng.normal(size=(12, 3)))
    g = curves.LowRank(down=rng.normal(size=(5, 20)), up=rng.normal(size=(12, 5)))
    dense_f, dense_g = f.up @ f.down, g.up @ g.down
    assert curves.sq_norm(f) == pytest.approx(float((dense_f**2).sum()), rel=1e-12)
    assert curves.inner(f, g) == pytest.approx(float((dense_f * dense_g).sum()), rel=1e-12)
    assert curves.inner(f, curves.LowRank(down=rng.normal(size=(3, 7)), up=rng.normal(size=(12, 3)))) is None


def test_alpha_over_rank_scales_the_update_in_every_key_layout(tmp_path):
    # 1. The same update written as kohya (alpha = rank / 2), diffusers/peft (no alpha) and a conv LoCon layer.
    gen = torch.Generator().manual_seed(0)
    down, up = torch.randn(4, 16, generator=gen), torch.randn(8, 4, generator=gen)
    dense = float(((up @ down) ** 2).sum().sqrt())
    save_file({"lora_unet_down_blocks_0_attn1_to_q.lora_down.weight": down,
               "lora_unet_down_blocks_0_attn1_to_q.lora_up.weight": up,
               "lora_unet_down_blocks_0_attn1_to_q.alpha": torch.tensor(2.0)}, str(tmp_path / "kohya.safetensors"))
    save_file({"unet.down_blocks.0.attn1.to_q.lora_A.weight": down,
               "unet.down_blocks.0.attn1.to_q.lora_B.weight": up}, str(tmp_path / "peft.safetensors"))
    save_file({"lora_unet_conv_in.lora_down.weight": down.reshape(4, 4, 2, 2),
               "lora_unet_conv_in.lora_up.weight": up.reshape(8, 4, 1, 1),
               "lora_unet_conv_in.alpha": torch.tensor(4.0),
               "lora_unet_x.hada_w1_a": torch.ones(2, 2)}, str(tmp_path / "conv.safetensors"))

    # 2. Norms: halved by alpha/rank = 0.5 for kohya, as is for peft and the conv layer; LoHa keys are counted.
    kohya, info = curves.read_lora_factors(tmp_path / "kohya.safetensors")
    assert info["format"] == "kohya"
    assert math.sqrt(curves.sq_norm(kohya["lora_unet_down_blocks_0_attn1_to_q"])) == pytest.approx(dense / 2)
    peft, info = curves.read_lora_factors(tmp_path / "peft.safetensors")
    assert info["format"] == "diffusers/peft"
    assert math.sqrt(curves.sq_norm(peft["unet.down_blocks.0.attn1.to_q"])) == pytest.approx(dense)
    conv, info = curves.read_lora_factors(tmp_path / "conv.safetensors")
    assert math.sqrt(curves.sq_norm(conv["lora_unet_conv_in"])) == pytest.approx(dense)
    assert info["unsupported_keys"] == 1


def test_layer_groups_cover_unet_and_dit_names():
    assert curves.layer_group("lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q") == "down"
    assert curves.layer_group("lora_unet_mid_block_attentions_0_transformer_blocks_0_attn2_to_k") == "mid"
    assert curves.layer_group("unet.up_blocks.0.attentions.1.transformer_blocks.0.attn1.to_v") == "up"
    assert curves.layer_group("lora_te2_text_model_encoder_layers_0_mlp_fc1") == "text_encoder_2"
    assert curves.layer_group("diffusion_model.layers.29.attention.to_q", n_layers=30) == "layers 20-29"
    assert curves.layer_group("diffusion_model.layers.1.attention.to_q", n_layers=2) == "layers"
    assert curves.layer_group("diffusion_model.noise_refiner.0.attention.to_q") == "noise_refiner"
    assert curves.layer_kind("lora_unet_up_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k") == "attn2"
    assert curves.layer_kind("diffusion_model.layers.0.feed_forward.w1") == "ff"


# ---------------------------------------------------------------------------------------------- weight curves
def test_demo_weight_norm_rises_and_change_shrinks(demo_result):
    rows = demo_result["epochs"]
    assert [r["epoch"] for r in rows] == list(demo.DEMO_EPOCHS)
    norms = [r["weight_norm"] for r in rows]
    assert all(a < b for a, b in zip(norms, norms[1:], strict=False)), norms
    # The demo's epochs are unevenly spaced; per epoch of training the change shrinks steadily.
    rates = [r["relative_change_per_epoch"] for r in rows[1:]]
    assert all(a > b for a, b in zip(rates, rates[1:], strict=False)), rates
    to_last = [r["relative_change_to_last"] for r in rows]
    assert all(a > b for a, b in zip(to_last, to_last[1:], strict=False)) and to_last[-1] == 0.0
    assert rows[0]["relative_change"] is None and rows[0]["cosine_to_previous"] is None
    assert all(r["cosine_to_last"] > 0.99 for r in rows) and rows[-1]["cosine_to_last"] == pytest.approx(1.0)


def test_norm_follows_the_demo_growth_and_groups_partition_the_total(demo_result):
    rows = demo_result["epochs"]
    for r in rows:
        expected = demo.growth(r["epoch"]) / demo.growth(demo.DEMO_EPOCHS[-1])
        assert r["weight_norm"] / rows[-1]["weight_norm"] == pytest.approx(expected, rel=0.03)
        assert set(r["groups"]) == {"down", "mid", "up"} and set(r["kinds"]) == {"attn1", "attn2"}
        parts = sum(g["weight_norm"] ** 2 for g in r["groups"].values())
        assert math.sqrt(parts) == pytest.approx(r["weight_norm"], rel=1e-4)


def test_evenly_spaced_epochs_change_less_and_less(unet, tmp_path):
    demo.write_demo_loras(unet, tmp_path, "sdxl", epochs=EVEN_EPOCHS, series="even")
    rows = series_insight(scanned(tmp_path))["epochs"]
    changes = [r["relative_change"] for r in rows[1:]]
    assert all(a > b for a, b in zip(changes, changes[1:], strict=False)), changes


def test_cosine_to_last_grows_when_the_direction_drifts(unet, tmp_path):
    # Each epoch = growth * direction 1 + a drift along direction 2 that grows with the epoch (rank 4 + 4).
    one = demo.make_lora_state_dict(unet, "sdxl", seed=1)
    two = demo.make_lora_state_dict(unet, "sdxl", seed=2)
    for epoch in EVEN_EPOCHS:
        sd = {}
        for key in one:
            if key.endswith("lora_down.weight"):
                sd[key] = torch.cat([one[key], two[key]])
            elif key.endswith("lora_up.weight"):
                sd[key] = torch.cat([demo.growth(epoch) * one[key], 0.01 * epoch * two[key]], dim=1)
            else:
                sd[key] = torch.tensor(8.0)
        save_file(sd, str(tmp_path / f"drift_{epoch}.safetensors"))
    rows = series_insight(scanned(tmp_path))["epochs"]
    cosines = [r["cosine_to_last"] for r in rows]
    assert all(a < b for a, b in zip(cosines, cosines[1:], strict=False)), cosines


def test_weight_cache_is_reused_from_memory_and_disk(demo_loras, demo_result, tmp_path, monkeypatch):
    cache = curves.WeightCache(tmp_path / "cache")
    first = series_insight(scanned(demo_loras), cache=cache)
    n = len(demo.DEMO_EPOCHS)  # one record per file, per (previous, this) pair, per (this, last) pair not yet seen
    assert len(list((tmp_path / "cache").glob("*.json"))) == n + (n - 1) + (n - 2)

    def no_reading(path):
        raise AssertionError(f"{path} was read although its measures are cached")

    monkeypatch.setattr(curves, "read_lora_factors", no_reading)
    again = series_insight(scanned(demo_loras), cache=curves.WeightCache(tmp_path / "cache"))
    assert again["epochs"] == first["epochs"] == demo_result["epochs"]


def test_a_loha_series_has_real_curves_from_its_delta_weights(unet, tmp_path):
    """A kohya LyCORIS LoHa run whose update grows along one direction: the norm is ||dW|| computed by hand, it
    rises with the epochs, and the cosine to the last epoch is 1 (one direction)."""
    from tests import trainer_files

    norms = []
    for epoch in (1, 2, 3):
        path = tmp_path / f"loharun-{epoch:06d}.safetensors"
        deltas = trainer_files.write(path, "sdxl", unet, "loha", epoch=epoch, seed=5, scale=0.3 * epoch ** 0.25,
                                     dtype=torch.float32)
        norms.append(math.sqrt(sum(float((d.double() ** 2).sum()) for d in deltas.values())))
    factors, info = curves.read_lora_factors(tmp_path / "loharun-000001.safetensors")
    assert info["unsupported_keys"] == 0 and info["modules"] == len(factors) > 0
    rows = series_insight(scanned(tmp_path))["epochs"]
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    for row, by_hand in zip(rows, norms, strict=True):
        assert row["weight_norm"] == pytest.approx(by_hand, rel=1e-4)
    assert rows[0]["weight_norm"] < rows[1]["weight_norm"] < rows[2]["weight_norm"]
    assert all(r["cosine_to_last"] == pytest.approx(1.0, abs=1e-4) for r in rows)


def test_text_encoder_layers_are_left_out_of_the_update(tmp_path):
    gen = torch.Generator().manual_seed(0)
    down, up = torch.randn(4, 16, generator=gen), torch.randn(8, 4, generator=gen)
    unet_only = {"lora_unet_down_blocks_0_attn1_to_q.lora_down.weight": down,
                 "lora_unet_down_blocks_0_attn1_to_q.lora_up.weight": up}
    te = {"lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": down * 9,
          "lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight": up.clone(),
          "lora_te1_text_model_encoder_layers_0_self_attn_q_proj.alpha": torch.tensor(4.0)}
    save_file(unet_only | te, str(tmp_path / "withte_1.safetensors"))
    factors, info = curves.read_lora_factors(tmp_path / "withte_1.safetensors")
    assert list(factors) == ["lora_unet_down_blocks_0_attn1_to_q"] and info["text_encoder_modules"] == 1
    assert info["unsupported_keys"] == 0
