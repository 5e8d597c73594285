"""``compile: on`` on tiny real pipelines of both families: the denoiser compiled once, and no swap, strength
change, base column or routed batch recompiling it (counted by torch._dynamo's own counters and by the backend
that receives each graph); the pictures those of the uncompiled engine; what cannot agree refused with why.

The backend here hands dynamo's graphs back to run as traced (``gm.forward``): recompiles are decided by dynamo's
guards before any backend sees a graph, so counting them needs no C++ compiler and takes seconds, not minutes.
"""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch._dynamo
from torch._dynamo.utils import counters

from lora_spectrum.errors import ConfigError, LoraSpectrumError
from lora_spectrum.render.compilation import denoiser_size, machine_key, pays, record_verdict, resolve_compile
from lora_spectrum.settings import load_settings
from tests.tiny import FAMILIES, new_engine, pixels
from tests.tiny import request as tiny_request


class CountingBackend:
    """A torch.compile backend that counts the graphs it is given and runs them as traced."""

    def __init__(self):
        self.graphs = 0

    def __call__(self, gm, example_inputs):
        self.graphs += 1
        return gm.forward


def request(family, seeds=(1,)):
    req = tiny_request(family, seeds)
    return replace(req, sampling=req.sampling.override(guidance=0.0))


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("family", FAMILIES)
def test_ten_swaps_strengths_the_base_and_a_routed_batch_never_recompile(family, demo_loras):
    files = [str(p) for p in demo_loras[family]]
    backend = CountingBackend()
    engine = new_engine(family, compile="on", compile_backend=backend)
    plain = new_engine(family)
    assert engine.compiled and engine.hotswap.compiled
    # 1. The first adapter of a layout compiles (peft wraps the layers); that is the last compile.
    first = pixels(engine.render(request(family), files[0], 1.0).images)
    assert np.array_equal(first, pixels(plain.render(request(family), files[0], 1.0).images))
    graphs, unique = backend.graphs, counters["stats"]["unique_graphs"]
    assert graphs >= 1
    # 2. Ten swaps across the epochs at several strengths, the base between them, and a routed batch.
    plan = [(files[i % len(files)], s) for i, s in enumerate([1.0, 0.5, 1.3, 1.0, 0.0, 0.8, 1.0, 0.7, 1.0, 1.2])]
    for i, (path, strength) in enumerate(plan):
        got = pixels(engine.render(request(family), path, strength).images)
        want = pixels(plain.render(request(family), path, strength).images)
        assert np.array_equal(got, want), (path, strength)
        if i == 4:
            base = pixels(engine.render(request(family), None).images)
            assert np.array_equal(base, pixels(plain.render(request(family), None).images))
    routed = engine.render_routed(request(family), [[(files[1], 1.0, (1,)), (files[2], 1.0, (1,))]])
    assert all(not isinstance(r, Exception) for r in routed[0]), routed
    assert routed[0][0].swap.kind.startswith("routed")
    after = pixels(engine.render(request(family), files[3], 1.0).images)
    assert np.array_equal(after, pixels(plain.render(request(family), files[3], 1.0).images))
    assert backend.graphs == graphs, f"{backend.graphs - graphs} recompile(s) across swaps"
    assert counters["stats"]["unique_graphs"] == unique
    kinds = {r.kind for r in engine.hotswap.history}
    assert {"prefetched", "warm", "cold", "base"} & kinds and "rebuild" in kinds


def test_fused_mode_and_offload_refuse_compile_with_the_reason(tmp_path):
    with pytest.raises(ConfigError, match="fuse: on"):
        new_engine("sdxl", compile="on", fuse="on")
    with pytest.raises(ConfigError, match="offload: model"):
        resolve_compile("on", torch.device("cpu"), "sdxl", "off", offload="model")
    # fuse: auto under compile stays unfused (each switch would recompile), and cannot be switched on.
    engine = new_engine("sdxl", compile="on", compile_backend=CountingBackend(), fuse="auto")
    assert engine.fuse_mode == "off" and engine.fuse_policy is None
    with pytest.raises(LoraSpectrumError, match="compiled denoiser"):
        engine.hotswap.set_fuse(True)
    config = tmp_path / "c.yaml"
    config.write_text("compile: sometimes\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="compile must be auto, on or off"):
        load_settings(config)
    config.write_text("compile: on\n", encoding="utf-8")  # YAML 1.1 reads a bare on as true
    assert load_settings(config).compile == "on"


def test_auto_follows_what_bench_compile_recorded_for_this_machine(tmp_path):
    cpu, verdicts = torch.device("cpu"), tmp_path / "compile.json"
    on, why = resolve_compile("auto", cpu, "sdxl", "auto", size_m=2567, verdicts=verdicts)
    assert not on and "no bench --compile verdict" in why
    # 200 forwards x 10 ms saved < 60 s of compile: no gain.
    record_verdict(cpu, "sdxl", 2567, eager_s=0.10, compiled_s=0.09, compile_s=60.0, path=verdicts)
    on, why = resolve_compile("auto", cpu, "sdxl", "auto", size_m=2567, verdicts=verdicts)
    assert not on and "no gain" in why
    record_verdict(cpu, "sdxl", 2567, eager_s=0.10, compiled_s=0.05, compile_s=5.0, path=verdicts)
    assert resolve_compile("auto", cpu, "sdxl", "auto", size_m=2567, verdicts=verdicts)[0]
    assert not resolve_compile("auto", cpu, "z-image", "auto", size_m=2567, verdicts=verdicts)[0], "per family"
    assert not resolve_compile("auto", cpu, "sdxl", "auto", size_m=3, verdicts=verdicts)[0], "per model size"
    assert json.loads(verdicts.read_text())[machine_key(cpu, "sdxl", 2567)]["pays"] is True
    assert not resolve_compile("auto", cpu, "sdxl", "on", size_m=2567, verdicts=verdicts)[0], \
        "auto never overrides fuse: on"
    assert pays(1.0, 0.5, 99.0) and not pays(1.0, 0.5, 101.0) and not pays(1.0, 1.0, 0.0)


def test_an_engine_on_auto_compiles_where_the_recorded_verdict_says_it_pays(tmp_path, monkeypatch):
    monkeypatch.setenv("LORA_SPECTRUM_COMPILE_VERDICTS", str(tmp_path / "compile.json"))
    assert not new_engine("sdxl", compile="auto").compiled, "no verdict: off"
    size = denoiser_size(new_engine("sdxl").hotswap.denoiser)
    record_verdict(torch.device("cpu"), "sdxl", size, eager_s=0.2, compiled_s=0.1, compile_s=1.0)
    engine = new_engine("sdxl", compile="auto", compile_backend=CountingBackend())
    assert engine.compiled and "compile: auto" in engine.compile_note
