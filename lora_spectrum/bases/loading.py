"""Loading a base pipeline with diffusers: a Hugging Face repo id, a local diffusers folder or a single-file
checkpoint (of a family that loads them), from safetensors weights only, then placed on its device or offloaded. Nothing here swaps adapters,
renders or knows about Streamlit; ``Engine.load`` resolves the family, device and dtype first."""

from __future__ import annotations

from pathlib import Path

import torch

from lora_spectrum.bases.families import REGISTRY, Family
from lora_spectrum.errors import BaseLoadError, shorten, translated


def load_pipeline(base: str, fam: Family, torch_dtype: torch.dtype, local_files_only: bool, cache_dir=None):
    """The pipeline of ``base``; raises ``BaseLoadError`` with the reason. Pickle-based weights (.bin, .ckpt, .pt)
    are refused rather than handed to torch.load, whose restricted unpickler has had bypasses (CVE-2025-32434)."""
    path = Path(base).expanduser()
    if path.is_file():
        if not fam.single_file:
            which = ", ".join(f.title for f in REGISTRY if f.single_file)
            raise BaseLoadError(f"{base}: single-file checkpoints are supported for {which} only; give a "
                                f"diffusers folder or repo id for {fam.title}")
        if path.suffix.lower() != ".safetensors":
            raise BaseLoadError(f"{base}: only .safetensors checkpoints are loaded ({path.suffix or 'this'} "
                                f"files are pickles, which can run code); convert it to safetensors")
    with translated(lambda exc: _load_error(base, fam.name, exc)):  # hub, OS and diffusers errors alike
        if path.is_file():
            return fam.pipeline_cls().from_single_file(str(path), torch_dtype=torch_dtype,
                                                       local_files_only=local_files_only, cache_dir=cache_dir)
        return fam.pipeline_cls().from_pretrained(base, torch_dtype=torch_dtype, local_files_only=local_files_only,
                                                  use_safetensors=True, cache_dir=cache_dir)


def place(pipe, dev: torch.device, offload: str) -> None:
    """Resident on ``dev``, or offloaded for small cards (CUDA only: on a CPU everything is resident)."""
    if dev.type == "cuda" and offload == "model":
        pipe.enable_model_cpu_offload()
    elif dev.type == "cuda" and offload == "sequential":
        pipe.enable_sequential_cpu_offload()
    elif dev.type == "cuda" and offload == "group":
        # diffusers' group offload, one block a group on the GPU at a time. Without its side stream: that mode
        # restores each weight from a pinned copy taken once, which would undo every swap's re-pointing.
        pipe.enable_group_offload(onload_device=dev, offload_device=torch.device("cpu"), offload_type="block_level",
                                  num_blocks_per_group=1)
    else:
        pipe.to(dev)


def _load_error(base: str, family: str, exc: BaseException) -> BaseLoadError:
    why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if "safetensors" in why:
        why += "; only safetensors weights are loaded, never pickle-based .bin files"
    return BaseLoadError(f"{base}: cannot load the {family} base ({shorten(why, 300)})")
