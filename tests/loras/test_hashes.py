"""The hashes A1111, Civitai and kohya name a LoRA by, checked against computations written out here."""

from __future__ import annotations

import hashlib
import io
import json
import struct

import torch
from safetensors.torch import save, save_file

from lora_spectrum.loras.hashes import addnet_hash, autov2, autov3, kohya_hashes, legacy_hash_of, short_hash


def _after_header(data: bytes) -> bytes:
    n = struct.unpack("<Q", data[:8])[0]
    return data[8 + n:]


def test_addnet_hash_is_the_sha256_of_the_bytes_after_the_header_and_ignores_metadata(tmp_path):
    tensors = {"lora_unet_a.lora_down.weight": torch.arange(12.0).reshape(3, 4),
               "lora_unet_a.lora_up.weight": torch.ones(4, 3)}
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    save_file(tensors, str(a), {"ss_epoch": "1"})
    save_file(tensors, str(b), {"ss_epoch": "1", "modelspec.title": "x" * 300})
    expected = hashlib.sha256(_after_header(a.read_bytes())).hexdigest()
    assert addnet_hash(a) == expected == addnet_hash(b), "metadata never moves the addnet hash"
    assert hashlib.sha256(a.read_bytes()).hexdigest() != hashlib.sha256(b.read_bytes()).hexdigest()
    assert short_hash(expected) == autov3(expected) == expected[:12]
    whole = hashlib.sha256(a.read_bytes()).hexdigest()
    assert autov2(whole) == whole[:10]


def test_kohya_hashes_are_taken_over_the_file_with_only_ss_metadata(tmp_path):
    tensors = {"w": torch.arange(300_000, dtype=torch.float32)}  # more than 1 MiB: the legacy window is data
    path = tmp_path / "run.safetensors"
    save_file(tensors, str(path), {"ss_epoch": "3", "modelspec.title": "run", "ss_seed": "1"})
    model_hash, legacy = kohya_hashes(path)
    ss_only = save(tensors, {"ss_epoch": "3", "ss_seed": "1"})
    assert model_hash == hashlib.sha256(_after_header(ss_only)).hexdigest() == addnet_hash(path)
    assert legacy == hashlib.sha256(ss_only[0x100000:0x110000]).hexdigest()[:8]
    assert legacy_hash_of(io.BytesIO(ss_only)) == legacy and len(legacy) == 8
    header = json.loads(ss_only[8:8 + struct.unpack("<Q", ss_only[:8])[0]])
    assert header["__metadata__"] == {"ss_epoch": "3", "ss_seed": "1"}
