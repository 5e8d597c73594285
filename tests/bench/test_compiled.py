"""``bench --compile``'s measurement on the tiny pipeline: figures present, no recompile across its swaps, the
verdict recorded for ``compile: auto``, and the denoiser given back uncompiled and untouched.

dynamo's "eager" backend stands in for inductor (the same guards and recompiles, no C++ compile: seconds instead of
minutes); no timing thresholds.
"""

from __future__ import annotations

import json

import torch

from lora_spectrum import demo
from lora_spectrum.bases.families import get_family
from lora_spectrum.bench.compiled import measure_compiled
from lora_spectrum.bench.models import forward_inputs, write_epochs
from lora_spectrum.render.compilation import machine_key, resolve_compile
from tests.bench.figures import positive


def test_compiled_forward_figures_and_the_verdict_for_auto(tmp_path, monkeypatch):
    verdicts = tmp_path / "compile.json"
    monkeypatch.setenv("LORA_SPECTRUM_COMPILE_VERDICTS", str(verdicts))
    cpu, family = torch.device("cpu"), get_family("sdxl")
    pipe = demo.build_tiny_sdxl(seed=0)
    denoiser = family.denoiser(pipe)
    paths = write_epochs(denoiser, "sdxl", 4, 4, tmp_path, torch.float32)
    forward = forward_inputs("sdxl", denoiser, cpu, torch.float32, 16)
    before = forward()
    lines: list[str] = []
    out = measure_compiled(pipe, family, paths, cpu, forward, 2, 0.5, lines.append, backend="eager")
    for key in ("compile_s", "forward_compiled_s", "forward_after_swaps_s", "speedup"):
        assert positive(out[key]), key
    assert out["recompiles_across_swaps"] == 0 and out["swaps"] == 4 and out["backend"] == "eager"
    assert any("torch.compile (eager)" in line for line in lines)
    # The verdict is the one compile: auto reads (an eager forward of 0.5 s here: the stand-in wins, it pays).
    size = out["denoiser_m"]
    assert json.loads(verdicts.read_text())[machine_key(cpu, "sdxl", size)]["pays"] is out["pays"]
    assert resolve_compile("auto", cpu, "sdxl", "auto", size_m=size)[0] is out["pays"]
    # Given back: uncompiled, no adapter layers, the base's forward bit for bit.
    assert denoiser._compiled_call_impl is None
    assert not any("lora_" in k for k in denoiser.state_dict())
    assert torch.equal(forward(), before)
