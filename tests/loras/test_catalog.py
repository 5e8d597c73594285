"""The catalog: ordering, .bak hiding, states with reasons for every bad file, rescans, metadata."""

from __future__ import annotations

import json
import os
import pickle
import struct
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from lora_spectrum.errors import CatalogError
from lora_spectrum.loras.catalog import Catalog
from lora_spectrum.loras.lora_keys import HEADER_LIMIT
from tests.tiny import Boom, garbage


def write_lora(path, rank=4, metadata=None, te=False, value=None):
    sd = {
        "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight": torch.randn(rank, 64),
        "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q.lora_up.weight": torch.randn(64, rank),
        "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q.alpha": torch.tensor(float(rank) / 2),
    }
    if te:
        sd["lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight"] = torch.randn(rank, 32)
        sd["lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight"] = torch.randn(32, rank)
    if value is not None:
        for k in sd:
            sd[k] = torch.full_like(sd[k], value)
    save_file(sd, str(path), metadata=metadata)
    return path


def names(entries):
    return [e.name for e in entries]


def by_name(entries):
    return {e.name: e for e in entries}


def test_epochs_sort_numerically_within_series_and_naturally_across(tmp_path):
    for n in (300, 9, 100, 20, 10):
        write_lora(tmp_path / f"jimeng_{n}.safetensors")
    for n in ("000010", "000002"):
        write_lora(tmp_path / f"kohya-{n}.safetensors")
    # kohya's final file has no number: the epoch comes from ss_epoch, the series from ss_output_name.
    write_lora(tmp_path / "kohya.safetensors", metadata={"ss_epoch": "12", "ss_output_name": "kohya"})
    write_lora(tmp_path / "alpha-step200.safetensors")
    write_lora(tmp_path / "alpha-step1000.safetensors")
    entries = Catalog(tmp_path).scan()
    assert names(entries) == [
        "alpha-step200.safetensors", "alpha-step1000.safetensors",
        "jimeng_9.safetensors", "jimeng_10.safetensors", "jimeng_20.safetensors", "jimeng_100.safetensors",
        "jimeng_300.safetensors",
        "kohya-000002.safetensors", "kohya-000010.safetensors", "kohya.safetensors",
    ]
    final = by_name(entries)["kohya.safetensors"]
    assert (final.series, final.epoch) == ("kohya", 12)
    assert by_name(entries)["alpha-step1000.safetensors"].step == 1000


def test_bak_files_hide_and_come_back(tmp_path):
    write_lora(tmp_path / "jimeng_50.safetensors")
    write_lora(tmp_path / "jimeng_80.safetensors")
    cat = Catalog(tmp_path)
    assert names(cat.scan()) == ["jimeng_50.safetensors", "jimeng_80.safetensors"]
    os.rename(tmp_path / "jimeng_50.safetensors", tmp_path / "jimeng_50.safetensors.bak")
    assert names(cat.scan()) == ["jimeng_80.safetensors"]
    assert cat.hidden == ["jimeng_50.safetensors.bak"]
    os.rename(tmp_path / "jimeng_50.safetensors.bak", tmp_path / "jimeng_50.safetensors")
    assert names(cat.scan()) == ["jimeng_50.safetensors", "jimeng_80.safetensors"]


def make_pickle(path, marker):
    Boom.marker = str(marker)
    path.write_bytes(pickle.dumps(Boom()))
    return path


