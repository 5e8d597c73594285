"""The registry of model families (one line per family), and finding a family by name, from a base (its
``model_index.json`` or a single file's tensor names) and from a LoRA file's metadata and key names."""

from __future__ import annotations

import json
from pathlib import Path

from lora_spectrum.bases.families.base import Family
from lora_spectrum.bases.families.flux import Flux
from lora_spectrum.bases.families.sdxl import SDXL
from lora_spectrum.bases.families.z_image import ZImage
from lora_spectrum.errors import BaseLoadError, ConfigError, reason, translated

REGISTRY: tuple[type[Family], ...] = (SDXL, ZImage, Flux)

FAMILY_NAMES = tuple(f.name for f in REGISTRY)
DEMO_FAMILY = SDXL.name  # the offline demo's base (trained and random) is a tiny SDXL
_BY_NAME = {f.name: f for f in REGISTRY}


def family_class(name: str) -> type[Family]:
    if name not in _BY_NAME:
        raise ConfigError(f"unknown model family {name!r}; choose one of {', '.join(FAMILY_NAMES)}")
    return _BY_NAME[name]


def get_family(name: str, variant: str = "") -> Family:
    """The family called ``name`` with its defaults (``configs/<name>.yaml``, with ``variant``'s values over them)."""
    return family_class(name)(variant)


def pipeline_families() -> dict[str, str]:
    """Supported pipeline class names (``model_index.json``'s ``_class_name``) and their families."""
    return {pipeline: f.name for f in REGISTRY for pipeline in f.pipelines}


def detect_family(base: str, local_files_only: bool = True, cache_dir=None) -> str:
    """Read the family from the base itself: a folder's (or a cached repo id's) ``model_index.json``, or a single
    ``.safetensors`` file's tensor names (read from its header only). Raises ``BaseLoadError`` saying why not."""
    path = Path(base).expanduser()
    if path.is_file():
        return _single_file_family(path)
    index = path / "model_index.json"
    if not index.is_file():
        if path.is_dir() or base.startswith((".", "/", "~")):
            raise BaseLoadError(f"{base}: no model_index.json there, so it is not a diffusers folder")
        from huggingface_hub import hf_hub_download

        def hub_error(exc: BaseException) -> BaseLoadError:
            where = "in the local Hugging Face cache (local_files_only: true)" if local_files_only else "on the hub"
            return BaseLoadError(f"{base}: not found {where} ({reason(exc)}); download it once with "
                                 f"local_files_only: false, or point base: at a local folder")

        with translated(hub_error):
            index = Path(hf_hub_download(base, "model_index.json", local_files_only=local_files_only,
                                         cache_dir=cache_dir))
    try:
        class_name = json.loads(index.read_text(encoding="utf-8")).get("_class_name", "")
    except (OSError, json.JSONDecodeError) as exc:
        raise BaseLoadError(f"{index}: unreadable model_index.json ({exc})") from exc
    known = pipeline_families()
    if class_name not in known:
        raise BaseLoadError(f"{base}: pipeline {class_name!r} is not supported; LoRA Spectrum supports "
                            f"{', '.join(sorted(known))}")
    return known[class_name]


def _single_file_family(path: Path) -> str:
    """By the tensor names each family's checkpoints hold (``checkpoint_marks``). A file that is no safetensors
    goes to the family that loads single files, whose loader refuses pickles with the reason (never unpickled)."""
    if path.suffix.lower() != ".safetensors":
        return next(f.name for f in REGISTRY if f.single_file)
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:  # the header only
            names = " ".join(list(fh.keys())[:5000])
    except (SafetensorError, OSError, ValueError) as exc:
        raise BaseLoadError(f"{path}: not a readable safetensors checkpoint ({exc})") from exc
    for family in REGISTRY:
        if any(mark in names for mark in family.checkpoint_marks):
            return family.name
    raise BaseLoadError(f"{path}: not a checkpoint of {', '.join(f.title for f in REGISTRY)} (its tensor names fit "
                        f"none); give --family if you know better")


def family_hint(keys: list[str], meta: dict[str, str]) -> str | None:
    """The family a LoRA file was made for by its metadata (``ss_base_model_version``, ``modelspec.architecture``),
    else by its key names (the family with the most of its ``key_marks`` there); None if neither says."""
    version = (meta.get("ss_base_model_version") or meta.get("modelspec.architecture") or "").lower()
    for family in REGISTRY:
        if any(mark in version for mark in family.version_marks):
            return family.name
    if version.startswith(("sd_v1", "sd_v2", "stable-diffusion-v1")):
        return "sd1/2"  # named, not supported
    joined = " ".join(keys[:2000])
    hits = [(sum(mark in joined for mark in family.key_marks), -i, family.name) for i, family in enumerate(REGISTRY)]
    best = max(hits)
    return best[2] if best[0] else None
