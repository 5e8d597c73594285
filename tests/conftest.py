"""Shared fixtures: demo epoch files for tiny real pipelines of both families."""

from __future__ import annotations

import os
import shutil

import pytest
import torch

from lora_spectrum import demo
from lora_spectrum.bases.families import get_family
from tests.tiny import FAMILIES

# The tiny models are dominated by per-operation overhead, where one thread is fastest and least disturbed by
# other processes on a 2-core machine. Results do not depend on it.
torch.set_num_threads(1)
# The same for the processes the tests start (the CLI, the app's server, Ray's workers): two threads each on a
# core that another process is using spin against each other's work (a render then takes 10 to 50 times longer).
os.environ["OMP_NUM_THREADS"] = "1"
# The CLI speaks the language of LANGUAGE / LC_ALL / LC_MESSAGES / LANG: the tests read its English whatever the
# machine's locale is (tests/test_language.py runs it under LANG=zh_CN.UTF-8 on purpose).
os.environ["LANGUAGE"] = "en"


@pytest.fixture(autouse=True, scope="session")
def no_compile_verdicts(tmp_path_factory):
    """compile: auto reads bench --compile's verdicts: the tests never see this machine's, nor write into them."""
    mp = pytest.MonkeyPatch()
    mp.setenv("LORA_SPECTRUM_COMPILE_VERDICTS", str(tmp_path_factory.mktemp("verdicts") / "compile.json"))
    yield
    mp.undo()


@pytest.fixture(scope="session")
def demo_loras(tmp_path_factory):
    """Demo epoch files for each family, written once: {family: [paths in epoch order]}."""
    out = {}
    for family in FAMILIES:
        pipe = demo.build_tiny(family, seed=0)
        folder = tmp_path_factory.mktemp(f"loras-{family}")
        out[family] = demo.write_demo_loras(get_family(family).denoiser(pipe), folder, family)
    return out


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory):
    """The random-weight demo (base folder and synthetic epochs jimeng_20 ... jimeng_300), written once."""
    folder = tmp_path_factory.mktemp("demo")
    demo.ensure_demo(folder, "sdxl")
    return folder


@pytest.fixture
def setup(tmp_path, demo_dir):
    """A config of its own on the random demo (base: demo), a copy of its epochs to change, and an output path."""
    loras = tmp_path / "loras"
    shutil.copytree(demo_dir / "loras", loras)
    config = tmp_path / "config.yaml"
    config.write_text(f"base: demo\ndemo: random\ndemo_dir: {demo_dir}\ncache_dir: {tmp_path / 'cache'}\ndevice: cpu\n",
                      encoding="utf-8")
    return config, loras, tmp_path / "out"


@pytest.fixture(scope="session")
def quick_demo(tmp_path_factory):
    """One ``python -m tools.demo_trainer.trainer --quick`` run (base, its CLIP, style set, LoRA epochs, log and
    report), shared by the tests of the trainer and of the CLIP training: (folder, torch threads before, after)."""
    from tools.demo_trainer import trainer

    folder = tmp_path_factory.mktemp("quick-demo")
    threads = torch.get_num_threads()
    assert trainer.main(["--out", str(folder), "--quick"]) == 0
    return folder, threads, torch.get_num_threads()
