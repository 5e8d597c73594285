"""The fast path (``adapters/fast_path.py``): later epochs of one layout skip diffusers' converter and give the very
tensors it gives; anything else (other alphas, a padded or truncated file) goes through safetensors and diffusers."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from lora_spectrum.errors import LoraLoadError
from tests.adapters.helpers import assert_same_tensors, new_reader, read
from tests.tiny import FAMILIES


def same_adapter(a, b):
    assert a.signature == b.signature and a.network_alphas == b.network_alphas and a.nbytes == b.nbytes
    assert a.dropped_text_encoder_keys == b.dropped_text_encoder_keys
    assert_same_tensors(a.tensors, b.tensors)


@pytest.mark.parametrize("family", FAMILIES)
def test_later_epochs_skip_the_converter_and_read_what_it_gives(family, demo_loras):
    paths = demo_loras[family]
    reader, _ = new_reader(family)
    read(reader, paths[0])
    assert reader.fast.note == "learned" and len(reader.fast.layouts) == 1

    def no_converter(raw):
        raise AssertionError("the converter was called for an epoch of a learned layout")

    convert, reader.convert = reader.convert, no_converter
    fast = [read(reader, p) for p in paths[1:]]
    reader.convert = convert
    fresh, _ = new_reader(family)
    for path, got in zip(paths[1:], fast, strict=True):
        same_adapter(got, read(fresh, path))  # a fresh reader goes through diffusers for its first file


def test_other_alphas_in_the_same_table_go_through_the_converter(demo_loras, tmp_path):
    """Alphas are scalars in the file: same tensor table, other factors. The learned layout must not apply."""
    family = "sdxl"
    reader, _ = new_reader(family)
    read(reader, demo_loras[family][0])
    sd = load_file(str(demo_loras[family][1]))
    halved = {k: (v / 2 if k.endswith(".alpha") else v) for k, v in sd.items()}
    other = tmp_path / "alphas_2.safetensors"
    save_file(halved, str(other))
    got = read(reader, other)
    assert len(reader.fast.layouts) == 2, "a second layout was learned for the same table"
    fresh, _ = new_reader(family)
    same_adapter(got, read(fresh, other))
    plain = read(fresh, demo_loras[family][1])
    assert got.network_alphas != plain.network_alphas or any(
        not torch.equal(t, plain.tensors[k]) for k, t in got.tensors.items()), "the halved alphas count"


@pytest.mark.parametrize("cut", ["padded", "truncated"])
def test_only_files_that_end_where_their_header_says_take_the_fast_path(cut, demo_loras, tmp_path):
    """The fast path reads byte ranges; a file with bytes after its data (which safetensors refuses) or too few
    must be refused as safetensors refuses it, even with its layout learned."""
    family = "sdxl"
    reader, _ = new_reader(family)
    read(reader, demo_loras[family][0])
    data = demo_loras[family][1].read_bytes()
    odd = tmp_path / f"{cut}_1.safetensors"
    odd.write_bytes(data + b"\0" * 64 if cut == "padded" else data[:-64])
    with pytest.raises(LoraLoadError, match="not a valid safetensors file"):
        read(reader, odd)
