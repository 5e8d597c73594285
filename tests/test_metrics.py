"""Epoch measures (lora_spectrum.metrics): weight curves on demo epochs, image measures on a synthetic grid, the
offline CLIP notice, the suggestion, and the ``insight`` command's JSON."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from lora_spectrum import demo, metrics
from lora_spectrum.catalog import Catalog
from lora_spectrum.errors import CatalogError, ConfigError

REPO = Path(__file__).resolve().parents[1]
EVEN_EPOCHS = (20, 40, 60, 80, 100)


@pytest.fixture(scope="module")
def unet():
    return demo.build_tiny("sdxl").unet


@pytest.fixture(scope="module")
def demo_loras(unet, tmp_path_factory) -> Path:
    """The demo series exactly as ``python -m lora_spectrum demo`` writes it (epochs 20 ... 300)."""
    folder = tmp_path_factory.mktemp("demo_loras")
    demo.write_demo_loras(unet, folder, "sdxl")
    return folder


@pytest.fixture(scope="module")
def demo_result(demo_loras) -> dict:
    return metrics.folder_insight(demo_loras)


# ---------------------------------------------------------------------------------------------- low-rank maths
def test_norms_and_inner_products_match_the_dense_update():
    rng = np.random.default_rng(0)
    f = metrics.LowRank(down=rng.normal(size=(3, 20)), up=rng.normal(size=(12, 3)))
    g = metrics.LowRank(down=rng.normal(size=(5, 20)), up=rng.normal(size=(12, 5)))
    dense_f, dense_g = f.up @ f.down, g.up @ g.down
    assert metrics.sq_norm(f) == pytest.approx(float((dense_f**2).sum()), rel=1e-12)
    assert metrics.inner(f, g) == pytest.approx(float((dense_f * dense_g).sum()), rel=1e-12)
    assert metrics.inner(f, metrics.LowRank(down=rng.normal(size=(3, 7)), up=rng.normal(size=(12, 3)))) is None


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
    kohya, info = metrics.read_lora_factors(tmp_path / "kohya.safetensors")
    assert info["format"] == "kohya"
    assert math.sqrt(metrics.sq_norm(kohya["lora_unet_down_blocks_0_attn1_to_q"])) == pytest.approx(dense / 2)
    peft, info = metrics.read_lora_factors(tmp_path / "peft.safetensors")
    assert info["format"] == "diffusers/peft"
    assert math.sqrt(metrics.sq_norm(peft["unet.down_blocks.0.attn1.to_q"])) == pytest.approx(dense)
    conv, info = metrics.read_lora_factors(tmp_path / "conv.safetensors")
    assert math.sqrt(metrics.sq_norm(conv["lora_unet_conv_in"])) == pytest.approx(dense)
    assert info["unsupported_keys"] == 1


def test_layer_groups_cover_unet_and_dit_names():
    assert metrics.layer_group("lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q") == "down"
    assert metrics.layer_group("lora_unet_mid_block_attentions_0_transformer_blocks_0_attn2_to_k") == "mid"
    assert metrics.layer_group("unet.up_blocks.0.attentions.1.transformer_blocks.0.attn1.to_v") == "up"
    assert metrics.layer_group("lora_te2_text_model_encoder_layers_0_mlp_fc1") == "text_encoder_2"
    assert metrics.layer_group("diffusion_model.layers.29.attention.to_q", n_layers=30) == "layers 20-29"
    assert metrics.layer_group("diffusion_model.layers.1.attention.to_q", n_layers=2) == "layers"
    assert metrics.layer_group("diffusion_model.noise_refiner.0.attention.to_q") == "noise_refiner"
    assert metrics.layer_kind("lora_unet_up_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k") == "attn2"
    assert metrics.layer_kind("diffusion_model.layers.0.feed_forward.w1") == "ff"


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
    rows = metrics.folder_insight(tmp_path)["epochs"]
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
    rows = metrics.folder_insight(tmp_path)["epochs"]
    cosines = [r["cosine_to_last"] for r in rows]
    assert all(a < b for a, b in zip(cosines, cosines[1:], strict=False)), cosines


def test_weight_cache_is_reused_from_memory_and_disk(demo_loras, demo_result, tmp_path, monkeypatch):
    cache = metrics.WeightCache(tmp_path / "cache")
    first = metrics.folder_insight(demo_loras, cache=cache)
    n = len(demo.DEMO_EPOCHS)  # one record per file, per (previous, this) pair, per (this, last) pair not yet seen
    assert len(list((tmp_path / "cache").glob("*.json"))) == n + (n - 1) + (n - 2)

    def no_reading(path):
        raise AssertionError(f"{path} was read although its measures are cached")

    monkeypatch.setattr(metrics, "read_lora_factors", no_reading)
    again = metrics.folder_insight(demo_loras, cache=metrics.WeightCache(tmp_path / "cache"))
    assert again["epochs"] == first["epochs"] == demo_result["epochs"]


def test_folder_problems_are_reported_with_the_choices(demo_loras, unet, tmp_path):
    with pytest.raises(CatalogError, match="does not exist"):
        metrics.folder_insight(tmp_path / "nowhere")
    two = tmp_path / "two"
    demo.write_demo_loras(unet, two, "sdxl", epochs=(1, 2), series="alpha")
    demo.write_demo_loras(unet, two, "sdxl", epochs=(1, 2), series="beta")
    with pytest.raises(CatalogError, match=r"2 series.*alpha \(2 files\), beta \(2 files\)"):
        metrics.folder_insight(two)
    with pytest.raises(CatalogError, match="no series 'gamma'.*alpha, beta"):
        metrics.folder_insight(two, series="gamma")
    assert metrics.folder_insight(Catalog(two), series="beta")["series"] == "beta"


# ---------------------------------------------------------------------------------------------- suggestion
def _rows(changes, to_last):
    return [{"epoch": 10 * (i + 1), "file": f"s_{10 * (i + 1)}.safetensors", "label": f"epoch {10 * (i + 1)}",
             "weight_norm": 1.0, "relative_change": c, "relative_change_to_last": d, "cosine_to_last": 0.99}
            for i, (c, d) in enumerate(zip(changes, to_last, strict=True))]


def test_suggestion_rules():
    settled = metrics.suggest_epoch(_rows([None, 0.5, 0.2, 0.04, 0.03], [0.6, 0.3, 0.1, 0.05, 0.0]))
    assert (settled["epoch"], settled["rule"]) == (30, "settled") and "at most 4.0%" in settled["reason"]
    moving = metrics.suggest_epoch(_rows([None, 0.5, 0.2, 0.12], [0.6, 0.3, 0.08, 0.0]))
    assert (moving["epoch"], moving["rule"]) == (30, "near the last epoch")
    still = metrics.suggest_epoch(_rows([None, 0.5, 0.3], [0.6, 0.3, 0.0]))
    assert (still["epoch"], still["rule"]) == (30, "still moving") and "training longer" in still["reason"]
    assert metrics.suggest_epoch(_rows([None, 0.5], [0.6, 0.0]))["epoch"] == 20
    assert metrics.suggest_epoch(_rows([None, 0.01], [0.01, 0.0]))["epoch"] == 10
    one = metrics.suggest_epoch(_rows([None], [0.0]))
    assert one["epoch"] == 10 and one["reason"].startswith("Suggestion:") and one["label"] == "suggestion"


def _validation(values):
    return {"series": {"loss/validation/epoch_average": [(10 * (i + 1), v) for i, v in enumerate(values)]},
            "per_epoch": ["loss/validation/epoch_average"]}


def test_a_rising_validation_loss_moves_the_suggestion_earlier():
    rows = _rows([None, 0.5, 0.2, 0.04, 0.03], [0.6, 0.3, 0.1, 0.05, 0.0])  # the weights alone: epoch 30
    early = metrics.suggest_epoch(rows, loss=_validation([0.30, 0.25, 0.31, 0.33, 0.35]))
    assert (early["epoch"], early["rule"]) == (20, "validation loss")
    assert "lowest there (0.25)" in early["reason"] and "24.0% higher at epoch 30" in early["reason"]
    assert early["numbers"]["weights_rule_pick"] == 30
    # Within 5% of the minimum, or lowest at the pick or later: the weight rule stands.
    assert metrics.suggest_epoch(rows, loss=_validation([0.30, 0.25, 0.26, 0.33, 0.35]))["epoch"] == 30
    assert metrics.suggest_epoch(rows, loss=_validation([0.30, 0.28, 0.27, 0.26, 0.25]))["epoch"] == 30


def test_demo_suggestion_names_an_epoch_with_its_numbers(demo_result):
    assert demo_result["suggested_epoch"] in demo.DEMO_EPOCHS
    assert demo_result["reason"].startswith(f"Suggestion: epoch {demo_result['suggested_epoch']}")
    assert demo_result["suggestion"]["numbers"]["relative_change_to_last"] is not None
    json.dumps(demo_result, allow_nan=False)  # plain, valid JSON


# ---------------------------------------------------------------------------------------------- image measures
def _write_grid(folder: Path, steps=(0.1, 0.25, 0.45, 0.7), seeds=(1, 2, 3)) -> Path:
    """A grid whose epoch k images blend each seed's base image towards white by ``steps[k]``; one cell failed."""
    (folder / "cells").mkdir(parents=True)
    rng = np.random.default_rng(0)
    cells = []
    for seed in seeds:
        base = rng.integers(0, 200, size=(48, 48, 3)).astype(np.float64)
        Image.fromarray(base.astype(np.uint8)).save(folder / "cells" / f"base_s{seed}.png")
        cells.append({"epoch": None, "file": None, "sha256": None, "seed": seed, "strength": 0.0, "prompt": "a cat",
                      "image": f"cells/base_s{seed}.png", "seconds": 0.1, "cached": False, "error": None})
        for k, t in enumerate(steps):
            epoch = 10 * (k + 1)
            image = np.round(base * (1 - t) + 255.0 * t).astype(np.uint8)
            Image.fromarray(image).save(folder / "cells" / f"e{epoch}_s{seed}.png")
            cells.append({"epoch": epoch, "file": f"s_{epoch}.safetensors", "sha256": "0" * 64, "seed": seed,
                          "strength": 1.0, "prompt": "a cat", "image": f"cells/e{epoch}_s{seed}.png",
                          "seconds": 0.1, "cached": False, "error": None})
    cells.append({"epoch": 50, "file": "s_50.safetensors", "sha256": None, "seed": 1, "strength": 1.0,
                  "prompt": "a cat", "image": None, "seconds": 0.0, "cached": False, "error": "out of memory"})
    settings = {"prompt": "a cat", "negative_prompt": "", "steps": 4, "guidance": 5.0, "width": 48, "height": 48,
                "sampler": "Euler", "base": "demo"}
    (folder / "manifest.json").write_text(json.dumps({"settings": settings, "cells": cells}), encoding="utf-8")
    return folder


