"""The bases the Base section offers (``base_list``): the configured one, ``bases:``, ``models_dir`` (folders and
single files), the Hugging Face cache's pipelines (a snapshot still being fetched is not present), each once,
with family, size and why one cannot be used. Real folders and a real cache filled by huggingface_hub."""

from __future__ import annotations

import shutil

import pytest

from lora_spectrum.bases.downloads import fetch_base
from lora_spectrum.bases.listing import cached_pipelines, cached_snapshot, describe, list_bases
from lora_spectrum.errors import ConfigError
from lora_spectrum.settings import Settings, load_settings
from tests.hub_server import HubServer, Repo


@pytest.fixture(scope="module")
def cache(tmp_path_factory, demo_dir):
    """A Hugging Face cache with the tiny demo pipeline fetched from a local hub, and a repo that is no pipeline."""
    root = tmp_path_factory.mktemp("hf")
    other = tmp_path_factory.mktemp("other")
    (other / "config.json").write_text("{}", encoding="utf-8")
    (other / "model_index.json").write_text('{"_class_name": "StableDiffusion3Pipeline"}', encoding="utf-8")
    server = HubServer()
    server.repos["tiny-lab/sdxl-demo"] = Repo(demo_dir / "base-sdxl")
    server.repos["tiny-lab/sd3"] = Repo(other)
    for repo in server.repos:
        fetch_base(repo, cache_dir=root, endpoint=server.url)
    server.close()
    return root


def test_every_source_once_with_family_size_and_the_demo_last(tmp_path, demo_dir, cache):
    models = tmp_path / "models"
    shutil.copytree(demo_dir / "base-sdxl", models / "my-sdxl")
    (models / "notes.txt").write_text("not a base", encoding="utf-8")
    (models / "empty").mkdir()
    settings = Settings(base="tiny-lab/sdxl-demo", bases=[str(models / "my-sdxl"), "someone/not-here"],
                        models_dir=str(models), hf_cache=str(cache), root=tmp_path)
    options = list_bases(settings)
    assert [(o.source, o.origin) for o in options] == [
        ("tiny-lab/sdxl-demo", "configured"), (str(models / "my-sdxl"), "bases"), ("someone/not-here", "bases"),
        ("demo", "demo")], "the cache's copy and models_dir's folder are the ones already listed"
    configured, folder, missing, _ = options
    assert (configured.kind, configured.family, configured.present) == ("repo", "sdxl", True)
    assert configured.nbytes == sum(p.stat().st_size for p in (demo_dir / "base-sdxl").rglob("*") if p.is_file())
    assert (folder.kind, folder.family, folder.present) == ("folder", "sdxl", True)
    assert (missing.present, missing.family, missing.nbytes) == (False, None, None)
    assert missing.label == "someone/not-here · not downloaded"


def test_the_cache_offers_supported_pipelines_only_and_no_half_snapshot(cache, tmp_path):
    assert cached_pipelines(cache) == ["tiny-lab/sdxl-demo"], "StableDiffusion3Pipeline is not a supported family"
    half = tmp_path / "hf"
    shutil.copytree(cache, half, symlinks=True)
    snap = cached_snapshot("tiny-lab/sdxl-demo", half)
    (snap / "unet" / "diffusion_pytorch_model.safetensors").unlink()  # as a fetch still running leaves it
    assert cached_snapshot("tiny-lab/sdxl-demo", half) is None and cached_pipelines(half) == []
    assert not describe("tiny-lab/sdxl-demo", cache_dir=half).present


def test_a_single_file_a_missing_path_and_a_folder_that_is_no_pipeline(tmp_path):
    bad = tmp_path / "broken.safetensors"
    bad.write_bytes(b"\x00" * 32)
    assert describe(str(bad)).kind == "file" and "not a readable safetensors checkpoint" in describe(str(bad)).problem
    gone = describe(str(tmp_path / "gone"))
    assert not gone.present and gone.problem.endswith("does not exist")
    (tmp_path / "folder").mkdir()
    assert "no model_index.json" in describe(str(tmp_path / "folder")).problem


def test_bases_in_the_config_must_be_a_list_of_sources(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("bases: stabilityai/sdxl\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="bases must be a list of repo ids, folders or files"):
        load_settings(config)
    config.write_text("bases: [a/b, ./models/x]\nmodels_dir: m\nhf_cache: /c\nhub_endpoint: https://hf-mirror.com\n",
                      encoding="utf-8")
    s = load_settings(config)
    assert (s.bases, s.models_dir, s.hf_cache, s.hub_endpoint) == (["a/b", "./models/x"], "m", "/c",
                                                                   "https://hf-mirror.com")