def test_every_bad_file_gets_a_state_and_a_reason(tmp_path):
    good = write_lora(tmp_path / "good_1.safetensors")
    data = good.read_bytes()
    (tmp_path / "empty_2.safetensors").write_bytes(b"")
    (tmp_path / "truncated_3.safetensors").write_bytes(data[: len(data) - 100])
    (tmp_path / "garbage_4.safetensors").write_bytes(garbage(4096))
    (tmp_path / "claims_5.safetensors").write_bytes(struct.pack("<Q", 10_000) + b'{"a": 1}')
    (tmp_path / "huge_6.safetensors").write_bytes(struct.pack("<Q", HEADER_LIMIT + 1) + b"{" + b" " * 64)
    marker = tmp_path / "UNPICKLED"
    make_pickle(tmp_path / "pickle_7.safetensors", marker)
    torch.save({"w": torch.zeros(2)}, tmp_path / "torchzip_8.safetensors")
    make_pickle(tmp_path / "old_9.ckpt", marker)
    (tmp_path / "noise_10.safetensors").write_bytes(b"\x80\xff" + garbage(4096)[2:])  # 0x80 but no pickle protocol
    entries = by_name(Catalog(tmp_path).scan())
    expect = {
        "good_1.safetensors": ("ready", ""),
        "empty_2.safetensors": ("incomplete", "zero bytes"),
        "truncated_3.safetensors": ("incomplete", "truncated"),
        "garbage_4.safetensors": ("unreadable", "not a safetensors file"),
        "claims_5.safetensors": ("incomplete", "header claims"),
        "huge_6.safetensors": ("unreadable", "header too large"),
        "pickle_7.safetensors": ("unreadable", "pickle"),
        "torchzip_8.safetensors": ("unreadable", "pickle"),
        "old_9.ckpt": ("ignored", "pickle-based format"),
        "noise_10.safetensors": ("unreadable", "not a safetensors file"),
    }
    for name, (state, words) in expect.items():
        assert entries[name].state == state, (name, entries[name].reason)
        assert words in entries[name].reason, (name, entries[name].reason)
        assert entries[name].selectable == (state == "ready")
    assert not marker.exists(), "a pickle was unpickled"


def test_a_file_still_growing_is_incomplete_until_it_settles(tmp_path):
    path = write_lora(tmp_path / "copying_1.safetensors")
    cat = Catalog(tmp_path)
    assert cat.scan()[0].state == "ready"
    with open(path, "ab") as fh:  # the copy goes on: size changes, mtime is now
        fh.write(b"\0" * 100)
    entry = cat.scan()[0]
    assert entry.state == "incomplete" and "growing" in entry.reason
    write_lora(path)  # the copy finished (complete file); once settled it is ready again
    past = path.stat().st_mtime - 10
    os.utime(path, (past, past))
    assert cat.scan()[0].state == "ready"


def test_rescan_picks_up_added_renamed_and_removed_files(tmp_path):
    write_lora(tmp_path / "a_1.safetensors")
    cat = Catalog(tmp_path)
    gen = cat.generation
    assert names(cat.scan()) == ["a_1.safetensors"]
    assert cat.generation == gen + 1
    first = cat.entries[0]
    cat.scan()
    assert cat.entries[0] is first, "an unchanged file is not read again"
    assert cat.generation == gen + 1, "nothing changed, so the generation stays"
    write_lora(tmp_path / "a_2.safetensors")
    assert names(cat.scan()) == ["a_1.safetensors", "a_2.safetensors"]
    os.rename(tmp_path / "a_2.safetensors", tmp_path / "a_3.safetensors")
    assert names(cat.scan()) == ["a_1.safetensors", "a_3.safetensors"]
    entry = cat.get("a_1.safetensors")
    os.remove(tmp_path / "a_1.safetensors")
    with pytest.raises(CatalogError, match="removed"):
        cat.sha256(entry)
    assert names(cat.scan()) == ["a_3.safetensors"]
    with pytest.raises(CatalogError, match="no such LoRA"):
        cat.get("a_1.safetensors")


def test_get_refuses_path_names(tmp_path):
    cat = Catalog(tmp_path)
    cat.scan()
    for bad in ("../x.safetensors", "sub/x.safetensors", "..", ""):
        with pytest.raises(CatalogError):
            cat.get(bad)


