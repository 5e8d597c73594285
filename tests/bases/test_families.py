"""The registry of model families (``families/``): detection from a base and from a file, each family's defaults
and variants (Z-Image base vs Turbo, FLUX.1 dev vs schnell), schedulers, and the rule that no family is named
outside its own module."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import lora_spectrum
from lora_spectrum.bases.families import REGISTRY, detect_family, family_hint, get_family, pipeline_families
from lora_spectrum.errors import BaseLoadError, ConfigError
from lora_spectrum.settings import load_family_defaults
from tests.tiny import FAMILIES, new_engine

PACKAGE = Path(lora_spectrum.__file__).parent


@pytest.mark.parametrize("family", FAMILIES)
def test_the_family_comes_from_model_index_json(tmp_path, family):
    for class_name in get_family(family).pipelines:
        (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": class_name}))
        assert detect_family(str(tmp_path)) == family
    assert pipeline_families()[get_family(family).pipeline_class] == family


@pytest.mark.parametrize("family", FAMILIES)
def test_a_saved_tiny_pipeline_is_detected_as_its_family(tmp_path, family):
    get_family(family).build_tiny(seed=0, workdir=tmp_path / "tok").save_pretrained(tmp_path / "base")
    assert detect_family(str(tmp_path / "base")) == family


def test_a_single_file_is_told_by_its_tensor_names_and_unknown_pipelines_are_named(tmp_path):
    sdxl = tmp_path / "juggernautXL.safetensors"
    save_file({"conditioner.embedders.1.model.ln_final.weight": torch.zeros(2),
               "model.diffusion_model.input_blocks.0.0.weight": torch.zeros(2)}, str(sdxl))
    assert detect_family(str(sdxl)) == "sdxl"
    zimage = tmp_path / "z_image_turbo_bf16.safetensors"
    save_file({"noise_refiner.0.attention.to_q.weight": torch.zeros(2)}, str(zimage))
    assert detect_family(str(zimage)) == "z-image"
    flux = tmp_path / "flux1-dev.safetensors"  # BFL's own single file
    save_file({"double_blocks.0.img_attn.qkv.weight": torch.zeros(2),
               "single_blocks.0.linear1.weight": torch.zeros(2)}, str(flux))
    assert detect_family(str(flux)) == "flux"
    sd15 = tmp_path / "v1-5.safetensors"
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(2)}, str(sd15))
    with pytest.raises(BaseLoadError, match="not a checkpoint of Stable Diffusion XL, Z-Image, FLUX.1"):
        detect_family(str(sd15))
    (tmp_path / "garbage.safetensors").write_bytes(b"x")
    with pytest.raises(BaseLoadError, match="not a readable safetensors checkpoint"):
        detect_family(str(tmp_path / "garbage.safetensors"))
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusion3Pipeline"}))
    with pytest.raises(BaseLoadError, match="'StableDiffusion3Pipeline' is not supported"):
        detect_family(str(tmp_path))
    (tmp_path / "model_index.json").write_text("{not json")
    with pytest.raises(BaseLoadError, match="unreadable model_index.json"):
        detect_family(str(tmp_path))
    with pytest.raises(BaseLoadError, match="no model_index.json there"):
        detect_family(str(tmp_path / "missing"))


def test_a_flux_single_file_is_refused_with_the_families_that_load_single_files(tmp_path):
    from lora_spectrum.bases.loading import load_pipeline

    flux = tmp_path / "flux1-schnell.safetensors"
    save_file({"double_blocks.0.img_attn.qkv.weight": torch.zeros(2)}, str(flux))
    with pytest.raises(BaseLoadError, match="supported for Stable Diffusion XL only.*for FLUX.1"):
        load_pipeline(str(flux), get_family(detect_family(str(flux))), torch.float32, True)


def test_a_repo_id_not_in_the_cache_cannot_tell_without_the_network(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(BaseLoadError, match="not found in the local Hugging Face cache.*local_files_only: false"):
        detect_family("someone/not-cached-anywhere", local_files_only=True)


@pytest.mark.parametrize("keys, meta, family", [
    ([], {"ss_base_model_version": "sdxl_base_v1-0"}, "sdxl"),
    ([], {"modelspec.architecture": "Z-Image-Turbo/lora"}, "z-image"),
    ([], {"ss_base_model_version": "flux1"}, "flux"),  # kohya sd-scripts' flux_train_network.py
    ([], {"modelspec.architecture": "flux-1-dev/lora"}, "flux"),
    ([], {"modelspec.architecture": "flux-1-schnell/lora"}, "flux"),
    (["lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight"], {}, "flux"),
    (["transformer.single_transformer_blocks.0.attn.to_q.lora_A.weight"], {}, "flux"),  # ai-toolkit
    # ComfyUI's names for FLUX.1 carry Z-Image's adaLN_modulation too: the family with more of its marks wins.
    (["diffusion_model.final_layer.adaLN_modulation.1.lora_down.weight",
      "diffusion_model.double_blocks.0.img_attn.qkv.lora_down.weight"], {}, "flux"),
    (["diffusion_model.layers.0.adaLN_modulation.0.lora_A.weight"], {}, "z-image"),
])
def test_a_files_family_comes_from_its_metadata_then_its_key_names(keys, meta, family):
    assert family_hint(keys, meta) == family


@pytest.mark.parametrize("family", FAMILIES)
def test_every_offered_sampler_builds_and_others_are_refused(family):
    fam = get_family(family)
    config = new_engine(family).pipe.scheduler.config
    for sampler in fam.defaults.samplers:
        assert fam.make_scheduler(sampler, config) is not None
    with pytest.raises(ConfigError, match="'LMS' is not offered"):
        fam.make_scheduler("LMS", config)


@pytest.mark.parametrize("family", FAMILIES)
def test_each_family_has_its_config_and_its_config_agrees_with_its_class(family):
    fam = get_family(family)
    yaml_defaults = load_family_defaults(family)
    assert (yaml_defaults.pipeline, yaml_defaults.denoiser) == (fam.pipeline_class, fam.denoiser_attr)
    assert fam.pipeline_class in fam.pipelines
    assert fam.defaults.sampling.sampler in fam.defaults.samplers
    for values in fam.variants.values():  # a variant changes sampling values only, each a valid one
        get_family(family).defaults.sampling.override(**values).validate(fam.defaults.size_factor,
                                                                        fam.defaults.samplers)


@pytest.mark.parametrize("base, variant, steps, guidance", [
    ("Tongyi-MAI/Z-Image-Turbo", "", 8, 0.0),
    ("/models/z_image_turbo_bf16", "", 8, 0.0),
    ("Tongyi-MAI/Z-Image", "base", 28, 4.0),  # the non-distilled base (January 2026): CFG and more steps
    ("/models/Z-Image-De-Turbo", "base", 28, 4.0),  # a de-distilled Turbo needs the same
    ("/models/my-finetune", "", 8, 0.0),  # a name that says nothing: Turbo, the config's defaults
])
def test_z_image_base_and_turbo_get_their_own_defaults(base, variant, steps, guidance):
    fam = get_family("z-image").for_base(base, pipe=None)
    assert fam.variant == variant
    assert (fam.defaults.sampling.steps, fam.defaults.sampling.guidance) == (steps, guidance)


def test_flux_dev_and_schnell_are_told_by_the_guidance_embedding():
    """dev's transformer embeds guidance (28 steps, guidance 3.5); schnell's does not (4 steps, guidance 0)."""
    from diffusers import FluxTransformer2DModel

    fam = get_family("flux")
    pipe = new_engine("flux").pipe
    dev = fam.for_base("black-forest-labs/FLUX.1-dev", pipe)
    assert (dev.variant, dev.defaults.sampling.steps, dev.defaults.sampling.guidance) == ("", 28, 3.5)
    schnell_transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=4, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, guidance_embeds=False,
        axes_dims_rope=[4, 4, 8])
    pipe.register_modules(transformer=schnell_transformer)
    schnell = fam.for_base("/models/anything", pipe)
    assert (schnell.variant, schnell.defaults.sampling.steps, schnell.defaults.sampling.guidance) == ("schnell", 4, 0.0)
    assert not fam.uses_cfg(pipe, 3.5), "guidance is an input of the transformer: one sample per image"


def test_unknown_families_and_variants_are_named():
    with pytest.raises(ConfigError, match="unknown model family 'sd3'"):
        get_family("sd3")
    with pytest.raises(ConfigError, match="flux has no variant 'pro'"):
        get_family("flux", "pro")


def test_no_family_is_named_outside_its_module():
    """"sdxl", "z-image" and "flux" as string literals appear in ``families/`` only (the bench's size models and
    their notes aside): every other module asks the registry."""
    names = [f.name for f in REGISTRY]
    pattern = re.compile("|".join(rf"""["']{re.escape(n)}["']""" for n in names))
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel.startswith(("bases/families/", "bench/")):
            continue
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if pattern.search(line):
                offenders.append(f"{rel}:{i}: {line.strip()}")
    assert not offenders, "family names spelled outside families/:\n" + "\n".join(offenders)
