"""Local paths out of a trainer's metadata: each absolute path becomes its last part, inside JSON values too; hub
ids, URLs, ratios and relative names stay as written."""

from __future__ import annotations

import json

from lora_spectrum.decision.local_paths import last_part, without_local_paths


def test_whole_values_that_are_paths_keep_only_their_last_part():
    meta = {"ss_sd_model_name": "/home/alice/models/sd_xl_base_1.0.safetensors",
            "ss_vae_name": "C:\\Users\\Alice Smith\\vae\\sdxl_vae.safetensors",
            "ss_output_dir": "~/runs/ink/", "ss_lr_scheduler": "cosine"}
    clean, n = without_local_paths(meta)
    assert clean == {"ss_sd_model_name": "sd_xl_base_1.0.safetensors", "ss_vae_name": "sdxl_vae.safetensors",
                     "ss_output_dir": "ink", "ss_lr_scheduler": "cosine"}
    assert n == 3


def test_paths_inside_text_and_json_are_shortened_and_nothing_else_changes():
    # kohya's ss_datasets (a JSON list of datasets with subsets) and an ai-toolkit style config blob.
    datasets = [{"is_dreambooth": True, "subsets": [{"image_dir": "/data/alice/10_inkstyle", "num_repeats": 10}]}]
    config = {"process": [{"datasets": [{"folder_path": "/mnt/nas/ink set/imgs"}],
                           "model": {"name_or_path": "black-forest-labs/FLUX.1-dev"},
                           "sample": {"prompts": ["an ink fox w/o colour, 1/2 body"]}}]}
    meta = {"ss_datasets": json.dumps(datasets), "config": json.dumps(config),
            "ss_training_comment": "trained from /home/alice/data/ink on 2 GPUs, see https://example.org/a/b",
            "modelspec.title": "ink", "ss_network_args": json.dumps({"algo": "lokr"})}
    clean, n = without_local_paths(meta)
    assert json.loads(clean["ss_datasets"])[0]["subsets"][0] == {"image_dir": "10_inkstyle", "num_repeats": 10}
    got = json.loads(clean["config"])["process"][0]
    assert got["datasets"][0]["folder_path"] == "imgs"
    assert got["model"]["name_or_path"] == "black-forest-labs/FLUX.1-dev"  # a hub id is not a local path
    assert got["sample"]["prompts"] == ["an ink fox w/o colour, 1/2 body"]
    assert clean["ss_training_comment"] == "trained from ink on 2 GPUs, see https://example.org/a/b"
    assert clean["ss_network_args"] == meta["ss_network_args"] and clean["modelspec.title"] == "ink"
    assert n == 3
    assert "/home" not in json.dumps(clean) and "/mnt" not in json.dumps(clean) and "/data" not in json.dumps(clean)


def test_metadata_without_paths_comes_back_byte_for_byte():
    meta = {"ss_tag_frequency": json.dumps({"10_ink": {"ink": 3}}, indent=None), "ss_epoch": "6"}
    assert without_local_paths(meta) == (meta, 0)
    assert last_part("/a/b/") == "b" and last_part("C:\\x\\y.safetensors") == "y.safetensors"