def test_kohya_metadata_rank_alpha_keys_and_trigger_words(tmp_path):
    meta = {"ss_epoch": "20", "ss_steps": "400", "ss_network_dim": "4", "ss_network_alpha": "2",
            "ss_base_model_version": "sdxl_base_v1-0", "ss_output_name": "jimeng", "ss_learning_rate": "0.0001",
            "ss_num_epochs": "300", "modelspec.trigger_phrase": "jimeng style, ink",
            "ss_tag_frequency": json.dumps({"10_x": {"a": 3}})}
    write_lora(tmp_path / "jimeng_20.safetensors", metadata=meta, te=True)
    tags = {"ss_tag_frequency": json.dumps({"10_x": {"ink": 5, "stripes": 9}, "5_y": {"ink": 7}})}
    write_lora(tmp_path / "other_1.safetensors", metadata=tags)
    entries = by_name(Catalog(tmp_path).scan())
    e = entries["jimeng_20.safetensors"]
    # Tensors are counted by where they go; the alpha scalar of each module is counted on its own.
    assert (e.format, e.ranks, e.alpha, e.denoiser_keys, e.text_encoder_keys, e.alpha_keys, e.other_keys) == \
        ("kohya", [4], 2.0, 2, 2, 1, 0)
    assert e.algorithm == "lora" and e.unsupported == ""
    assert e.trigger_words == ["jimeng style", "ink"]
    assert e.metadata["ss_steps"] == "400" and e.metadata["ss_base_model_version"] == "sdxl_base_v1-0"
    assert e.family_hint == "sdxl"
    assert entries["other_1.safetensors"].trigger_words == ["ink", "stripes"]  # 12 vs 9
    dora = {"lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q.dora_scale": torch.ones(64, 1)}
    save_file({**load_file(str(tmp_path / "other_1.safetensors")), **dora}, str(tmp_path / "dora_2.safetensors"))
    dora_entry = by_name(Catalog(tmp_path).scan())["dora_2.safetensors"]
    assert dora_entry.format == "kohya DoRA" and dora_entry.algorithm == "dora"
    cat = Catalog(tmp_path)
    cat.scan()
    import hashlib

    assert cat.sha256(e) == hashlib.sha256((tmp_path / "jimeng_20.safetensors").read_bytes()).hexdigest()


def test_odd_names_and_symlinks(tmp_path):
    folder = tmp_path / "loras"
    folder.mkdir()
    long_stem = "x" * 200
    for n in ("with space_1", "ünïcødé_2", long_stem + "_3"):
        write_lora(folder / f"{n}.safetensors")
    outside = write_lora(tmp_path / "outside_9.safetensors")
    os.symlink(outside, folder / "escape_4.safetensors")
    os.symlink(folder / "with space_1.safetensors", folder / "inside_5.safetensors")
    entries = by_name(Catalog(folder).scan())
    assert entries["with space_1.safetensors"].state == "ready"
    assert entries["ünïcødé_2.safetensors"].epoch == 2
    assert entries[long_stem + "_3.safetensors"].state == "ready"
    assert entries["escape_4.safetensors"].state == "unreadable"
    assert "outside the loras folder" in entries["escape_4.safetensors"].reason
    assert entries["inside_5.safetensors"].state == "ready"


def test_thousands_of_files_scan_and_rescan_reuses_entries(tmp_path):
    src = write_lora(tmp_path / "seed.safetensors").read_bytes()
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(2000):
        (folder / f"run_{i}.safetensors").write_bytes(src)
    cat = Catalog(folder)
    first = cat.scan()
    assert len(first) == 2000 and [e.epoch for e in first] == list(range(2000))
    second = cat.scan()
    assert all(a is b for a, b in zip(first, second, strict=True))


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "lora_spectrum", *args], capture_output=True, text=True, timeout=120)


