"""Series, epoch and step from the names and metadata real trainers write; labels and order."""

from __future__ import annotations

import json

import pytest

from lora_spectrum.loras.epoch_names import label, numbers_from_metadata, parse_name, place, sort_key


@pytest.mark.parametrize(
    "stem, expected",
    [("jimeng_20", ("jimeng", 20, None)), ("name-000010", ("name", 10, None)), ("x_e5", ("x", 5, None)),
     ("run-epoch7", ("run", 7, None)), ("x-step1000", ("x", None, 1000)), ("final", ("final", None, None)),
     ("my lora_v2_300", ("my lora_v2", 300, None)), ("sdxl_v1", ("sdxl_v1", None, None))],
)
def test_parse_name(stem, expected):
    assert parse_name(stem) == expected


@pytest.mark.parametrize("stem, folder, expected", [
    ("jimeng-000010", "", ("jimeng", 10, None)),  # kohya sd-scripts / musubi-tuner epoch
    ("jimeng-step00001000", "", ("jimeng", None, 1000)),  # kohya step save
    ("jimeng_000000250", "", ("jimeng", None, 250)),  # ai-toolkit: nine digits are a step
    ("epoch-0", "run7", ("run7", 0, None)),  # DiffSynth-Studio, 0-based, named after its folder
    ("step-500", "run7", ("run7", None, 500)),
    ("epoch-3", "", ("epoch", 3, None)),
])
def test_names_the_trainers_write(stem, folder, expected):
    assert parse_name(stem, folder) == expected


def test_metadata_gives_the_epoch_of_a_step_file_and_numbers_a_final_file():
    ai_toolkit = {"training_info": json.dumps({"step": 250, "epoch": 1})}
    assert numbers_from_metadata(ai_toolkit) == (1, 250)
    assert place("jimeng_000000250", ai_toolkit) == ("jimeng", 1, 250)
    assert place("jimeng", {"training_info": json.dumps({"step": 3000, "epoch": 12})}) == ("jimeng", 12, 3000)
    kohya_final = {"ss_epoch": "10", "ss_output_name": "jimeng"}
    assert place("jimeng_final", kohya_final) == ("jimeng", 10, None)
    assert place("jimeng-step00001000", {"ss_epoch": "3"}) == ("jimeng", 3, 1000)
    assert place("jimeng_000000250", {}) == ("jimeng", None, 250), "no metadata: a step, never an epoch"
    assert place("jimeng-000010", {"ss_epoch": "99"}) == ("jimeng", 10, None), "the name's epoch stands"
    assert numbers_from_metadata({"training_info": "not json", "ss_epoch": "4"}) == (4, None)


def test_labels_and_order_within_a_series():
    assert label("x.safetensors", 20, None) == "epoch 20"
    assert label("x.safetensors", None, 250) == "step 250"
    assert label("x.safetensors", 1, 250) == "step 250 (epoch 1)"
    assert label("x.safetensors", None, None) == "x.safetensors"
    files = [("s", 2, 750, "c"), ("s", 1, 500, "b"), ("s", None, None, "final"), ("s", 1, 250, "a"),
             ("s", 0, None, "e0"), ("r", 9, None, "r9")]
    ordered = sorted(files, key=lambda f: sort_key(*f))
    assert [f[3] for f in ordered] == ["r9", "e0", "a", "b", "c", "final"]
