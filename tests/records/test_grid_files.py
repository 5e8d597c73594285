"""What is written to an output folder: A1111 ``parameters`` text, cell file names, the grid, the manifest."""

from __future__ import annotations

import hashlib

import torch
from safetensors.torch import save_file

from lora_spectrum.records.grid_files import base_hash, base_name, parameters_text, parse_parameters
from lora_spectrum.render.plan import Cell
from lora_spectrum.render.sampling import Sampling


def test_parse_parameters_reads_a1111_text():
    text = ('a cat, <lora:x:0.8>\nNegative prompt: ugly, bad\nSteps: 30, Sampler: DPM++ 2M Karras, CFG scale: 7, '
            'Seed: 1, Size: 1024x1024, Model: sdxl, Lora hashes: "x: abcdef123456"')
    p = parse_parameters(text)
    assert p["prompt"] == "a cat, <lora:x:0.8>" and p["negative_prompt"] == "ugly, bad"
    assert p["Sampler"] == "DPM++ 2M Karras" and p["Lora hashes"] == "x: abcdef123456"
    cell = Cell(0, None, None, None, 3, 0.0, "only a prompt")
    back = parse_parameters(parameters_text(cell, Sampling("", 8, 5.0, 64, 64, "Euler"), "m"))
    assert back["prompt"] == "only a prompt" and back["Seed"] == "3" and "Lora" not in back


def test_a_single_file_base_is_named_and_hashed_as_a1111_does():
    cell = Cell(0, 20, "jimeng_20.safetensors", "ab" * 32, 3, 1.0, "a fox")
    text = parameters_text(cell, Sampling("", 30, 7.0, 1024, 1024, "Euler"), "juggernautXL", "0123456789",
                           lora_hash="cd" * 32)
    back = parse_parameters(text)
    assert back["Model"] == "juggernautXL" and back["Model hash"] == "0123456789"
    assert back["Lora hashes"] == "jimeng_20: cdcdcdcdcdcd" and back["prompt"] == "a fox <lora:jimeng_20:1>"
    unknown = parse_parameters(parameters_text(cell, Sampling("", 30, 7.0, 1024, 1024, "Euler"), "m"))
    assert "Lora hashes" not in unknown and unknown["Lora"] == "jimeng_20", "never the whole file's hash instead"


def test_a_base_is_named_by_its_name_never_its_path_and_a_single_file_is_hashed(tmp_path):
    assert base_name("Tongyi-MAI/Z-Image-Turbo") == "Tongyi-MAI/Z-Image-Turbo" and base_hash("tiny-sdxl") is None
    folder = tmp_path / "my-sdxl"
    folder.mkdir()
    assert base_name(str(folder)) == "my-sdxl" and base_hash(str(folder)) is None
    single = tmp_path / "juggernautXL_v9.safetensors"
    save_file({"conditioner.embedders.1.x": torch.zeros(2)}, str(single))
    assert base_name(str(single)) == "juggernautXL_v9"
    assert base_hash(str(single)) == hashlib.sha256(single.read_bytes()).hexdigest()[:10]