def test_pixel_distance_from_base_grows_with_the_epoch(tmp_path):
    grid = _write_grid(tmp_path / "grid")
    result = metrics.image_measures(grid, clip_model="lora-spectrum-tests/no-such-clip")
    assert result["measure"] == "pixel" and result["has_base"]
    assert result["clip"]["skipped"] and "no-such-clip" in result["clip"]["reason"]
    assert result["text_alignment"]["skipped"]
    assert any("1 cell(s) failed" in n for n in result["notes"])
    rows = result["rows"]
    assert [r["epoch"] for r in rows] == [10, 20, 30, 40] and all(r["images"] == 3 for r in rows)
    distances = [r["distance_from_base"] for r in rows]
    assert all(a < b for a, b in zip(distances, distances[1:], strict=False)), distances
    # Blending by t moves each pixel by t * (255 - base): the distance is proportional to t.
    ratios = [d / t for d, t in zip(distances, (0.1, 0.25, 0.45, 0.7), strict=True)]
    assert max(ratios) / min(ratios) == pytest.approx(1.0, abs=0.02)
    dssims = [r["pixel"]["dssim_from_base"] for r in rows]
    assert all(a < b for a, b in zip(dssims, dssims[1:], strict=False)), dssims
    assert rows[0]["change_from_previous"] is None and rows[1]["change_from_previous"] > 0
    assert all(r["seed_spread"] is not None and r["seed_spread"] >= 0 for r in rows)


