"""``fuse: auto`` (``fuse_policy.py``): the rule steps x unfused overhead > merge on what ``bench`` recorded, read
before anything renders; the engine applying the run's choice (logged) and never measuring its own renders."""

from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np
import pytest
import torch

from lora_spectrum.render.compilation import denoiser_size
from lora_spectrum.render.fuse_policy import (
    FuseChoice,
    FusePolicy,
    read_verdicts,
    record_verdict,
    verdict_for,
    verdicts_path,
)
from tests.tiny import new_engine, pixels, request

MEASURED = {"bare_forward_s": 0.020, "unfused_forward_s": 0.030, "merge_s": 0.5, "image": 64, "batch": 1}


def record_for(family: str, path, **measured) -> dict:
    """Record ``measured`` (over ``MEASURED``) as bench would, for the tiny engine of ``family`` on this CPU."""
    v = {**MEASURED, **measured}
    denoiser = new_engine(family).hotswap.denoiser
    return record_verdict(torch.device("cpu"), family, denoiser_size(denoiser), v["bare_forward_s"],
                          v["unfused_forward_s"], v["merge_s"], v["image"], v["batch"], path=path)


@pytest.fixture
def verdicts(tmp_path, monkeypatch):
    path = tmp_path / "fuse.json"
    monkeypatch.setenv("LORA_SPECTRUM_FUSE_VERDICTS", str(path))
    return path


def test_the_rule_steps_times_overhead_against_the_merge():
    policy = FusePolicy(MEASURED)
    # 30 steps x 10 ms = 300 ms of overhead < a 500 ms merge: unfused; 60 steps: 600 ms > 500 ms: fused.
    assert policy.choose(30, 64, 64, 1) == FuseChoice(
        False, "fuse auto: off, 30 steps x 10.0 ms unfused overhead = 300 ms <= 500 ms per merge")
    choice = policy.choose(60, 64, 64, 1)
    assert choice.fused and "600 ms > 500 ms per merge" in choice.why
    # The overhead grows with the work per call (pixels x samples): twice the samples, twice the overhead.
    assert policy.choose(30, 64, 64, 2).fused and policy.choose(15, 128, 64, 2).fused
    assert not policy.choose(30, 32, 64, 2).fused
    # An unfused adapter that costs nothing per step is never merged, however long the render.
    free = FusePolicy({**MEASURED, "unfused_forward_s": 0.019})
    assert not free.choose(10_000, 64, 64, 1).fused
    assert "adds nothing per step" in free.choose(10_000, 64, 64, 1).why
    # Nothing recorded: unfused, and it says why (no trial merge on a cell the user will see).
    assert FusePolicy(None).choose(10_000, 1024, 1024, 8) == FuseChoice(
        False, "fuse auto: off, bench has recorded no fuse measurements for this machine")


def test_the_same_inputs_always_get_the_same_choice():
    """A pure function: nothing it computes depends on a clock, so neither load nor timing can flip it."""
    policy = FusePolicy(MEASURED)
    choices = {policy.choose(steps, 64, 64, 2) for steps in (20, 20, 20) for _ in range(50)}
    assert len(choices) == 1


def test_verdicts_are_recorded_per_machine_and_denoiser(verdicts, monkeypatch):
    assert verdicts_path() == verdicts
    recorded = record_for("sdxl", None)
    assert read_verdicts()  # written where verdicts_path says
    engine = new_engine("sdxl")
    assert verdict_for(engine.device, "sdxl", engine.hotswap.denoiser) == recorded
    assert verdict_for(engine.device, "z-image", engine.hotswap.denoiser) is None, "another family"
    verdicts.write_text("{not json", encoding="utf-8")
    assert verdict_for(engine.device, "sdxl", engine.hotswap.denoiser) is None, "an unreadable file: nothing"
    # Without its own variable the file lies beside bench --compile's verdicts.
    monkeypatch.delenv("LORA_SPECTRUM_FUSE_VERDICTS")
    monkeypatch.setenv("LORA_SPECTRUM_COMPILE_VERDICTS", str(verdicts.parent / "x" / "compile.json"))
    assert verdicts_path() == verdicts.parent / "x" / "fuse.json"


def test_the_engine_reads_the_verdict_once_and_applies_the_choice(demo_loras, verdicts, caplog):
    family = "sdxl"
    path = str(demo_loras[family][4])
    req = request(family, steps=3)
    assert new_engine(family, fuse="auto").fuse_choice(req.sampling, 2).fused is False, "nothing recorded"
    # A large overhead against a cheap merge: fused, for a render alone (the engine chooses for its request) ...
    record_for(family, verdicts, unfused_forward_s=10.0, merge_s=1e-6)
    engine = new_engine(family, fuse="auto")
    unfused_pixels = pixels(new_engine(family, fuse="off").render(req, path, 0.9).images).astype(int)
    with caplog.at_level(logging.INFO, logger="lora_spectrum.render.fuse_policy"):
        result = engine.render(req, path, 0.9)
    assert result.swap.fused and engine.fuse and engine.hotswap.is_fused()
    assert "fuse auto: on" in engine.fuse_decision and engine.fuse_decision in caplog.text
    assert np.abs(pixels(result.images).astype(int) - unfused_pixels).max() <= 2  # other arithmetic, same image
    # ... while a run's own choice, carried by its requests, wins: unfused, the merge buffers freed.
    result = engine.render(replace(req, fuse=FuseChoice(False, "fuse auto: off, the run's choice")),
                           str(demo_loras[family][2]))
    assert not result.swap.fused and not engine.fuse and engine.hotswap.fused_extra_bytes() == 0
    assert engine.fuse_decision == "fuse auto: off, the run's choice"
    # The recorded measurements are read once, when the engine starts: a bench run meanwhile changes nothing.
    record_for(family, verdicts, unfused_forward_s=0.0)
    assert engine.fuse_choice(req.sampling, 2).fused
    assert not new_engine(family, fuse="auto").fuse_choice(req.sampling, 2).fused
    # fuse: on and off are what they say, whatever a request carries.
    fixed = new_engine(family, fuse="off")
    assert not fixed.render(replace(req, fuse=FuseChoice(True, "")), path).swap.fused
