"""Settings files: unknown keys, wrong types and bad values are named; YAML's on/off for fuse is understood."""

from __future__ import annotations

import pytest

from lora_spectrum.errors import ConfigError
from lora_spectrum.settings import load_settings


def write(tmp_path, text):
    path = tmp_path / "config.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_load_and_name_the_z_image_base():
    s = load_settings()
    assert (s.base, s.family, s.loras, s.fuse, s.demo) == ("Tongyi-MAI/Z-Image-Turbo", "auto", "loras", "auto",
                                                           "trained")
    assert (s.executor, s.workers, s.ray_address) == ("local", 0, ""), "the plain install never needs Ray"


@pytest.mark.parametrize("text, words", [
    ("colour: red\n", "unknown key(s) colour"),
    ("resident_adapters: '4'\n", "resident_adapters must be a whole number"),
    ("cache_max_mb: big\n", "cache_max_mb must be a whole number"),
    ("local_files_only: 3\n", "local_files_only must be true or false"),
    ("device: gpu\n", "device must be auto, cpu, cuda"),
    ("offload: some\n", "offload must be none"),
    ("demo: fancy\n", "demo must be trained or random"),
    ("executor: slurm\n", "executor must be local or ray"),
    ("workers: -1\n", "workers must be 0 (one per GPU) or more"),
    ("workers: two\n", "workers must be a whole number"),
    ("resident_adapters: 0\n", "at least 1"),
    ("- a list\n", "mapping"),
    ("probes: [shapes]\n", "probes must be a mapping of set names to probe sets"),
    ("probes:\n", "probes must be a mapping"),
    ("probe_set: 3\n", "probe_set must be text"),
    ("auto_probe: sometimes\n", "auto_probe must be true or false"),
    ("operators: alice@example.com\n", "operators must be a list of e-mail addresses"),
    ("operators: [alice]\n", "operators must be a list of e-mail addresses"),
    ("operator_token_file: 3\n", "operator_token_file must be text"),
])
def test_bad_values_are_named(tmp_path, text, words):
    with pytest.raises(ConfigError, match=words.replace("(", r"\(").replace(")", r"\)")):
        load_settings(write(tmp_path, text))


def test_fuse_accepts_yaml_on_off_and_device_cuda_n(tmp_path):
    assert load_settings(write(tmp_path, "fuse: on\ndevice: cuda:1\n")).fuse == "on"
    assert load_settings(write(tmp_path, "fuse: off\n")).fuse == "off"
    assert load_settings(write(tmp_path, "reserve_vram_gb: 2\n")).reserve_vram_gb == 2


def test_probe_keys_default_to_none_configured_and_read_a_mapping(tmp_path):
    assert (load_settings().probes, load_settings().probe_set) == ({}, "")
    s = load_settings(write(tmp_path, "probe_set: mine\nprobes:\n  mine: {seeds: [1], style: [a cat]}\n"))
    assert (s.probe_set, s.probes) == ("mine", {"mine": {"seeds": [1], "style": ["a cat"]}})


def test_auto_probe_is_on_by_default_and_can_be_turned_off(tmp_path):
    """Insight probes a series by itself unless the config says auto_probe: false."""
    assert load_settings().auto_probe is True
    assert load_settings(write(tmp_path, "auto_probe: false\n")).auto_probe is False


def test_operator_keys_default_to_none_configured_and_read_a_list(tmp_path):
    """No operators and no token file by default: on 127.0.0.1 everyone is the operator (access.py)."""
    assert (load_settings().operators, load_settings().operator_token_file) == ([], "")
    s = load_settings(write(tmp_path, "operators: [alice@example.com]\noperator_token_file: secrets/op.txt\n"))
    assert (s.operators, s.operator_token_file) == (["alice@example.com"], "secrets/op.txt")
