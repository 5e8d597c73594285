"""The training script runs end to end (``--quick``) and writes every folder the shipped demo has."""

from __future__ import annotations

from lora_spectrum.demo import assets, trainer


def test_quick_training_run_writes_everything(tmp_path):
    assert trainer.main(["--out", str(tmp_path), "--quick"]) == 0
    assert assets.assets_available(tmp_path)
    assert sorted(p.name for p in (tmp_path / assets.LORAS_DIRNAME).iterdir()) == ["jimeng_1.safetensors",
                                                                                    "jimeng_2.safetensors"]
    assert (tmp_path / assets.BASE_DIRNAME / "tokenizer" / "tokenizer_config.json").is_file()
    assert assets.demo_clip_dir(tmp_path) is not None, "the demo's own CLIP is trained with the base"