def test_clip_is_skipped_offline_instead_of_failing(tmp_path, monkeypatch):
    grid = _write_grid(tmp_path / "grid", steps=(0.2,), seeds=(1,))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = metrics.image_measures(grid, clip_model="lora-spectrum-tests/no-such-clip")
    assert result["clip"] == {"skipped": True, "reason": result["clip"]["reason"]} and result["clip"]["reason"]
    assert result["measure"] == "pixel" and result["rows"][0]["clip_score"] is None


def test_clip_measures_run_with_a_local_model(tmp_path):
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    # 1. A tiny random CLIP saved to a local folder: the model id is that folder.
    tokenizer = demo._clip_tokenizer(tmp_path / "tok")
    text = {"hidden_size": 32, "intermediate_size": 37, "num_attention_heads": 4, "num_hidden_layers": 2,
            "vocab_size": len(tokenizer), "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1}
    vision = {"hidden_size": 32, "intermediate_size": 37, "num_attention_heads": 4, "num_hidden_layers": 2,
              "image_size": 32, "patch_size": 8}
    torch.manual_seed(0)
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).save_pretrained(tmp_path / "clip")
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(tmp_path / "clip")

    # 2. The measures switch to CLIP and score the prompt.
    result = metrics.image_measures(_write_grid(tmp_path / "grid"), clip_model=str(tmp_path / "clip"))
    assert result["measure"] == "clip" and result["clip"] == {"skipped": False, "model": str(tmp_path / "clip")}
    assert not result["text_alignment"]["skipped"]
    for r in result["rows"]:
        assert 0 <= r["distance_from_base"] <= 2 and 0 <= r["clip_score"] <= 100
        assert r["pixel"]["distance_from_base"] > 0


