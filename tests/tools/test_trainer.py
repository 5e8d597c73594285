"""The training script runs end to end (``--quick``) and writes every folder the shipped demo has."""

from __future__ import annotations

import json

import pytest

from lora_spectrum.demo import assets


@pytest.mark.slow  # the quick trainer run (shared: one per session)
def test_quick_training_run_writes_everything(quick_demo):
    folder, _, _ = quick_demo
    assert assets.assets_available(folder)
    assert sorted(p.name for p in (folder / assets.LORAS_DIRNAME).iterdir()) == ["jimeng_1.safetensors",
                                                                                  "jimeng_2.safetensors"]
    assert (folder / assets.BASE_DIRNAME / "tokenizer" / "tokenizer_config.json").is_file()
    assert assets.demo_clip_dir(folder) is not None, "the demo's own CLIP is trained with the base"
    assert assets.demo_style_dir(folder) is not None, "the style references are written with the base"
    report = json.loads((folder / "training_report.json").read_text(encoding="utf-8"))
    oracle = report["oracle"]
    assert [r["file"] for r in oracle["epochs"]] == ["jimeng_1.safetensors", "jimeng_2.safetensors"]
    assert oracle["best_epoch"] in (1, 2) and all("score" in r for r in oracle["epochs"])
    assert (folder / "README.md").is_file()
