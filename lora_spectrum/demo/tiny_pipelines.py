"""Tiny real diffusers pipelines with seeded random weights, one per model family (each family builds its own:
``Family.build_tiny``), and the byte-level tokenizers they use. Nothing here downloads anything or knows LoRAs;
the names below stay for the demo trainer and older callers."""

from __future__ import annotations

from pathlib import Path

from lora_spectrum.bases.families import FAMILY_NAMES, get_family
from lora_spectrum.bases.families.sdxl import SDXL, assemble_sdxl
from lora_spectrum.bases.families.tokenizers import byte_vocab as _byte_vocab
from lora_spectrum.bases.families.tokenizers import clip_tokenizer as _clip_tokenizer
from lora_spectrum.bases.families.tokenizers import qwen_tokenizer as _qwen_tokenizer
from lora_spectrum.bases.families.z_image import ZImage
from lora_spectrum.errors import ConfigError

__all__ = ["_byte_vocab", "_clip_tokenizer", "_qwen_tokenizer", "assemble_sdxl", "build_tiny", "build_tiny_sdxl",
           "build_tiny_zimage"]


def build_tiny(family: str, seed: int = 0, workdir: str | Path | None = None):
    """The tiny pipeline of ``family`` (a registry name), seeded; nothing is downloaded."""
    if family not in FAMILY_NAMES:
        raise ConfigError(f"unknown family {family!r}; choose {' or '.join(FAMILY_NAMES)}")
    return get_family(family).build_tiny(seed, workdir)


def build_tiny_sdxl(seed: int = 0, workdir: str | Path | None = None):
    return get_family(SDXL.name).build_tiny(seed, workdir)


def build_tiny_zimage(seed: int = 0, workdir: str | Path | None = None):
    return get_family(ZImage.name).build_tiny(seed, workdir)
