"""The offline demo: tiny pipelines, synthetic epochs, the shipped trained demo (``trainer`` rebuilds it)."""

from lora_spectrum.demo.assets import (
    ASSETS_DIR,
    BASE_DIRNAME,
    LOGS_DIRNAME,
    LORAS_DIRNAME,
    RECOMMENDED,
    assets_available,
    copy_trained_demo,
)
from lora_spectrum.demo.synthetic_epochs import (
    ATTN_TARGETS,
    DEMO_EPOCHS,
    DEMO_SERIES,
    DEMO_TRIGGER,
    attention_targets,
    ensure_demo,
    growth,
    kohya_metadata,
    make_lora_state_dict,
    write_demo,
    write_demo_loras,
)
from lora_spectrum.demo.tiny_pipelines import (
    _clip_tokenizer,
    assemble_sdxl,
    build_tiny,
    build_tiny_sdxl,
    build_tiny_zimage,
)

__all__ = [
    "ASSETS_DIR", "ATTN_TARGETS", "BASE_DIRNAME", "DEMO_EPOCHS", "DEMO_SERIES", "DEMO_TRIGGER", "LOGS_DIRNAME",
    "LORAS_DIRNAME", "RECOMMENDED", "_clip_tokenizer", "assemble_sdxl", "assets_available", "attention_targets",
    "build_tiny", "build_tiny_sdxl", "build_tiny_zimage", "copy_trained_demo", "ensure_demo", "growth",
    "kohya_metadata", "make_lora_state_dict", "write_demo", "write_demo_loras",
]
