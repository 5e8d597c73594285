"""Fixtures of the measures tests: the demo series exactly as ``python -m lora_spectrum demo`` writes it, and its
insight. ``demo_loras`` here is one folder of the SDXL demo (epochs 20 ... 300), not the per-family dict of
tests/conftest.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from lora_spectrum import demo
from lora_spectrum.measures.insight import series_insight
from tests.measures.files import scanned


@pytest.fixture(scope="session")
def unet():
    return demo.build_tiny("sdxl").unet


@pytest.fixture(scope="session")
def demo_loras(unet, tmp_path_factory) -> Path:
    """The demo series exactly as ``python -m lora_spectrum demo`` writes it (epochs 20 ... 300)."""
    folder = tmp_path_factory.mktemp("demo_loras")
    demo.write_demo_loras(unet, folder, "sdxl")
    return folder


@pytest.fixture(scope="session")
def demo_result(demo_loras) -> dict:
    return series_insight(scanned(demo_loras))
