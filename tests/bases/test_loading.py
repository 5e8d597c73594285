"""``load_pipeline`` and ``place``: a diffusers folder of each family loaded as its pipeline (safetensors only),
what cannot be loaded said in one line naming the base and the family, and a CPU pipeline kept resident."""

from __future__ import annotations

import pytest
import torch

from lora_spectrum import demo
from lora_spectrum.bases.families import REGISTRY, get_family
from lora_spectrum.bases.loading import load_pipeline, place
from lora_spectrum.errors import BaseLoadError
from tests.tiny import FAMILIES


@pytest.mark.parametrize("family", FAMILIES)
def test_a_diffusers_folder_loads_as_its_familys_pipeline_and_stays_on_the_cpu(family, tmp_path):
    fam = get_family(family)
    demo.build_tiny(family, seed=0, workdir=tmp_path / "tok").save_pretrained(tmp_path / "base")
    pipe = load_pipeline(str(tmp_path / "base"), fam, torch.float32, local_files_only=True)
    assert type(pipe) is fam.pipeline_cls()
    place(pipe, torch.device("cpu"), offload="group")  # offloading is for CUDA cards: on a CPU all stays resident
    denoiser = getattr(pipe, fam.denoiser_attr)
    assert all(p.device.type == "cpu" and p.dtype == torch.float32 for p in denoiser.parameters())


def test_what_cannot_be_loaded_is_one_line_naming_the_base_and_the_family(tmp_path):
    sdxl = get_family("sdxl")
    with pytest.raises(BaseLoadError) as err:
        load_pipeline(str(tmp_path / "nowhere"), sdxl, torch.float32, local_files_only=True)
    message = str(err.value)
    assert message.startswith(f"{tmp_path / 'nowhere'}: cannot load the sdxl base (") and "\n" not in message
    single = [f for f in REGISTRY if not f.single_file]
    assert single, "a family without single-file checkpoints"
    (tmp_path / "one.safetensors").write_bytes(b"")
    with pytest.raises(BaseLoadError, match="single-file checkpoints are supported for"):
        load_pipeline(str(tmp_path / "one.safetensors"), single[0], torch.float32, local_files_only=True)
