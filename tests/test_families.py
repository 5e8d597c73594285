"""What differs between SDXL and Z-Image-Turbo: family detection from a base, schedulers, denoisers."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from lora_spectrum.errors import BaseLoadError, ConfigError
from lora_spectrum.families import detect_family, get_family
from tests.tiny import FAMILIES, new_engine


@pytest.mark.parametrize("class_name, family", [("StableDiffusionXLPipeline", "sdxl"), ("ZImagePipeline", "z-image")])
def test_the_family_comes_from_model_index_json(tmp_path, class_name, family):
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": class_name}))
    assert detect_family(str(tmp_path)) == family


def test_a_single_file_is_told_by_its_tensor_names_and_unknown_pipelines_are_named(tmp_path):
    sdxl = tmp_path / "juggernautXL.safetensors"
    save_file({"conditioner.embedders.1.model.ln_final.weight": torch.zeros(2),
               "model.diffusion_model.input_blocks.0.0.weight": torch.zeros(2)}, str(sdxl))
    assert detect_family(str(sdxl)) == "sdxl"
    zimage = tmp_path / "z_image_turbo_bf16.safetensors"
    save_file({"noise_refiner.0.attention.to_q.weight": torch.zeros(2)}, str(zimage))
    assert detect_family(str(zimage)) == "z-image"
    sd15 = tmp_path / "v1-5.safetensors"
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(2)}, str(sd15))
    with pytest.raises(BaseLoadError, match="not an SDXL or Z-Image checkpoint"):
        detect_family(str(sd15))
    (tmp_path / "garbage.safetensors").write_bytes(b"x")
    with pytest.raises(BaseLoadError, match="not a readable safetensors checkpoint"):
        detect_family(str(tmp_path / "garbage.safetensors"))
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
    with pytest.raises(BaseLoadError, match="'FluxPipeline' is not supported"):
        detect_family(str(tmp_path))
    (tmp_path / "model_index.json").write_text("{not json")
    with pytest.raises(BaseLoadError, match="unreadable model_index.json"):
        detect_family(str(tmp_path))
    with pytest.raises(BaseLoadError, match="no model_index.json there"):
        detect_family(str(tmp_path / "missing"))


def test_a_repo_id_not_in_the_cache_cannot_tell_without_the_network(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(BaseLoadError, match="not found in the local Hugging Face cache.*local_files_only: false"):
        detect_family("someone/not-cached-anywhere", local_files_only=True)


@pytest.mark.parametrize("family", FAMILIES)
def test_every_offered_sampler_builds_and_others_are_refused(family):
    fam = get_family(family)
    config = new_engine(family).pipe.scheduler.config
    for sampler in fam.defaults.samplers:
        assert fam.make_scheduler(sampler, config) is not None
    with pytest.raises(ConfigError, match="'LMS' is not offered"):
        fam.make_scheduler("LMS", config)


def test_unknown_families_are_named():
    with pytest.raises(ConfigError, match="unknown model family 'sd3'"):
        get_family("sd3")

