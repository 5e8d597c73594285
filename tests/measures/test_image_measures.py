"""Image measures (lora_spectrum.measures.image_measures): pixel and DSSIM distances on a synthetic grid, the
offline CLIP notice, CLIP with a local model, and a missing manifest."""

from __future__ import annotations

import pytest
import torch

from lora_spectrum import demo
from lora_spectrum.errors import ConfigError
from lora_spectrum.measures.image_measures import image_measures
from tests.measures.files import write_grid


def test_pixel_distance_from_base_grows_with_the_epoch(tmp_path):
    grid = write_grid(tmp_path / "grid")
    result = image_measures(grid, clip_model="lora-spectrum-tests/no-such-clip")
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
    grid = write_grid(tmp_path / "grid", steps=(0.2,), seeds=(1,))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = image_measures(grid, clip_model="lora-spectrum-tests/no-such-clip")
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
    result = image_measures(write_grid(tmp_path / "grid"), clip_model=str(tmp_path / "clip"))
    assert result["measure"] == "clip" and result["clip"] == {"skipped": False, "model": str(tmp_path / "clip")}
    assert not result["text_alignment"]["skipped"]
    for r in result["rows"]:
        assert 0 <= r["distance_from_base"] <= 2 and 0 <= r["clip_score"] <= 100
        assert r["pixel"]["distance_from_base"] > 0


def test_missing_manifest_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="no manifest.json"):
        image_measures(tmp_path)