def test_inspect_json_order_states_and_exit_codes(tmp_path, capsys):
    """The first call as a process of its own (``python -m lora_spectrum``), the others in this one."""
    from lora_spectrum.cli import main

    for n in (100, 9, 20):
        write_lora(tmp_path / f"jimeng_{n}.safetensors", metadata={"modelspec.trigger_phrase": "jm"})
    (tmp_path / "jimeng_30.safetensors").write_bytes(b"")
    (tmp_path / "broken_1.safetensors").write_bytes(b"not a safetensors file at all" * 10)
    (tmp_path / "hidden_5.safetensors.bak").write_bytes(b"")
    proc = run_cli("inspect", "--loras", str(tmp_path), "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert [d["name"] for d in data] == ["broken_1.safetensors", "jimeng_9.safetensors", "jimeng_20.safetensors",
                                         "jimeng_30.safetensors", "jimeng_100.safetensors"]
    required = {"name", "path", "series", "epoch", "state", "reason", "format", "rank", "alpha", "denoiser_keys",
                "text_encoder_keys", "trigger_words", "metadata"}
    assert all(required <= set(d) for d in data)
    assert [d["state"] for d in data] == ["unreadable", "ready", "ready", "incomplete", "ready"]
    assert data[1]["trigger_words"] == ["jm"] and data[1]["rank"] == 4
    assert main(["inspect", "--loras", str(tmp_path)]) == 0
    table = capsys.readouterr().out
    assert "jimeng_20.safetensors" in table and "unreadable" in table
    assert main(["inspect", "--loras", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_a_file_for_another_family_is_incompatible_and_left_out_of_the_series(tmp_path):
    write_lora(tmp_path / "xl_10.safetensors", metadata={"ss_base_model_version": "sdxl_base_v1-0"})
    write_lora(tmp_path / "xl_20.safetensors", metadata={"ss_base_model_version": "sdxl_base_v1-0"})
    stem = "diffusion_model.layers.0.attention.to_q"  # musubi's Z-Image names
    save_file({f"{stem}.lora_down.weight": torch.randn(4, 32), f"{stem}.lora_up.weight": torch.randn(32, 4),
               f"{stem}.alpha": torch.tensor(4.0)}, str(tmp_path / "zi_10.safetensors"),
              metadata={"modelspec.architecture": "Z-Image-Turbo/lora"})
    catalog = Catalog(tmp_path)
    entries = {e.name: e for e in catalog.scan()}
    state, reason = entries["zi_10.safetensors"].problem("sdxl")
    assert state == "incompatible" and "made for z-image" in reason and "the base is sdxl" in reason
    assert entries["xl_10.safetensors"].problem("sdxl") is None and entries["zi_10.safetensors"].problem() is None
    # Without a family (inspect), a file is judged on the family it names: SDXL keys labelled Z-Image fit no
    # Z-Image base, and the reason says which base they fit.
    write_lora(tmp_path / "liar_10.safetensors", metadata={"modelspec.architecture": "Z-Image-Turbo/lora"})
    state, reason = {e.name: e for e in catalog.scan()}["liar_10.safetensors"].problem()
    assert state == "incompatible" and "fits a sdxl base" in reason, reason
    with pytest.raises(CatalogError, match="no series 'zi'"):
        catalog.choose_series("zi", ready_only=True, family="sdxl")
    assert [e.name for e in catalog.choose_series("xl", ready_only=True, family="sdxl")[1]] == \
        ["xl_10.safetensors", "xl_20.safetensors"]


def test_forms_no_loader_handles_are_listed_as_unsupported_with_the_reason(tmp_path):
    stem = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q"
    save_file({f"{stem}.oft_blocks": torch.zeros(4, 16, 16), f"{stem}.alpha": torch.tensor(4.0)},
              str(tmp_path / "oft-000001.safetensors"))
    save_file({f"{stem}.diff": torch.zeros(64, 64)}, str(tmp_path / "full-000001.safetensors"))
    catalog = Catalog(tmp_path)
    entries = by_name(catalog.scan())
    for name, what in (("oft-000001.safetensors", "OFT"), ("full-000001.safetensors", "full weight differences")):
        state, reason = entries[name].problem("sdxl")
        assert (entries[name].algorithm, state) == ("other", "unsupported") and what in reason, reason
        assert "LoRA, LoCon, LoHa, LoKr and DoRA are" in reason
    with pytest.raises(CatalogError, match="no usable LoRA files"):
        catalog.choose_series(None, ready_only=True, family="sdxl")
