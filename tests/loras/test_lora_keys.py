"""Key-format tables and the one safetensors header reader, on bytes laid out as real files are."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from safetensors.torch import save_file

from lora_spectrum.errors import CatalogError, HeaderError
from lora_spectrum.loras.lora_keys import HEADER_LIMIT, family_hint, key_format, looks_like_pickle, read_header


def test_a_real_file_reads_its_table_metadata_and_data_section(tmp_path):
    path = tmp_path / "jimeng-000010.safetensors"
    save_file({"lora_unet_a.lora_down.weight": torch.zeros(4, 8, dtype=torch.float16),
               "lora_unet_a.alpha": torch.tensor(4.0)}, str(path), metadata={"ss_epoch": "10"})
    header = read_header(path, path.stat().st_size)
    assert header.metadata == {"ss_epoch": "10"}
    assert set(header.table) == {"lora_unet_a.lora_down.weight", "lora_unet_a.alpha"}
    assert header.table["lora_unet_a.lora_down.weight"]["dtype"] == "F16"
    assert header.data_start + header.data_end == path.stat().st_size
    assert (n := struct.unpack("<Q", path.read_bytes()[:8])[0]) and header.data_start == 8 + n


def _header_bytes(table: dict) -> bytes:
    raw = json.dumps(table).encode()
    return struct.pack("<Q", len(raw)) + raw


@pytest.mark.parametrize("data, incomplete, words", [
    (b"", True, "empty file"),
    (b"PK\x03\x04rest-of-a-zip", False, "pickle"),
    (b"\x80\x04\x95rest", False, "pickle"),
    (b"\x80\xff", False, "only 2 bytes"),
    (struct.pack("<Q", HEADER_LIMIT + 1) + b"{", False, "header too large"),
    (struct.pack("<Q", 11 * HEADER_LIMIT) + b"{", False, "no valid header"),
    (struct.pack("<Q", 500) + b"{}", True, "header claims 500 bytes"),
    (struct.pack("<Q", 2) + b"[]", False, "header is not JSON"),
    (struct.pack("<Q", 3) + b"{x}", False, "not valid JSON"),
    (_header_bytes({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}) + b"\0" * 8, True, "truncated"),
])
def test_bad_headers_say_whether_more_bytes_may_come(tmp_path, data, incomplete, words):
    path = tmp_path / "x.safetensors"
    path.write_bytes(data)
    with pytest.raises(HeaderError, match=words) as info:
        read_header(path, len(data))
    assert info.value.incomplete is incomplete
    assert isinstance(info.value, CatalogError)


def test_pickles_are_told_by_their_opcodes_not_by_chance_bytes():
    assert looks_like_pickle(b"\x80\x02") and looks_like_pickle(b"PK\x03\x04")
    assert not looks_like_pickle(b"\x80\xff") and not looks_like_pickle(b"GARBAGE!")


@pytest.mark.parametrize("keys, expected", [
    ([], "empty"),
    (["lora_unet_a.lora_down.weight", "lora_te1_b.lora_up.weight"], "kohya"),
    (["diffusion_model.layers.0.attention.to_q.lora_A.weight"], "musubi/ai-toolkit"),
    (["unet.down_blocks.0.attn.to_q.lora_A.weight"], "diffusers/peft"),
    (["lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight"], "kohya"),  # sd-scripts' FLUX.1
    (["transformer.single_transformer_blocks.0.attn.to_q.lora_A.weight"], "diffusers/peft"),  # ai-toolkit's FLUX.1
    (["lora_unet_a.lora_down.weight", "lora_unet_a.dora_scale"], "kohya DoRA"),
    (["something.else"], "unknown"),
])
def test_key_format(keys, expected):
    assert key_format(keys) == expected


def test_family_hint_reads_metadata_first_then_key_names():
    assert family_hint([], {"ss_base_model_version": "sdxl_base_v1-0"}) == "sdxl"
    assert family_hint([], {"modelspec.architecture": "Z-Image-Turbo/lora"}) == "z-image"
    assert family_hint([], {"ss_base_model_version": "sd_v1"}) == "sd1/2"
    assert family_hint(["lora_te2_text_model_x.lora_down.weight"], {}) == "sdxl"
    assert family_hint(["diffusion_model.noise_refiner.0.attention.to_q.lora_A.weight"], {}) == "z-image"
    assert family_hint([], {"ss_base_model_version": "flux1"}) == "flux"
    assert family_hint(["lora_unet_single_blocks_0_linear1.lora_down.weight"], {}) == "flux"
    assert family_hint(["lora_unet_x.lora_down.weight"], {}) is None