def test_missing_manifest_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="no manifest.json"):
        metrics.image_measures(tmp_path)


def test_insight_attaches_image_rows_to_epochs(demo_loras, tmp_path):
    grid = _write_grid(tmp_path / "grid", steps=(0.1, 0.3))
    manifest = json.loads((grid / "manifest.json").read_text())
    for c in manifest["cells"]:  # point the synthetic grid at two demo epochs
        if c["file"]:
            c["file"] = {"s_10.safetensors": "jimeng_20.safetensors"}.get(c["file"], "jimeng_50.safetensors")
    (grid / "manifest.json").write_text(json.dumps(manifest))
    result = metrics.folder_insight(demo_loras, grid=grid, use_clip=False)
    by_file = {e["file"]: e["image"] for e in result["epochs"]}
    assert by_file["jimeng_20.safetensors"]["distance_from_base"] < by_file["jimeng_50.safetensors"][
        "distance_from_base"]
    assert by_file["jimeng_300.safetensors"] is None
    assert "image measure: pixel" in metrics.format_insight(result)


# ---------------------------------------------------------------------------------------------- command line
def test_insight_command_prints_the_documented_json(demo_loras, tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(tmp_path / "logs")) as w:
        for epoch in (20, 50):  # per-epoch tags use the epoch number as step
            w.add_scalar("loss/epoch", 20.0 / epoch, epoch)
    cmd = [sys.executable, "-m", "lora_spectrum", "insight", "--loras", str(demo_loras), "--logs",
           str(tmp_path / "logs"), "--json"]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert {"series", "epochs", "loss", "suggested_epoch", "reason"} <= set(result)
    assert {"epoch", "file", "weight_norm", "relative_change", "cosine_to_previous", "cosine_to_last",
            "relative_change_to_last", "groups"} <= set(result["epochs"][0])
    assert result["series"] == "jimeng" and result["image"] is None
    assert result["loss"]["series"]["loss/epoch"] == [[20, 1.0], [50, pytest.approx(0.4)]]  # float32 in the file
    assert [e["epoch_loss"] for e in result["epochs"][:3]] == [{"loss/epoch": 1.0},
                                                               {"loss/epoch": pytest.approx(0.4)}, None]
    assert [m["step"] for m in result["loss"]["markers"]] == [10 * e for e in demo.DEMO_EPOCHS]


