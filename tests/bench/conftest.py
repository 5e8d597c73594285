"""One short ``bench --model tiny`` run (3 epochs, 20 swaps), shared by every test in this folder."""

from __future__ import annotations

import pytest
import torch

from lora_spectrum.bench import run_benchmark


@pytest.fixture(scope="package")
def result():
    lines = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # steadier on a shared 2-core machine; the figures only need to exist here
    try:
        out = run_benchmark(model="tiny", device="cpu", rank=8, epochs=3, swaps=20, progress=lines.append)
    finally:
        torch.set_num_threads(threads)
    assert lines and all(line.startswith("[bench") for line in lines), "progress goes out through the callback"
    return out
