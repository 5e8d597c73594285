"""Device and dtype choice, and telling out-of-memory errors apart (on the CPU: no GPU is needed)."""

from __future__ import annotations

import pytest
import torch

from lora_spectrum.bases.devices import is_out_of_memory, resolve_device, resolve_dtype
from lora_spectrum.errors import BaseLoadError


def test_auto_device_and_dtype_on_this_machine():
    device = resolve_device("auto")
    assert device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_dtype("auto", torch.device("cpu"), "bfloat16") is torch.float32
    assert resolve_dtype("auto", torch.device("cuda"), "bfloat16") is torch.bfloat16
    assert resolve_dtype("fp16", torch.device("cpu"), "bfloat16") is torch.float16


def test_bad_choices_are_named():
    with pytest.raises(BaseLoadError, match="unknown dtype 'fp8'"):
        resolve_dtype("fp8", torch.device("cpu"), "float16")
    if not torch.cuda.is_available():
        with pytest.raises(BaseLoadError, match="no CUDA GPU"):
            resolve_device("cuda")


def test_out_of_memory_is_recognised_by_type_or_message():
    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert is_out_of_memory(RuntimeError("DefaultCPUAllocator: not enough memory: out of memory"))
    assert not is_out_of_memory(RuntimeError("shape mismatch"))
    assert not is_out_of_memory(ValueError("out of memory"))