def test_a_validation_loss_in_the_log_reaches_the_suggestion(demo_loras, tmp_path):
    """End to end from TensorBoard event files: the weights alone suggest epoch 220 of the demo series; a
    validation loss lowest at epoch 80 and 30% higher at 220 moves the suggestion to 80."""
    from torch.utils.tensorboard import SummaryWriter

    assert metrics.folder_insight(demo_loras, use_clip=False)["suggested_epoch"] == 220
    values = {20: 0.40, 50: 0.33, 80: 0.30, 150: 0.34, 220: 0.39, 300: 0.45}
    with SummaryWriter(str(tmp_path / "logs")) as w:
        for epoch, v in values.items():
            w.add_scalar("loss/validation/epoch_average", v, epoch)
    result = metrics.folder_insight(demo_loras, logs=tmp_path / "logs", use_clip=False)
    assert (result["suggested_epoch"], result["suggestion"]["rule"]) == (80, "validation loss")
    assert "30.0% higher at epoch 220" in result["reason"]


def test_insight_command_takes_the_clip_model_and_says_why_it_was_skipped(demo_loras, tmp_path, capsys):
    from lora_spectrum.cli import main

    grid = _write_grid(tmp_path / "grid", steps=(0.1, 0.3))
    assert main(["insight", "--loras", str(demo_loras), "--grid", str(grid), "--json",
                 "--clip-model", "lora-spectrum-tests/no-such-clip"]) == 0
    result = json.loads(capsys.readouterr().out)
    clip = result["image"]["clip"]
    assert clip["skipped"] and "lora-spectrum-tests/no-such-clip" in clip["reason"]
    assert "no download attempted" in clip["reason"] and result["image"]["measure"] == "pixel"


def test_insight_command_names_the_series_to_choose(unet, tmp_path, capsys):
    from lora_spectrum.cli import main

    demo.write_demo_loras(unet, tmp_path, "sdxl", epochs=(1,), series="alpha")
    demo.write_demo_loras(unet, tmp_path, "sdxl", epochs=(1,), series="beta")
    assert main(["insight", "--loras", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "alpha" in err and "beta" in err and "--series" in err
    assert main(["insight", "--loras", str(tmp_path), "--series", "beta"]) == 0
    assert "Suggestion: epoch 1" in capsys.readouterr().out


def test_format_insight_is_a_table_with_the_suggestion(demo_result):
    text = metrics.format_insight(demo_result)
    assert "jimeng_300.safetensors" in text and "update norm per layer group" in text
    assert text.rstrip().endswith(".") and "Suggestion: epoch" in text


def test_lenient_insight_keeps_the_curves_when_the_log_folder_is_empty(tmp_path):
    from lora_spectrum.metrics import folder_insight

    pipe = demo.build_tiny("sdxl")
    demo.write_demo_loras(pipe.unet, tmp_path / "loras", "sdxl", epochs=(20, 50))
    empty = tmp_path / "loras" / "logs"
    empty.mkdir()
    with pytest.raises(ConfigError):
        folder_insight(tmp_path / "loras", logs=empty)
    result = folder_insight(tmp_path / "loras", logs=empty, grid=tmp_path / "nogrid", lenient=True)
    assert [e["epoch"] for e in result["epochs"]] == [20, 50] and result["loss"] is None
    assert any("training log not used" in n for n in result["notes"])
    assert any("image measures not available" in n for n in result["notes"])
