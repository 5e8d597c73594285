"""Devices: which one, which dtype, reserving VRAM, recognising and recovering from running out of memory.

Nothing here knows about LoRAs or pipelines; nothing probes a device at import time.
"""

from __future__ import annotations

import gc

import torch

from lora_spectrum.errors import BaseLoadError

_DTYPES = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16, "float16": torch.float16,
           "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}  # fmt: skip


def resolve_device(device: str = "auto") -> torch.device:
    """``auto``: CUDA when there is a GPU, else the CPU. Asking for CUDA without one is a ``BaseLoadError``."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise BaseLoadError("device cuda was asked for, but no CUDA GPU is available")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device, cuda_default: str) -> torch.dtype:
    """``auto``: the family's CUDA dtype on a GPU (``cuda_default``), float32 on the CPU."""
    if dtype == "auto":
        return getattr(torch, cuda_default) if device.type == "cuda" else torch.float32
    try:
        return _DTYPES[dtype]
    except KeyError as exc:
        raise BaseLoadError(f"unknown dtype {dtype!r}; use auto, fp32, fp16 or bf16") from exc


def reserve_vram(device: torch.device, gib: float) -> None:
    """Allocate and free ``gib``: the memory stays in torch's caching allocator, reserved for this process."""
    if device.type == "cuda" and gib > 0:
        block = torch.empty(int(gib * 2**30), dtype=torch.uint8, device=device)
        del block


def is_out_of_memory(exc: BaseException) -> bool:
    """Torch's out-of-memory error, or a RuntimeError saying so (some kernels and older builds raise that)."""
    return isinstance(exc, torch.OutOfMemoryError) or (isinstance(exc, RuntimeError)
                                                        and "out of memory" in str(exc).lower())


def free_memory() -> None:
    """Collect garbage and give cached CUDA blocks back (call once the failed work's tensors are gone)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
